"""The joblib peer: a Hydra app whose task runs one torchrun of workloads.py in a
subprocess, swept with hydra-joblib-launcher (what a user would write today)."""

import subprocess
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

HERE = Path(__file__).resolve().parent


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", "2", str(HERE / "workloads.py"), cfg.get("workload", "allreduce")]
    return subprocess.run(cmd, check=True, capture_output=True).returncode


if __name__ == "__main__":
    main()
