"""The trainer in-process: it learns, it is deterministic, it writes its outputs."""

from __future__ import annotations

import json

import pytest
import torch

from runner.trainer.data import blobs, regression, spirals
from runner.trainer.train import train
from tests.test_config import make


def trained(tmp_path, *overrides):
    cfg = make(f"paths.output_dir={tmp_path}", "trainer.progress=off", *overrides)
    return train(cfg), tmp_path


def epochs(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_default_experiment_learns_spirals(tmp_path):
    value, run_dir = trained(tmp_path)
    history = epochs(run_dir)
    assert len(history) == 20
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 3
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["val_acc"] >= 0.9
    assert value == pytest.approx(final["val_loss"]) == pytest.approx(final["objective_value"])
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 20 and "net.0.weight" in checkpoint["model"]


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a, _ = trained(tmp_path / "a", "trainer.epochs=3")
    b, _ = trained(tmp_path / "b", "trainer.epochs=3")
    c, _ = trained(tmp_path / "c", "trainer.epochs=3", "seed=1")

    def without_time(run_dir):
        return [{k: v for k, v in e.items() if k != "elapsed_s"} for e in epochs(run_dir)]

    assert without_time(tmp_path / "a") == without_time(tmp_path / "b")
    assert without_time(tmp_path / "a") != without_time(tmp_path / "c")
    assert a == b and a != c


def test_objective_and_direction_from_config(tmp_path):
    value, run_dir = trained(tmp_path, "+experiment=blobs_resmlp", "trainer.epochs=3")
    final = json.loads((run_dir / "metrics.json").read_text())
    assert final["objective"] == "val_acc" and value == final["val_acc"] > 0.5


def test_regression_with_accumulation_and_sgd(tmp_path):
    value, run_dir = trained(
        tmp_path,
        "+experiment=regression",
        "trainer.epochs=4",
        "trainer.grad_accum_steps=4",
        "optim=sgd",
        "optim.lr=0.02",
    )
    history = epochs(run_dir)
    assert "val_acc" not in history[-1]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert value == history[-1]["val_loss"]


def test_cosine_schedule_decays_lr(tmp_path):
    trained(tmp_path, "scheduler=cosine", "trainer.epochs=3")
    lrs = [e["lr"] for e in epochs(tmp_path)]
    assert lrs[0] > lrs[1] > lrs[2] == pytest.approx(0.0, abs=1e-9)


def test_unknown_objective_is_named(tmp_path):
    with pytest.raises(ValueError, match="trainer.objective='val_acc'"):
        trained(tmp_path, "+experiment=regression", "trainer.objective=val_acc")


@pytest.mark.parametrize("builder", [spirals, blobs, regression])
def test_datasets_are_deterministic_and_sized(builder):
    a, b = builder(n_samples=500, seed=3), builder(n_samples=500, seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert len(a.x_train) + len(a.x_val) == 500 and len(a.x_val) == 100
    assert not torch.equal(a.x_train, builder(n_samples=500, seed=4).x_train)
