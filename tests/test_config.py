"""Composition: groups, overrides, presets and bad values, all without training."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

import runner.trainer.config  # noqa: F401
from runner.errors import ConfigError
from runner.trainer.cli import CONF_DIR, malformed_override
from runner.trainer.task import check_config


def make(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_composition():
    cfg = make()
    assert cfg.data._target_ == "runner.trainer.data.spirals"
    assert cfg.model._target_ == "runner.trainer.models.MLP"
    assert cfg.optim._target_ == "torch.optim.AdamW"
    assert cfg.scheduler is None
    assert cfg.trainer.nproc_per_node == 1
    assert cfg.data.seed == cfg.seed == 0
    check_config(cfg)


def test_group_swap_and_override():
    cfg = make("model=resmlp", "optim=sgd", "optim.lr=0.3", "scheduler=cosine", "seed=7")
    assert cfg.model._target_ == "runner.trainer.models.ResidualMLP"
    assert cfg.optim.lr == 0.3 and cfg.optim.momentum == 0.9
    assert cfg.scheduler._target_ == "runner.trainer.train.cosine_schedule"
    assert cfg.data.seed == 7


def test_experiment_preset_is_global():
    cfg = make("+experiment=blobs_resmlp")
    assert cfg.data._target_ == "runner.trainer.data.blobs"
    assert cfg.model._target_ == "runner.trainer.models.ResidualMLP"
    assert cfg.trainer.objective == "val_acc" and cfg.trainer.objective_mode == "max"
    assert cfg.optim.lr == 0.05


def test_user_target_from_cli():
    cfg = make("model._target_=my_pkg.MyNet")
    assert cfg.model._target_ == "my_pkg.MyNet"


def test_unknown_group_option_lists_choices():
    with pytest.raises(ConfigCompositionException) as err:
        make("model=nope")
    assert "mlp" in str(err.value) and "resmlp" in str(err.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("trainer.epochs=abc", "trainer.epochs"),
        ("trainer.batch_size=1.5", "trainer.batch_size"),
        ("optim.lr=fast", "optim.lr"),
        ("trainer.nope=1", "nope"),
        ("model.widht=3", "widht"),
    ],
)
def test_wrong_type_or_unknown_key_fails_at_composition(override, fragment):
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        make(override)
    text = str(err.value) + str(err.value.__cause__ or "")
    assert fragment in text


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["trainer.batch_size=0"], "trainer.batch_size=0"),
        (["optim.lr=-0.1"], "optim.lr=-0.1"),
        (["trainer.epochs=0"], "trainer.epochs=0"),
        (["trainer.grad_accum_steps=0"], "trainer.grad_accum_steps=0"),
        (["trainer.grad_accum_steps=128"], "trainer.grad_accum_steps=128"),
        (["trainer.batch_size=30", "trainer.grad_accum_steps=4"], "trainer.batch_size=30"),
        (["trainer.batch_size=100000"], "trainer.batch_size=100000"),
        (["trainer.objective_mode=up"], "trainer.objective_mode='up'"),
        (["trainer.nproc_per_node=0"], "trainer.nproc_per_node=0"),
        (["data.val_fraction=1.5"], "data.val_fraction=1.5"),
    ],
)
def test_nonsense_values_fail_before_training(overrides, key):
    with pytest.raises(ConfigError) as err:
        check_config(make(*overrides))
    assert key in str(err.value)
    assert "Fix:" in str(err.value)


@pytest.mark.parametrize(
    "override, what",
    [
        ("optim.lr=[0.1", "it opens a bracket that is never closed (a ']' is missing)"),
        ("model={hidden:3", "(a '}' is missing)"),
        ("seed='3", "its ' quote is never closed"),
        ("optim.lr=0.1)", "it closes a ')' that was never opened"),
        ("optim.lr=0.1,,0.2", "Hydra's override grammar cannot read it (extraneous input ','"),
        ("+trainer", "an override is KEY=VALUE"),
    ],
)
def test_malformed_override_names_itself_and_the_fix(override, what):
    message = malformed_override(["-m", override, "--cfg", "job"])
    assert message is not None and repr(override) in message.split(" is invalid: ")[0]
    assert what in message and "Fix: " in message


def test_well_formed_overrides_pass():
    args = ["-m", "optim.lr=0.1,0.01", "+experiment=ddp", "~scheduler", "--cfg", "job", "-cn", "x"]
    assert malformed_override(args) is None
