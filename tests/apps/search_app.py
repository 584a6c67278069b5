"""A Hydra app that is not runner's, for searches: a bowl with its minimum at x=0.3,
y=0, learnt over ``epochs`` (one value per epoch through ``runner.metrics.report``,
``epoch_s`` seconds apart). ``objectives: 2`` returns (loss, x): minimise the one,
maximise the other. Every rank writes ``rank<N>.json`` with its world size."""

import json
import os
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from runner.metrics import report


@hydra.main(config_path="search_conf", config_name="config", version_base=None)
def main(cfg):
    rank = int(os.environ.get("RANK", "0"))
    job_dir = Path(HydraConfig.get().runtime.output_dir)
    record = {"world_size": int(os.environ.get("WORLD_SIZE", "1")), "start": time.time()}
    (job_dir / f"rank{rank}.json").write_text(json.dumps(record))
    loss = 0.0
    for epoch in range(cfg.epochs):
        time.sleep(cfg.epoch_s)
        loss = (cfg.x - 0.3) ** 2 + cfg.y**2 + 1.0 / (epoch + 1)
        report(loss, step=epoch)
    if cfg.objectives == 2:
        return loss, cfg.x
    return loss


if __name__ == "__main__":
    main()
