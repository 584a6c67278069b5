"""Stop requests to a running job, and the check a task calls between steps.

On Slurm, a job gets a warning signal before its time limit (``--signal=USR2@lead``;
``scancel --signal=USR2`` sends the same by hand). The node's task writes a stop file
into its entry dir, and each rank also catches the signal itself where Slurm delivers
it to every process of the step. A task calls :func:`stop_requested` between steps;
in a process group the ranks agree on the answer (an all_reduce), so every rank stops
at the same step, saves what it needs to resume, and returns. runner's trainer does
this; the node then has the job requeued (submitit's checkpoint/requeue), and the
next allocation resumes from the checkpoint.

SIGTERM (a preemption, ``scontrol requeue``, a cancel, a stopped sweep) is a stop
request too, but only for a task that listens: from its first call of
:func:`stop_requested` on, a rank catches SIGTERM and stops at the next agreed step
instead of dying mid-step (SIGKILL still follows after the grace period if it never
gets there). A task that never asks keeps SIGTERM's default: it ends at once, even
blocked in a collective.

Light on purpose: torch is imported only by :func:`stop_requested`, and only when a
process group exists.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

# The file a node writes into its agent's entry dir to ask the ranks to stop.
STOP_FILE = "stop_requested"

_state: dict[str, Any] = {
    "file": None,
    "signalled": False,
    "listening": False,
    "terminated": False,
}


def _on_signal(signum: int, frame: Any) -> None:
    _state["signalled"] = True
    if signum == signal.SIGTERM:
        _state["terminated"] = True


def terminated() -> bool:
    """Whether this rank was sent SIGTERM and took it as a stop request: whoever sent
    it (its agent stopping, Slurm) wants the process gone once the task returns."""
    return bool(_state["terminated"])


def _listen_to_sigterm() -> None:
    """From the task's first check on, SIGTERM asks for a stop instead of ending the
    rank (the main thread only: elsewhere Python cannot install handlers)."""
    _state["listening"] = True
    try:
        signal.signal(signal.SIGTERM, _on_signal)
    except ValueError:  # not the main thread
        pass


def install(entry_dir: Path) -> None:
    """In a rank, before its task: watch for the node's stop file, and catch SIGUSR2
    (the agent ignores it; without a handler it would end the rank)."""
    _state.update(file=entry_dir / STOP_FILE, signalled=False, listening=False, terminated=False)
    signal.signal(signal.SIGUSR2, _on_signal)


def request_stop(entry_dir: Path) -> None:
    """Ask the ranks of the agent whose entry dir this is to stop at their next check."""
    (entry_dir / STOP_FILE).touch()


def stop_requested() -> bool:
    """Whether this job was asked to stop (on Slurm: the warning before its time limit,
    or a preemption notice sent the same way). Call it between steps, on every rank
    at the same steps: in a process group the ranks agree (one all_reduce), so all of
    them stop at the same step. Save what you need to resume, then return; the job
    is requeued and its next allocation starts the task again (resume from your
    checkpoint). From the first call on, SIGTERM (a preemption, a requeue, a cancel)
    asks for the same stop instead of ending the rank. Always False outside a job
    that runner launched."""
    path = _state["file"]
    if path is not None and not _state["listening"]:
        _listen_to_sigterm()
    local = bool(_state["signalled"] or (path is not None and os.path.exists(path)))
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return local
    if dist.get_world_size() == 1:
        return local
    import torch

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    flag = torch.tensor([1 if local else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
