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
import json
import logging
import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from runner.launch.entry import RERUNS, RETURN_VALUE
from runner.launch.procs import pid_alive, write_atomic
from runner.launch.trust import UntrustedFileError, read_trusted
from runner.metrics import METRICS_FILE
from runner.record import JobRecord, Outcome, read_record
from runner.sweep.console import compact_number

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SUMMARY_GROUPS_CSV = "summary_groups.csv"
# The swept key whose points are repeats of one setting (the summary's groups).
SEED_KEY = "seed"
# Final metrics that are no result: where training was, and the learning rate it ended
# on (the config's optim.lr, or where its schedule took it).
SKIP_METRICS = {"epoch", "step", "elapsed_s", "objective", "objective_value", "world_size", "lr"}


@dataclass
class Row:
    """One sweep point, as its job dir records it."""

    job: int
    job_dir: Path
    params: dict[str, str]
    status: Outcome
    world_size: int | None = None
    duration_s: float | None = None
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    # A multi-objective trial's values, and whether it is on the search's Pareto front.
    values: list[float] = field(default_factory=list)
    pareto: bool = False
    # STOPPED: by what (Ctrl-C, SIGTERM, fail_fast, timeout).
    stopped_by: str = ""
    # What was wrong with a completed point (its ranks never formed a process group).
    note: str = ""
    # Another sweep parent's trial of a shared search: that parent (host:pid).
    parent: str = ""

    @property
    def shown_status(self) -> str:
        return f"{self.status} ({self.stopped_by})" if self.stopped_by else str(self.status)


# libyaml's loader where PyYAML has it: a summary of 1,000 points reads 2,000 files.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_LOADER)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _overrides(job_dir: Path) -> list[str]:
    try:
        return list(_yaml(job_dir / ".hydra" / "overrides.yaml") or [])
    except (OSError, yaml.YAMLError):
        return []


def sweep_maximises(config: Any) -> bool:
    """Whether a sweep's best is its highest value: the sweeper's ``direction`` when it
    has one (Optuna's; the first of several), else the launcher's ``direction`` (any
    app can set it), else runner's ``trainer.objective_mode``."""
    for key in ("hydra.sweeper.direction", "hydra.launcher.direction"):
        direction = OmegaConf.select(config, key, default=None)
        if OmegaConf.is_list(direction) and len(direction):
            direction = direction[0]
        if isinstance(direction, str):
            return direction == "maximize"
    return str(OmegaConf.select(config, "trainer.objective_mode", default="min")) == "max"


def better(maximises: bool) -> str:
    """Which way is better, as the summary says it."""
    return "higher is better" if maximises else "lower is better"


def _maximises(job_dir: Path) -> bool:
    """sweep_maximises for a job dir, from its ``.hydra/`` files."""
    try:
        config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        hydra = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml")
    except (OSError, yaml.YAMLError):
        return False
    return sweep_maximises(OmegaConf.merge(config, hydra))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _return_value(job_dir: Path) -> Any:
    path = job_dir / RETURN_VALUE
    if not path.is_file():
        return None
    import cloudpickle

    try:
        stored = read_trusted(path, "the value is left out of the summary")
    except (UntrustedFileError, OSError) as error:  # one point's, not the whole report's
        log.warning("%s", error)
        return None
    try:
        return cloudpickle.loads(stored)
    except Exception:
        return None


