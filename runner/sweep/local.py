"""Sweep points as torchrun jobs on this machine (``hydra/launcher=torchrun``).

The :class:`~runner.sweep.points.JobFactory` of local sweeps: every point is a
:class:`~runner.launch.job.TorchrunJob` whose agent is a fresh process (cold) or a
fork of the sweep's warm process (``hydra.launcher.warm=true``); its devices come
from the pool of ``hydra.launcher.devices``.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from runner.errors import LauncherConfigError
from runner.launch.devices import DeviceOptions, DevicePool
from runner.launch.job import Job, TorchrunJob
from runner.launch.options import LaunchConfig
from runner.launch.starters import (
    AgentStarter,
    SubprocessStarter,
    booted_or_cold,
    booting,
    warm_starter,
)
from runner.sweep.options import check_options
from runner.sweep.points import SweepLauncher


class LocalJobs:
    """Makes the points of a sweep on this machine, cold or warm."""

    where = ""
    launch_overrides: dict[str, Any] = {}

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Before anything starts: every key, the sweep's ranks per point against the
        named devices, and the lease dir."""
        check_options(params, cls.launch_overrides)
        nproc = int(params.get("nproc_per_node") or 1)
        pool = DeviceOptions.from_params(params).pool()
        problem = pool.too_small_for(nproc, "every point")
        if problem is not None:
            raise LauncherConfigError(problem)
        if pool.leases is not None:
            try:
                pool.leases.ensure()
            except OSError as error:
                raise LauncherConfigError(str(error)) from None

    def __init__(self, launcher: SweepLauncher) -> None:
        self.task_function = launcher.task_function
        self.cwd = str(launcher.config.hydra.runtime.cwd)
        self.pool: DevicePool = DeviceOptions.from_params(launcher.params).pool()
        self.warm = bool(launcher.params.get("warm", False))
        self.starter: AgentStarter = self._starter()

    def _starter(self) -> AgentStarter:
        """The warm process (ending with this factory, or at exit), left booting while
        the scheduler composes the first points; else cold start."""
        server = warm_starter(self.task_function, self.cwd, wait=False) if self.warm else None
        if server is None:
            self.warm = False  # unavailable: said once, not tried again
            return SubprocessStarter()
        weakref.finalize(self, server.close)
        return server

    def booting(self) -> bool:
        return booting(self.starter)

    def default_parallel(self, points: int, nproc: int) -> int:
        """What fits: with devices, as many points as they hold (points_per_device
        each; the pool gives each point its slice); on CPU, a core per rank but at
        least two points, so one point's start-up (importing torch, rendezvous)
        overlaps another's work."""
        if self.pool:
            return self.pool.capacity
        return max(2, (os.cpu_count() or 1) // nproc)

    def make(self, config: DictConfig, launch: LaunchConfig, job_dir: Path) -> Job:
        if not self.starter.alive():
            self.starter = self._starter()  # the warm process ended: a new one
        self.starter = booted_or_cold(self.starter)
        if isinstance(self.starter, SubprocessStarter):
            self.warm = False
        return TorchrunJob(
            config, self.task_function, launch, job_dir, console=False, starter=self.starter
        )

    def wait_for_news(self, timeout: float) -> None:
        self.starter.wait_for_news(timeout)
