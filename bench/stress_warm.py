"""Warm start under stress: consecutive 2-rank gloo trials of runner's trainer, every
point forked from a warm process that has everything a trial imports preloaded
(torch._dynamo and the trainer's module included), one at a time.

A trial that hangs at exit (the ranks done, one stuck in the process group's
teardown) is stopped by its own timeout and counts as hung; the table gives the
trials run, completed and hung, and the median seconds a trial took. Target (issue
#33): no hang in 200 consecutive trials.

Reference, measured in the same run: a bare ``torchrun`` of the same 2-rank training
would take seconds a trial (a fresh interpreter and ``import torch`` per rank), so
only its one-trial time is given beside the warm median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from _common import PY, markdown_table, publish, timed

TRAIN = ["data.n_samples=2000", "trainer.epochs=1", "trainer.progress=off"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds before a hung trial is stopped"
    )
    args = parser.parse_args()
    begun = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = Path(tmp) / "stress"
        cmd = [
            PY,
            "-m",
            "runner",
            "-m",
            "trainer.nproc_per_node=2",
            f"seed=range(0,{args.trials})",
            *TRAIN,
            "hydra.launcher.warm=true",
            "hydra.launcher.max_parallel=1",
            f"hydra.launcher.timeout={args.timeout}",
            f"hydra.sweep.dir={sweep_dir}",
        ]
        timed(cmd, limit=args.trials * (args.timeout + 10))
        records = [json.loads(p.read_text()) for p in sweep_dir.glob("*/launch.json")]
        single = Path(tmp) / "single"
        one = timed(
            [PY, "-m", "runner", "trainer.nproc_per_node=2", *TRAIN, f"hydra.run.dir={single}"]
        )
    done = sum(r["status"] == "COMPLETED" for r in records)
    hung = sum(r.get("stopped_by") == "timeout" for r in records)
    median = statistics.median(r["duration_s"] for r in records if r["status"] == "COMPLETED")
    table = markdown_table(
        [
            "trials",
            "completed",
            "hung (stopped by timeout)",
            "median s a trial",
            "cold single run s",
        ],
        [[str(len(records)), str(done), str(hung), f"{median:.2f}", f"{one:.2f}"]],
    )
    met = hung == 0 and len(records) >= 200
    note = f"{hung} hung of {len(records)} (target: none in 200: {'met' if met else 'not met'})."
    publish(
        "Warm start under stress",
        "Consecutive warm 2-rank trials of runner's trainer, everything preloaded."
        f"\n\n{table}\n\n{note}",
        f"bench/stress_warm.py --trials {args.trials}, {time.time() - begun:.0f} s",
    )


if __name__ == "__main__":
    main()
