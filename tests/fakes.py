"""A fake Job and job factory, for fast tests of the scheduler's rules.

With :class:`FakeJobs` as the job factory of ``hydra/launcher=torchrun`` (the
``fake_jobs`` fixture of tests/test_scheduler.py), the real launcher plugin and the
real scheduler run (Hydra composes every point; ``.hydra/``, ``launch.json``, results,
resume and callbacks are real) over jobs that run no process: a point of the probe
app's config "runs" for ``sleep`` seconds (or ``FakeJobs.sleeps[num]``), then returns
``value`` (writing ``FakeJobs.curves[num]`` to its metrics.jsonl on the way), or
fails if ``fail_rank >= 0``, or never ends if ``hang_rank >= 0`` (until
stopped or past ``hydra.launcher.timeout``). Every start and end lands in
``FakeJobs.events``; the real-process tests cover the same rules with torchrun.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import DictConfig

from runner.launch.devices import DeviceOptions, DevicePool
from runner.launch.job import Job, LaunchError, LaunchTimeout, run_times
from runner.launch.options import LaunchConfig
from runner.metrics import append_metrics
from runner.sweep.options import check_options
from runner.sweep.points import SweepLauncher

# Seconds between the lines of a fake point's curve.
CURVE_STEP_S = 0.1


@dataclass
class Event:
    point: int
    what: str  # "start" or "end"
    at: float
    devices: str | None


class FakeJob:
    """A :class:`~runner.launch.job.Job` that runs nothing (see the module docstring)."""

    def __init__(self, config: DictConfig, launch: LaunchConfig, job_dir: Path) -> None:
        self.launch = launch
        self.job_dir = job_dir
        self.num = int(config.hydra.job.num)
        self.duration = FakeJobs.sleeps.get(self.num, float(config.sleep))
        self.value = float(config.value)
        self.fails = int(config.fail_rank) >= 0 or self.num in FakeJobs.failing
        self.hangs = int(config.hang_rank) >= 0
        self.env: dict[str, str] = {}
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.returncode: int | None = None
        self.stopped = self.timed_out = self.cleaned = False
        self.written = 0  # lines of its curve in metrics.jsonl

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        self.env = dict(extra_env or {})
        self.started_at = time.time()
        FakeJobs.record(self, "start")

    def _end(self, code: int) -> None:
        self.returncode, self.ended_at = code, time.time()
        FakeJobs.record(self, "end")

    def poll(self) -> int | None:
        if self.returncode is None:
            assert self.started_at is not None
            elapsed = time.time() - self.started_at
            curve = FakeJobs.curves.get(self.num, [])
            while self.written < len(curve) and elapsed >= (self.written + 1) * FakeJobs.curve_step:
                append_metrics(
                    self.job_dir, {"epoch": self.written, "objective": curve[self.written]}
                )
                self.written += 1
            if self.stopped:
                self._end(-15)
            elif self.launch.timeout and elapsed > self.launch.timeout:
                self.timed_out = True
                self._end(-15)
            elif elapsed >= self.duration and not self.hangs:
                self._end(1 if self.fails else 0)
        return self.returncode

    def running(self) -> bool:
        return self.returncode is None

    def stop(self) -> None:
        self.stopped = True

    def wait_stopped(self, deadline: float) -> None:
        self.poll()

    def result(self) -> Any:
        assert self.returncode is not None
        if self.timed_out:
            raise LaunchTimeout(f"fake point {self.num} timed out", exitcode=-15)
        if self.returncode:
            raise LaunchError(f"fake point {self.num} failed", exitcode=1, rank=0)
        return self.value

    def launch_record(self) -> dict:
        return {"exit_code": self.returncode, **run_times(self.started_at, self.ended_at)}

    def describe(self) -> str:
        return "fake"

    def cleanup(self) -> None:
        self.cleaned = True


class FakeJobs:
    """A job factory: the local device pool, fake jobs."""

    where = " (fake jobs)"
    launch_overrides: ClassVar[dict[str, Any]] = {}
    events: ClassVar[list[Event]] = []
    jobs: ClassVar[list[FakeJob]] = []
    # Seconds point N runs, where its config's ``sleep`` is not the one wanted (a
    # basic sweep of several keys is their product).
    sleeps: ClassVar[dict[int, float]] = {}
    # Points that fail whatever their config says (a rerun with the same overrides).
    failing: ClassVar[set[int]] = set()
    # Values point N writes to its metrics.jsonl while it runs, one per ``curve_step`` s.
    curves: ClassVar[dict[int, list[float]]] = {}
    curve_step: ClassVar[float] = CURVE_STEP_S
    # Raise KeyboardInterrupt in the scheduler's loop this many seconds in (Ctrl-C).
    interrupt_after: ClassVar[float | None] = None
    # Booting (as a warm process importing ahead) until the first job is made.
    boots: ClassVar[bool] = False

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        check_options(params, cls.launch_overrides)

    @classmethod
    def record(cls, job: FakeJob, what: str) -> None:
        cls.events.append(
            Event(job.num, what, time.monotonic(), job.env.get("CUDA_VISIBLE_DEVICES"))
        )

    @classmethod
    def reset(cls) -> None:
        cls.events, cls.jobs, cls.sleeps, cls.failing, cls.curves = [], [], {}, set(), {}
        cls.curve_step = CURVE_STEP_S
        cls.interrupt_after = None
        cls.boots = False

    def __init__(self, launcher: SweepLauncher) -> None:
        self.pool: DevicePool = DeviceOptions.from_params(launcher.params).pool()
        self.began = time.monotonic()

    def default_parallel(self, points: int, nproc: int) -> int:
        return self.pool.capacity if self.pool else 2

    def make(self, config: DictConfig, launch: LaunchConfig, job_dir: Path) -> Job:
        job = FakeJob(config, launch, job_dir)
        FakeJobs.jobs.append(job)
        return job

    def booting(self) -> bool:
        return FakeJobs.boots and not FakeJobs.jobs

    def wait_for_news(self, timeout: float) -> None:
        if (
            self.interrupt_after is not None
            and time.monotonic() - self.began > self.interrupt_after
        ):
            raise KeyboardInterrupt
        time.sleep(min(timeout, 0.005))


def fake_sweep(hydra_sweep_runner, sweep_dir: Path, *overrides: str, app: Path, conf: str):
    """An app's sweep in this process (with the ``fake_jobs`` fixture, over fake jobs);
    returns the sweeper's returns, if any. The sweep dir stays (Hydra's runner removes
    it when a sweep succeeds)."""
    kept = sweep_dir.with_name(f"{sweep_dir.name}.kept")
    with hydra_sweep_runner(
        calling_file=str(app),
        calling_module=None,
        task_function=None,
        config_path=conf,
        config_name="config",
        overrides=list(overrides),
        temp_dir=str(sweep_dir),
    ) as sweep:
        shutil.copytree(sweep_dir, kept)
    shutil.move(kept, sweep_dir)
    return sweep.returns


def spans(num: int) -> tuple[float, float]:
    """When fake point ``num`` started and ended."""
    start = next(e.at for e in FakeJobs.events if e.point == num and e.what == "start")
    end = next(e.at for e in FakeJobs.events if e.point == num and e.what == "end")
    return start, end
