"""A sweep's rows, read from its job dirs: one :class:`Row` per point (its overrides,
how it ended as its ``launch.json`` says, its objective and final metrics), and which
way is best. The summary (:mod:`runner.sweep.summary`), the plots, the report, the
MLflow callback and a shared search's other parents' trials all read them here.
Nothing here imports torch."""

from __future__ import annotations

import json
import logging
import math
import socket
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from runner.launch.entry import RERUNS, RETURN_VALUE
from runner.launch.procs import pid_alive
from runner.launch.trust import UntrustedFileError, read_trusted
from runner.metrics import METRICS_FILE
from runner.record import JobRecord, Outcome, read_record

log = logging.getLogger(__name__)

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
    point's job is the cluster's to tell, and another machine's agent that machine's:
    taken as running)."""
    pid, host = record.agent_pid, record.run.get("host")
    if not pid or (host and host != socket.gethostname()):
        return True
    return pid_alive(pid, record.agent_started)


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
