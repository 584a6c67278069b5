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

from runner.launch import gates

# The file a node writes into its agent's entry dir to ask the ranks to stop.
STOP_FILE = "stop_requested"
# In the entry dir: a rank (by local rank) that takes SIGTERM as a stop request.
LISTENING = "listening."
# The entry dir, as a rank's DataLoader workers (any start method) find it.
ENTRY_ENV = "RUNNER_ENTRY_DIR"

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


def _listen_to_sigterm(entry_dir: Path) -> None:
    """From the task's first check on, SIGTERM asks for a stop instead of ending the
    rank (the main thread only: elsewhere Python cannot install handlers); the rank's
    DataLoader workers learn it from a file in the entry dir."""
    _state["listening"] = True
    try:
        signal.signal(signal.SIGTERM, _on_signal)
    except ValueError:  # not the main thread
        return
    (entry_dir / f"{LISTENING}{os.environ.get('LOCAL_RANK', '0')}").touch()


def install(entry_dir: Path) -> None:
    """In a rank, before its task: watch for the node's stop file, catch SIGUSR2 (the
    agent ignores it; without a handler it would end the rank), and start the rank's
    DataLoader workers through :func:`_dataloader_worker`."""
    _state.update(file=entry_dir / STOP_FILE, signalled=False, listening=False, terminated=False)
    signal.signal(signal.SIGUSR2, _on_signal)
    os.environ[ENTRY_ENV] = str(entry_dir)
    if "torch.utils.data" in sys.modules and "torch_worker_loop" not in _state:
        # Asked once; a closed gate (the parent's console says why) leaves torch's own.
        _state["torch_worker_loop"] = gates.replace_worker_loop(_dataloader_worker)


def _dataloader_worker(*args: Any, **kwargs: Any) -> Any:
    """A DataLoader worker of a rank: torch's worker loop, with one change. SIGTERM
    reaches the workers too (Slurm signals every process of the job, a stopped sweep
    its agent's process group), and torch's handler ends them, so a rank that takes
    SIGTERM as a stop request would fail at its next batch, before the agreed step.
    Such a rank's workers stay; any other rank's end on SIGTERM, as torch's do."""
    loop = _state.get("torch_worker_loop") or gates.torch_worker_loop()  # a fork; else spawned
    gates.add_worker_signal_handler(_keep_on_sigterm)
    return loop(*args, **kwargs)


def _keep_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _on_worker_sigterm)


def _on_worker_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM in a DataLoader worker: stay while the worker's rank takes SIGTERM as a
    stop (its marker, found by local rank: a worker's parent may be a forkserver), else
    end as torch's handler would."""
    entry_dir = os.environ.get(ENTRY_ENV, "")
    marker = f"{LISTENING}{os.environ.get('LOCAL_RANK', '0')}"
    if entry_dir and os.path.exists(os.path.join(entry_dir, marker)):
        return  # the rank stops at the agreed step and then shuts its loaders down
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


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
        _listen_to_sigterm(path.parent)
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
