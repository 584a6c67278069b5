"""Hydra callbacks the test apps add from the command line."""

import json
import os

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf


class RecordReturn(Callback):
    """Writes each job's return value, as the parent's Hydra got it, to $PROBE_RETURN."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        num = OmegaConf.select(config, "hydra.job.num")  # points end in any order
        record = {"value": job_return.return_value, "pid": os.getpid(), "num": num}
        with open(os.environ["PROBE_RETURN"], "a") as out:
            out.write(json.dumps(record) + "\n")


class MarkOwnDir(Callback):
    """What callbacks that save a file into their job's output dir do: reads the job
    from ``HydraConfig.get()`` (not from ``config``) in on_job_start and on_job_end and
    writes a mark there naming the job it was told about."""

    def _mark(self, config, when: str) -> None:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
        mark = {"num_seen": hydra.job.num, "num_told": OmegaConf.select(config, "hydra.job.num")}
        path = os.path.join(hydra.runtime.output_dir, f"{when}.json")
        os.makedirs(hydra.runtime.output_dir, exist_ok=True)
        with open(path, "w") as out:
            json.dump(mark, out)

    def on_job_start(self, config, **kwargs) -> None:
        self._mark(config, "on_job_start")

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self._mark(config, "on_job_end")
