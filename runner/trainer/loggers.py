"""What the trainer's rank 0 logs beside ``metrics.jsonl`` (``logger=...``): nothing,
TensorBoard event files with the HParams view, or the job's one MLflow run
(:mod:`runner.tracking`). Each logger takes every epoch's metrics at their global
step, and the final ones when training ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from runner.metrics import read_metrics
from runner.tracking import flat_params, open_point_run

# Metrics that say where training is, not how it does.
NOT_LOGGED = ("epoch", "step", "elapsed_s")


class TrainLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self, final: dict[str, Any], step: int) -> None: ...


class NoLogger:
    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def close(self, final: dict[str, Any], step: int) -> None:
        pass


def _hparam(value: str) -> Any:
    """A flattened config value as TensorBoard's HParams takes it (a number stays one)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(value, value)


class TensorBoardLogger:
    """Scalars every epoch; at the end, the run's hyperparameters (its flattened
    config) and final metrics in TensorBoard's HParams format, in the same event
    files, so ``tensorboard --logdir SWEEP_DIR`` shows every point as a row."""

    def __init__(self, cfg: DictConfig, output_dir: Path, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(output_dir), purge_step=step or None)
        self.params = {k: _hparam(v) for k, v in flat_params(cfg).items()}

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key not in NOT_LOGGED:
                self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self, final: dict[str, Any], step: int) -> None:
        from torch.utils.tensorboard.summary import hparams

        numbers = {
            f"final/{k}": float(v)
            for k, v in final.items()
            if k not in NOT_LOGGED and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        experiment, start, end = hparams(self.params, numbers)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, start, end):
            file_writer.add_summary(summary)
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.close()


class MlflowLogger:
    """The job's MLflow run (one per job, continued on resume): params, metrics every
    epoch, the final ones, and the checkpoint if ``logger.log_checkpoint``."""

    def __init__(self, cfg: DictConfig, output_dir: Path, checkpoint: Path) -> None:
        run = open_point_run(
            cfg, tracking_uri=cfg.logger.tracking_uri, experiment=cfg.logger.experiment
        )
        assert run is not None, "MlflowLogger on a rank other than 0"
        self.run = run
        self.checkpoint = checkpoint if cfg.logger.log_checkpoint else None
        # A continued run: the epochs metrics.jsonl keeps (those its checkpoint holds)
        # that never reached the store (logged in the background when the job died).
        for epoch in read_metrics(output_dir):
            self.log({k: v for k, v in epoch.items() if k != "objective"}, epoch["step"])
        run.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        logged = {k: v for k, v in metrics.items() if k not in NOT_LOGGED}
        self.run.log_metrics(logged, step, wait=False)

    def close(self, final: dict[str, Any], step: int) -> None:
        self.run.flush()
        self.run.set_tags({"runner.objective": final["objective"]})
        self.run.client.log_metric(
            self.run.run_id, "objective_value", float(final["objective_value"]), step=step
        )
        if self.checkpoint is not None and self.checkpoint.is_file():
            self.run.log_artifact(self.checkpoint)


def make_logger(cfg: DictConfig, output_dir: Path, checkpoint: Path, step: int) -> TrainLogger:
    """Rank 0's logger for ``cfg.logger.name`` (the other ranks get NoLogger)."""
    name = cfg.logger.name
    if name == "tensorboard":
        return TensorBoardLogger(cfg, output_dir, step)
    if name == "mlflow":
        return MlflowLogger(cfg, output_dir, checkpoint)
    return NoLogger()
