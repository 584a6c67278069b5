"""The sweep scheduler behind ``hydra/launcher=torchrun`` (and ``torchrun_slurm``).

Its points come from a :class:`~runner.sweep.points.PointSource`: one batch of
Hydra's ``launch``, or runner's search, which hands out a trial the moment a slot
frees and may stop a running one (pruning). For every point it does what Hydra's
basic launcher does (load the sweep config, set the job's num and id, fix its output
dir, write ``.hydra/``), resolves the config once, and hands it to a Job made by the
sweep's :class:`JobFactory` (a local torchrun, cold or warm, or a Slurm job). Up to
``max_parallel`` points run at once, each on its own slice of the device pool
(:mod:`runner.launch.devices`, leased across runs), its output in its job dir.
Results come back as ``JobReturn``\\ s in the order taken, with rank 0's return
value. A failed point does not stop the others; Ctrl-C or SIGTERM stops every
running point and removes its entry files.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, Protocol

from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.launch import gates
from runner.launch.devices import DevicePool
from runner.launch.entry import RETURN_VALUE, remove_stale_entry_dirs
from runner.launch.job import Job, LaunchError, LaunchTimeout, stop_jobs
from runner.launch.options import LaunchConfig, LauncherConfigError
from runner.launch.procs import interruption, sigterm_as_exit, write_atomic
from runner.sweep.console import SweepConsole, compact
from runner.sweep.points import Point, PointSource, hydra_config_of
from runner.sweep.report import seed_key_of, sweep_maximises, write_summary

log = logging.getLogger(__name__)

# Points looked at (composed) behind a waiting head to backfill free devices.
BACKFILL_WINDOW = 8
# How long the loop sleeps when nothing ended, unless the factory hears of an end sooner.
IDLE_WAIT_S = 0.02


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
    its job factory and its console (made at the first batch, kept for the next ones,
    so the sweep's best is the whole sweep's)."""

    config: DictConfig
    hydra_context: Any
    task_function: Any
    params: dict[str, Any]
    jobs: JobFactory | None
    console: SweepConsole | None

    def job_factory(self) -> type[JobFactory]: ...


