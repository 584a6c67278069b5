"""A sweep point, where points come from, and what a point leaves in its job dir.

A :class:`PointSource` hands the scheduler its points: :class:`Batch` (one
``Launcher.launch`` call, every point known at once) or runner's search
(:mod:`runner.sweep.search`), which asks for a trial the moment a slot frees.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf

from runner.launch.entry import LAUNCH_RECORD, RETURN_VALUE, lone_ranks
from runner.launch.job import Job, LaunchError
from runner.launch.options import LaunchConfig
from runner.launch.procs import write_atomic
from runner.launch.trust import read_trusted
from runner.launch.worker import task_config

# Console lines show at most this much of a point's overrides (launch.json and the
# summary keep them all).
LABEL_WIDTH = 60


@contextlib.contextmanager
def hydra_config_of(config: DictConfig) -> Iterator[None]:
    """Hydra's ``HydraConfig`` set to one job's config while the block runs (its
    callbacks, its .hydra/ files, its job), and the one before put back after, as
    Hydra's own ``run_job`` does: a user's callback that reads ``HydraConfig.get()``
    sees its own job, whatever order points start and end in."""
    state = HydraConfig.instance()
    before = state.cfg
    state.set_config(config)
    try:
        yield
    finally:
        state.cfg = before


def clip(text: str) -> str:
    """``text`` in at most LABEL_WIDTH characters."""
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 3] + "..."


def short_label(overrides: Sequence[str]) -> str:
    """A point's overrides in at most LABEL_WIDTH characters: whole ones while they
    fit, then how many more."""
    shown: list[str] = []
    for n, override in enumerate(overrides):
        rest = len(overrides) - n
        more = f" ...(+{rest})" if rest > 1 else ""
        if shown and len(" ".join([*shown, override]) + more) > LABEL_WIDTH:
            return " ".join(shown) + f" ...(+{rest})"
        shown.append(override)
    return clip(" ".join(shown))


@dataclass
class Point:
    """One sweep point: its overrides, its config, and its job while it runs."""

    idx: int
    overrides: list[str]
    config: DictConfig | None = None
    launch: LaunchConfig | None = None
    job: Job | None = None
    devices: list[str] = field(default_factory=list)
    result: JobReturn | None = None
    # How it ended, as launch.json says: COMPLETED, FAILED, STOPPED or PRUNED.
    status: str | None = None
    # Who stopped it (STOPPED): Ctrl-C, SIGTERM, fail_fast, timeout, the sweep.
    stopped_by: str | None = None
    # Set when its source asked to stop it early (pruning): why, and when to force it.
    stop_reason: str | None = None
    stop_deadline: float | None = None
    # Stopped by the sweep (Ctrl-C, SIGTERM, fail_fast) or never started.
    interrupted: bool = False
    _task_config: DictConfig | None = None

    @property
    def label(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(no overrides)"

    @property
    def short_label(self) -> str:
        """The label as console lines show it (:func:`short_label`)."""
        return short_label(filter_overrides(self.overrides)) or "(no overrides)"

    def task_config(self) -> DictConfig:
        """The config the task sees (made once: it is a deep copy)."""
        if self._task_config is None:
            assert self.config is not None
            self._task_config = task_config(self.config)
        return self._task_config

    @property
    def job_dir(self) -> Path:
        assert self.config is not None
        return Path(str(self.config.hydra.runtime.output_dir))

    def job_return(self, status: JobStatus, value: Any) -> JobReturn:
        """What Hydra's sweeper gets for this point."""
        config = self.config
        assert config is not None
        ret = JobReturn()
        ret.overrides = list(self.overrides)
        ret.cfg = self.task_config()
        ret.hydra_cfg = config  # read for its hydra node; the point's config is final
        ret.working_dir = str(self.job_dir)
        ret.task_name = str(config.hydra.job.name)
        ret.status = status
        ret.return_value = value
        return ret

    def cancelled(self, reason: str, task_name: str) -> JobReturn:
        """The JobReturn of a point that never started."""
        ret = JobReturn()
        ret.overrides = list(self.overrides)
        ret.status = JobStatus.FAILED
        ret.return_value = LaunchError(f"sweep point #{self.idx} ({self.label}) {reason}")
        ret.task_name = task_name
        ret.working_dir = ""
        return ret

    def write_hydra_dir(self) -> None:
        """The job dir and its .hydra/ (config, hydra config, overrides), once per job."""
        config = self.config
        assert config is not None
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            hydra_dir = self.job_dir / str(config.hydra.output_subdir)
            hydra_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.task_config(), hydra_dir / "config.yaml")
            OmegaConf.save(HydraConfig.instance().cfg, hydra_dir / "hydra.yaml")
            OmegaConf.save(config.hydra.overrides.task, hydra_dir / "overrides.yaml")

    def write_record(self, status: str, error: Any = None) -> dict:
        """launch.json of the point: how it ran, and its status."""
        assert self.job is not None
        record = {
            **self.job.launch_record(),
            "overrides": self.overrides,
            "devices": self.devices,
            "status": status,
        }
        if self.stopped_by is not None:
            record["stopped_by"] = self.stopped_by
        if error is not None:
            record["error"] = str(error)
        if note := lone_ranks(record):
            record["warning"] = note
        write_atomic(self.job_dir / LAUNCH_RECORD, (json.dumps(record, indent=2) + "\n").encode())
        return record

    def completed_earlier(self) -> JobReturn | None:
        """The stored result of this point if it completed in an earlier run of this
        sweep dir (same number, same overrides), else None."""
        found, value = stored_result(self.job_dir, self.overrides)
        return self.job_return(JobStatus.COMPLETED, value) if found else None


