"""A minimal Hydra app whose runs go through runner's launch core: 2 ranks run one
workload of workloads.py (``+workload=allreduce`` by default, or ``train``), the same
code the peers run under torchrun."""

import os
import sys

import hydra
from omegaconf import DictConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    from runner.launch.app import inside_torchrun

    if not inside_torchrun():
        from hydra.core.hydra_config import HydraConfig

        from runner.launch.app import launch
        from runner.launch.options import LaunchConfig

        return launch(
            cfg, task, LaunchConfig(nproc_per_node=2, tee=""), HydraConfig.get().runtime.output_dir
        )
    return task(cfg)


def task(cfg: DictConfig) -> float:
    from workloads import WORKLOADS

    return WORKLOADS[cfg.get("workload", "allreduce")]()


if __name__ == "__main__":
    main()
