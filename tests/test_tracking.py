"""One tracked run per job (``logger=mlflow``), read back with MLflow's own client
from the SQLite store; TensorBoard's HParams read back with TensorBoard's reader."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import (
    FAST,
    PROBE_APP,
    modules_imported,
    read_json,
    run,
    runner_cli,
    wait_until,
)

EXPERIMENT = "runner"
# A foreign app's runs are filed under its own name (its Hydra job name).
PROBE_EXPERIMENT = "probe_app"


def client_of(db: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def runs_of(db: Path, experiment: str = EXPERIMENT) -> list:
    client = client_of(db)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} in {db}"
    return client.search_runs([found.experiment_id])


def history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tracked(db: Path) -> list[str]:
    """Small 2-rank training into the SQLite store ``db`` (``logger=mlflow``)."""
    return [
        "trainer.nproc_per_node=2",
        "data.n_samples=400",
        "trainer.progress=off",
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{db}",
    ]


@pytest.fixture(scope="module")
def tracked_sweep(tmp_path_factory):
    """Two points of two ranks each, ``logger=mlflow`` into an SQLite store."""
    base = tmp_path_factory.mktemp("tracked")
    db = base / "mlflow.db"
    proc = run(
        [
            sys.executable,
            "-X",
            "importtime",  # the parent's imports (its ranks run without the flag)
            "-m",
            "runner",
            "-m",
            "optim.lr=0.1,0.01",
            "trainer.epochs=3",
            *tracked(db),
            f"hydra.sweep.dir={base / 'sweep'}",
        ]
    )
    return base / "sweep", db, proc


@pytest.mark.slow
def test_a_tracked_sweeps_parent_imports_mlflow_but_never_torch(tracked_sweep):
    modules = modules_imported(tracked_sweep[2].stderr)
    assert "mlflow" in modules
    assert not [m for m in modules if m.split(".")[0] == "torch"]


@pytest.mark.slow
def test_a_sweep_has_one_run_per_point_under_one_parent_run(tracked_sweep):
    """Not one per rank: two 2-rank points give two runs, nested under the sweep's,
    whose params are the resolved config and whose metrics are metrics.jsonl's."""
    sweep, db, _ = tracked_sweep
    client = client_of(db)
    runs = runs_of(db)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, [r.info.run_name for r in runs]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    # Named by what the sweep varies, its fixed overrides as params, its best point.
    assert parent.info.run_name == "sweep over optim.lr (sweep)"
    assert parent.data.params["trainer.epochs"] == "3" and "optim.lr" not in parent.data.params
    best = min(read_json(sweep / str(n) / "metrics.json")["val_loss"] for n in range(2))
    assert parent.data.metrics["best_val_loss"] == pytest.approx(best)
    best_job = parent.data.tags["runner.best_job"]
    assert read_json(sweep / best_job / "metrics.json")["val_loss"] == pytest.approx(best)
    # Training runs, not GenAI traces, in MLflow's UI; its own INFO lines not on ours.
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "runner"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    output = tracked_sweep[2].stdout + tracked_sweep[2].stderr
    assert "Creating initial MLflow database tables" not in output
    page = f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert f"MLflow: mlflow ui --backend-store-uri sqlite:///{db}, then" in output
    assert page in output  # opens on the runs table, not the GenAI view
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"summary.md"}
    assert read_json(sweep / "mlflow_sweep.json")["run_id"] == parent.info.run_id
    for num in range(2):
        job_dir = sweep / str(num)
        run_id = read_json(job_dir / "mlflow_run.json")["run_id"]
        [point] = [r for r in children if r.info.run_id == run_id]
        assert point.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert point.info.status == "FINISHED"
        tags = point.data.tags
        assert tags["runner.job_num"] == str(num) and tags["runner.world_size"] == "2"
        assert tags["runner.status"] == "COMPLETED"
        assert "runner.launch.agent" in tags["runner.command"] and tags["runner.port"]
        lr = ["0.1", "0.01"][num]
        assert (
            f"optim.lr={lr}" in tags["runner.overrides"]
            and "logger=mlflow" in tags["runner.overrides"]
        )
        # Named by what the sweep varies, not by every override of the command line.
        assert tags["runner.swept"] == f"optim.lr={lr}"
        assert point.info.run_name == f"#{num} optim.lr={lr}"
        params = point.data.params
        assert params["optim.lr"] == ["0.1", "0.01"][num]
        assert params["trainer.nproc_per_node"] == "2" and params["model.hidden"]
        lines = jsonl(job_dir / "metrics.jsonl")
        for key in ("train_loss", "val_loss", "val_acc", "lr"):
            assert history(client, run_id, key) == [(line["epoch"], line[key]) for line in lines]
        artifacts = {a.path for a in client.list_artifacts(run_id, "hydra")}
        assert artifacts == {"hydra/config.yaml", "hydra/hydra.yaml", "hydra/overrides.yaml"}
        assert "MlflowCallback" not in (job_dir / "runner.log").read_text()  # runner's has it


