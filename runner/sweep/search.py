"""runner's search sweeper (``hydra/sweeper=search``): Optuna, asynchronous, pruning
distributed trials, its study kept in a database.

Under ``hydra/launcher=torchrun`` (or ``torchrun_slurm``) the search is a
:class:`~runner.sweep.points.PointSource`: the scheduler asks it for a trial the
moment a slot frees (and one ahead, composed while the others run), so no slot waits
for a batch to end. While a trial runs, :meth:`Search.watch` feeds the new lines of its
``metrics.jsonl`` to ``trial.report``; a trial the pruner stops ends PRUNED and its slot
and devices go to the next one. Under any other launcher
:func:`~runner.sweep.search_run.run_batches` takes its trials in batches.

The study lives in a database (SQLite in the sweep dir unless ``storage`` names one),
and every parent that shares it counts ``n_trials`` in it at ask time. A parent beats
for the trials it runs; one whose beats stopped for the grace period is failed by a live
parent, and its parameters run again, once.

Optuna is imported here, only when a search runs; never torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from runner.launch.procs import started
from runner.metrics import MetricsReader
from runner.record import Outcome, record_lost
from runner.sweep.console import Best
from runner.sweep.options import SearchOptions
from runner.sweep.space import Param
from runner.sweep.study import (
    JOB_DIR,
    OWNER,
    OWNER_STARTED,
    RERUN_OF,
    STATUS,
    counts,
    owner,
    rerun_of,
)

log = logging.getLogger(__name__)

# How often the study's trials are read again for the shared count (seconds).
STUDY_READ_S = 0.5
# The status of a trial asked for beyond n_trials (another parent took the last).
OVER_BUDGET = "NOT RUN: n_trials reached"
# A trial whose parent beats for it: its heartbeat interval (seconds).
HEARTBEAT = "runner_heartbeat_s"
# How often a running trial's metrics.jsonl is read (seconds).
WATCH_INTERVAL_S = 0.2


def within(job_dir: str, sweep_dir: Path) -> Path | None:
    """``job_dir`` (a path the study holds, maybe another parent's) if it lies in this
    parent's sweep dir, else None: runner writes only into its own sweep's job dirs."""
    path = Path(job_dir)
    return path if path.resolve().is_relative_to(sweep_dir.resolve()) else None


def trial_values(value: Any, n: int) -> list[float] | None:
    """A task's return value as the study's values (one per direction), or None."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) != n:
        return None
    numbers = [float(v) for v in items if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(numbers) != n or not all(math.isfinite(v) for v in numbers):
        return None
    return numbers


class Search:
    """The search as the scheduler's source of points (see the module docstring)."""

    def __init__(
        self,
        study: optuna.Study,
        space: list[Param],
        fixed: list[str],
        options: SearchOptions,
        sweep_dir: Path,
        storage: optuna.storages.RDBStorage | None = None,
    ) -> None:
        self.study = study
        self.sweep_dir = sweep_dir
        self.storage = storage  # where heartbeats go (None: no heartbeats)
        self.space = space
        self.distributions = {p.name: p.distribution for p in space}
        self.fixed = fixed
        self.options = options
        self.directions = options.directions()
        self.size = options.n_trials
        self.what = f"up to {options.n_trials} trials"
        self.deadline = time.monotonic() + options.timeout if options.timeout else None
        self.owner = owner()
        self.owner_started = started(os.getpid())
        self.trials: dict[int, Trial] = {}
        self.readers: dict[int, MetricsReader] = {}
        self.watched_at: dict[int, float] = {}
        self.beaten_at: dict[int, float] = {}
        # Trials taken that run an earlier trial's parameters again: that one's number.
        self.reruns: dict[int, int] = {}
        # When the study was last asked for a trial, and whether none was left then.
        self.asked_at = float("-inf")
        self.full = False
        self.failed_stale_at = float("-inf")
        # The study as last read (every parent's trials): see _seen.
        self.seen: list[FrozenTrial] = []
        self.seen_at = float("-inf")
        self.best = Best(self.directions[0] == "maximize")
        if len(self.directions) == 1:
            for t in self._seen(fresh=True):
                if t.state == TrialState.COMPLETE and t.values:
                    self.best.offer(t.number, t.values[0])

    # ------------------------------------------------------------- PointSource

    def _seen(self, fresh: bool = False) -> list[FrozenTrial]:
        """Every trial of the study, every parent's, read at most every
        STUDY_READ_S (``fresh``: now): the study is the one ledger parents share."""
        now = time.monotonic()
        if fresh or now - self.seen_at >= STUDY_READ_S:
            self.seen = self.study.get_trials(deepcopy=False)
            self.seen_at = now
        return self.seen

    def ahead(self) -> bool:
        """A trial ahead of the free slots, composed while the others run; none in the
        last round of a search other parents run too (no more trials left than run
        now): a trial held here for a slot that frees later is one another parent's
        slot, free sooner, could run now."""
        trials = self._seen()
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if all(t.user_attrs.get(OWNER, self.owner) == self.owner for t in running):
            return True  # alone
        return self.size - self._used(trials) > len(running)

    @property
    def tally(self) -> dict[str, int]:
        """The study's trials that count towards n_trials, by how they ended."""
        found = {"done": 0, "failed": 0, "pruned": 0}
        for t in self._seen():
            if counts(t):
                key = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned"}
                found[key.get(t.state, "failed")] += 1
        return found

    @property
    def counted(self) -> int:
        return sum(self.tally.values())

    def _tracked(self, trial: FrozenTrial) -> bool:
        """A running trial that will end or be failed: this parent's, or one whose
        parent beats for it (another parent's without heartbeats may be lost for good,
        and is not waited for)."""
        return trial.state == TrialState.RUNNING and (
            trial.number in self.trials or HEARTBEAT in trial.user_attrs
        )

    def _used(self, trials: Sequence[FrozenTrial], before: int | None = None) -> int:
        """Trials that use up n_trials: those that count, and the tracked running ones
        (any parent's); ``before``: only those numbered lower."""
        return sum(
            1
            for t in trials
            if (before is None or t.number < before) and (counts(t) or self._tracked(t))
        )

    def timed_out(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def exhausted(self) -> bool:
        """No trial will come any more: past the timeout, or every trial of n_trials
        taken, and none of another parent's still running (it may yet fail, and its
        parameters come back to be run again)."""
        self._beat_all()
        if self.timed_out():
            return True
        trials = self._seen()
        others = [t for t in trials if self._tracked(t) and t.number not in self.trials]
        return self._used(trials) >= self.size and not others

    def take(self, room: int) -> list[tuple[int, list[str]]]:
        """Up to ``room`` trials of what is left of n_trials, counted in the study at
        ask time: parents that ask at once cannot run more than n_trials together."""
        if self.timed_out() or room <= 0:
            return []
        now = time.monotonic()
        if self.full and now - self.asked_at < STUDY_READ_S:
            return []  # nothing was left a moment ago: the study is not read 50 times a second
        self.asked_at = now
        self._fail_stale()
        left = self.size - self._used(self._seen(fresh=True))
        self.full = left <= 0
        taken = []
        for _ in range(max(0, min(room, left))):
            with warnings.catch_warnings():  # heartbeats "meant for optimize": runner's beat
                warnings.simplefilter("ignore")
                trial = self.study.ask(fixed_distributions=self.distributions)
            if self._used(self._seen(fresh=True), before=trial.number) >= self.size:
                # Another parent asked at the same moment and took the last one.
                trial.set_user_attr(STATUS, OVER_BUDGET)
                self.study.tell(trial, state=TrialState.FAIL)
                break
            trial.set_user_attr(OWNER, self.owner)
            if self.owner_started is not None:
                trial.set_user_attr(OWNER_STARTED, self.owner_started)
            if self.options.heartbeat_interval:
                trial.set_user_attr(HEARTBEAT, self.options.heartbeat_interval)
            self.trials[trial.number] = trial
            asked = {t.number: t for t in self.seen}.get(trial.number)
            if asked is not None and (prior := rerun_of(asked)) is not None:
                self.reruns[trial.number] = prior
            self._beat(trial, force=True)
            overrides = self.fixed + [p.override(trial.params[p.name]) for p in self.space]
            taken.append((trial.number, overrides))
        return taken

    def _fail_stale(self) -> None:
        """Fail the trials whose parent stopped beating (on any machine) for the grace
        period; Optuna's retry callback queues their parameters again, once."""
        now = time.monotonic()
        if not self.options.heartbeat_interval or now - self.failed_stale_at < 1.0:
            return
        self.failed_stale_at = now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)

    def _beat_all(self) -> None:
        """Heartbeats for every trial this parent holds, running or waiting for a slot."""
        for trial in list(self.trials.values()):
            self._beat(trial)

    def _beat(self, trial: Trial, force: bool = False) -> None:
        """A running trial's heartbeat, every heartbeat_interval."""
        every = self.options.heartbeat_interval
        now = time.monotonic()
        if not every or (not force and now - self.beaten_at.get(trial.number, 0.0) < every):
            return
        self.beaten_at[trial.number] = now
        if self.storage is not None:  # Optuna's ask-and-tell beats for no trial itself
            self.storage.record_heartbeat(trial._trial_id)

    def wanted(self) -> bool:
        return not self.timed_out()

    def started(self, idx: int, job_dir: Path) -> None:
        """The trial's job dir, kept in the study from its start: a search continued
        after its parent died finds there a result the study was never told."""
        if (trial := self.trials.get(idx)) is not None:
            trial.set_user_attr(JOB_DIR, str(job_dir))
        prior = self.reruns.pop(idx, None)
        if prior is None:
            return
        # The attempt it runs again says so in its launch.json (and its summary row).
        earlier = {t.number: t for t in self._seen(fresh=True)}.get(prior)
        job = earlier.user_attrs.get(JOB_DIR) if earlier is not None else None
        if job and (own := within(str(job), self.sweep_dir)) is not None:
            record_lost(own, rerun_as=idx)

    def watch(self, idx: int, job_dir: Path) -> str | None:
        """Beat for the running trial; report its new intermediate values; whether to
        prune it."""
        trial = self.trials.get(idx)
        self._beat_all()
        if trial is None or len(self.directions) > 1:
            return None
        now = time.monotonic()
        if now - self.watched_at.get(idx, 0.0) < WATCH_INTERVAL_S:
            return None
        self.watched_at[idx] = now
        values = self._report(trial, job_dir)
        if values and trial.should_prune():
            step, value = values[-1]
            return f"pruned at step {step} ({self.options.metric} {value:.6g})"
        return None

    def _report(self, trial: Trial, job_dir: Path) -> list[tuple[int, float]]:
        """The trial's intermediate values written since the last call, reported."""
        reader = self.readers.get(trial.number)
        if reader is None:
            reader = self.readers[trial.number] = MetricsReader(job_dir, self.options.metric)
        values = reader.new_values()
        for step, value in values:
            trial.report(value, step)
        return values

    def ended(self, idx: int, outcome: Outcome, value: Any, job_dir: Path | None) -> None:
        if outcome is Outcome.STOPPED:  # by its own timeout: a failed trial
            outcome = Outcome.FAILED
        self.tell(idx, outcome, value, str(job_dir) if job_dir else None)

    def progress(self, running: int) -> str:
        t = self.tally
        taken = sum(t.values()) + running
        text = f"[{taken}/{self.size} trials: {t['done']} done, {running} running"
        if t["pruned"]:
            text += f", {t['pruned']} pruned"
        if t["failed"]:
            text += f", {t['failed']} failed"
        text += "]"
        if self.best.value is not None:
            text += self.best.text()
        elif len(self.directions) > 1 and t["done"]:
            text += f" Pareto front: {len(self.study.best_trials)} trial(s)"
        return text

    # ------------------------------------------------------------- the study

    def tell(self, number: int, status: Outcome, value: Any, job_dir: str | None) -> None:
        """A trial ended: COMPLETED (with its return value), FAILED, PRUNED, or
        INTERRUPTED (stopped by the sweep, or never started: it runs again when the
        search continues)."""
        trial = self.trials.pop(number, None)
        if trial is None:
            return
        now = {t.number: t.state for t in self._seen(fresh=bool(self.options.heartbeat_interval))}
        if now.get(number, TrialState.RUNNING).is_finished():
            # Failed as stale by a parent that saw its heartbeats stop (this one was
            # paused past grace_period): its parameters run again there; this result
            # stays in its job dir.
            log.warning(
                "trial #%d was failed by another parent while it ran (its heartbeats "
                "stopped for hydra.sweeper.grace_period); its result stays in %s",
                number,
                job_dir,
            )
            return
        if job_dir:
            trial.set_user_attr(JOB_DIR, job_dir)
            if status is Outcome.COMPLETED and len(self.directions) == 1:
                # Its last values too: the pruner compares later trials with them.
                self._report(trial, Path(job_dir))
                self._name_the_objective(Path(job_dir))
        self.readers.pop(number, None)
        values = trial_values(value, len(self.directions)) if status is Outcome.COMPLETED else None
        if status is Outcome.COMPLETED and values is None:
            log.error(
                "trial #%d returned %r; the search needs %s. It counts as failed",
                number,
                value,
                "one finite number"
                if len(self.directions) == 1
                else f"{len(self.directions)} finite numbers, one per direction",
            )
            status = Outcome.FAILED
        if status in (Outcome.FAILED, Outcome.INTERRUPTED):  # the state says the others
            trial.set_user_attr(STATUS, status.value)
        state = TrialState[status.trial_state]
        self.study.tell(trial, values, state=state)
        self.seen_at = float("-inf")  # the count changed: read the study again
        if status is Outcome.COMPLETED and values is not None and len(values) == 1:
            self.best.offer(number, values[0])
        elif status is Outcome.INTERRUPTED:
            self.study.enqueue_trial(trial.params, user_attrs={RERUN_OF: number})

    def _name_the_objective(self, job_dir: Path) -> None:
        """Once: the study's objective by its name (``val_loss`` in optuna-dashboard,
        not ``Objective 0``): what the task's metrics.json calls it, else the metric
        the search prunes on."""
        if self.study.metric_names is not None:
            return
        try:
            named = json.loads((job_dir / "metrics.json").read_text()).get("objective")
        except (OSError, ValueError, AttributeError):
            named = None
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and kept
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.study.set_metric_names([str(named or self.options.metric)])

    def interrupt_all(self) -> None:
        for number in list(self.trials):
            self.tell(number, Outcome.INTERRUPTED, None, None)
