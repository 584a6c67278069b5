"""Hydra's bookkeeping for a sweep's jobs, in one place: what Hydra's basic launcher
does around each job, done for jobs that run elsewhere and end in any order.

A :class:`HydraJob` is one point composed (the sweep config with the point's
overrides, its job number and id, its output dir); its ``.hydra/`` files; the user's
callbacks (``on_job_start``, ``on_job_end``), each called with that job's own
``HydraConfig`` set and the one before put back; and the ``JobReturn`` the sweeper
gets. In the sweep layer only this module touches ``HydraConfig`` and ``JobReturn``'s
private value.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.errors import LauncherConfigError
from runner.launch.app import config_check
from runner.launch.codec import task_config
from runner.launch.options import LaunchConfig


def value_of(ret: JobReturn) -> Any:
    """What a job returned, or the error it failed with (``JobReturn.return_value``
    raises the error instead)."""
    return ret._return_value


def cancelled(idx: int, overrides: list[str], error: Exception, task_name: str) -> JobReturn:
    """The JobReturn of a point that never started (``error`` says why)."""
    ret = JobReturn()
    ret.overrides = list(overrides)
    ret.status = JobStatus.FAILED
    ret.return_value = error
    ret.task_name = task_name
    ret.working_dir = ""
    return ret


def _read_back(name: str) -> Any:
    """A :class:`StoredReturn` config: read from its job's ``.hydra/NAME`` when asked
    for (JobReturn's ``__init__`` sets it to None, which is all it may set)."""

    def read(ret: StoredReturn) -> DictConfig:
        loaded = OmegaConf.load(ret._dir / name)
        assert isinstance(loaded, DictConfig)
        return loaded

    def settle(ret: StoredReturn, value: Any) -> None:
        assert value is None, "a StoredReturn's configs are its job's files"

    return property(read, settle)


class StoredReturn(JobReturn):
    """A finished job's ``JobReturn`` that keeps its configs on disk, not in memory:
    ``cfg`` and ``hydra_cfg`` are read back from the job's ``.hydra/`` files (written
    from them) when asked for, so a sweep of thousands of points holds no finished
    point's config."""

    def __init__(self, ret: JobReturn, hydra_dir: Path) -> None:
        self._dir = hydra_dir
        super().__init__(
            overrides=ret.overrides,
            working_dir=ret.working_dir,
            task_name=ret.task_name,
            status=ret.status,
            _return_value=ret._return_value,
        )

    cfg = _read_back("config.yaml")
    hydra_cfg = _read_back("hydra.yaml")


@dataclass
class HydraJob:
    """One point composed: its config is final (job num and id, output dir)."""

    idx: int
    overrides: list[str]
    config: DictConfig
    _task_config: DictConfig | None = field(default=None, repr=False)
    # Its HydraConfig state (a masked copy of its config: made once, the config final).
    _hydra: Any = field(default=None, repr=False)

    @classmethod
    def compose(
        cls, hydra_context: Any, sweep_config: DictConfig, idx: int, overrides: list[str]
    ) -> HydraJob:
        """Compose point ``idx``'s config and fix its job num, id and output dir."""
        config = hydra_context.config_loader.load_sweep_config(sweep_config, overrides)
        with open_dict(config):
            config.hydra.job.id = idx
            config.hydra.job.num = idx
        job = cls(idx, list(overrides), config)
        with job.current():  # the sweep's subdir may read ${hydra:job.num}
            output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        # The config is final from here: the job's HydraConfig copy says the same.
        for runtime in (config.hydra.runtime, job._hydra.hydra.runtime):
            with read_write(runtime), open_dict(runtime):
                runtime.output_dir = str(output_dir.absolute())
        return job

    @property
    def job_dir(self) -> Path:
        return Path(str(self.config.hydra.runtime.output_dir))

    @property
    def label(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(no overrides)"

    @property
    def task_name(self) -> str:
        return str(self.config.hydra.job.name)

    def launcher_params(self) -> dict[str, Any]:
        """The point's ``hydra.launcher`` node, resolved."""
        params = OmegaConf.to_container(self.config.hydra.launcher, resolve=True)
        assert isinstance(params, dict)
        return {str(k): v for k, v in params.items()}

    def launch_config(self, **overrides: Any) -> LaunchConfig:
        """The point's torchrun options (its ``hydra.launcher``, resolved as this job),
        for its number; ``overrides``: what the sweep's job factory sets."""
        with self.current():
            params = self.launcher_params()
        try:
            launch = LaunchConfig.from_config(params, **overrides)
        except ValueError as error:
            raise LauncherConfigError(f"sweep point #{self.idx} ({self.label}): {error}") from None
        return launch.for_point(self.idx)

    def task_config(self) -> DictConfig:
        """The config the task sees (made once: it is a deep copy)."""
        if self._task_config is None:
            self._task_config = task_config(self.config)
        return self._task_config

    @contextlib.contextmanager
    def current(self) -> Iterator[None]:
        """This job's ``HydraConfig`` while the block runs, and the one before put back
        after, as Hydra's own ``run_job`` does: a user's callback that reads
        ``HydraConfig.get()`` sees its own job, whatever order points start and end in.
        Hydra's copy of the config is made once a job, not at every callback."""
        state = HydraConfig.instance()
        before = state.cfg
        if self._hydra is None:
            state.set_config(self.config)
            self._hydra = state.cfg
        else:
            state.cfg = self._hydra
        try:
            yield
        finally:
            state.cfg = before

    def begin(self, hydra_context: Any, task_function: Any) -> None:
        """Before the job starts: its dir and ``.hydra/`` (config, hydra config,
        overrides), then the callbacks' ``on_job_start``, as this job."""
        config = self.config
        with self.current():
            self.job_dir.mkdir(parents=True, exist_ok=True)
            if config.hydra.output_subdir is not None:
                hydra_dir = self.job_dir / str(config.hydra.output_subdir)
                hydra_dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(self.task_config(), hydra_dir / "config.yaml")
                OmegaConf.save(HydraConfig.instance().cfg, hydra_dir / "hydra.yaml")
                OmegaConf.save(config.hydra.overrides.task, hydra_dir / "overrides.yaml")
            hydra_context.callbacks.on_job_start(config=config, task_function=task_function)

    def end(self, hydra_context: Any, ret: JobReturn) -> None:
        """After the job ended: the callbacks' ``on_job_end``, as this job."""
        with self.current():
            hydra_context.callbacks.on_job_end(config=self.config, job_return=ret)

    def check(self, task_function: Any) -> None:
        """The task's own check of this point's config (:func:`runner.launch.app.checked_by`),
        as this job: raises what the check raises."""
        check = config_check(task_function)
        if check is not None:
            with self.current():
                check(self.task_config())

    def stored(self, ret: JobReturn) -> JobReturn:
        """``ret`` once its callbacks have seen it, kept for the sweeper: its configs
        read back from this job's ``.hydra/`` (:class:`StoredReturn`) where it has one."""
        if self.config.hydra.output_subdir is None or not (self.job_dir.is_dir()):
            return ret
        hydra_dir = self.job_dir / str(self.config.hydra.output_subdir)
        return StoredReturn(ret, hydra_dir) if (hydra_dir / "hydra.yaml").is_file() else ret

    def job_return(self, status: JobStatus, value: Any) -> JobReturn:
        """What Hydra's sweeper gets for this point."""
        ret = JobReturn()
        ret.overrides = list(self.overrides)
        ret.cfg = self.task_config()
        ret.hydra_cfg = self.config  # read for its hydra node; the point's config is final
        ret.working_dir = str(self.job_dir)
        ret.task_name = self.task_name
        ret.status = status
        ret.return_value = value
        return ret
