"""See a sweep at a glance: ``python -m runner.report SWEEP_DIR``.

Rebuilds the sweep's summary from its job dirs (a finished, a running or an interrupted
sweep alike): ``summary.csv`` and ``summary.md``, one row per point, sorted by the
objective, with the swept overrides as columns; then draws PNG plots with matplotlib
(the ``plot`` extra): the objective against each swept numeric parameter, every
point's learning curve on one figure, and a heat map when two parameters are swept.

The launcher rewrites the summary after every batch, and
:class:`SummaryCallback` prints the table when a multirun ends. Nothing here imports
torch.
"""

from __future__ import annotations

import atexit
import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from runner.launch.procs import write_atomic
from runner.record import Outcome
from runner.sweep.console import compact_number
from runner.sweep.rows import Row, better, collect, objective_name, ranked, rows_maximise, swept

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_GROUPS_CSV = "summary_groups.csv"
# The swept key whose points are repeats of one setting (the summary's groups).
SEED_KEY = "seed"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary, best point first."""
    params = swept(rows)
    metrics = list(dict.fromkeys(k for r in rows for k in r.metrics))
    header = [
        "job",
        *params,
        "status",
        *(["pareto"] if any(r.pareto for r in rows) else []),
        "world_size",
        "duration_s",
        objective_name(rows),
        *[m for m in metrics if m != objective_name(rows)],
        *(["parent"] if any(r.parent for r in rows) else []),
        "error",
    ]

    cells = []
    for r in ranked(rows):
        cells.append(
            [
                _fmt(r.job),
                *[compact_number(r.params.get(p, "")) for p in params],
                r.shown_status,
                *([("yes" if r.pareto else "")] if any(x.pareto for x in rows) else []),
                _fmt(r.world_size) + (" (no group)" if r.note else ""),
                _fmt(r.duration_s),
                _fmt(r.objective) if not r.values else ", ".join(map(_fmt, r.values)),
                *[_fmt(r.metrics.get(m)) for m in metrics if m != objective_name(rows)],
                *([r.parent] if any(x.parent for x in rows) else []),
                r.error or (f"warning: {r.note}" if r.note else ""),
            ]
        )
    return header, cells


@dataclass
class Group:
    """The points of one setting: the same values of every swept key but the seed."""

    params: dict[str, str]
    rows: list[Row]

    def values(self, metric: str | None) -> list[float]:
        """The completed points' objective (``metric`` None) or final ``metric``."""
        found = [r.objective if metric is None else r.metrics.get(metric) for r in self.rows]
        return [
            v
            for r, v in zip(self.rows, found, strict=True)
            if r.status is Outcome.COMPLETED and v is not None
        ]

    def stats(self, metric: str | None) -> tuple[float | None, float | None]:
        """Mean and (sample) standard deviation; the deviation needs two values."""
        values = self.values(metric)
        mean = statistics.fmean(values) if values else None
        return mean, statistics.stdev(values) if len(values) > 1 else None


def grouped(rows: Sequence[Row], seed_key: str = SEED_KEY) -> list[Group]:
    """The sweep's settings over seeds, best mean objective first, when ``seed_key`` is
    one of its swept keys (else none): points grouped by every other swept key."""
    keys = swept(rows)
    if seed_key not in keys or len(rows) < 2:
        return []
    others = [k for k in keys if k != seed_key]
    by_setting: dict[tuple[str, ...], list[Row]] = {}
    for row in rows:
        by_setting.setdefault(tuple(row.params.get(k, "") for k in others), []).append(row)
    groups = [
        Group(dict(zip(others, key, strict=True)), members) for key, members in by_setting.items()
    ]
    sign = -1.0 if rows_maximise(rows) else 1.0
    return sorted(
        groups, key=lambda g: (g.stats(None)[0] is None, sign * (g.stats(None)[0] or 0.0))
    )


