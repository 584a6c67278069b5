"""The sweep's own launcher options, beside torchrun's (:class:`LaunchConfig`).

The launcher plugin's config is composed from these dataclasses and
:class:`~runner.launch.options.LaunchConfig`, so every ``hydra.launcher`` key, its
type and its default are written once; the checks that run before anything starts
live here too. Light on purpose: Hydra imports this at plugin discovery.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.errors import LauncherConfigError, Problems, SearchConfigError, invalid
from runner.launch.devices import DeviceOptions
from runner.launch.options import LaunchConfig, option_names


@dataclass
class SchedulerOptions(DeviceOptions):
    """How the points of a sweep share this machine (its devices: DeviceOptions)."""

    # Points running at once; null: as many as fit (with devices, the devices times
    # points_per_device; on CPU, cores // nproc_per_node but at least 2).
    max_parallel: int | None = None
    # Stop the sweep at the first failed point instead of finishing the batch.
    fail_fast: bool = False
    # Seconds between SIGTERM and SIGKILL when points are stopped.
    stop_grace: float = 10.0
    # Re-running into the same hydra.sweep.dir: keep points that completed (their stored
    # result is returned to the sweeper) and run the failed or unfinished ones again.
    resume: bool = False
    # Fork every point's agent and workers from one warm process that has imported
    # torch and the task (fractions of a second per point instead of seconds); falls
    # back to cold start, with a notice, where that cannot work.
    warm: bool = False
    # Which way the sweep's best lies, for its live line and summary: minimize or
    # maximize; null: the sweeper's direction, else trainer.objective_mode, else lower.
    direction: str | None = None

    def scheduler_problems(self) -> Problems:
        """What cannot work, each naming the key, the value and the fix."""
        found = self.device_problems()
        found.check(
            self.max_parallel is None or self.max_parallel >= 1,
            "max_parallel",
            self.max_parallel,
            "must be an integer >= 1, or null for as many as fit",
            "max_parallel=2",
        )
        found.check(
            self.direction in (None, "minimize", "maximize"),
            "direction",
            self.direction,
            "must be minimize or maximize, or null to follow the sweeper",
            "direction=maximize",
        )
        found.check(
            self.stop_grace >= 0,
            "stop_grace",
            self.stop_grace,
            "must be >= 0 seconds",
            "stop_grace=10",
        )
        return found


@dataclass
class SlurmOptions:
    """Where and how each point's Slurm job runs (``hydra/launcher=torchrun_slurm``)."""

    partition: str | None = None
    # Cores per node for the agent and its ranks; null: one per rank.
    cpus_per_task: int | None = None
    gpus_per_node: int | None = None
    mem_gb: int | None = None
    # The job's Slurm time limit, in minutes.
    time_min: int = 60
    account: str | None = None
    qos: str | None = None
    job_name: str = "${hydra.job.name}"
    # Any other sbatch option, e.g. {constraint: a100, exclusive: true}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    # Shell lines run before the job (module load ..., source venv/bin/activate).
    setup: list[str] = field(default_factory=list)
    # Seconds between sacct checks (jobs that die outside Python are seen this way).
    poll_interval: float = 5.0
    # Jobs import the project's code from a copy made at the first submission
    # (<sweep dir>/code): git's tracked files, or these globs under the working dir.
    snapshot: bool = True
    snapshot_files: list[str] | None = None
    # Before the time limit Slurm sends SIGUSR2 (this many seconds ahead; null: a
    # quarter of the limit, at most 90): the ranks agree on a step, save it, and the
    # job is requeued, at most max_requeues times, to resume from that checkpoint.
    signal_lead_s: int | None = None
    max_requeues: int = 3

    def lead_s(self) -> int:
        """Seconds before the time limit that Slurm sends its warning."""
        if self.signal_lead_s is not None:
            return self.signal_lead_s
        return min(90, self.time_min * 60 // 4)

    def slurm_problems(self, nnodes: str) -> Problems:
        """What cannot work, each naming the key, the value and the fix."""
        found = Problems(LauncherConfigError, "hydra.launcher.")
        found.check(
            nnodes.isdigit(),
            "nnodes",
            nnodes,
            "Slurm allocates a fixed number of nodes",
            "nnodes=2",
        )
        for key in ("cpus_per_task", "gpus_per_node", "mem_gb"):
            value = getattr(self, key)
            found.check(
                value is None or value >= 1,
                key,
                value,
                "must be an integer >= 1, or null for the cluster's default",
                f"{key}=null",
            )
        found.check(
            self.time_min >= 1,
            "time_min",
            self.time_min,
            "the job's time limit must be whole minutes >= 1",
            "time_min=60",
        )
        found.check(
            self.poll_interval > 0,
            "poll_interval",
            self.poll_interval,
            "must be > 0 seconds",
            "poll_interval=5",
        )
        found.check(
            self.max_requeues >= 0,
            "max_requeues",
            self.max_requeues,
            "must be >= 0",
            "max_requeues=3",
        )
        found.check(
            self.signal_lead_s is None or 0 < self.signal_lead_s < self.time_min * 60,
            "signal_lead_s",
            self.signal_lead_s,
            f"the warning must come after the job starts and before its time limit "
            f"(time_min={self.time_min}: between 1 and {self.time_min * 60 - 1} s)",
            f"signal_lead_s={min(90, self.time_min * 60 // 4)}, or signal_lead_s=null",
        )
        return found


def check_options(params: dict[str, Any], launch_overrides: dict[str, Any]) -> None:
    """Check the scheduler's keys and the torchrun options before anything starts."""
    keys = option_names(SchedulerOptions) & set(params)
    SchedulerOptions(**{k: params[k] for k in keys}).scheduler_problems().raise_any()
    try:
        LaunchConfig.from_config(params, **launch_overrides)
    except ValueError as error:
        raise LauncherConfigError(str(error)) from None


def check_slurm_options(params: dict[str, Any]) -> None:
    """Check the Slurm keys before anything is submitted."""
    keys = option_names(SlurmOptions) & set(params)
    options = SlurmOptions(**{k: params[k] for k in keys})
    options.slurm_problems(str(params.get("nnodes", "1"))).raise_any()


def check_sweep_dir(sweep_dir: str) -> None:
    """Fail early, naming the key, if the sweep dir cannot be created and written."""
    try:
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(sweep_dir) / ".runner_write_test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise LauncherConfigError(
            f"hydra.sweep.dir={sweep_dir} cannot be created or written "
            f"({error.strerror or error}). Fix: pass hydra.sweep.dir=A_WRITABLE_DIR"
        ) from None