def _pareto_dirs(sweep_dir: Path) -> set[str]:
    """The job dirs of a multi-objective search's Pareto front (runner.sweep.search)."""
    try:
        results = _yaml(sweep_dir / "optimization_results.yaml") or {}
    except (OSError, yaml.YAMLError):
        return set()
    return {str(s.get("job_dir")) for s in results.get("solutions") or []}


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job dir of a sweep: the dirs below it that hold ``.hydra/overrides.yaml``
    (not the reruns of its points, in ``reruns/``)."""
    reruns = sweep_dir / RERUNS
    found = {
        p.parent.parent
        for p in sweep_dir.glob("**/.hydra/overrides.yaml")
        if not p.is_relative_to(reruns)
    }
    return sorted(found, key=lambda p: str(p))


def _agent_alive(record: JobRecord) -> bool:
    """Whether a point recorded as running still has its torchrun agent (a Slurm
    point's job is the cluster's to tell: taken as running)."""
    pid = record.agent_pid
    return not pid or pid_alive(pid)


def collect(sweep_dir: Path) -> list[Row]:
    """The rows of a sweep, read from its job dirs, in job order."""
    pareto = _pareto_dirs(sweep_dir)
    rows = [read_row(job_dir, k, pareto) for k, job_dir in enumerate(job_dirs(sweep_dir))]
    return sorted(rows, key=lambda r: r.job)


def read_row(job_dir: Path, index: int, pareto: Collection[str] = ()) -> Row:
    """A job dir's row (``index``: its job number where its Hydra config has none)."""
    hydra_cfg = {}
    try:
        hydra_cfg = _yaml(job_dir / ".hydra" / "hydra.yaml")["hydra"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        pass
    num = (hydra_cfg.get("job") or {}).get("num")
    record = read_record(job_dir)
    final = _read_json(job_dir / "metrics.json")
    params = {}
    for override in _overrides(job_dir):
        key, _, value = override.partition("=")
        params[key.lstrip("+~")] = value
    if record is None:  # not a job of runner's launcher
        record = JobRecord(
            Outcome.COMPLETED
            if (job_dir / "metrics.json").exists()
            else Outcome.RUNNING
            if (job_dir / METRICS_FILE).exists()
            else Outcome.NOT_FINISHED
        )
    status = record.status
    if status is Outcome.RUNNING and not _agent_alive(record):
        status = Outcome.NOT_FINISHED  # its sweep was killed before it could say so
    objective = _number(final.get("objective_value"))
    values: list[float] = []
    if objective is None and status is Outcome.COMPLETED:
        value = _return_value(job_dir)
        objective = _number(value)
        if isinstance(value, (list, tuple)):
            values = [v for v in map(_number, value) if v is not None]
    return Row(
        job=int(num) if isinstance(num, int) else index,
        job_dir=job_dir,
        params=params,
        status=status,
        world_size=final.get("world_size") or record.run.get("nproc_per_node"),
        duration_s=record.duration_s,
        objective=objective,
        metrics={
            k: v for k, v in final.items() if k not in SKIP_METRICS and _number(v) is not None
        },
        error="; ".join(
            text
            for text in (
                f"run again as #{record.rerun_as}" if record.rerun_as is not None else "",
                record.error.splitlines()[0] if record.error else "",
            )
            if text
        ),
        values=values,
        pareto=str(job_dir) in pareto,
        stopped_by=(record.stopped_by or "") if status is Outcome.STOPPED else "",
        note=(record.warning or "").split(". Fix:")[0],
    )


def objective_name(rows: Sequence[Row]) -> str:
    for row in rows:
        final = _read_json(row.job_dir / "metrics.json")
        if final.get("objective"):
            return str(final["objective"])
    return "return_value"


def ranked(rows: Sequence[Row]) -> list[Row]:
    """Rows with an objective first, best first (direction from the config), then the rest."""
    sign = -1.0 if rows and _maximises(rows[0].job_dir) else 1.0
    scored = [(r.objective, r) for r in rows if r.objective is not None]
    front = [r for r in rows if r.pareto]
    return (
        front
        + [r for _, r in sorted(scored, key=lambda pair: sign * pair[0]) if not r.pareto]
        + [r for r in rows if r.objective is None and not r.pareto]
    )


def swept(rows: Sequence[Row]) -> list[str]:
    """Override keys whose value differs between points (all of them for one point)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    varying = [k for k in keys if len({r.params.get(k) for r in rows}) > 1]
    return varying if len(rows) > 1 else keys


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
    sign = -1.0 if _maximises(rows[0].job_dir) else 1.0
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


def rows_maximise(rows: Sequence[Row]) -> bool:
    """Whether the best of these rows is their highest objective."""
    return bool(rows) and _maximises(rows[0].job_dir)


def best_row(sweep_dir: Path) -> tuple[Row, list[Row]] | None:
    """The sweep's best completed point (by its objective, in the sweep's direction)
    and all its rows; None before any point completed."""
    rows = collect(sweep_dir)
    done = [r for r in rows if r.status is Outcome.COMPLETED and r.objective is not None]
    if not done:
        return None
    pick = max if rows_maximise(rows) else min
    return pick(done, key=lambda r: float(r.objective or 0.0)), rows


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
