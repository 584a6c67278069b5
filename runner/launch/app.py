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

import contextlib
import functools
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.errors import LauncherConfigError
from runner.launch.devices import DEVICE_POLL_S, DeviceOptions
from runner.launch.entry import remove_stale_entry_dirs
from runner.launch.job import TorchrunJob, stop_jobs
from runner.launch.options import LaunchConfig
from runner.launch.procs import sigterm_as_exit
from runner.launch.starters import warm_starter
from runner.record import lone_ranks

log = logging.getLogger(__name__)


# Where a task keeps its config check (see :func:`checked_by`).
CHECK_ATTR = "__runner_check__"


def checked_by(check: Callable[[DictConfig], Any]) -> Callable[[Callable], Callable]:
    """Decorate a task with the check of its config: ``check(cfg)`` raises (a
    ``runner.errors.ConfigError`` naming the key, the value and the fix) for a config
    that cannot work. runner's launcher calls it in the sweep's parent on every point's
    resolved config before the point starts, so a bad value fails that point in
    milliseconds and no torchrun starts for it::

        @runner.main(config_path="conf", config_name="config")
        @runner.checked_by(check_config)
        def train(cfg): ...

    With ``@runner.main`` a single run is checked too, before it starts (a run it
    refuses leaves no run dir).
    """

    def mark(task: Callable) -> Callable:
        setattr(task, CHECK_ATTR, check)
        return task

    return mark


def config_check(task_function: Callable) -> Callable[[DictConfig], Any] | None:
    """The check a task offers (:func:`checked_by`), looked up through its decorators."""
    obj: Any = task_function
    for _ in range(8):
        if obj is None:
            return None
        if (check := getattr(obj, CHECK_ATTR, None)) is not None:
            return check
        obj = getattr(obj, "__wrapped__", None)
    return None


def discard_unstarted_run() -> None:
    """A single run that fails before it starts (its config check) leaves no run dir:
    the one Hydra made for it is removed while it holds nothing but Hydra's files
    (``.hydra/`` and the job's log)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if inside_torchrun() or not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.RUN:
        return
    run_dir = Path(str(hydra_cfg.runtime.output_dir))
    hydra_files = {str(hydra_cfg.output_subdir or ".hydra"), f"{hydra_cfg.job.name}.log"}
    with contextlib.suppress(OSError):
        if {p.name for p in run_dir.iterdir()} <= hydra_files:
            shutil.rmtree(run_dir)


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
    from hydra.types import RunMode

    if inside_torchrun():  # a rank: its launcher gave it its devices
        return task_function(cfg)
    check_not_slurm_single_run()
    single = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN
    try:
        if wanted_world_size(default=nproc) > 1:
            return launch_current_job(task_function, cfg)
        if HydraConfig.initialized() and "devices" in HydraConfig.get().launcher:
            with run_devices(1, in_process=True):
                return task_function(cfg)
        return task_function(cfg)
    finally:
        if single:  # where it went, however it ended
            log.info("Run dir: %s", HydraConfig.get().runtime.output_dir)


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
            check = config_check(task_function)
            if check is not None and not inside_torchrun():  # ranks: checked already
                try:
                    check(cfg)
                except Exception:
                    discard_unstarted_run()
                    raise
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


@contextlib.contextmanager
def run_devices(nproc: int, *, in_process: bool = False) -> Iterator[dict[str, str]]:
    """The current Hydra run's devices, one per local rank, leased like a sweep's
    (``hydra.launcher.devices``, ``points_per_device``, ``leases``): while other runs
    hold them it waits, and says who holds them. Yields the environment its ranks
    get (``CUDA_VISIBLE_DEVICES``; on CPU, ranks' share of the cores as
    ``OMP_NUM_THREADS`` unless it is set, so torchrun need not guess it and say so);
    ``in_process``: also set in this process's environment while the block runs (a
    run without torchrun, whose threads are torch's own)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import env_override
    from omegaconf import DictConfig, OmegaConf

    root = HydraConfig.instance().cfg  # a DictConfig when set, whatever its annotation
    state = root if isinstance(root, DictConfig) else OmegaConf.create()
    options = DeviceOptions.from_params(OmegaConf.select(state, "hydra.launcher", default={}))
    problems = options.device_problems()
    pool = options.pool(split_threads=not in_process)
    if too_small := pool.too_small_for(nproc, "this run"):
        problems.add(too_small)
    problems.raise_any()
    output_dir = OmegaConf.select(state, "hydra.runtime.output_dir", default=None)
    what = f"run {output_dir}" if output_dir else f"a run (pid {os.getpid()})"
    try:
        devices = pool.take(nproc, head=True, what=what)
        while devices is None:
            if news := pool.waiting_news():
                log.info("waiting for %s", news)
            time.sleep(DEVICE_POLL_S)
            devices = pool.take(nproc, head=True, what=what)
    except BaseException:  # Ctrl-C while waiting: out of the line of waiting runs
        pool.new_head()
        raise
    env = pool.environment(devices, nproc, 1, {})
    if devices:
        log.info("on devices %s", ",".join(devices))
    try:
        with env_override(env) if in_process else contextlib.nullcontext():
            yield env
    finally:
        pool.give_back(devices)


def launch(
    config: DictConfig | None,
    task_function: Callable,
    launch_config: LaunchConfig,
    job_dir: str | Path,
    *,
    console: bool = True,
    warm: bool = False,
    extra_env: dict[str, str] | None = None,
    config_data: dict | None = None,
    sys_path: list[str] | None = None,
) -> Any:
    """Run ``task_function`` on ``config`` in every rank of one torchrun; return rank 0's
    return value or raise LaunchError. Clean-up happens whatever way this ends.
    ``warm``: fork the agent and its workers from a warm process (see runner.launch.warm);
    ``extra_env``: more environment for the agent and its ranks (their devices);
    ``config_data``, ``sys_path``: a config resolved earlier, as TorchrunJob takes it."""
    remove_stale_entry_dirs()
    job = TorchrunJob(
        config,
        task_function,
        launch_config,
        job_dir,
        console=console,
        config_data=config_data,
        sys_path=sys_path,
    )
    with sigterm_as_exit():
        server = warm_starter(task_function, job.cwd) if warm else None
        if server is not None:
            job.starter = server
            log.info("warm start: the agent and its ranks fork from a warm process")
        try:
            job.start(extra_env)
            job.wait()
            value = job.result()
            if note := lone_ranks(job.launch_record()):
                log.warning(note)
            return value
        finally:
            if job.proc is not None:
                stop_jobs([job])
            job.cleanup()
            if server is not None:
                server.close()


def launch_current_job(task_function: Callable, task_cfg: DictConfig) -> Any:
    """From inside a Hydra task: run this same job through torchrun, launched as
    ``hydra.launcher`` says, and return rank 0's return value."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    launch_config = LaunchConfig.from_config(hydra_cfg.launcher)
    with run_devices(launch_config.nproc_per_node) as env:
        return launch(
            task_cfg,
            task_function,
            launch_config,
            hydra_cfg.runtime.output_dir,
            warm=bool(hydra_cfg.launcher.get("warm", False)),
            extra_env=env,
        )


def wanted_world_size(default: int = 1) -> int:
    """Processes the current Hydra job asks for (``hydra.launcher``: nproc x nnodes)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    launcher = HydraConfig.get().launcher
    if "nproc_per_node" not in launcher:
        return default
    return int(launcher.nproc_per_node) * int(str(launcher.get("nnodes", 1)).split(":")[-1])
