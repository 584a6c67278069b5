"""Hydra launcher plugin ``hydra/launcher=torchrun``: every sweep point is its own
torchrun, several at a time, each on its own port; every result goes back to Hydra.

This module is what Hydra imports when it discovers plugins, so it stays thin and
light: the dataclass config and a Launcher shell. The scheduling lives in
:mod:`runner.launcher`, imported only when a sweep is launched; neither imports torch.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class TorchrunLauncherConf:
    _target_: str = "hydra_plugins.torchrun_launcher.torchrun_launcher.TorchrunLauncher"
    # torchrun's options, under torchrun's names.
    nproc_per_node: int = 1
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_backend: str = "static"
    rdzv_endpoint: str = ""
    rdzv_id: str = "none"
    rdzv_conf: str = ""
    master_addr: str = "127.0.0.1"
    master_port: Any = None
    max_restarts: int = 0
    monitor_interval: float = 0.1
    # Rank output goes to files under log_dir (default: <job dir>/torchrun);
    # tee "0:3" also copies rank 0's to the agent's output (console or torchrun.log).
    redirects: str = "3"
    tee: str = "0:3"
    log_dir: Any = None
    # Extra environment for every point's agent and workers.
    env: dict[str, str] = field(default_factory=dict)
    # Seconds a point may run before it is stopped; null for no limit.
    timeout: Any = None
    # Points running at once; null: as many as fit (GPUs // nproc_per_node; on CPU,
    # cores // nproc_per_node but at least 2).
    max_parallel: Any = None
    # Stop the sweep at the first failed point instead of finishing the batch.
    fail_fast: bool = False
    # How accelerators are shared by concurrent points: "auto" (disjoint
    # CUDA_VISIBLE_DEVICES slices when CUDA exists), "none", or a list like "0,1,2,3".
    devices: str = "auto"
    # Seconds between SIGTERM and SIGKILL when points are stopped.
    stop_grace: float = 10.0
    # Re-running into the same hydra.sweep.dir: keep points that completed (their stored
    # result is returned to the sweeper) and run the failed or unfinished ones again.
    resume: bool = False
    # Fork every point's agent and workers from one warm process that has imported
    # torch and the task (fractions of a second per point instead of seconds); falls
    # back to cold start, with a notice, where that cannot work.
    warm: bool = False


@dataclass
class TorchrunSlurmLauncherConf(TorchrunLauncherConf):
    """``hydra/launcher=torchrun_slurm``: every point is one Slurm job (submitit) whose
    nodes run torchrun; ``nnodes`` nodes, ``nproc_per_node`` ranks on each."""

    _target_: str = "hydra_plugins.torchrun_launcher.torchrun_launcher.TorchrunSlurmLauncher"
    partition: Any = None
    # Cores per node for the agent and its ranks; null: one per rank.
    cpus_per_task: Any = None
    gpus_per_node: Any = None
    mem_gb: Any = None
    # The job's Slurm time limit, in minutes.
    time_min: int = 60
    account: Any = None
    qos: Any = None
    job_name: str = "${hydra.job.name}"
    # Any other sbatch option, e.g. {constraint: a100, exclusive: true}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    # Shell lines run before the job (module load ..., source venv/bin/activate).
    setup: list[str] = field(default_factory=list)
    # Seconds between sacct checks (jobs that die outside Python are seen this way).
    poll_interval: float = 5.0


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
    conf = TorchrunLauncherConf
    name = "torchrun"
    slurm = False

    def __init__(self, **params: Any) -> None:
        known = {f.name for f in fields(self.conf)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(
                f"hydra.launcher has unknown key(s) {unknown} for hydra/launcher={self.name}; "
                f"known keys: {sorted(known - {'_target_'})}"
            )
        self.params = params
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from runner.launcher import check_launcher_params, check_sweep_dir

        check_launcher_params(self.params, slurm=self.slurm)
        if self.slurm:
            from runner.slurm import check_slurm_client

            check_slurm_client()
        if config.hydra.mode is not None and config.hydra.mode.name == "MULTIRUN":
            check_sweep_dir(str(config.hydra.sweep.dir))
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from runner.launcher import launch_sweep

        return launch_sweep(self, job_overrides, initial_job_idx)


class TorchrunSlurmLauncher(TorchrunLauncher):
    conf = TorchrunSlurmLauncherConf
    name = "torchrun_slurm"
    slurm = True