@pytest.mark.slow
def test_a_run_killed_mid_training_and_resumed_keeps_one_run(tmp_path):
    """Rank 1 SIGKILLed in epoch 3 fails the run (FAILED); ``trainer.resume=auto`` into
    the same dir continues the same MLflow run, its metric history continuous (each
    epoch's step once) and equal to metrics.jsonl, and ends it FINISHED."""
    db = tmp_path / "mlflow.db"
    run_dir = tmp_path / "run"
    args = ["trainer.epochs=4", *tracked(db), f"hydra.run.dir={run_dir}"]
    failed = runner_cli(*args, env={"RUNNER_FAULT": "1:12"}, check=False)
    assert failed.returncode != 0
    [first] = runs_of(db)
    assert first.info.status == "FAILED"
    run_id = first.info.run_id
    assert read_json(run_dir / "mlflow_run.json")["run_id"] == run_id
    runner_cli(*args, "trainer.resume=auto", env={"RUNNER_FAULT": "1:12"})
    [again] = runs_of(db)
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    lines = jsonl(run_dir / "metrics.jsonl")
    assert [line["step"] for line in lines] == [5, 10, 15, 20]
    client = client_of(db)
    assert history(client, run_id, "val_loss") == [
        (line["epoch"], line["val_loss"]) for line in lines
    ]


@pytest.mark.slow
def test_an_elastic_restart_continues_the_points_run(tmp_path):
    """Rank 1 SIGKILLed in epoch 3 with ``hydra.launcher.max_restarts=1``: torchrun
    restarts both ranks, and rank 0 continues the run it opened (kept in the run dir)
    rather than opening a second; its history is metrics.jsonl's, each step once."""
    db = tmp_path / "mlflow.db"
    run_dir = tmp_path / "run"
    proc = runner_cli(
        "trainer.epochs=4",
        *tracked(db),
        "hydra.launcher.max_restarts=1",
        f"hydra.run.dir={run_dir}",
        env={"RUNNER_FAULT": "1:12"},
    )
    assert (run_dir / ".fault_rank1_step12").exists()
    assert "resuming at step" in proc.stdout + proc.stderr
    [point] = runs_of(db)
    assert point.info.status == "FINISHED"
    assert read_json(run_dir / "mlflow_run.json")["run_id"] == point.info.run_id
    lines = jsonl(run_dir / "metrics.jsonl")
    assert [line["step"] for line in lines] == [5, 10, 15, 20]
    assert history(client_of(db), point.info.run_id, "val_loss") == [
        (line["epoch"], line["val_loss"]) for line in lines
    ]