class SweepScheduler:
    """Runs the points of ``source``, ``max_parallel`` at a time, on ``jobs``."""

    def __init__(
        self,
        launcher: SweepLauncher,
        source: PointSource,
        jobs: JobFactory,
        console: SweepConsole,
    ) -> None:
        self.launcher = launcher
        self.source = source
        self.jobs = jobs
        self.pool = jobs.pool
        self.config: DictConfig = launcher.config
        params = launcher.params
        self.points: list[Point] = []
        self.max_parallel: int = params.get("max_parallel") or jobs.default_parallel(
            source.size, int(params.get("nproc_per_node") or 1)
        )
        self.fail_fast = bool(params.get("fail_fast", False))
        self.grace = float(params.get("stop_grace", 10.0))
        self.resume = bool(params.get("resume", False))
        self.running: list[Point] = []
        self.counts: Counter[str] = Counter()  # ended points by status
        self.console = console

    # ------------------------------------------------------------------ per point

    def _compose(self, point: Point) -> None:
        """Compose the point's config and fix its job num, id and output dir."""
        hydra_context = self.launcher.hydra_context
        sweep_config = hydra_context.config_loader.load_sweep_config(self.config, point.overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = point.idx
            sweep_config.hydra.job.num = point.idx
        with hydra_config_of(sweep_config):  # the sweep's subdir may read ${hydra:job.num}
            output_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(
                sweep_config.hydra.sweep.subdir
            )
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(output_dir.absolute())
        point.config = sweep_config

    def _compose_ahead(self, point: Point) -> None:
        """Compose a pending point early; an error is left for ``_prepare`` to raise when
        the point's turn comes, so it does not interrupt the points running now."""
        try:
            self._compose(point)
        except Exception:
            point.config = None

    def _prepare(self, point: Point) -> bool:
        """Make the point ready to start: composed, its launch options read. False if it
        will not run: completed in an earlier run (``resume``), or asking for more
        devices than the pool has (then it fails, and nothing of it starts)."""
        if point.config is None:
            self._compose(point)
        if point.launch is not None:
            return True
        assert point.config is not None
        earlier = point.completed_earlier() if self.resume else None
        if earlier is not None:
            self._keep(point, earlier)
            return False
        point.launch = self._launch_config(point)
        problem = self.pool.too_small_for(
            point.launch.nproc_per_node, f"sweep point #{point.idx} ({point.label})"
        )
        if problem is not None:
            self._refuse(point, LauncherConfigError(problem))
            return False
        return True

    def _keep(self, point: Point, earlier: JobReturn) -> None:
        """Hand a point completed in an earlier run to the sweeper as if run now."""
        assert point.config is not None
        callbacks = self.launcher.hydra_context.callbacks
        with hydra_config_of(point.config):
            callbacks.on_job_start(config=point.config, task_function=self.launcher.task_function)
        point.result, point.status = earlier, "COMPLETED"
        self.counts["COMPLETED"] += 1
        self.console.scored(point.idx, earlier._return_value)
        self.source.ended(point)
        with hydra_config_of(point.config):
            callbacks.on_job_end(config=point.config, job_return=earlier)
        self.console.log(
            logging.INFO,
            "#%d kept   %s  completed in an earlier run -> %s  %s",
            point.idx,
            point.short_label,
            compact(earlier._return_value),
            self.progress(),
        )

    def _refuse(self, point: Point, error: Exception) -> None:
        """A point that cannot run: it fails before anything of it starts."""
        point.result, point.status = point.job_return(JobStatus.FAILED, error), "FAILED"
        self.counts["FAILED"] += 1
        self.source.ended(point)
        self.console.log(
            logging.ERROR,
            "#%d failed %s  %s  %s",
            point.idx,
            point.short_label,
            error,
            self.progress(),
        )

    def _launch_config(self, point: Point) -> LaunchConfig:
        assert point.config is not None
        params = OmegaConf.to_container(point.config.hydra.launcher, resolve=True)
        assert isinstance(params, dict)
        try:
            launch = LaunchConfig.from_config(params, **self.jobs.launch_overrides)
        except ValueError as error:
            raise LauncherConfigError(
                f"sweep point #{point.idx} ({point.label}): {error}"
            ) from None
        return launch.for_point(point.idx)

    def _start(self, point: Point, devices: list[str]) -> None:
        """Start a prepared point's job on ``devices``."""
        config, launch = point.config, point.launch
        assert config is not None and launch is not None
        point.devices = devices
        try:
            with hydra_config_of(config):
                point.write_hydra_dir()
                env = self.pool.environment(
                    devices, launch.nproc_per_node, self.max_parallel, launch.env
                )
                self.launcher.hydra_context.callbacks.on_job_start(
                    config=config, task_function=self.launcher.task_function
                )
                job_dir = Path(config.hydra.runtime.output_dir)
                point.job = self.jobs.make(config, launch, job_dir)
                point.job.start(extra_env=env)
        except BaseException:
            self.pool.give_back(point.devices)
            point.devices = []
            raise
        self.running.append(point)
        self.source.started(point)
        # Recorded at once, so a running (or orphaned) point can be found: its Slurm job
        # id, or its agent's pid and port.
        point.write_record("RUNNING")
        nproc = launch.nproc_per_node
        self.console.log(
            logging.INFO,
            "#%d start  %s  (%d rank%s per node, %s%s)",
            point.idx,
            point.short_label,
            nproc,
            "s" if nproc > 1 else "",
            point.job.describe(),
            f", devices {','.join(devices)}" if devices else "",
        )

    def _release(self, point: Point) -> None:
        """An ended point's slot and devices go back."""
        self.pool.give_back(point.devices)
        self.running.remove(point)

    def _finish(self, point: Point, error: BaseException | None = None) -> None:
        """Turn an ended job into the point's JobReturn; record how it ran: COMPLETED,
        FAILED, PRUNED (its source stopped it: ``stop_reason``) or STOPPED (by the
        sweep, ``stopped_by``, or by its own timeout)."""
        job, config = point.job, point.config
        assert job is not None and config is not None
        try:
            if point.stop_reason is not None:
                raise LaunchError(f"sweep point #{point.idx} ({point.label}) {point.stop_reason}")
            if error is not None:
                raise error
            ret = point.job_return(JobStatus.COMPLETED, job.result())
            point.status = "COMPLETED"
        except LaunchError as failure:
            ret = point.job_return(JobStatus.FAILED, failure)
            if isinstance(failure, LaunchTimeout) and point.stopped_by is None:
                point.stopped_by = "timeout"
            if point.stop_reason is not None:
                point.status = "PRUNED"
            else:
                point.status = "STOPPED" if point.stopped_by else "FAILED"
        finally:
            self.counts[point.status or "FAILED"] += 1
            job.cleanup()
            if point in self.running:
                self._release(point)
        job_dir = point.job_dir
        if ret.status == JobStatus.COMPLETED:
            import cloudpickle

            # The result is stored before launch.json marks the point done (resume reads both).
            write_atomic(job_dir / RETURN_VALUE, cloudpickle.dumps(ret._return_value))
            self.console.scored(point.idx, ret._return_value)
        record = point.write_record(
            point.status, ret._return_value if ret.status != JobStatus.COMPLETED else None
        )
        point.result = ret
        self.source.ended(point)
        with hydra_config_of(config):
            self.launcher.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        self.console.ended(point, record, self.progress())

    def progress(self) -> str:
        return self.source.progress(len(self.running)) or self.console.progress(
            max(self.source.size, len(self.points)), self.counts, len(self.running)
        )

    def _withdraw(self, point: Point, reason: str) -> None:
        """A taken point that will not start."""
        point.result = point.cancelled(reason, str(self.config.hydra.job.name))
        point.interrupted = True
        self.source.ended(point)

    # ------------------------------------------------------------------ the loop

    def _take(self, pending: deque[Point]) -> None:
        """New points from the source: one for every free slot, and one more to compose
        ahead, so it starts the moment a slot frees (a batch gives all of its own)."""
        room = self.max_parallel - len(self.running) + 1 - len(pending)
        if room > 0 and not self.source.exhausted():
            for idx, overrides in self.source.take(room):
                point = Point(idx, overrides)
                self.points.append(point)
                pending.append(point)

    def _start_what_fits(self, pending: deque[Point], ready_only: bool = False) -> None:
        """Start pending points while slots and devices allow: the head first; while it
        waits for devices, later points that fit in the free ones (backfill).
        ``ready_only``: start only a head composed already, and take no new point."""
        while len(self.running) < self.max_parallel:
            if not ready_only:
                self._take(pending)
            if not pending or (ready_only and pending[0].config is None):
                return
            head = pending[0]
            if not self.source.wanted(head):
                pending.popleft()
                self._withdraw(head, "was not started: the search's timeout has passed")
                continue
            if not self._prepare(head):
                pending.popleft()
                self.pool.new_head()
                continue
            devices = self._take_devices(head, head=True)
            if devices is None:
                self._backfill(pending)
                return
            pending.popleft()
            self._start(head, devices)

    def _take_devices(self, point: Point, *, head: bool) -> list[str] | None:
        """The point's devices from the pool (leased: other runs see who holds them). A
        head that waits for devices other runs hold says so, once per change."""
        assert point.launch is not None
        what = f"sweep {self.config.hydra.sweep.dir} point #{point.idx} ({point.short_label})"
        devices = self.pool.take(point.launch.nproc_per_node, head=head, what=what)
        if head and devices is None and (news := self.pool.waiting_news()):
            self.console.log(
                logging.INFO, "#%d waits  %s  for %s", point.idx, point.short_label, news
            )
        return devices

    def _backfill(self, pending: deque[Point]) -> None:
        for point in list(itertools.islice(pending, 1, 1 + BACKFILL_WINDOW)):
            if len(self.running) >= self.max_parallel or not self.pool.backfillable:
                return
            if point.config is None:
                self._compose_ahead(point)
                if point.config is None:
                    continue  # its compose error is raised at its turn
            if not self._prepare(point):
                pending.remove(point)
                continue
            devices = self._take_devices(point, head=False)
            if devices is not None:
                pending.remove(point)
                self._start(point, devices)

    def _watch(self, point: Point) -> None:
        """Ask the source whether a running point should stop (pruning); stop it without
        waiting, and force it once ``stop_grace`` has passed."""
        assert point.job is not None
        if point.stop_deadline is None:
            reason = self.source.watch(point)
            if reason is not None:
                point.stop_reason = reason
                point.stop_deadline = time.monotonic() + self.grace
                point.job.stop()
                self.console.log(
                    logging.INFO, "#%d stop   %s  %s", point.idx, point.short_label, reason
                )
        elif time.monotonic() > point.stop_deadline:
            point.job.wait_stopped(point.stop_deadline)

    def run(self) -> list[JobReturn]:
        pending: deque[Point] = deque()
        stopping = False
        with sigterm_as_exit():
            try:
                # While the jobs' warm process boots, compose the points that start
                # first: they then start one right after another once it is ready.
                self._take(pending)
                for point in itertools.islice(pending, self.max_parallel):
                    if not self.jobs.booting():
                        break
                    self._compose_ahead(point)
                while True:
                    if not stopping:
                        self._start_what_fits(pending)
                        self._take(pending)  # the one ahead, when every slot is busy
                        if pending and pending[0].config is None:
                            # Compose the next point while the running ones work, so it
                            # starts the moment a slot frees (composing takes ~0.25 s).
                            self._compose_ahead(pending[0])
                    if not (pending or self.running):
                        break
                    ended, succeeded = False, []
                    for point in list(self.running):
                        assert point.job is not None
                        if point not in self.running:
                            continue
                        code = point.job.poll()
                        if code is None:
                            self._watch(point)
                            continue
                        ended = True
                        if code == 0 and point.stop_reason is None and not stopping:
                            # Its slot goes to the next point first, its records after.
                            self._release(point)
                            succeeded.append(point)
                            continue
                        self._finish(point)
                        if self.fail_fast and point.status == "FAILED" and not stopping:
                            stopping = True
                            self._stop_running("fail_fast", "after a failed point")
                    if succeeded:
                        if not stopping:
                            self._start_what_fits(pending, ready_only=True)
                        for point in succeeded:
                            self._finish(point)
                    if stopping:
                        pending.clear()
                    self.console.status(self.progress)
                    if not ended:  # else a slot is free now: start the next point at once
                        self.jobs.wait_for_news(IDLE_WAIT_S)
            finally:
                self.console.clear()
                if self.running:
                    self.console.log(
                        logging.WARNING, "stopping %d running point(s)", len(self.running)
                    )
                    by = interruption()  # else an error of the sweep's own
                    self._stop_running(by or "the sweep", "" if by else "as it ended early")
                self.pool.new_head()  # leases kept for a head that will not start now
                for point in self.points:
                    if point.result is None:
                        self._withdraw(point, "was not started: the sweep stopped")
        return [point.result for point in self.points if point.result is not None]

    def _stop_running(self, by: str, why: str) -> None:
        """Stop every running point: STOPPED by ``by`` (Ctrl-C, SIGTERM, fail_fast),
        unless its source was stopping it already (pruned)."""
        points = list(self.running)
        stop_jobs([p.job for p in points if p.job is not None], self.grace)
        for point in points:
            assert point.job is not None
            point.job.poll()
            point.interrupted = point.stop_reason is None
            if point.interrupted:
                point.stopped_by = by
            error = f"sweep point #{point.idx} ({point.label}) was stopped by {by} {why}"
            self._finish(point, LaunchError(error.rstrip()))


def launch_sweep(launcher: SweepLauncher, source: PointSource) -> list[JobReturn]:
    """What the launcher plugin's ``launch`` does: run the points of ``source`` on the
    launcher's jobs, return their JobReturns in the order they were taken."""
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    remove_stale_entry_dirs()
    if launcher.jobs is None:  # after logging is set up: a warm start says if it cannot
        if note := gates.release_note():  # once a sweep, cold or warm
            log.warning(note)
        launcher.jobs = launcher.job_factory()(launcher)
    if launcher.console is None:
        launcher.console = SweepConsole(sweep_maximises(config))
    jobs = launcher.jobs
    scheduler = SweepScheduler(launcher, source, jobs, launcher.console)
    log.info(
        "Launching %s with torchrun%s, up to %d at a time%s",
        source.what,
        jobs.where,
        scheduler.max_parallel,
        jobs.pool.describe(),
    )
    try:
        return scheduler.run()
    finally:
        # After every batch, so an interrupted sweep and every optimising sweeper's
        # batches leave an up-to-date summary too.
        with contextlib.suppress(OSError):
            write_summary(Path(str(config.hydra.sweep.dir)), seed_key_of(config))
