"""One MLflow run per job, whatever its world size, nested under one run per sweep.

Rank 0 of a job opens (or continues) the job's run with :func:`open_point_run` and
logs to it; the run id is kept in the job dir (``mlflow_run.json``), so an elastic
restart, a resumed run or a resumed sweep continues the same run instead of opening
a second. A sweep's parent run is opened by :class:`MlflowCallback` in the sweep's
parent process (its id kept in the sweep dir), which also ends each job's run with the
job's status as ``launch.json`` says it (a rank that was killed cannot), tags it with
how the job ran and attaches its ``.hydra/`` files, and attaches the sweep's summary
to the parent run at the end. runner's trainer does all this with ``logger=mlflow``;
any Hydra task under the launcher calls :func:`open_point_run` itself::

    from runner.tracking import open_point_run

    run = open_point_run(cfg)           # None on ranks other than 0
    if run is not None:
        run.log_metrics({"val_loss": loss}, step=epoch)

The store and the run files are :mod:`runner.mlflow_store`'s. MLflow is imported only
when a run is opened or the callback has a tracking URI; nothing here imports torch.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import env_override, filter_overrides
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.mlflow_store import (
    RUN_FILE,
    SWEEP_RUN_FILE,
    TrackingError,
    check_tracking_uri,
    continued,
    experiment_id_for,
    experiment_name,
    open_client,
    read_run_file,
    store_uri,
    sweep_run,
    ui_link,
    write_run_file,
)
from runner.record import Outcome, read_record

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


class StoreUnavailable(SystemExit):
    """The store cannot be opened, found by the callback before any job starts. Hydra
    turns a callback's exceptions into warnings (and every job would then start and
    fail); a SystemExit is the one way a callback stops the run, with this message."""


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a sweep varies, from its parent's config: the command line's sweeps
    (``optim.lr=0.1,0.01``, ``interval(...)``) and those of ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    texts = [f"{k}={v}" for k, v in params.items()]
    texts += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    keys = [
        override.get_key_element().lstrip("+~")
        for override in OverridesParser.create().parse_overrides(texts)
        if override.is_sweep_override()
    ]
    return list(dict.fromkeys(keys))


def flat_params(config: Any, prefix: str = "") -> dict[str, str]:
    """A config (DictConfig or mapping) flattened to MLflow params: ``optim.lr``,
    ``model.hidden``, ..."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_params(value, f"{name}."))
        else:
            flat[name] = str(value)[:6000]
    return flat


class PointRun:
    """A job's run, as rank 0 logs to it. Steps already in the run's history (a run
    continued after its last checkpoint) are not logged twice."""

    def __init__(self, client: MlflowClient, run_id: str, last_step: int | None) -> None:
        self.client = client
        self.run_id = run_id
        self.last_step = last_step
        self.pending: list[Any] = []

    def log_metrics(self, metrics: Mapping[str, float], step: int, *, wait: bool = True) -> None:
        """Log ``metrics`` at ``step``. ``wait=False``: do not wait for the store
        (MLflow's asynchronous logging, so training never waits on a database commit);
        then :meth:`flush` before the task returns."""
        if self.last_step is not None and step <= self.last_step:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        operations = self.client.log_batch(self.run_id, metrics=batch, synchronous=wait)
        if operations is not None:  # logged in the background
            self.pending.append(operations)
        self.last_step = step

    def flush(self) -> None:
        """Wait until everything logged so far is in the store."""
        for operations in self.pending:
            operations.wait()
        self.pending.clear()

    def log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params
        new = [Param(k, v) for k, v in params.items() if k not in known]
        for start in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[start : start + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))


