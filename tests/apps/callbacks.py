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
