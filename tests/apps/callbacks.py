"""Hydra callbacks the test apps add from the command line."""

import json
import os

from hydra.experimental.callback import Callback


class RecordReturn(Callback):
    """Writes each job's return value, as the parent's Hydra got it, to $PROBE_RETURN."""

    def on_job_end(self, config, job_return, **kwargs) -> None:
        with open(os.environ["PROBE_RETURN"], "a") as out:
            out.write(json.dumps({"value": job_return.return_value, "pid": os.getpid()}) + "\n")
