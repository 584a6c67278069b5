"""A Lightning + Hydra project as users write one: a LightningModule, plain
DataLoaders, ``Trainer(strategy="ddp")`` with ``devices`` equal to the launcher's
ranks, and the task returning the logged validation loss for the sweeper. Each rank
writes down what Lightning made of its process."""

import json
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class Regressor(L.LightningModule):
    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", F.mse_loss(self.net(x), y), sync_dist=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def dataset(seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator)
    return TensorDataset(x, x.sum(dim=1, keepdim=True))


@hydra.main(version_base="1.3", config_path="lightning_conf", config_name="config")
def main(cfg) -> float:
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=cfg.trainer.devices,
        strategy=cfg.trainer.strategy,
        max_epochs=cfg.trainer.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = Regressor(cfg.lr)
    trainer.fit(model, DataLoader(dataset(0), batch_size=16), DataLoader(dataset(1), batch_size=16))
    val_loss = float(trainer.callback_metrics["val_loss"])
    record = {
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "env_rank": int(os.environ.get("RANK", "0")),
        "val_loss": val_loss,
        "pid": os.getpid(),
    }
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / f"lightning_rank{record['env_rank']}.json").write_text(json.dumps(record))
    return val_loss


if __name__ == "__main__":
    main()
