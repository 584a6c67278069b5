"""The submitit peer: a Hydra app swept with hydra-submitit-launcher's local executor
and ``tasks_per_node=2``, so submitit starts the two ranks itself and each joins the
group through submitit's own ``TorchDistributedEnvironment`` (what its docs show)."""

import os
import sys

import hydra
from omegaconf import DictConfig

HERE = os.path.dirname(os.path.abspath(__file__))


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float:
    import submitit

    sys.path.insert(0, HERE)  # the task is unpickled in submitit's worker, not run as a script
    from workloads import WORKLOADS

    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    return WORKLOADS[cfg.get("workload", "allreduce")]()


if __name__ == "__main__":
    main()