# Samplers and pruners by short name (any other by ``_target_``).
SAMPLERS = {
    "tpe": "optuna.samplers.TPESampler",
    "random": "optuna.samplers.RandomSampler",
    "cmaes": "optuna.samplers.CmaEsSampler",
    "qmc": "optuna.samplers.QMCSampler",
    "nsgaii": "optuna.samplers.NSGAIISampler",
}
PRUNERS = {
    "none": "optuna.pruners.NopPruner",
    "median": "optuna.pruners.MedianPruner",
    "successive_halving": "optuna.pruners.SuccessiveHalvingPruner",
    "hyperband": "optuna.pruners.HyperbandPruner",
}
DIRECTIONS = ("minimize", "maximize")


@dataclass
class SearchOptions:
    """``hydra/sweeper=search``: runner's Optuna search (runner.sweep.search)."""

    # Trials in the whole search, counting those of earlier runs into the same study.
    n_trials: int = 20
    # Seconds after which no new trial starts (running ones finish); null: no limit.
    timeout: float | None = None
    # minimize or maximize; a list (one per value the task returns) for several.
    direction: Any = "minimize"
    # The key of metrics.jsonl lines a running trial is pruned on.
    metric: str = "objective"
    # tpe (seeded, constant liar), random, cmaes, qmc, nsgaii, or {_target_: ..., ...}
    # (Hydra makes the object; then it keeps its own seed).
    sampler: Any = "tpe"
    # none, median, successive_halving, hyperband, or {_target_: ..., ...}.
    pruner: Any = "none"
    # The sampler's seed, where it takes one and does not name its own.
    seed: int | None = 0
    # null: named by the app and what it searches ("runner over optim.lr, model"), so
    # parents that run the same command on one storage share one study.
    study_name: str | None = None
    # Any storage URL Optuna accepts; null: sqlite:///<hydra.sweep.dir>/study.db.
    storage: str | None = None
    # The search space beside the command line: {optim.lr: "tag(log, interval(1e-4, 1e-1))"}.
    params: dict[str, str] = field(default_factory=dict)
    # Known-good points tried first, when the study is new: [{optim.lr: 0.01}, ...].
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    # false: ask for max_parallel trials, wait for all of them, ask again (how Hydra's
    # batch sweepers work; the benchmark's reference). Other launchers always batch.
    asynchronous: bool = True
    # hydra-optuna-sweeper's trials at once: taken as hydra.launcher.max_parallel when
    # that is not set (said on the console).
    n_jobs: int | None = None
    # Seconds between a running trial's heartbeats in the study; a trial whose beats
    # stop for grace_period (its parent died, on any machine) is failed and its
    # parameters run again, once, by a live parent. 0: no heartbeats.
    heartbeat_interval: int = 10
    # null: twice heartbeat_interval.
    grace_period: int | None = None

    def directions(self) -> list[str]:
        value = self.direction
        return [str(d) for d in value] if isinstance(value, (list, tuple)) else [str(value)]

    def search_problems(self) -> Problems:
        """What cannot work, each naming the key, the value and the fix."""
        found = Problems(SearchConfigError, "hydra.sweeper.")
        found.check(
            self.n_jobs is None or self.n_jobs >= 1,
            "n_jobs",
            self.n_jobs,
            "trials at once, at least 1",
            "n_jobs=2",
        )
        found.check(
            self.n_trials >= 1,
            "n_trials",
            self.n_trials,
            "a search needs at least one trial",
            "n_trials=20",
        )
        found.check(
            self.timeout is None or self.timeout > 0,
            "timeout",
            self.timeout,
            "must be > 0 seconds, or null",
            "timeout=3600",
        )
        directions = self.directions()
        found.check(
            bool(directions) and all(d in DIRECTIONS for d in directions),
            "direction",
            self.direction,
            "each direction is minimize or maximize",
            "direction=minimize (or [minimize,maximize] for two values)",
        )
        for key, names in (("sampler", SAMPLERS), ("pruner", PRUNERS)):
            value = getattr(self, key)
            found.check(
                not isinstance(value, str) or value in names,
                key,
                value,
                f"known names: {', '.join(names)}",
                f"{key}={next(iter(names))}",
            )
            found.check(
                not isinstance(value, dict) or "_target_" in value,
                key,
                value,
                "a mapping names its class with _target_",
                f"{key}._target_={next(iter(names.values()))}",
            )
        found.check(
            self.heartbeat_interval >= 0,
            "heartbeat_interval",
            self.heartbeat_interval,
            "must be >= 0 seconds (0: no heartbeats)",
            "heartbeat_interval=10",
        )
        found.check(
            self.grace_period is None or self.grace_period > self.heartbeat_interval,
            "grace_period",
            self.grace_period,
            f"must be longer than heartbeat_interval={self.heartbeat_interval} s, or null",
            "grace_period=null",
        )
        found.check(
            len(directions) <= 1 or self.pruner in (None, "none"),
            "pruner",
            self.pruner,
            "Optuna prunes only single-objective studies",
            "pruner=none",
        )
        return found


SEARCH_SWEEPER = "hydra_plugins.runner_search.runner_search.SearchSweeper"


class SweeperClassCheck(Callback):
    """Comes with ``hydra/sweeper=search``: before the sweeper is made, refuse another
    sweeper's ``_target_`` in its place. Hydra turns a callback's exceptions into
    warnings, so this one exits with the message."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = OmegaConf.select(config, "hydra.sweeper._target_")
        if target != SEARCH_SWEEPER:
            raise SystemExit(
                invalid(
                    "hydra.sweeper._target_",
                    target,
                    "under hydra/sweeper=search it names another sweeper's class, which "
                    "would run instead of runner's search (a line left from a config "
                    "written for that sweeper)",
                    f"delete the line `_target_: {target}` from hydra.sweeper in your "
                    "config (hydra/sweeper=search sets it)",
                )
            )


def check_search_options(params: dict[str, Any]) -> SearchOptions:
    """The sweeper's keys as SearchOptions (Hydra's structured config has already
    refused unknown keys), or SearchConfigError naming each problem."""
    options = SearchOptions(**{k: v for k, v in params.items() if k != "_target_"})
    options.search_problems().raise_any()
    return options