@pytest.fixture
def tracking_server(tmp_path):
    """A real MLflow tracking server (its own SQLite store and artifact dir) on a free
    loopback port; it and every process it started are gone afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                f"--backend-store-uri=sqlite:///{tmp_path / 'server.db'}",
                f"--artifacts-destination={tmp_path / 'server-artifacts'}",
                "--host=127.0.0.1",
                f"--port={port}",
                "--workers=1",
            ],
            cwd=tmp_path,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )

        def healthy() -> bool:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    return answer.status == 200
            except OSError:
                return False

        try:
            wait_until(healthy, 120, "the MLflow server")
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            finally:  # whatever of its session is left (its web workers)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(server.pid, signal.SIGKILL)
                server.wait()


@pytest.mark.slow
def test_a_tracking_server_url_works_the_same_way(tmp_path, tracking_server):
    """``logger.tracking_uri`` naming a running tracking server: one run for the 2-rank
    point under the sweep's, its metrics and ``.hydra/`` files in the server, the
    summary on the sweep's run; the sweep's console keeps to its points (no per-point
    "View run" lines from MLflow)."""
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    proc = runner_cli(
        "-m",
        "optim.lr=0.1",
        *FAST,
        "trainer.nproc_per_node=2",
        "logger=mlflow",
        f"logger.tracking_uri={tracking_server}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    client = MlflowClient(tracking_uri=tracking_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    [point] = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert point.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert point.info.status == parent.info.status == "FINISHED"
    assert point.data.tags["runner.world_size"] == "2"
    lines = jsonl(sweep / "0" / "metrics.jsonl")
    assert history(client, point.info.run_id, "val_loss") == [
        (line["epoch"], line["val_loss"]) for line in lines
    ]
    artifacts = {a.path for a in client.list_artifacts(point.info.run_id, "hydra")}
    assert "hydra/config.yaml" in artifacts
    assert "summary.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    # Stored by the server, not written beside the app: nothing under its cwd but the
    # sweep dir and the server's own files.
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "outputs").exists()
    assert proc.stdout.count("View run") <= 1, proc.stdout


@pytest.mark.slow
def test_a_resumed_sweep_continues_its_runs(tmp_path):
    """A point whose rank dies fails (its run FAILED, the sweep's parent run FAILED as
    the sweep fails); the same sweep with ``hydra.launcher.resume=true`` reruns it into
    the same runs: still one parent and two points, all FINISHED."""
    db = tmp_path / "mlflow.db"
    args = ["-m", "trainer.epochs=2,4", *tracked(db), f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = runner_cli(*args, env={"RUNNER_FAULT": "1:12"}, check=False)
    assert first.returncode != 0
    before = {r.info.run_id: r.info.status for r in runs_of(db)}
    assert sorted(before.values()) == ["FAILED", "FAILED", "FINISHED"]
    runner_cli(*args, "hydra.launcher.resume=true", env={"RUNNER_FAULT": "1:12"})
    after = {r.info.run_id: r.info.status for r in runs_of(db)}
    assert after.keys() == before.keys()
    assert set(after.values()) == {"FINISHED"}


OTHER_STORE = "sqlite:////elsewhere/mlflow.db"
UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kept", "message", "fix"),
    [
        ("{not json", "is corrupt", "delete it to start a new run"),
        (
            json.dumps({"run_id": UNKNOWN_RUN, "tracking_uri": OTHER_STORE}),
            f"keeps MLflow run {UNKNOWN_RUN} of the store {OTHER_STORE}, but this run logs to",
            f"Fix: log to that store again (tracking_uri={OTHER_STORE})",
        ),
        (
            json.dumps({"run_id": UNKNOWN_RUN}),
            f"keeps MLflow run {UNKNOWN_RUN}, which the store sqlite:///",
            "to start a new run, or log to the store that has it",
        ),
    ],
    ids=["corrupt", "another_store", "unknown_run"],
)
def test_a_run_file_that_cannot_be_continued_is_an_error_naming_it_never_a_second_run(
    tmp_path, kept, message, fix
):
    db = tmp_path / "mlflow.db"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "mlflow_run.json").write_text(kept)
    proc = runner_cli(
        *FAST,
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{db}",
        f"hydra.run.dir={run_dir}",
        check=False,
    )
    assert proc.returncode != 0
    assert f"{run_dir / 'mlflow_run.json'} {message}" in proc.stderr, proc.stderr[-2000:]
    assert fix in proc.stderr and "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.json").exists()
    assert (run_dir / "mlflow_run.json").read_text() == kept
    client = client_of(db)
    assert not [
        r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    ]


@pytest.mark.slow
def test_a_sweep_whose_run_file_is_corrupt_stops_before_any_point(tmp_path):
    """The sweep's parent run is continued by the parent before any point starts: a
    corrupt file stops the sweep there, naming it, with no point run."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "mlflow_sweep.json").write_text("{not json")
    proc = runner_cli(
        "-m",
        "seed=1,2",
        *FAST,
        "logger=mlflow",
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.sweep.dir={sweep}",
        check=False,
    )
    assert proc.returncode != 0
    assert f"{sweep / 'mlflow_sweep.json'} is corrupt" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in sweep.iterdir()) == [
        "mlflow_sweep.json",
        "mlflow_sweep.json.lock",
    ]


