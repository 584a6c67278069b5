"""The slot-use benchmark's task (a Hydra app that is not runner's): it sleeps
``sleep_s`` seconds in ``steps`` steps, reporting each step (runner.metrics.report),
and returns ``sleep_s``."""

import time

import hydra
from omegaconf import DictConfig

from runner.metrics import report


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    steps = int(cfg.get("steps", 4))
    for step in range(steps):
        time.sleep(cfg.sleep_s / steps)
        report(cfg.sleep_s, step=step)
    return float(cfg.sleep_s)


if __name__ == "__main__":
    main()
