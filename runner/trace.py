"""Where a rank's start goes, stage by stage (``bench/start.py`` reads it).

With ``RUNNER_START_TRACE`` set to a directory, :func:`mark` appends each stage a rank
reaches (its worker entered, its task called, its process group formed, its optimizer
made, its first step done), with the wall time, to
``$RUNNER_START_TRACE/<agent pid>/rank<N>.jsonl`` (the rank's parent is its point's
torchrun agent, whose pid the point's ``launch.json`` records): one file per rank of
every point. Unset (always, outside the benchmark), :func:`mark` returns at once. Light: no
torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TRACE_ENV = "RUNNER_START_TRACE"


def mark(stage: str) -> None:
    """Record that this rank reached ``stage`` now (where a trace is asked for)."""
    where = os.environ.get(TRACE_ENV)
    if not where:
        return
    point = Path(where) / str(os.getppid())
    point.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"stage": stage, "t": time.time()}) + "\n"
    with open(point / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
        f.write(line)
