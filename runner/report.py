"""``python -m runner.report SWEEP_DIR``: a sweep's summary (:mod:`runner.sweep.summary`)
rebuilt from its job dirs, printed, and its plots drawn (:mod:`runner.sweep.plots`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.errors import invalid
from runner.sweep.plots import plot
from runner.sweep.rows import collect
from runner.sweep.summary import (
    SEED_KEY,
    SUMMARY_CSV,
    SUMMARY_GROUPS_CSV,
    SUMMARY_MD,
    console_table,
    write_summary,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Rebuild a sweep's summary from its job dirs and draw its plots.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep dir (hydra.sweep.dir)")
    parser.add_argument("--no-plots", action="store_true", help="write the summary only")
    parser.add_argument(
        "--study",
        action="store_true",
        help="a search's whole study: the other sweep parents' trials of a shared "
        "search (one hydra.sweeper.storage and study_name) too",
    )
    parser.add_argument(
        "--seed-key",
        default=SEED_KEY,
        help="the swept key whose points repeat one setting: the summary and plots also "
        f"give each setting's mean and spread over it (default: {SEED_KEY})",
    )
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    if (args.sweep_dir / ".hydra").is_dir():  # Hydra's files at the top: one run
        parser.error(
            invalid(
                "SWEEP_DIR",
                str(args.sweep_dir),
                "it is one run's dir (its .hydra/ is at the top), not a sweep's",
                "pass the hydra.sweep.dir of a multirun (-m), whose points are "
                "SWEEP_DIR/0, SWEEP_DIR/1, ...",
            )
        )
    more = []
    if args.study:
        from runner.errors import ConfigError
        from runner.sweep.study import other_rows

        try:
            more = other_rows(args.sweep_dir, collect(args.sweep_dir))
        except ConfigError as error:
            parser.error(str(error))
    rows = write_summary(args.sweep_dir, args.seed_key, more)
    if not rows:
        print(f"no job dirs (with .hydra/overrides.yaml) under {args.sweep_dir}", file=sys.stderr)
        return 1
    print(console_table(rows, args.seed_key))
    names = (SUMMARY_CSV, SUMMARY_GROUPS_CSV, SUMMARY_MD)
    written = [str(args.sweep_dir / n) for n in names if (args.sweep_dir / n).is_file()]
    print(f"\nwrote {', '.join(written)}")
    if not args.no_plots:
        for path in plot(args.sweep_dir, rows, args.seed_key):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
