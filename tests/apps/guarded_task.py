"""A task whose module refuses to be imported ahead, in a warm process (standing in
for modules with import-time side effects): warm start must fall back to cold."""

import os
import sys

if sys.argv[0].endswith(os.path.join("runner", "launch", "warm.py")):
    raise RuntimeError("guarded_task refuses to be imported ahead of its job")


def task(cfg) -> float:
    return float(os.environ["WORLD_SIZE"]) * cfg.value