@pytest.mark.slow
def test_a_foreign_apps_call_lands_in_its_points_run_under_the_sweeps(tmp_path):
    """The probe app (not runner's) calls ``open_point_run`` in every rank; with the
    callback in its config, each 2-rank point is one run under the sweep's."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    sweep = tmp_path / "sweep"
    run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=1,2",
            f"track={uri}",
            f"hydra.sweep.dir={sweep}",
            "+hydra.callbacks.mlflow._target_=runner.tracking.MlflowCallback",
            f"+hydra.callbacks.mlflow.tracking_uri={uri}",
        ],
        cwd=tmp_path,
    )
    runs = runs_of(db, PROBE_EXPERIMENT)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_id: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert len(children) == 2 and parent.info.status == "FINISHED"
    for num in range(2):
        records = [read_json(p) for p in sorted((sweep / str(num)).glob("probe_rank*.json"))]
        assert [r["run_id"] is None for r in records] == [False, True]  # rank 0 only
        point = children[records[0]["run_id"]]
        assert point.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert point.info.status == "FINISHED"
        assert point.data.metrics["value"] == num + 1.0
        assert point.info.run_name == f"#{num} value={num + 1}"
    # Filed under the app's own name, not runner's.
    assert client_of(db).get_experiment(parent.info.experiment_id).name == PROBE_EXPERIMENT


@pytest.mark.slow
def test_a_foreign_app_without_the_callback_is_told_its_runs_stay_running(tmp_path):
    """Only the callback ends runs (a killed rank cannot end its own): the point's run
    is opened all the same, and rank 0's log says it will stay RUNNING, with the fix."""
    db = tmp_path / "mlflow.db"
    sweep = tmp_path / "sweep"
    run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=1",
            f"track=sqlite:///{db}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    statuses = sorted(r.info.status for r in runs_of(db, PROBE_EXPERIMENT))
    assert statuses == ["RUNNING", "RUNNING"]  # the point's and the sweep's
    log = (sweep / "0" / "probe_app.log").read_text()
    assert "hydra.callbacks has no runner.tracking.MlflowCallback" in log
    assert "Fix: add hydra.callbacks.mlflow._target_=runner.tracking.MlflowCallback" in log


@pytest.mark.slow  # several seconds: out of the quick subset
def test_a_jobs_status_ends_its_run(tmp_path):
    """The callback ends each job's run as launch.json says: COMPLETED -> FINISHED,
    FAILED -> FAILED, PRUNED and STOPPED -> KILLED (fast: runs made by hand in a real
    SQLite store, the jobs' records written as the scheduler writes them)."""
    from omegaconf import OmegaConf

    from runner.mlflow_store import RUN_FILE
    from runner.tracking import MlflowCallback

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    callback = MlflowCallback(tracking_uri=uri)
    client = client_of(tmp_path / "mlflow.db")
    experiment = client.create_experiment("x")
    expected = {
        "COMPLETED": "FINISHED",
        "FAILED": "FAILED",
        "PRUNED": "KILLED",
        "STOPPED": "KILLED",
    }
    for status, ended in expected.items():
        job_dir = tmp_path / status
        job_dir.mkdir()
        run_id = client.create_run(experiment).info.run_id
        (job_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
        (job_dir / "launch.json").write_text(json.dumps({"status": status, "port": 1234}))
        config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}}})
        callback.on_job_end(config=config, job_return=None)
        finished = client.get_run(run_id)
        assert finished.info.status == ended, status
        assert finished.data.tags["runner.status"] == status
    # A job whose rank 0 never opened a run: nothing to end, no error.
    empty = tmp_path / "empty"
    empty.mkdir()
    callback.on_job_end(
        config=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(empty)}}}),
        job_return=None,
    )


