"""Any Hydra app's single run on N ranks: :func:`main`, a drop-in for ``@hydra.main``.

Hydra uses its launcher for multiruns only, so ``python train.py`` (no ``-m``) runs
the task in the one process Hydra started, whatever ``hydra.launcher`` says. With
``@runner.main`` instead of ``@hydra.main`` a single run whose ``hydra.launcher``
asks for more than one process (``hydra/launcher=torchrun``,
``hydra.launcher.nproc_per_node=2``) goes through the launch core as one torchrun,
the way ``python -m runner trainer.nproc_per_node=2`` does: one run dir, the config
resolved once and the same in every rank, devices leased, and rank 0's return value
returned. Everything else is ``@hydra.main``'s: the same arguments, command line,
config search path and job name; in a multirun the launcher runs the task.
Nothing here imports torch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from runner.errors import LauncherConfigError
from runner.launch.devices import run_devices
from runner.launch.job import launch_current_job, wanted_world_size


def inside_torchrun() -> bool:
    """True in a worker started by torchrun (its agent sets TORCHELASTIC_RUN_ID)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def check_not_slurm_single_run() -> None:
    """Hydra uses launchers for multiruns only: a single run with the Slurm launcher
    would silently run here instead of on the cluster."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    target = str(hydra_cfg.launcher.get("_target_", ""))
    if target.endswith("TorchrunSlurmLauncher") and hydra_cfg.mode == RunMode.RUN:
        raise LauncherConfigError(
            "hydra/launcher=torchrun_slurm submits multiruns only, and this is a single "
            "run, which would run on this machine. Fix: add -m to submit it as one Slurm "
            "job (python my_app.py -m hydra/launcher=torchrun_slurm ...)"
        )


def run_task(task_function: Callable[[DictConfig], Any], cfg: DictConfig, nproc: int = 1) -> Any:
    """Run a Hydra task as its launcher says. In a torchrun rank, or a run that wants
    one process: call it here (a single run under runner's launcher on a device leased
    for it, set before the task can touch CUDA). A run that wants more
    (``hydra.launcher``'s nproc_per_node x nnodes; ``nproc`` where it has none): one
    torchrun whose ranks call the task, and rank 0's return value."""
    from hydra.core.hydra_config import HydraConfig

    if inside_torchrun():  # a rank: its launcher gave it its devices
        return task_function(cfg)
    check_not_slurm_single_run()
    if wanted_world_size(default=nproc) > 1:
        return launch_current_job(task_function, cfg)
    if HydraConfig.initialized() and "devices" in HydraConfig.get().launcher:
        with run_devices(1, in_process=True):
            return task_function(cfg)
    return task_function(cfg)


def main(*args: Any, **kwargs: Any) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """``@hydra.main`` (the same arguments) whose single runs take
    ``hydra.launcher``'s ranks (see the module's doc): ``@runner.main(...)``. Calling
    the app returns its single run's value (rank 0's)."""
    import hydra

    def decorate(task_function: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        returned: list[Any] = []  # the single run's value, which Hydra's main drops

        # Hydra finds the app's file, config dir and job name through __wrapped__.
        @functools.wraps(task_function)
        def ranks_as_configured(cfg: DictConfig) -> Any:
            value = run_task(task_function, cfg)
            returned[:] = [value]
            return value

        hydra_app = hydra.main(*args, **kwargs)(ranks_as_configured)

        @functools.wraps(hydra_app)
        def app(cfg_passthrough: DictConfig | None = None) -> Any:
            """The app, returning its single run's value (rank 0's), as ``@hydra.main``
            does only when given a config; None for a multirun."""
            returned.clear()
            value = hydra_app(cfg_passthrough)
            return value if cfg_passthrough is not None else next(iter(returned), None)

        return app

    return decorate
