"""The MLflow store runner logs to, and the files that name its runs: a job dir's
``mlflow_run.json`` (the job's run) and a sweep dir's ``mlflow_sweep.json`` (the
sweep's parent run), each continued rather than opened twice. Used by
:mod:`runner.tracking` (the job's run and the callback that ends it).

MLflow is imported only when a store is opened; nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hydra.core.utils import env_override
from hydra.errors import CompactHydraException

from runner.errors import invalid
from runner.launch.procs import write_atomic
from runner.launch.trust import check_store

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# In a job dir: the job's run; in a sweep dir: the sweep's parent run.
RUN_FILE = "mlflow_run.json"
SWEEP_RUN_FILE = "mlflow_sweep.json"


class TrackingError(CompactHydraException, RuntimeError):
    """A tracking store that cannot be used, or a run id file that cannot be continued
    (Hydra prints it alone, not a traceback)."""


# An experiment's kind, as MLflow's UI (3.x) reads it: training runs, not GenAI traces.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def open_client(tracking_uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    # MLflow's (and its migrations') INFO lines ("Creating initial MLflow database
    # tables...") are the store's business, not the console's; warnings still show.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_name(experiment: str | None) -> str:
    """The experiment runs go to: ``experiment``, else the app's own name (Hydra's job
    name), so a foreign app's runs are not filed under runner's."""
    if experiment:
        return experiment
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().job.name) if HydraConfig.initialized() else "runner"


def check_tracking_uri(tracking_uri: str, key: str = "logger.tracking_uri") -> None:
    """Open the store once, failing fast (no retries): an error naming ``key``, the
    URI and the fix if it cannot be reached or opened."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :])
        with contextlib.suppress(OSError):  # a dir that cannot be made fails below
            path.parent.mkdir(parents=True, exist_ok=True)
        check_store(
            path,
            f"{key}: the SQLite store",
            "remove the link, or a path of your own, or a tracking server's URL for a "
            "store that several users share",
        )
    fail_fast = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    try:
        with env_override(fail_fast):
            open_client(tracking_uri).search_experiments(max_results=1)
    except Exception as error:
        raise TrackingError(
            invalid(
                key,
                tracking_uri,
                f"cannot be opened ({type(error).__name__}: {_reason(error)})",
                f"{key}=sqlite:///ABSOLUTE/PATH/mlflow.db (an embedded store), or the URL "
                "of a tracking server that is running",
            )
        ) from None


def _reason(error: Exception) -> str:
    """An error's first line, short enough for a message of ours."""
    return (str(error).splitlines() or [type(error).__name__])[0][:200]


def read_run_file(path: Path) -> dict | None:
    """The run a job dir (or sweep dir) keeps, or None if it keeps none; a file that
    cannot be read is an error naming it, never a silent second run."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("run_id"), str) or not data["run_id"]:
            raise ValueError("no run_id")
        return data
    except (OSError, ValueError, AttributeError) as error:
        raise TrackingError(
            f"{path} is corrupt ({error}): it should name the MLflow run this job continues. "
            "Fix: restore it, or delete it to start a new run for this job"
        ) from None


def continued(path: Path, client: MlflowClient, tracking_uri: str) -> dict | None:
    """The run ``path`` keeps (None if none), checked against the store it is to go on
    in and set RUNNING again: one kept for another store, or one the store cannot
    give, is an error naming the file, never a silent second run."""
    kept = read_run_file(path)
    if kept is None:
        return None
    run_id, store = kept["run_id"], kept.get("tracking_uri", tracking_uri)
    if store != tracking_uri:
        raise TrackingError(
            f"{path} keeps MLflow run {run_id} of the store {store}, but this run logs to "
            f"{tracking_uri}. Fix: log to that store again (tracking_uri={store}), or "
            f"delete {path} to start a new run in this one"
        )
    try:
        status = client.get_run(run_id).info.status
    except Exception as error:
        raise TrackingError(
            f"{path} keeps MLflow run {run_id}, which the store {tracking_uri} cannot give "
            f"({_reason(error)}). Fix: delete {path} to start a new run, or log to the store that "
            "has it"
        ) from None
    if status != "RUNNING":
        client.update_run(run_id, status="RUNNING")
    return kept


def write_run_file(path: Path, data: dict) -> None:
    write_atomic(path, (json.dumps(data) + "\n").encode())


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (concurrent points opening one parent run)."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def experiment_id_for(client: MlflowClient, name: str) -> str:
    """The experiment's id, made if new; with an SQLite store its artifacts go beside
    the database (not into ``./mlruns`` of whichever process made it)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if not found.tags.get("mlflow.experimentKind"):
            with contextlib.suppress(Exception):  # another user's experiment: as it is
                client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return str(found.experiment_id)
    uri = str(client.tracking_uri)
    location = None
    if uri.startswith("sqlite:///"):
        location = Path(uri[len("sqlite:///") :]).with_name("mlflow-artifacts").as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND))
    except Exception:  # made by a concurrent process in between
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def sweep_run(
    sweep_dir: Path,
    tracking_uri: str,
    experiment: str,
    swept: list[str] | None = None,
    fixed: list[str] | None = None,
) -> dict:
    """The sweep's parent run: the one its dir keeps, else a new one (made once, under
    a lock, whoever asks first), named by what the sweep varies, its ``fixed``
    overrides as params. Returns what the sweep dir keeps of it: ``run_id``, and
    ``swept``, the keys the sweep varies, when the sweep's parent made it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / SWEEP_RUN_FILE
    with _locked(path):
        client = open_client(tracking_uri)
        kept = continued(path, client, tracking_uri)
        if kept is not None:
            return kept
        over = f" over {', '.join(swept)}" if swept else ""
        run = client.create_run(
            experiment_id_for(client, experiment),
            run_name=f"sweep{over} ({sweep_dir.name})"[:250],
            tags={"runner.sweep_dir": str(sweep_dir.resolve())},
        )
        for override in fixed or []:
            key, _, value = override.partition("=")
            try:  # a key MLflow refuses (db@backup) is left out, not the sweep
                client.log_param(run.info.run_id, key.lstrip("+~"), value[:6000])
            except Exception as error:
                log.warning("the sweep's run leaves out the param %s (%s)", key, error)
        data = {"run_id": run.info.run_id, "tracking_uri": tracking_uri}
        if swept is not None:
            data["swept"] = swept
        write_run_file(path, data)
        return data


def store_uri(tracking_uri: str | None) -> str:
    """The store's URI as every process of a run must see it: a relative SQLite path is
    taken from the dir Hydra was started in (ranks may run elsewhere); none given:
    ``$MLFLOW_TRACKING_URI``, else ``sqlite:///outputs/mlflow.db``."""
    from hydra.core.hydra_config import HydraConfig

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///outputs/mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        base = Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()
        uri = prefix + str((base / uri[len(prefix) :]).absolute())
    return uri


def ui_link(tracking_uri: str, experiment_id: str) -> str:
    """Where MLflow's UI shows an experiment's runs, in its model-training view (the
    UI opens on its GenAI view unless the link says otherwise): the server's page, or
    for a store without one the command that serves it and the page."""
    page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {tracking_uri}, then http://127.0.0.1:5000/{page}"
