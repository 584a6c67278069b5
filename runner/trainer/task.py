"""runner's task function: check the config, then train in-process or hand the job
to torchrun.

A run that wants one process trains here. A run that wants more (``nproc_per_node``
or ``nnodes`` above 1) and is not yet inside a torchrun worker is handed, whole, to
the launch core (:func:`runner.launch.app.run_task`, which any Hydra app can use),
which starts one torchrun whose every rank calls :func:`train_task`. Nothing here
imports torch until training starts, so composing, printing and scheduling stay light.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import ConfigError, Problems
from runner.launch.app import checked_by, discard_unstarted_run, run_task, wanted_world_size

# What every rank imports as it starts (a warm sweep imports it once, ahead).
RANK_IMPORTS = ("runner.trainer.train",)


def check_keys(cfg: DictConfig) -> None:
    """Unknown keys in typed nodes. Hydra rejects ``trainer.nope=1`` itself, but a ``+``
    override appends even to a typed node, so ``+trainer.nope=1`` would pass silently."""
    from dataclasses import fields

    from runner.trainer.config import BUILT_IN_SCHEMAS, LoggerConf, PathsConf, TrainerConf

    nodes = {"trainer": TrainerConf, "paths": PathsConf, "logger": LoggerConf}
    for group in ("data", "model", "optim", "scheduler"):
        node = cfg.get(group)
        if node is not None and node.get("_target_") in BUILT_IN_SCHEMAS:
            nodes[group] = BUILT_IN_SCHEMAS[node._target_]
    for group, schema in nodes.items():
        known = {f.name for f in fields(schema)}
        unknown = sorted(set(cfg[group].keys()) - known)
        if unknown:
            import difflib

            shown = sorted(k for k in known if not k.startswith("_"))
            close = difflib.get_close_matches(unknown[0], shown, n=1, cutoff=0.75)
            mean = f"Did you mean {group}.{close[0]}? " if close else ""
            raise ConfigError(
                f"{group}.{unknown[0]} is not a key of {group} ({schema.__name__}); known keys: "
                f"{shown}. {mean}Fix: drop it, or point "
                f"{group}._target_ at your own class with a config of its own"
            )


def check_missing(cfg: DictConfig) -> None:
    """A mandatory value left unset (``???``, or a group removed with ``~data``): name
    it and what it can be, instead of OmegaConf's error from deep inside a check."""
    from runner.trainer.cli import CONF_DIR

    def missing(node: Any, prefix: str = "") -> Iterator[str]:
        for key, value in node.items():
            if value == "???":
                yield f"{prefix}{key}"
            elif isinstance(value, dict):
                yield from missing(value, f"{prefix}{key}.")

    found = Problems(ConfigError)
    # Unresolved: interpolations (the run dir's ${hydra:...}) need no Hydra state here.
    for key in missing(OmegaConf.to_container(cfg, resolve=False)):
        options = sorted(p.stem for p in Path(CONF_DIR, *key.split(".")).glob("*.yaml"))
        fix = f"{key}={options[0]} (one of {', '.join(options)})" if options else f"{key}=VALUE"
        found.check(False, key, "???", "is mandatory and has no value", fix)
    found.raise_any()


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail (or silently misbehave) deep inside training."""
    check_missing(cfg)
    check_keys(cfg)
    t = cfg.trainer
    # Raised at the first problem: later rules divide by values earlier ones check.
    need = Problems(ConfigError)
    need.require(
        cfg.logger.name in ("none", "tensorboard", "mlflow"),
        "logger",
        cfg.logger.name,
        "must be none, tensorboard or mlflow",
        "logger=tensorboard",
    )
    if cfg.logger.name in ("tensorboard", "mlflow"):
        import importlib.util

        need.require(
            importlib.util.find_spec(cfg.logger.name) is not None,
            "logger",
            cfg.logger.name,
            f"needs the {cfg.logger.name} package, which is not installed",
            f"pip install 'runner[{cfg.logger.name}]'",
        )
    if cfg.logger.name == "mlflow":
        need.require(
            bool(cfg.logger.tracking_uri),
            "logger.tracking_uri",
            cfg.logger.tracking_uri,
            "must name an MLflow store",
            "logger.tracking_uri=sqlite:///ABSOLUTE/PATH/mlflow.db",
        )
    need.require(t.epochs >= 1, "trainer.epochs", t.epochs, "must be >= 1", "trainer.epochs=10")
    need.require(
        t.batch_size >= 1,
        "trainer.batch_size",
        t.batch_size,
        "must be >= 1",
        "trainer.batch_size=64",
    )
    need.require(
        t.grad_accum_steps >= 1,
        "trainer.grad_accum_steps",
        t.grad_accum_steps,
        "must be >= 1",
        "trainer.grad_accum_steps=1",
    )
    need.require(
        t.nproc_per_node >= 1,
        "trainer.nproc_per_node",
        t.nproc_per_node,
        "must be >= 1",
        "trainer.nproc_per_node=2",
    )
    need.require(
        t.objective_mode in ("min", "max"),
        "trainer.objective_mode",
        t.objective_mode,
        "must be 'min' or 'max'",
        "trainer.objective_mode=min",
    )
    need.require(
        t.progress in ("auto", "bar", "lines", "off"),
        "trainer.progress",
        t.progress,
        "must be one of auto, bar, lines, off",
        "trainer.progress=auto",
    )
    need.require(
        t.device in ("auto", "cpu", "cuda"),
        "trainer.device",
        t.device,
        "must be one of auto, cpu, cuda",
        "trainer.device=auto",
    )
    need.require(
        t.checkpoint_every >= 0,
        "trainer.checkpoint_every",
        t.checkpoint_every,
        "must be >= 0 steps",
        "trainer.checkpoint_every=0 (epoch ends only)",
    )
    need.require(
        t.num_threads >= 0,
        "trainer.num_threads",
        t.num_threads,
        "must be >= 0",
        "trainer.num_threads=0 (torch's default)",
    )
    lr = cfg.optim.get("lr")
    if lr is not None:
        need.require(lr > 0, "optim.lr", lr, "must be > 0", "optim.lr=0.01")
    world = wanted_world_size(default=t.nproc_per_node)
    per_step = world * t.grad_accum_steps
    need.require(
        t.grad_accum_steps <= t.batch_size // world,
        "trainer.grad_accum_steps",
        t.grad_accum_steps,
        f"is more than the {t.batch_size // world} sample(s) each of the {world} rank(s) "
        f"gets per global batch of {t.batch_size}",
        f"trainer.grad_accum_steps={max(1, t.batch_size // world)} or a larger batch",
    )
    need.require(
        t.batch_size % per_step == 0,
        "trainer.batch_size",
        t.batch_size,
        f"must split evenly over {world} rank(s) x {t.grad_accum_steps} accumulation "
        f"step(s) = {per_step}",
        f"trainer.batch_size={max(per_step, t.batch_size // per_step * per_step)}",
    )
    data = cfg.data
    if "n_samples" in data and "val_fraction" in data:
        need.require(
            0 < data.val_fraction < 1,
            "data.val_fraction",
            data.val_fraction,
            "must be between 0 and 1",
            "data.val_fraction=0.2",
        )
        n_train = data.n_samples - max(1, round(data.n_samples * data.val_fraction))
        batches = n_train // t.batch_size
        need.require(
            batches >= 1,
            "trainer.batch_size",
            t.batch_size,
            f"is larger than the {n_train} training samples",
            f"trainer.batch_size={max(per_step, n_train // 4 // per_step * per_step)}",
        )


def train_task(cfg: DictConfig) -> float:
    """What the run's one process, or each of its ranks, runs."""
    from runner.trainer.train import train

    return train(cfg)


@checked_by(check_config)
def main(cfg: DictConfig) -> float:
    """Hydra task: check ``cfg``, then train it here or in ``nproc_per_node`` ranks of
    one torchrun (:func:`runner.launch.app.run_task`); return the objective (a float
    for sweepers)."""
    try:
        check_config(cfg)
    except ConfigError:
        discard_unstarted_run()  # a single run that never started leaves no run dir
        raise
    return run_task(train_task, cfg, nproc=cfg.trainer.nproc_per_node)
