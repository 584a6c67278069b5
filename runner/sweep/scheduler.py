"""The sweep scheduler behind ``hydra/launcher=torchrun`` (and ``torchrun_slurm``).

Its points come from a :class:`~runner.sweep.points.PointSource` (a batch of Hydra's
``launch``, or runner's search, which may also prune a running one); Hydra's per-job
bookkeeping is :mod:`runner.sweep.hydra_job`'s. It keeps the slots (``max_parallel``),
each point's slice of the device pool (:mod:`runner.launch.devices`, backfilled while
the head waits) and the stop policy: a failed point does not stop the others
(unless ``fail_fast``); Ctrl-C or SIGTERM stops every running point. Results come back
as ``JobReturn``\\ s in the order taken. Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from runner.errors import first_line
from runner.launch.job import LaunchError, LaunchTimeout, stop_jobs
from runner.launch.procs import interruption, sigterm_as_exit
from runner.record import JobRecord, Outcome, write_record
from runner.sweep.console import SweepConsole, compact
from runner.sweep.hydra_job import HydraJob, cancelled, value_of
from runner.sweep.points import (
    JobFactory,
    Pending,
    Point,
    PointSource,
    SweepLauncher,
    stored_result,
    why_not,
)

log = logging.getLogger(__name__)

# Points looked at (composed) behind a waiting head to backfill free devices.
BACKFILL_WINDOW = 8
# How long the loop sleeps when nothing ended, unless the factory hears of an end sooner.
IDLE_WAIT_S = 0.02
# How long it sleeps with nothing to run while its source has more to come.
IDLE_SOURCE_WAIT_S = 0.2


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
        self.hydra_context = launcher.hydra_context
        self.source = source
        self.jobs = jobs
        self.pool = jobs.pool
        self.config: DictConfig = launcher.config
        params = launcher.params
        self.max_parallel: int = params.get("max_parallel") or jobs.default_parallel(
            source.size, int(params.get("nproc_per_node") or 1)
        )
        self.fail_fast = bool(params.get("fail_fast", False))
        self.grace = float(params.get("stop_grace", 10.0))
        self.resume = bool(params.get("resume", False))
        # Points taken, in order; those without a result yet (kept no longer: a long
        # sweep's parent does not hold every point's composed config).
        self.order: list[int] = []
        self.taken: dict[int, Pending] = {}
        self.results: dict[int, JobReturn] = {}
        self.running: list[Point] = []
        self.counts: Counter[Outcome] = Counter()  # ended points by outcome
        self.console = console

    # ------------------------------------------------------------------ per point

    def _compose(self, pending: Pending, *, ahead: bool = False) -> None:
        """Compose a pending point. Ahead of its turn an error is left for its turn,
        so it does not interrupt the points running now."""
        try:
            pending.hydra = HydraJob.compose(
                self.hydra_context, self.config, pending.idx, pending.overrides
            )
        except Exception:
            if not ahead:
                raise

    def _prepare(self, pending: Pending) -> bool:
        """Make the point ready to start: composed, its launch options read. False if it
        will not run: completed in an earlier run (``resume``), or refused before
        anything of it starts (:func:`~runner.sweep.points.why_not`: it fails)."""
        if pending.hydra is None:
            self._compose(pending)
        hydra = pending.hydra
        assert hydra is not None
        if pending.launch is not None:
            return True
        if self.resume and (earlier := stored_result(hydra.job_dir, hydra.overrides))[0]:
            self._keep(hydra, earlier[1])
            return False
        pending.launch = hydra.launch_config(**self.jobs.launch_overrides)
        refused = why_not(hydra, pending.launch, self.pool, self.launcher.task_function)
        if refused is not None:
            self._refuse(hydra, *refused)
            return False
        return True

    def _keep(self, hydra: HydraJob, value: Any) -> None:
        """Hand a point completed in an earlier run to the sweeper as if run now."""
        hydra.begin(self.hydra_context, self.launcher.task_function)
        ret = hydra.job_return(JobStatus.COMPLETED, value)
        self._ended(hydra.idx, ret, Outcome.COMPLETED, hydra.job_dir, Outcome.COMPLETED)
        self.console.scored(hydra.idx, value)
        hydra.end(self.hydra_context, ret)
        self.results[hydra.idx] = hydra.stored(ret)
        text = f"completed in an earlier run -> {compact(value)}"
        self.console.point(logging.INFO, hydra.idx, "kept", hydra.overrides, text, self.progress())

    def _refuse(self, hydra: HydraJob, error: Exception, write: bool = True) -> None:
        """A point that cannot run (a bad value, too few devices): it fails before any
        process of it starts, as a job that failed at once (its dir, .hydra/ and
        launch.json, the callbacks told); ``write=False``: its job dir is another's,
        left as it is."""
        if write:
            hydra.begin(self.hydra_context, self.launcher.task_function)
            record = JobRecord(Outcome.FAILED, hydra.overrides, error=str(error))
            write_record(hydra.job_dir, record)
        ret = hydra.job_return(JobStatus.FAILED, error)
        self._ended(
            hydra.idx, ret, Outcome.FAILED, hydra.job_dir if write else None, Outcome.FAILED
        )
        if write:
            hydra.end(self.hydra_context, ret)
            self.results[hydra.idx] = hydra.stored(ret)
        self.console.point(
            logging.ERROR, hydra.idx, "failed", hydra.overrides, first_line(error), self.progress()
        )

    def _ended(
        self, idx: int, ret: JobReturn, outcome: Outcome, job_dir: Path | None, told: Outcome
    ) -> None:
        """Point ``idx`` ended so: its result kept, counted, its source ``told`` (a point
        the sweep stopped or never started: INTERRUPTED, it may run again)."""
        self.results[idx] = ret
        self.taken.pop(idx, None)
        if outcome is not Outcome.INTERRUPTED:
            self.counts[outcome] += 1
        self.source.ended(idx, told, value_of(ret), job_dir)

    def _start(self, pending: Pending, devices: list[str]) -> None:
        """Start a prepared point's job on ``devices``."""
        hydra, launch = pending.hydra, pending.launch
        assert hydra is not None and launch is not None
        try:
            hydra.begin(self.hydra_context, self.launcher.task_function)
            env = self.pool.environment(
                devices, launch.nproc_per_node, self.max_parallel, launch.env
            )
            with hydra.current():  # its ${hydra:...} values resolve as this job's
                job = self.jobs.make(hydra.config, launch, hydra.job_dir)
            job.start(extra_env=env)
        except BaseException:
            self.pool.give_back(devices)
            raise
        point = Point(hydra, launch, job, devices)
        self.running.append(point)
        self.source.started(point.idx, point.job_dir)
        # Recorded at once, so a running (or orphaned) point can be found: its Slurm job
        # id, or its agent's pid and port.
        point.write_record(Outcome.RUNNING)
        nproc, on = launch.nproc_per_node, f", devices {','.join(devices)}" if devices else ""
        text = f"({nproc} rank{'s' if nproc > 1 else ''} per node, {job.describe()}{on})"
        self.console.point(logging.INFO, point.idx, "start", hydra.overrides, text)

    def _release(self, point: Point) -> None:
        """An ended point's slot and devices go back."""
        self.pool.give_back(point.devices)
        self.running.remove(point)

    def _finish(self, point: Point, error: BaseException | None = None) -> Outcome:
        """Turn an ended job into the point's JobReturn; record how it ran: COMPLETED,
        FAILED, PRUNED (its source stopped it: ``stop_reason``) or STOPPED (by the
        sweep, ``stopped_by``, or by its own timeout)."""
        hydra, job = point.hydra, point.job
        try:
            if point.stop_reason is not None:
                raise LaunchError(f"point #{point.idx} {point.stop_reason}")
            if error is not None:
                raise error
            value, outcome = job.result(), Outcome.COMPLETED
        except LaunchError as failure:
            value, outcome = failure, Outcome.FAILED
            if isinstance(failure, LaunchTimeout) and point.stopped_by is None:
                point.stopped_by = "timeout"
            if point.stop_reason is not None:
                outcome = Outcome.PRUNED
            elif point.stopped_by:
                outcome = Outcome.STOPPED
        finally:
            job.cleanup()
            if point in self.running:
                self._release(point)
        record = point.ended(outcome, value)
        if outcome is Outcome.COMPLETED:
            self.console.scored(point.idx, value)
        status = JobStatus.COMPLETED if outcome is Outcome.COMPLETED else JobStatus.FAILED
        ret = hydra.job_return(status, value)
        told = Outcome.INTERRUPTED if point.interrupted else outcome
        self._ended(point.idx, ret, outcome, point.job_dir, told)
        hydra.end(self.hydra_context, ret)
        self.results[point.idx] = hydra.stored(ret)  # its configs on disk from now on
        self.console.ended(point.idx, hydra.overrides, record, value, self.progress())
        return outcome

    def progress(self) -> str:
        return self.source.progress(len(self.running)) or self.console.progress(
            max(self.source.size, len(self.order)), self.counts, len(self.running)
        )

    def _withdraw(self, pending: Pending, reason: str) -> None:
        """A taken point that will not start."""
        error = LaunchError(f"point #{pending.idx} {reason}")
        ret = cancelled(pending.idx, pending.overrides, error, str(self.config.hydra.job.name))
        job_dir = pending.hydra.job_dir if pending.hydra else None
        self._ended(pending.idx, ret, Outcome.INTERRUPTED, job_dir, Outcome.INTERRUPTED)

    # ------------------------------------------------------------------ the loop

    def _take(self, pending: deque[Pending]) -> None:
        """New points from the source: one for every free slot, then one more to compose
        ahead, so it starts the moment a slot frees, where the source gives one ahead
        (a batch gives all at once)."""
        for ahead in (0, 1):
            room = self.max_parallel - len(self.running) + ahead - len(pending)
            if room <= 0 or self.source.exhausted() or (ahead and not self.source.ahead()):
                continue
            for idx, overrides in self.source.take(room):
                self.taken[idx] = Pending(idx, overrides)
                self.order.append(idx)
                pending.append(self.taken[idx])

    def _start_what_fits(self, pending: deque[Pending], ready_only: bool = False) -> None:
        """Start pending points while slots and devices allow: the head first; while it
        waits for devices, later points that fit in the free ones (backfill).
        ``ready_only``: start only a head composed already, and take no new point."""
        while len(self.running) < self.max_parallel:
            if self.fail_fast and self.counts[Outcome.FAILED]:
                return  # a point failed (or was refused): nothing more starts
            if not ready_only:
                self._take(pending)
            if not pending or (ready_only and pending[0].hydra is None):
                return
            head = pending[0]
            if not self.source.wanted():
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

    def _take_devices(self, pending: Pending, *, head: bool) -> list[str] | None:
        """The point's devices from the pool (leased: other runs see who holds them). A
        head that waits for devices other runs hold says so, once per change."""
        hydra, launch = pending.hydra, pending.launch
        assert hydra is not None and launch is not None
        label = self.console.label(hydra.overrides)
        what = f"sweep {self.config.hydra.sweep.dir} point #{hydra.idx} ({label})"
        devices = self.pool.take(launch.nproc_per_node, head=head, what=what)
        if head and devices is None and (news := self.pool.waiting_news()):
            self.console.point(logging.INFO, hydra.idx, "waits", hydra.overrides, f"for {news}")
        return devices

    def _backfill(self, pending: deque[Pending]) -> None:
        for candidate in list(itertools.islice(pending, 1, 1 + BACKFILL_WINDOW)):
            if len(self.running) >= self.max_parallel or not self.pool.backfillable:
                return
            if candidate.hydra is None:
                self._compose(candidate, ahead=True)
                if candidate.hydra is None:
                    continue  # its compose error is raised at its turn
            if not self._prepare(candidate):
                pending.remove(candidate)
                continue
            devices = self._take_devices(candidate, head=False)
            if devices is not None:
                pending.remove(candidate)
                self._start(candidate, devices)

    def _watch(self, point: Point) -> None:
        """Ask the source whether a running point should stop (pruning); stop it without
        waiting, and force it once ``stop_grace`` has passed."""
        if point.stop_deadline is None:
            reason = self.source.watch(point.idx, point.job_dir)
            if reason is not None:
                point.stop_reason = reason
                point.stop_deadline = time.monotonic() + self.grace
                point.job.stop()
                self.console.point(logging.INFO, point.idx, "stop", point.hydra.overrides, reason)
        elif time.monotonic() > point.stop_deadline:
            point.job.wait_stopped(point.stop_deadline)

    def _poll(self, stopping: bool) -> tuple[bool, list[Point], bool]:
        """Poll the running points: whether one ended, those that succeeded (their slot
        freed, their records not yet written), and whether the sweep is stopping now."""
        ended, succeeded = False, []
        for point in list(self.running):
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
        return ended, succeeded, stopping

    def run(self) -> list[JobReturn]:
        pending: deque[Pending] = deque()
        stopping = False
        with sigterm_as_exit():
            try:
                # While the jobs' warm process boots, compose the points that start
                # first: they then start one right after another once it is ready.
                self._take(pending)
                for ahead in itertools.islice(pending, self.max_parallel):
                    if not self.jobs.booting():
                        break
                    self._compose(ahead, ahead=True)
                while True:
                    if not stopping:
                        self._start_what_fits(pending)
                        self._take(pending)  # the one ahead, when every slot is busy
                        if pending and pending[0].hydra is None:
                            # Compose the next point while the running ones work, so it
                            # starts the moment a slot frees (composing takes ~0.25 s).
                            self._compose(pending[0], ahead=True)
                    stopping = self._fail_fast(stopping)
                    idle = not (pending or self.running)
                    if idle and (stopping or self.source.exhausted()):
                        break
                    ended, succeeded, stopping = self._poll(stopping)
                    if succeeded:
                        try:
                            if not stopping:
                                self._start_what_fits(pending, ready_only=True)
                        finally:
                            for point in succeeded:
                                self._finish(point)
                    stopping = self._fail_fast(stopping)
                    if stopping:
                        pending.clear()
                    self.console.status(self.progress)
                    if idle:  # nothing to run now; the source has more to come (a search
                        # waits for another parent's trials, which may come back to it)
                        self.jobs.wait_for_news(IDLE_SOURCE_WAIT_S)
                    elif not ended:  # else a slot is free now: start the next one at once
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
                for left in list(self.taken.values()):  # every taken point has a result
                    self._withdraw(left, "was not started: the sweep stopped")
                self.console.finished(self.progress())
        return [self.results[idx] for idx in self.order if idx in self.results]

    def _fail_fast(self, stopping: bool) -> bool:
        """With ``fail_fast``: once a point failed (in its job, or refused before it
        started), stop every running one; whether the sweep is stopping now."""
        if self.fail_fast and self.counts[Outcome.FAILED] and not stopping:
            self._stop_running("fail_fast", "after a failed point")
            return True
        return stopping

    def _stop_running(self, by: str, why: str) -> None:
        """Stop every running point: STOPPED by ``by`` (Ctrl-C, SIGTERM, fail_fast),
        unless its source was stopping it already (pruned)."""
        points = list(self.running)
        stop_jobs([p.job for p in points], self.grace)
        for point in points:
            point.job.poll()
            point.interrupted = point.stop_reason is None
            if point.interrupted:
                point.stopped_by = by
            error = f"point #{point.idx} was stopped by {by} {why}"
            self._finish(point, LaunchError(error.rstrip()))
