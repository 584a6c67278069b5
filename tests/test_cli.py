"""``python -m runner`` end to end, in subprocesses, as a user types it."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import REPO, modules_imported, run, runner_cli

pytestmark = pytest.mark.slow


def test_default_run_end_to_end(default_run):
    run_dir, proc = default_run
    assert "done: val_loss=" in proc.stdout + proc.stderr
    for name in (
        "metrics.json",
        "metrics.jsonl",
        "checkpoint.pt",
        "runner.log",
        ".hydra/config.yaml",
        ".hydra/hydra.yaml",
        ".hydra/overrides.yaml",
    ):
        assert (run_dir / name).is_file(), name
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["val_acc"] >= 0.9
    assert "done: val_loss" in (run_dir / "runner.log").read_text()


def imported_modules(*args: str) -> str:
    """stderr of ``python -X importtime -m runner ARGS``: one line per imported module."""
    proc = run([sys.executable, "-X", "importtime", "-m", "runner", *args])
    return proc.stderr


@pytest.mark.parametrize(
    "args",
    [["--cfg", "job"], ["--help"], ["--cfg", "hydra"], ["--cfg", "job", "logger=mlflow"]],
)
def test_parent_commands_do_not_import_torch(args):
    """Nor MLflow, even when chosen: composing and printing a config opens no store."""
    modules = modules_imported(imported_modules(*args))
    assert "hydra" in modules and "omegaconf" in modules
    assert not [m for m in modules if m.split(".")[0] in ("torch", "mlflow")]


def test_help_shows_the_app_and_only_the_options_a_user_picks():
    out = runner_cli("--help").stdout
    assert out.startswith("runner: Hydra configs, sweeps and multi-process DDP")
    assert "powered by Hydra" not in out.splitlines()[0]
    assert "_schema" not in out
    assert "model: mlp, resmlp" in out and "data: blobs, regression, spirals" in out
    assert "--multirun" in out and "--hydra-help" in out  # Hydra's flags follow
    # The commands of the README's Usage section, each as the help shows it.
    readme = (REPO / "README.md").read_text()
    usage = readme.split("## Usage", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in usage.strip().splitlines() if line.startswith("python")]
    assert len(commands) >= 8
    for command in commands:
        assert command in out, command


def test_cfg_job_prints_composed_config():
    out = runner_cli("--cfg", "job", "model=resmlp", "trainer.epochs=3").stdout
    assert "_target_: runner.trainer.models.ResidualMLP" in out and "epochs: 3" in out


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=nope", "Could not find 'model/nope'"),
        ("trainer.epochs=abc", "trainer.epochs"),
        ("trainer.batch_size=0", "trainer.batch_size=0 is invalid"),
        ("optim.lr=-1", "optim.lr=-1.0 is invalid"),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, override, message):
    proc = runner_cli(override, f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "site-packages/torch" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_sweep_runs_every_point(tmp_path):
    sweep = tmp_path / "sweep"
    proc = runner_cli(
        "-m",
        f"hydra.sweep.dir={sweep}",
        "optim.lr=0.01,0.003",
        "model=mlp,resmlp",
        "trainer.epochs=2",
        "data.n_samples=400",
        cwd=REPO,
    )
    for num in range(4):
        assert (sweep / str(num) / "metrics.json").is_file()
    assert proc.stderr.count(" done ") + proc.stdout.count(" done ") >= 4
