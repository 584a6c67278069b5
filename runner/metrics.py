"""``metrics.jsonl``: one JSON line per epoch (or step) of a job, in its job dir.

runner's trainer writes a line every epoch. Any Hydra task run by
``hydra/launcher=torchrun`` can write its own with :func:`report`, so runner's search
sweeper can prune it (``hydra/sweeper=search`` reads each running trial's lines)::

    from runner.metrics import report

    for epoch in range(epochs):
        ...
        report(val_loss, step=epoch, val_acc=acc)

Only global rank 0 writes (the other ranks' calls do nothing), so a job of any world
size writes one line per step. Light: no torch.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from runner.launch.procs import write_atomic

METRICS_FILE = "metrics.jsonl"


def append_metrics(job_dir: str | Path, line: dict[str, Any]) -> None:
    """Append one line to the job dir's ``metrics.jsonl`` (whole lines only)."""
    with open(Path(job_dir) / METRICS_FILE, "a") as f:
        f.write(json.dumps(line) + "\n")


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    """One line of ``metrics.jsonl`` as a dict, or None (not a JSON object)."""
    try:
        line = json.loads(raw)
    except ValueError:
        return None
    return line if isinstance(line, dict) else None


def read_metrics(job_dir: str | Path) -> list[dict[str, Any]]:
    """Every whole line of the job dir's ``metrics.jsonl`` (none if there is none); a
    line that is not a JSON object is left out, a line being written is not read."""
    try:
        data = (Path(job_dir) / METRICS_FILE).read_bytes()
    except OSError:
        return []
    whole = data[: data.rfind(b"\n") + 1]
    return [line for raw in whole.splitlines() if (line := _parse(raw)) is not None]


def keep_epochs(job_dir: str | Path, epochs: int) -> None:
    """Drop the lines past ``epochs`` (a run resumed from a checkpoint writes them
    again); the file is replaced at once."""
    path = Path(job_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = [line for line in read_metrics(job_dir) if line.get("epoch", 0) <= epochs]
    write_atomic(path, "".join(json.dumps(line) + "\n" for line in kept).encode())


def report(objective: float, *, step: int | None = None, **metrics: float) -> None:
    """From inside a task: record this step's ``objective`` (the value a search prunes
    on, in the sweeper's direction) and any other ``metrics`` in the job dir (Hydra's
    output dir). ``step`` defaults to the number of lines written before."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from hydra.core.hydra_config import HydraConfig

    job_dir = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path()
    if step is None:
        path = job_dir / METRICS_FILE
        step = sum(1 for _ in open(path)) if path.is_file() else 0
    append_metrics(job_dir, {"step": step, "objective": float(objective), **metrics})


class MetricsReader:
    """Reads a running job's ``metrics.jsonl`` as it grows: each call returns the
    (step, value of ``key``) pairs of the whole lines written since the last call.
    A line's step is its ``epoch``, else its ``step``, else its line number."""

    def __init__(self, job_dir: Path, key: str) -> None:
        self.path = job_dir / METRICS_FILE
        self.key = key
        self.offset = 0
        self.lines = 0

    def new_values(self) -> list[tuple[int, float]]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []
        if size < self.offset:  # rewritten (a resumed run keeps only its epochs)
            self.offset = self.lines = 0
        if size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(size - self.offset)
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(whole)
        found: list[tuple[int, float]] = []
        for raw in whole.splitlines():
            self.lines += 1
            line = _parse(raw) or {}
            value = line.get(self.key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    step = line.get("epoch", line.get("step", self.lines - 1))
                    found.append((int(step), float(value)))
        return found
