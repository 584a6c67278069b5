"""A sweep point, where points come from, and what a point leaves in its job dir.

A :class:`PointSource` hands the scheduler its points: :class:`Batch` (one
``Launcher.launch`` call, every point known at once) or runner's search
(:mod:`runner.sweep.search`), which asks for a trial the moment a slot frees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from runner.errors import LauncherConfigError, invalid
from runner.launch.devices import DevicePool
from runner.launch.entry import RETURN_VALUE
from runner.launch.job import Job, LaunchError
from runner.launch.options import LaunchConfig
from runner.launch.procs import write_atomic
from runner.launch.trust import read_trusted
from runner.record import JobRecord, Outcome, read_record, write_record
from runner.sweep.console import SweepConsole
from runner.sweep.hydra_job import HydraJob


@dataclass
class Pending:
    """A point taken from its source that has not started: composed ahead of its
    turn (``hydra``, None until then or if composing failed) and its launch options
    read at its turn."""

    idx: int
    overrides: list[str]
    hydra: HydraJob | None = None
    launch: LaunchConfig | None = None


@dataclass
class Point:
    """A point that started: its composed Hydra job, launch options, job and devices."""

    hydra: HydraJob
    launch: LaunchConfig
    job: Job
    devices: list[str]
    # Who stopped it (STOPPED): Ctrl-C, SIGTERM, fail_fast, timeout, the sweep.
    stopped_by: str | None = None
    # Set when its source asked to stop it early (pruning): why, and when to force it.
    stop_reason: str | None = None
    stop_deadline: float | None = None
    # Stopped by the sweep (Ctrl-C, SIGTERM, fail_fast): it may run again.
    interrupted: bool = False

    @property
    def idx(self) -> int:
        return self.hydra.idx

    @property
    def job_dir(self) -> Path:
        return self.hydra.job_dir

    def write_record(self, status: Outcome, error: Any = None) -> JobRecord:
        """launch.json of the point: how it ran, and its status."""
        record = JobRecord(
            status=status,
            overrides=self.hydra.overrides,
            devices=self.devices,
            stopped_by=self.stopped_by,
            error=error.details if isinstance(error, LaunchError) else error and str(error),
            run=self.job.launch_record(),
        )
        write_record(self.job_dir, record)
        return record

    def ended(self, outcome: Outcome, value: Any) -> JobRecord:
        """Keep how the point ended in its job dir: a completed point's return value,
        then its launch.json (resume trusts a COMPLETED record only beside its value);
        any other's error in the record."""
        if outcome is Outcome.COMPLETED:
            import cloudpickle

            write_atomic(self.job_dir / RETURN_VALUE, cloudpickle.dumps(value))
            return self.write_record(outcome)
        return self.write_record(outcome, value)


def why_not(
    hydra: HydraJob, launch: LaunchConfig, pool: DevicePool, task_function: Any
) -> tuple[Exception, bool] | None:
    """Why a prepared point cannot start, found before anything of it does, or None:
    (the error, whether its job dir is its own to record the failure in)."""
    kept = read_record(hydra.job_dir)
    if kept is not None and kept.overrides != hydra.overrides:
        # Another point's job is there (a study started over, a sweep dir used twice):
        # running this one into it would resume from that job's checkpoint.
        return LauncherConfigError(
            invalid(
                "hydra.sweep.dir",
                str(hydra.config.hydra.sweep.dir),
                f"its job dir {hydra.job_dir} holds another point's job "
                f"({' '.join(kept.overrides) or 'no overrides'})",
                "a fresh hydra.sweep.dir (or the same command again, to go on where it was)",
            )
        ), False
    what = f"sweep point #{hydra.idx} ({hydra.label})"
    if problem := pool.too_small_for(launch.nproc_per_node, what):
        return LauncherConfigError(problem), True
    try:  # the task's own check, here and now: a bad value starts no torchrun
        hydra.check(task_function)
    except Exception as error:
        return error, True
    return None


def stored_result(job_dir: Path, overrides: list[str] | None = None) -> tuple[bool, Any]:
    """(True, the return value) of a job whose ``launch.json`` says COMPLETED (with
    ``overrides``, if given) and whose value is stored; else (False, None)."""
    record = read_record(job_dir)
    if record is None or record.status is not Outcome.COMPLETED:
        return False, None
    if overrides is not None and record.overrides != overrides:
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


class JobFactory(Protocol):
    """Makes the jobs of one sweep, and says how they share what they run on."""

    pool: DevicePool
    # What every point's LaunchConfig takes from the factory (Slurm: each node's
    # agent is a one-node launch).
    launch_overrides: dict[str, Any]
    # How the log says where the points run ("" for this machine).
    where: str

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Raise LauncherConfigError, before anything starts, for values that cannot work."""
        ...

    def __init__(self, launcher: SweepLauncher) -> None: ...

    def default_parallel(self, points: int, nproc: int) -> int: ...

    def make(self, config: DictConfig, launch: LaunchConfig, job_dir: Path) -> Job: ...

    def booting(self) -> bool:
        """Whether its jobs cannot start yet (a warm process importing ahead)."""
        ...

    def wait_for_news(self, timeout: float) -> None: ...


class SweepLauncher(Protocol):
    """What the scheduler needs of the Hydra launcher plugin: its config and context,
    its job factory (made at set-up) and its console (made at the first batch), both
    kept for the next batches, so the sweep's best is the whole sweep's."""

    config: DictConfig
    hydra_context: Any
    task_function: Any
    params: dict[str, Any]
    jobs: JobFactory | None
    console: SweepConsole | None

    def job_factory(self) -> type[JobFactory]: ...


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

    def ahead(self) -> bool:
        """Whether to take a point more than the free slots, composed ahead so that it
        starts the moment a slot frees."""
        ...

    def ended(self, idx: int, outcome: Outcome, value: Any, job_dir: Path | None) -> None:
        """Point ``idx`` ended: ``value`` is its return value (COMPLETED) or error. A
        point stopped by the sweep, or that will never start, ended INTERRUPTED;
        ``job_dir`` is None for a point never composed."""
        ...

    def wanted(self) -> bool:
        """Whether a point taken earlier should still start now (a search past its
        timeout says no)."""
        ...

    def started(self, idx: int, job_dir: Path) -> None:
        """Point ``idx``'s job started, in ``job_dir``."""
        ...

    def watch(self, idx: int, job_dir: Path) -> str | None:
        """Called while point ``idx`` runs: why to stop it now (pruned), or None."""
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

    def ahead(self) -> bool:
        return True  # a batch gives all it has at once

    def ended(self, idx: int, outcome: Outcome, value: Any, job_dir: Path | None) -> None:
        pass

    def wanted(self) -> bool:
        return True

    def started(self, idx: int, job_dir: Path) -> None:
        pass

    def watch(self, idx: int, job_dir: Path) -> str | None:
        return None

    def progress(self, running: int) -> str | None:
        return None