@pytest.mark.slow
def test_tensorboard_hparams_hold_every_points_choices_and_result(tmp_path):
    """``logger=tensorboard``: each point's event files carry what it chose (the swept
    key first among them, not the whole config, which is its ``config`` text) and its
    final metrics in TensorBoard's HParams format (read back with TensorBoard's own
    reader), so ``tensorboard --logdir SWEEP_DIR`` tables the sweep by what varies."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep = tmp_path / "sweep"
    runner_cli("-m", "optim.lr=0.1,0.01", *FAST, "logger=tensorboard", f"hydra.sweep.dir={sweep}")
    for num, lr in enumerate((0.1, 0.01)):
        events = EventAccumulator(str(sweep / str(num)))
        events.Reload()
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["optim.lr"].number_value == pytest.approx(lr)
        assert "model._target_" not in start.hparams  # chosen by no one: config text
        assert "model._target_" in str(events.Tensors("config/text_summary")[0])
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/experiment"]
        ).experiment
        names = {m.name.tag for m in experiment.metric_infos}
        assert {"final/val_loss", "final/objective_value"} <= names
        final = read_json(sweep / str(num) / "metrics.json")
        [scalar] = events.Scalars("final/val_loss")
        assert scalar.value == pytest.approx(final["val_loss"])


@pytest.mark.slow  # several seconds: out of the quick subset
def test_a_continued_run_logs_the_epochs_the_store_missed_once(tmp_path):
    """Logged in the background, an epoch's metrics can be lost when the job dies,
    though metrics.jsonl (written first) and the checkpoint hold that epoch: the
    continued run backfills it from metrics.jsonl, and logs nothing twice (fast: the
    trainer's logger on a run made by hand in a real SQLite store)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import runner.trainer.config  # noqa: F401  (its schemas, before composing)
    from runner.mlflow_store import RUN_FILE
    from runner.trainer.cli import CONF_DIR
    from runner.trainer.loggers import MlflowLogger

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["logger=mlflow", f"logger.tracking_uri={uri}"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.name = "runner"
    HydraConfig.instance().set_config(cfg)
    client = client_of(db)
    run_id = client.create_run(client.create_experiment(EXPERIMENT)).info.run_id
    client.log_metric(run_id, "val_loss", 0.5, step=1)  # epoch 1 reached the store
    (run_dir / RUN_FILE).write_text(json.dumps({"run_id": run_id, "tracking_uri": uri}))
    lines = [
        {"epoch": 1, "step": 5, "val_loss": 0.5, "objective": 0.5},
        {"epoch": 2, "step": 10, "val_loss": 0.4, "objective": 0.4},  # it did not
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task_cfg = cfg.copy()
    with open_dict(task_cfg):
        del task_cfg["hydra"]
    logger = MlflowLogger(task_cfg, run_dir, run_dir / "checkpoint.pt")
    logger.log({"epoch": 3, "step": 15, "val_loss": 0.3}, 3)
    logger.run.flush()
    assert history(client, run_id, "val_loss") == [(1, 0.5), (2, 0.4), (3, 0.3)]
    assert "objective" not in client.get_run(run_id).data.metrics


def test_the_swept_keys_are_the_sweeps_of_the_command_line_and_the_sweepers_params():
    """What names a point's run: the keys its sweep varies, whichever way they were
    swept (a list, a search space, ``hydra.sweeper.params``); a fixed value is not."""
    from omegaconf import OmegaConf

    from runner.tracking import swept_keys

    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"params": {"model.hidden": "8,16", "seed": "1"}},
                "overrides": {
                    "task": ["optim.lr=tag(log,interval(1e-4,1e-1))", "trainer.epochs=2", "+x=1,2"]
                },
            }
        }
    )
    assert swept_keys(config) == ["model.hidden", "optim.lr", "x"]
    assert swept_keys(OmegaConf.create({"hydra": {"overrides": {"task": []}}})) == []
