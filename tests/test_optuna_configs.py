"""runner's search beside hydra-optuna-sweeper: a search config written in that
sweeper's shape (its params, direction, n_trials, sampler mapping, study_name: null,
n_jobs) runs under ``hydra/sweeper=search``; a ``_target_`` line left from it is
refused naming the line; an Optuna too old for the search (as installing
hydra-optuna-sweeper leaves it) is an error naming both packages and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import APPS, launch_status, run

pytestmark = pytest.mark.slow

# Written the way hydra-optuna-sweeper's documentation writes a search config.
OPTUNA_STYLE = """\
defaults:
  - override hydra/launcher: torchrun
  - override hydra/sweeper: search
  - _self_

x: 0.5
y: 0.0
epochs: 2
epoch_s: 0.0
objectives: 1

hydra:
  sweeper:
{target}    sampler:
      _target_: optuna.samplers.TPESampler
      seed: 123
    direction: minimize
    study_name: null
    storage: null
    n_trials: 4
    n_jobs: 2
    params:
      x: interval(-1.0, 1.0)
      y: choice(-0.5, 0.0, 0.5)
"""
OTHER_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def search(tmp_path: Path, target: str = "", env: dict | None = None):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text(OPTUNA_STYLE.format(target=target))
    return run(
        [
            sys.executable,
            str(APPS / "search_app.py"),
            "--config-path",
            str(conf),
            "-m",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        env=env,
        check=False,
        timeout=300,
    )


def test_a_config_written_for_hydra_optuna_sweeper_runs_under_search(tmp_path):
    proc = search(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    sweep_dir = tmp_path / "sweep"
    assert [launch_status(sweep_dir / str(n)) for n in range(4)] == ["COMPLETED"] * 4
    assert not (sweep_dir / "4").exists()
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # study_name: null: named by the app and what it searches (optuna-dashboard's list)
    assert results["study_name"] == "search_app over x, y"
    assert "hydra.sweeper.n_jobs=2 (hydra-optuna-sweeper's key): trials at once" in out


def test_another_sweepers_target_line_is_refused_naming_the_line(tmp_path):
    proc = search(tmp_path, target=f"    _target_: {OTHER_SWEEPER}\n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"delete the line `_target_: {OTHER_SWEEPER}` from hydra.sweeper" in out, out[-3000:]
    assert "hydra.sweeper._target_" in out and "Traceback" not in out
    assert not (tmp_path / "sweep" / "0").exists()


def test_an_optuna_too_old_for_the_search_names_both_packages_and_the_fix(tmp_path):
    """What installing hydra-optuna-sweeper beside runner[search] leaves: optuna 2.10
    (its metadata first on the path, as pip's downgrade would leave it)."""
    old = tmp_path / "old"
    for name, meta in (
        ("optuna-2.10.1", "Name: optuna\nVersion: 2.10.1\n"),
        (
            "hydra_optuna_sweeper-1.2.0",
            "Name: hydra-optuna-sweeper\nVersion: 1.2.0\nRequires-Dist: optuna<3.0.0,>=2.10.0\n",
        ),
    ):
        info = old / f"{name}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\n{meta}")
    proc = search(tmp_path, env={"PYTHONPATH": str(old)})
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert "hydra/sweeper=search needs optuna>=4, but optuna 2.10.1 is installed" in out
    assert "hydra-optuna-sweeper 1.2.0 (optuna<3.0.0,>=2.10.0)" in out
    assert "Fix: pip install 'runner[search]'" in out