def stored_result(job_dir: Path, overrides: list[str] | None = None) -> tuple[bool, Any]:
    """(True, the return value) of a job whose ``launch.json`` says COMPLETED (with
    ``overrides``, if given) and whose value is stored; else (False, None)."""
    try:
        record = json.loads((job_dir / LAUNCH_RECORD).read_text())
    except (OSError, ValueError):
        return False, None
    if record.get("status") != "COMPLETED":
        return False, None
    if overrides is not None and record.get("overrides") != overrides:
        return False, None
    fix = (
        f"remove {job_dir} to run the point again, or resume in a sweep dir only you "
        "can write (a fresh hydra.sweep.dir)"
    )
    try:
        stored = read_trusted(job_dir / RETURN_VALUE, fix)
    except FileNotFoundError:
        return False, None
    import cloudpickle

    return True, cloudpickle.loads(stored)


class PointSource(Protocol):
    """Where a sweep's points come from: a fixed batch (:class:`Batch`), or a search
    that asks for the next trial the moment a slot frees (:mod:`runner.sweep.search`)."""

    # How many points the sweep expects in all (sizes the default parallelism), and
    # how the log names them ("6 job(s)", "up to 40 trials").
    size: int
    what: str

    def take(self, room: int) -> list[tuple[int, list[str]]]:
        """Up to ``room`` new points as (job number, overrides); a batch gives all it
        has. Empty: none now."""
        ...

    def exhausted(self) -> bool:
        """No point will come any more."""
        ...

    def ended(self, point: Point) -> None:
        """``point`` ended (its ``status`` and ``result`` set), or will never start."""
        ...

    def wanted(self, point: Point) -> bool:
        """Whether a point taken earlier should still start now (a search past its
        timeout says no)."""
        ...

    def started(self, point: Point) -> None:
        """``point``'s job started (its job dir is known)."""
        ...

    def watch(self, point: Point) -> str | None:
        """Called while ``point`` runs: why to stop it now (pruned), or None."""
        ...

    def progress(self, running: int) -> str | None:
        """The sweep's progress line, or None for the scheduler's own."""
        ...


class Batch:
    """The points of one ``Launcher.launch`` call: all known at once, in order."""

    def __init__(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> None:
        self.points = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        self.size = len(self.points)
        self.what = f"{self.size} job(s)"

    def take(self, room: int) -> list[tuple[int, list[str]]]:
        points, self.points = self.points, []
        return points

    def exhausted(self) -> bool:
        return not self.points

    def ended(self, point: Point) -> None:
        pass

    def wanted(self, point: Point) -> bool:
        return True

    def started(self, point: Point) -> None:
        pass

    def watch(self, point: Point) -> str | None:
        return None

    def progress(self, running: int) -> str | None:
        return None
