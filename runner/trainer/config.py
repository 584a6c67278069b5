"""Typed schemas for runner's config, stored in Hydra's ConfigStore.

Every built-in option in ``conf/`` extends one of these schemas through its defaults
list, so a wrong type or an unknown key fails when Hydra composes the config, with
Hydra's own message. Users who bring their own ``_target_`` write their own YAML
option (or schema) next to these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class PathsConf:
    # Root of every run and sweep directory; relative paths are taken from the cwd.
    outputs: str = "${oc.env:RUNNER_OUTPUTS,outputs}"
    # The current job's own directory (Hydra's runtime output dir).
    output_dir: str = "${hydra:runtime.output_dir}"


@dataclass
class TrainerConf:
    epochs: int = 20
    # Global batch: samples per optimiser step, summed over ranks and accumulation steps.
    batch_size: int = 64
    grad_accum_steps: int = 1
    # Processes on this node; more than one runs the job through torchrun.
    nproc_per_node: int = 1
    # Metric returned to Hydra (and sweepers) and the direction that makes it better.
    objective: str = "val_loss"
    objective_mode: str = "min"
    # "auto": a bar on a terminal, plain lines otherwise; "bar", "lines" or "off".
    progress: str = "auto"
    # torch threads per rank; 0 keeps torch's default (OMP_NUM_THREADS when set).
    num_threads: int = 0
    # "auto" picks cuda:LOCAL_RANK when CUDA exists, else cpu.
    device: str = "auto"
    checkpoint: bool = True
    # Also checkpoint every N optimiser steps (0: only at epoch ends).
    checkpoint_every: int = 0
    # "auto": continue from this run's checkpoint if there is one; "never"; or a path.
    resume: str = "auto"


@dataclass
class SpiralsConf:
    _target_: str = "runner.trainer.data.spirals"
    n_samples: int = 2000
    n_classes: int = 2
    turns: float = 1.5
    noise: float = 0.2
    val_fraction: float = 0.2
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class BlobsConf:
    _target_: str = "runner.trainer.data.blobs"
    n_samples: int = 4000
    n_features: int = 16
    n_classes: int = 4
    spread: float = 2.0
    noise: float = 1.0
    val_fraction: float = 0.2
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class RegressionConf:
    _target_: str = "runner.trainer.data.regression"
    n_samples: int = 4000
    n_features: int = 8
    noise: float = 0.1
    val_fraction: float = 0.2
    seed: int = "${seed}"  # type: ignore[assignment]


@dataclass
class MLPConf:
    _target_: str = "runner.trainer.models.MLP"
    hidden: int = 64
    depth: int = 3
    activation: str = "relu"
    dropout: float = 0.0


@dataclass
class ResidualMLPConf:
    _target_: str = "runner.trainer.models.ResidualMLP"
    hidden: int = 64
    blocks: int = 3
    dropout: float = 0.0


@dataclass
class SGDConf:
    _target_: str = "torch.optim.SGD"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False


@dataclass
class AdamWConf:
    _target_: str = "torch.optim.AdamW"
    lr: float = 0.01
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class CosineConf:
    # Called as target(optimizer, total_steps=...) by the trainer.
    _target_: str = "runner.trainer.train.cosine_schedule"
    _partial_: bool = True
    warmup_fraction: float = 0.0
    min_lr_fraction: float = 0.0


@dataclass
class LoggerConf:
    # "none"; "tensorboard": rank 0 writes event files (and the HParams view) next to
    # metrics.jsonl; "mlflow": one MLflow run per job, nested under one per sweep.
    name: str = "none"
    # mlflow: where runs go (an SQLite file, or a tracking server's URL).
    tracking_uri: str | None = None
    experiment: str = "runner"
    # mlflow: attach the final checkpoint to the run.
    log_checkpoint: bool = False


@dataclass
class RunnerConf:
    data: Any = MISSING
    model: Any = MISSING
    optim: Any = MISSING
    scheduler: Any = None
    trainer: TrainerConf = field(default_factory=TrainerConf)
    logger: LoggerConf = field(default_factory=LoggerConf)
    paths: PathsConf = field(default_factory=PathsConf)
    seed: int = 0


BUILT_IN_SCHEMAS = {
    schema._target_: schema
    for schema in (
        SpiralsConf,
        BlobsConf,
        RegressionConf,
        MLPConf,
        ResidualMLPConf,
        SGDConf,
        AdamWConf,
        CosineConf,
    )
}


# Each group's schemas, stored under schema/<group>/<name> (the group's yaml takes
# ``- /schema/<group>/<name>@_here_``): not options a user picks in the group itself.
GROUP_SCHEMAS = [
    ("data", "spirals", SpiralsConf),
    ("data", "blobs", BlobsConf),
    ("data", "regression", RegressionConf),
    ("model", "mlp", MLPConf),
    ("model", "resmlp", ResidualMLPConf),
    ("optim", "sgd", SGDConf),
    ("optim", "adamw", AdamWConf),
    ("scheduler", "cosine", CosineConf),
    ("trainer", "default", TrainerConf),
]


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="runner_schema", node=RunnerConf)
    for group, name, node in GROUP_SCHEMAS:
        cs.store(group=f"schema/{group}", name=name, node=node)


register_configs()
