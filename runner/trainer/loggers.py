"""What the trainer's rank 0 logs beside ``metrics.jsonl`` (``logger=...``): nothing,
TensorBoard event files with the HParams view, or the job's one MLflow run
(:mod:`runner.tracking`). Each logger takes every epoch's metrics at that epoch
(1, 2, ...: the step a search's study and the report's curves count too), and the
final ones when training ends."""

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


def chosen_params(cfg: DictConfig) -> dict[str, Any]:
    """What this run chose on its command line (a sweep point: what its sweep varies),
    in order, as HParams columns: ``optim.lr``, a group's choice (``model``); every
    key of the config where nothing was chosen."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import filter_overrides

    flat = flat_params(cfg)
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    chosen = {}
    for override in filter_overrides(overrides):
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        chosen[key] = _hparam(flat.get(key, value))
    return chosen or {k: _hparam(v) for k, v in flat.items()}


class TensorBoardLogger:
    """Scalars every epoch; at the end, the run's chosen hyperparameters
    (:func:`chosen_params`) and final metrics in TensorBoard's HParams format, in the
    same dir, so ``tensorboard --logdir SWEEP_DIR`` shows every point as a row whose
    columns are what the sweep varies; the whole config is the run's ``config`` text."""

    def __init__(self, cfg: DictConfig, output_dir: Path, epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # A resumed run drops what its event files hold past the epochs it keeps.
        self.writer = SummaryWriter(
            log_dir=str(output_dir), purge_step=epoch + 1 if epoch else None
        )
        self.params = chosen_params(cfg)
        config = "\n".join(f"    {k}: {v}" for k, v in flat_params(cfg).items())
        self.writer.add_text("config", config, global_step=epoch)

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
        # In this run's own event file (add_hparams would start a second run below it).
        file_writer = self.writer.file_writer  # made when the writer was
        assert file_writer is not None
        for summary in hparams(self.params, numbers):
            file_writer.add_summary(summary, step)
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
        for line in read_metrics(output_dir):
            self.log({k: v for k, v in line.items() if k != "objective"}, int(line["epoch"]))
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


def make_logger(cfg: DictConfig, output_dir: Path, checkpoint: Path, epoch: int) -> TrainLogger:
    """Rank 0's logger for ``cfg.logger.name`` (the other ranks get NoLogger);
    ``epoch``: the epochs a resumed run keeps."""
    name = cfg.logger.name
    if name == "tensorboard":
        return TensorBoardLogger(cfg, output_dir, epoch)
    if name == "mlflow":
        return MlflowLogger(cfg, output_dir, checkpoint)
    return NoLogger()
