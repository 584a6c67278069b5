"""``python -m runner.rerun JOB_DIR``: one sweep point run again, alone, with exactly
its config and world size, in real torchrun processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from runner.sweep.rows import collect
from tests.conftest import FAST, PROBE_APP, probe_records, read_json, run, runner_cli

pytestmark = pytest.mark.slow


def rerun(*args: str, check: bool = True):
    return run([sys.executable, "-m", "runner.rerun", *map(str, args)], check=check)


def test_a_completed_point_run_again_gives_the_same_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    runner_cli(
        "-m", *FAST, "trainer.nproc_per_node=2", "model.dropout=0.1", f"hydra.sweep.dir={sweep}"
    )
    record = read_json(sweep / "0" / "launch.json")
    into = tmp_path / "again"
    proc = run([*record["rerun"], "--into", str(into)])  # the command launch.json keeps
    assert f"running {sweep / '0'} again in {into}" in proc.stdout
    assert "ran again -> " in proc.stdout
    first, again = (read_json(d / "metrics.json") for d in (sweep / "0", into))
    assert again["world_size"] == 2
    for key in ("train_loss", "val_loss", "val_acc"):
        assert again[key] == first[key], key  # the same run, bit for bit on CPU
    for name in ("config.yaml", "overrides.yaml"):  # as composed, interpolations kept
        assert (into / ".hydra" / name).read_text() == (sweep / "0" / ".hydra" / name).read_text()
    hydra = (into / ".hydra" / "hydra.yaml").read_text()
    assert f"output_dir: {into}" in hydra
    assert (into / "checkpoint.pt").is_file() and (into / "runner.log").is_file()
    assert not (into / "checkpoint.pt").samefile(sweep / "0" / "checkpoint.pt")


def test_a_failed_point_of_a_script_app_fails_again_alone(tmp_path):
    """The probe app's task lives in its script (kept by value); the rerun gets the same
    resolved config (its ${now:} stamp too) and the same failure, into SWEEP/reruns/,
    which the sweep's summary leaves out."""
    sweep = tmp_path / "sweep"
    first = run(
        [sys.executable, str(PROBE_APP), "-m", "fail_rank=-1,1", f"hydra.sweep.dir={sweep}"],
        check=False,
    )
    assert first.returncode != 0
    failed = rerun(sweep / "1", check=False)
    assert failed.returncode == 1
    assert "the job failed again" in failed.stderr and "probe failure on rank 1" in failed.stderr
    (again_dir,) = (sweep / "reruns").iterdir()
    assert again_dir.name.startswith("1-")
    original, again = probe_records(sweep / "1"), probe_records(again_dir)
    assert [r["world_size"] for r in again] == [2, 2]
    assert again[0]["config"] == original[0]["config"]  # stamp: resolved once, kept
    assert again[0]["output_dir"] == str(again_dir.absolute())
    completed = rerun(sweep / "0")
    assert "ran again -> 1.0" in completed.stdout
    assert sorted(r.job for r in collect(sweep)) == [0, 1]  # reruns are not points


def test_a_dir_with_no_job_kept_is_a_clear_error(tmp_path):
    proc = rerun(tmp_path, check=False)
    assert proc.returncode == 2
    assert f"JOB_DIR='{tmp_path}' is invalid: it keeps no copy of its job" in proc.stderr
    assert "Fix: pass the dir of a sweep point" in proc.stderr
    assert not list(Path(tmp_path).iterdir())