def group_table(
    rows: Sequence[Row], seed_key: str = SEED_KEY, *, combined: bool = True
) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the settings over seeds: each group's points, completed ones,
    and the mean and standard deviation of its objective and final metrics, as
    ``mean ± std`` (``combined``) or in two columns each (the CSV)."""
    groups = grouped(rows, seed_key)
    if not groups:
        return [], []
    name = objective_name(rows)
    metrics = [None] + [m for m in dict.fromkeys(k for r in rows for k in r.metrics) if m != name]
    names = [name if m is None else m for m in metrics]
    header = [*groups[0].params, "points", "completed"]
    header += names if combined else [f"{n}_{s}" for n in names for s in ("mean", "std")]
    cells = []
    for group in groups:
        line = [*group.params.values(), str(len(group.rows)), str(len(group.values(None)))]
        for metric in metrics:
            mean, std = group.stats(metric)
            if combined:
                line.append(
                    ""
                    if mean is None
                    else f"{mean:.6g}" + (f" ± {std:.2g}" if std is not None else "")
                )
            else:
                line += [_fmt(mean), _fmt(std)]
        cells.append(line)
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| " + " | ".join(escape(h) for h in header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], cells: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(cells)
    return buffer.getvalue().encode()


def write_summary(sweep_dir: Path, seed_key: str = SEED_KEY, more: Sequence[Row] = ()) -> list[Row]:
    """Write summary.csv and summary.md into the sweep dir (and, when it varies
    ``seed_key``, summary_groups.csv and a second table in summary.md: each setting
    over seeds); return the rows. ``more``: rows from elsewhere (a shared search's
    other parents' trials)."""
    rows = sorted([*collect(sweep_dir), *more], key=lambda r: r.job)
    if not rows:
        return rows
    header, cells = table(rows)
    write_atomic(sweep_dir / SUMMARY_CSV, _csv(header, cells))
    text = f"{ranking(rows)}\n\n" + markdown(header, cells)
    group_header, group_cells = group_table(rows, seed_key)
    if group_cells:
        write_atomic(
            sweep_dir / SUMMARY_GROUPS_CSV, _csv(*group_table(rows, seed_key, combined=False))
        )
        text += f"\n{_over_seeds(seed_key)}\n\n" + markdown(group_header, group_cells)
    write_atomic(sweep_dir / SUMMARY_MD, text.encode())
    return rows


def _over_seeds(seed_key: str) -> str:
    return f"Over seeds ({seed_key}): each setting's mean ± standard deviation, best first"


def ranking(rows: Sequence[Row]) -> str:
    """What the summary's order means: ``Best first by val_loss (lower is better).``"""
    return f"Best first by {objective_name(rows)} ({better(rows_maximise(rows))})."


def console_table(rows: Sequence[Row], seed_key: str = SEED_KEY) -> str:
    """The summary as aligned plain text, for the end of a sweep (and the settings over
    seeds, when it varies ``seed_key``), under what its order means."""
    text = f"{ranking(rows)}\n" + aligned(*table(rows))
    group_header, group_cells = group_table(rows, seed_key)
    if group_cells:
        text += f"\n\n{_over_seeds(seed_key)}:\n" + aligned(group_header, group_cells)
    return text


def aligned(header: list[str], cells: list[list[str]]) -> str:
    """A table as aligned plain text."""
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- callback, CLI


class SummaryCallback(Callback):
    """Hydra callback: however a multirun ends (done, failed points, Ctrl-C, SIGTERM),
    write the summary and print the table and the sweep dir. Stored in runner's conf
    as ``hydra.callbacks.summary``; any app can add it. ``seed_key``: the swept key
    whose points repeat one setting (grouped over)."""

    def __init__(self, seed_key: str = SEED_KEY) -> None:
        self.seed_key = seed_key

    def on_multirun_start(self, config, **kwargs) -> None:
        # A sweep that fails or is stopped never reaches on_multirun_end.
        atexit.register(self._print, Path(str(config.hydra.sweep.dir)))

    def on_multirun_end(self, config, **kwargs) -> None:
        atexit.unregister(self._print)
        self._print(Path(str(config.hydra.sweep.dir)))

    def _print(self, sweep_dir: Path) -> None:
        rows = write_summary(sweep_dir, self.seed_key)
        if rows:
            table_text = console_table(rows, self.seed_key)
            print(f"\nSweep summary ({sweep_dir / SUMMARY_MD}):\n{table_text}", flush=True)
        print(f"Sweep dir: {sweep_dir}", flush=True)


def seed_key_of(config: Any) -> str:
    """The seed key a sweep's summary callback groups over (runner's default if none)."""
    return str(OmegaConf.select(config, "hydra.callbacks.summary.seed_key", default=SEED_KEY))