def open_point_run(
    cfg: DictConfig | Mapping[str, Any] | None = None,
    *,
    tracking_uri: str | None = None,
    experiment: str | None = None,
) -> PointRun | None:
    """From inside a Hydra task: the job's MLflow run, opened on global rank 0 (None on
    the other ranks), or continued if the job dir keeps one; nested under the sweep's
    parent run in a multirun. ``cfg``: logged flattened as params.
    ``tracking_uri``: see :func:`runner.mlflow_store.store_uri`; ``experiment``: see
    :func:`runner.mlflow_store.experiment_name`."""
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    experiment = experiment_name(experiment)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if not _ends_runs(hydra_cfg.callbacks):
        log.warning(
            "runner.tracking: hydra.callbacks has no runner.tracking.MlflowCallback, so "
            "nothing will end this job's MLflow run (or its sweep's): they stay RUNNING. "
            "Fix: add hydra.callbacks.mlflow._target_=runner.tracking.MlflowCallback with "
            "its tracking_uri to the app's config"
        )
    uri = store_uri(tracking_uri)
    job_dir = Path(hydra_cfg.runtime.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / RUN_FILE
    client = open_client(uri)
    kept = continued(path, client, uri)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if kept is not None:
        run_id = str(kept["run_id"])
        steps = [
            m.step
            for key in client.get_run(run_id).data.metrics
            for m in client.get_metric_history(run_id, key)
        ]
        run = PointRun(client, run_id, max(steps) if steps else None)
    else:
        tags: dict[str, str] = {"runner.job_dir": str(job_dir.resolve())}
        name = hydra_cfg.job.name
        if multirun:
            sweep_dir = Path(str(hydra_cfg.sweep.dir))
            parent = sweep_run(sweep_dir, uri, experiment)
            tags["mlflow.parentRunId"] = str(parent["run_id"])
            tags["runner.sweep_dir"] = str(sweep_dir.resolve())
            tags["runner.job_num"] = str(hydra_cfg.job.num)
            overrides = list(hydra_cfg.overrides.task)
            if "swept" in parent:  # named by what varies; else by every override
                swept = set(parent["swept"])
                overrides = [o for o in overrides if o.split("=")[0].lstrip("+~") in swept]
                tags["runner.swept"] = " ".join(overrides)
            name = f"#{hydra_cfg.job.num} " + " ".join(overrides)
        created = client.create_run(
            experiment_id_for(client, experiment), run_name=name[:250], tags=tags
        )
        write_run_file(path, {"run_id": created.info.run_id, "tracking_uri": uri})
        run = PointRun(client, created.info.run_id, None)
    run.set_tags(
        {
            "runner.overrides": " ".join(hydra_cfg.overrides.task),
            "runner.world_size": world_size,
        }
    )
    if cfg is not None:
        run.log_params(flat_params(cfg))
    return run


def _ends_runs(callbacks: Any) -> bool:
    """Whether the app's ``hydra.callbacks`` has the callback that ends its runs."""
    return any(
        str(c.get("_target_", "")) == f"{__name__}.{MlflowCallback.__name__}"
        and c.get("tracking_uri")
        for c in (callbacks or {}).values()
    )


class MlflowCallback(Callback):
    """Hydra callback of the process that starts the jobs (the sweep's parent, or a
    single run's): checks the store before any job starts, opens the sweep's parent
    run, and ends each job's run with its status. Does nothing without a
    ``tracking_uri`` (runner's app passes ``logger.tracking_uri``, set by
    ``logger=mlflow``)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None):
        self.tracking_uri = store_uri(tracking_uri) if tracking_uri else None
        self.experiment = experiment

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracking_uri:
            with _stops_the_run():
                check_tracking_uri(self.tracking_uri)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracking_uri:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            swept = swept_keys(config)
            fixed = [
                o
                for o in filter_overrides(list(config.hydra.overrides.task))
                if o.partition("=")[0].lstrip("+~") not in swept
            ]
            experiment = self.experiment or str(config.hydra.job.name)
            with _stops_the_run():
                check_tracking_uri(self.tracking_uri)
                sweep_run(sweep_dir, self.tracking_uri, experiment, swept, fixed)
            # A sweep that fails (or is stopped) never reaches on_multirun_end.
            atexit.register(self._end_sweep, sweep_dir, Outcome.FAILED.mlflow_status)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        output_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
        if not self.tracking_uri or not output_dir:
            return
        job_dir = Path(str(output_dir))
        kept = read_run_file(job_dir / RUN_FILE)
        if kept is None:
            return  # rank 0 never opened one (the job failed before it could)
        client = open_client(kept["tracking_uri"])
        run_id = kept["run_id"]
        record = read_record(job_dir)
        tags = record.to_json() if record is not None else {}
        for key in ("status", "command", "port", "slurm_job_id", "exit_code", "stopped_by"):
            value = tags.get(key)
            if value is not None:
                text = " ".join(map(str, value)) if isinstance(value, list) else str(value)
                client.set_tag(run_id, f"runner.{key}", text)
        hydra_dir = job_dir / str(OmegaConf.select(config, "hydra.output_subdir") or ".hydra")
        if hydra_dir.is_dir():
            client.log_artifacts(run_id, str(hydra_dir), artifact_path="hydra")
        if record is not None:
            status = record.status.mlflow_status
        else:  # a single run: no launch.json
            completed = getattr(job_return.status, "name", "") == Outcome.COMPLETED.value
            status = (Outcome.COMPLETED if completed else Outcome.FAILED).mlflow_status
        # With a tracking server MLflow prints two "View run" lines as a run ends: the
        # sweep's console shows points, not those; the sweep's own run prints its link.
        with env_override({"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}):
            client.set_terminated(run_id, status=status)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracking_uri:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            atexit.unregister(self._end_sweep)
            self._end_sweep(sweep_dir, Outcome.COMPLETED.mlflow_status)

    @staticmethod
    def _end_sweep(sweep_dir: Path, status: str) -> None:
        """End the sweep's parent run with ``status``, its summary attached."""
        kept = read_run_file(sweep_dir / SWEEP_RUN_FILE)
        if kept is None:
            return
        client = open_client(kept["tracking_uri"])
        for name in ("summary.md", "summary.csv"):
            if (sweep_dir / name).is_file():
                client.log_artifact(kept["run_id"], str(sweep_dir / name))
        from runner.sweep.rows import best_row, objective_name

        best = best_row(sweep_dir)
        if best is not None:
            row, rows = best
            value = float(row.objective or 0.0)  # a completed row's: never None
            client.log_metric(kept["run_id"], f"best_{objective_name(rows)}", value)
            client.set_tag(kept["run_id"], "runner.best_job", str(row.job))
            client.set_tag(kept["run_id"], "runner.best_job_dir", str(row.job_dir))
        client.set_terminated(kept["run_id"], status=status)
        run = client.get_run(kept["run_id"])
        print(f"MLflow: {ui_link(kept['tracking_uri'], run.info.experiment_id)}", flush=True)


@contextlib.contextmanager
def _stops_the_run() -> Iterator[None]:
    """In the callback: a TrackingError stops the run with its message (see
    StoreUnavailable), before any job starts."""
    try:
        yield
    except TrackingError as error:
        raise StoreUnavailable(f"Error: {error}") from None
