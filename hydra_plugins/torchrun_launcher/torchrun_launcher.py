"""Hydra launcher plugin ``hydra/launcher=torchrun``: every sweep point is its own
torchrun, several at a time, each on its own port; every result goes back to Hydra.

This module is what Hydra imports when it discovers plugins, so it stays thin and
light: the config, composed from runner's option dataclasses (torchrun's, the
scheduler's, Slurm's: each key written once), and a Launcher shell. The scheduling
lives in :mod:`runner.sweep`, imported only when a sweep is launched; nothing here
imports torch. (No ``from __future__ import annotations``: Hydra executes plugin
modules outside ``sys.modules``, where dataclasses cannot read string annotations.)
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from runner.launch.options import LaunchConfig, option_names
from runner.sweep.options import SchedulerOptions, SlurmOptions

if TYPE_CHECKING:
    from runner.sweep.console import SweepConsole
    from runner.sweep.points import JobFactory, PointSource


@dataclass
class TorchrunLauncherConf(SchedulerOptions, LaunchConfig):
    """``hydra/launcher=torchrun``: torchrun's options under torchrun's names, and the
    scheduler's."""

    _target_: str = "hydra_plugins.torchrun_launcher.torchrun_launcher.TorchrunLauncher"


@dataclass
class TorchrunSlurmLauncherConf(SlurmOptions, TorchrunLauncherConf):
    """``hydra/launcher=torchrun_slurm``: every point is one Slurm job (submitit) whose
    nodes run torchrun; ``nnodes`` nodes, ``nproc_per_node`` ranks on each."""

    _target_: str = "hydra_plugins.torchrun_launcher.torchrun_launcher.TorchrunSlurmLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="torchrun", node=TorchrunLauncherConf, provider="runner"
)
ConfigStore.instance().store(
    group="hydra/launcher",
    name="torchrun_slurm",
    node=TorchrunSlurmLauncherConf,
    provider="runner",
)


class TorchrunLauncher(Launcher):
    conf: type = TorchrunLauncherConf
    name = "torchrun"

    def __init__(self, **params: Any) -> None:
        known = option_names(self.conf)
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"hydra.launcher has unknown key(s) {unknown} for hydra/launcher={self.name}; "
                f"known keys: {sorted(known - {'_target_'})}"
            )
        self.params = params
        self.config: DictConfig
        self.task_function: TaskFunction
        self.hydra_context: HydraContext
        # Made at set-up and kept for every batch (a warm process lives in the jobs), and
        # at the first batch and kept (the sweep's best lives in the console).
        self.jobs: JobFactory | None = None
        self.console: SweepConsole | None = None

    def job_factory(self) -> "type[JobFactory]":
        """The sweep's kind of job (imported only when a sweep is set up)."""
        from runner.sweep.local import LocalJobs

        return LocalJobs

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from runner.sweep import compose
        from runner.sweep.options import check_sweep_dir
        from runner.sweep.run import sweep_jobs

        self.job_factory().check(self.params)
        if config.hydra.mode is not None and config.hydra.mode.name == "MULTIRUN":
            check_sweep_dir(str(config.hydra.sweep.dir))
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context
        compose.install(hydra_context)  # the sweeper's check composes through it too
        sweep_jobs(self)  # now: a warm process boots while the sweeper gets ready

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from runner.sweep.points import Batch
        from runner.sweep.run import launch_sweep

        return launch_sweep(self, Batch(job_overrides, initial_job_idx))

    def launch_points(self, source: "PointSource") -> Sequence[JobReturn]:
        """Run points as ``source`` hands them out, each the moment a slot frees: how
        runner's search sweeper keeps every slot busy (Hydra's ``launch`` is one batch)."""
        from runner.sweep.run import launch_sweep

        return launch_sweep(self, source)


class TorchrunSlurmLauncher(TorchrunLauncher):
    conf = TorchrunSlurmLauncherConf
    name = "torchrun_slurm"

    def job_factory(self) -> "type[JobFactory]":
        from runner.extras import require

        require("submitit", "slurm", "hydra/launcher=torchrun_slurm")
        from runner.sweep.slurm import SlurmJobs

        return SlurmJobs
