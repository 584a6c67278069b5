"""How a job ended, and ``launch.json``, the record a sweep keeps in every job dir.

:class:`Outcome` is the one list of how a job can end, with what each outcome is
called elsewhere: the console's word, MLflow's run status, Optuna's trial state.
:class:`JobRecord` is the schema of ``launch.json``; :func:`read_record` and
:func:`write_record` are its only reader and writer. Light: no torch, no Hydra.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from runner.launch.procs import write_atomic

LAUNCH_RECORD = "launch.json"


class Outcome(str, Enum):
    """How a job ended (or that it has not yet): the ``status`` of its ``launch.json``,
    its summary row, its console line, its MLflow run, its Optuna trial."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    # Stopped by the sweep (Ctrl-C, SIGTERM, fail_fast) or by its own timeout.
    STOPPED = "STOPPED"
    # Stopped by its search's pruner.
    PRUNED = "PRUNED"
    # A search's trial stopped by the sweep or never started: it runs again when the
    # search continues (the study's word only; its job, if any, says STOPPED).
    INTERRUPTED = "INTERRUPTED"
    # The report's word for a job that says RUNNING but whose parent is gone.
    NOT_FINISHED = "NOT FINISHED"

    def __str__(self) -> str:
        return self.value

    @property
    def word(self) -> str:
        """The console's verb for a point that ended so: ``#3 done ...``."""
        return "done" if self is Outcome.COMPLETED else self.value.lower()

    @property
    def mlflow_status(self) -> str:
        """The status its MLflow run ends with."""
        return {
            Outcome.RUNNING: "RUNNING",
            Outcome.COMPLETED: "FINISHED",
            Outcome.PRUNED: "KILLED",
            Outcome.STOPPED: "KILLED",
            Outcome.INTERRUPTED: "KILLED",
        }.get(self, "FAILED")

    @property
    def trial_state(self) -> str:
        """The name of the Optuna ``TrialState`` its trial is told."""
        return {Outcome.COMPLETED: "COMPLETE", Outcome.PRUNED: "PRUNED"}.get(self, "FAIL")

    @classmethod
    def parse(cls, value: Any) -> Outcome | None:
        """The outcome a record's ``status`` names, else None."""
        try:
            return cls(value)
        except ValueError:
            return None


# The fields of launch.json that JobRecord names; every other one says how the job ran
# (the Job's ``launch_record()``: its command, port, times, agent pid and start time or
# Slurm job).
_NAMED = ("status", "overrides", "devices", "stopped_by", "error", "warning", "rerun_as")
# Who stopped a job whose sweep parent died while it ran (found when a search continues).
PARENT_LOST = "parent lost"


@dataclass
class JobRecord:
    """``launch.json``: how a sweep's job ran, and how it ended."""

    status: Outcome
    overrides: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    # Who stopped it (STOPPED): Ctrl-C, SIGTERM, fail_fast, timeout, the sweep.
    stopped_by: str | None = None
    # The error of a job that did not complete.
    error: str | None = None
    # What to fix in a job that ran (ranks that never formed a process group).
    warning: str | None = None
    # A search's trial whose job was stopped: the number of the trial that ran its
    # parameters again.
    rerun_as: int | None = None
    # How it ran, from its Job's ``launch_record()``: command, cwd, port, world size,
    # start/end times, exit code, agent pid and start time or Slurm job id, ...
    run: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.warning is None:
            self.warning = lone_ranks(self.run)

    @property
    def duration_s(self) -> float | None:
        value = self.run.get("duration_s")
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def agent_pid(self) -> int | None:
        value = self.run.get("agent_pid")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def agent_started(self) -> int | None:
        """procs.started of the agent (None in records written before it was kept)."""
        value = self.run.get("agent_started")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def slurm_job_id(self) -> str | None:
        value = self.run.get("slurm_job_id")
        return str(value) if value else None

    @property
    def nnodes(self) -> int:
        try:
            return int(str(self.run.get("nnodes") or 1))
        except ValueError:
            return 1

    @property
    def world_size(self) -> int | None:
        value = self.run.get("world_size") or self.run.get("nproc_per_node")
        return value if isinstance(value, int) else None

    def to_json(self) -> dict[str, Any]:
        named = {k: v for k, v in dataclasses.asdict(self).items() if k in _NAMED}
        named["status"] = self.status.value
        return {**self.run, **{k: v for k, v in named.items() if v is not None}}

    @classmethod
    def from_json(cls, data: Any) -> JobRecord | None:
        """The record in ``data`` (parsed JSON), or None if it is not one."""
        if not isinstance(data, dict):
            return None
        status = Outcome.parse(data.get("status"))
        if status is None:
            return None
        run = {k: v for k, v in data.items() if k not in _NAMED}
        texts = {k: data.get(k) for k in ("stopped_by", "error", "warning")}
        rerun_as = data.get("rerun_as")
        return cls(
            status=status,
            overrides=[str(o) for o in data.get("overrides") or []],
            devices=[str(d) for d in data.get("devices") or []],
            **{k: str(v) if v is not None else None for k, v in texts.items()},
            rerun_as=rerun_as
            if isinstance(rerun_as, int) and not isinstance(rerun_as, bool) and rerun_as >= 0
            else None,
            run=run,
        )


def read_record(job_dir: Path) -> JobRecord | None:
    """The job dir's ``launch.json``, or None where there is none (a single run, a job
    that never started) or it is not a record."""
    try:
        data = json.loads((job_dir / LAUNCH_RECORD).read_text())
        return JobRecord.from_json(data)
    except (OSError, ValueError, TypeError):  # not a record (hand-edited, corrupt)
        return None


def write_record(job_dir: Path, record: JobRecord) -> None:
    """Write the job dir's ``launch.json`` at once (a reader sees the old or the new)."""
    text = json.dumps(record.to_json(), indent=2) + "\n"
    write_atomic(job_dir / LAUNCH_RECORD, text.encode())


def record_lost(job_dir: Path, rerun_as: int | None = None) -> None:
    """A search's trial whose sweep parent was lost: a job that still says RUNNING
    now says STOPPED (parent lost); ``rerun_as``: the trial that runs it again."""
    record = read_record(job_dir)
    if record is None or record.status not in (Outcome.RUNNING, Outcome.STOPPED):
        return
    if record.status is Outcome.RUNNING:
        record.status, record.stopped_by = Outcome.STOPPED, PARENT_LOST
    record.rerun_as = rerun_as if rerun_as is not None else record.rerun_as
    write_record(job_dir, record)


def lone_ranks(run: dict[str, Any]) -> str | None:
    """What to say of a job whose ranks never formed a process group (``run``: how it
    ran says ``process_group: false``), else None."""
    if run.get("process_group") is not False:
        return None
    world = run.get("world_size") or "its"
    return (
        f"{world} ranks ran, but the task never joined a process group: each rank trained "
        "alone. Fix: have the task join one (torch.distributed.init_process_group; "
        "Lightning: strategy='ddp' with devices equal to nproc_per_node), or run one rank "
        "(hydra.launcher.nproc_per_node=1)"
    )
