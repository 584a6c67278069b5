"""The gates in front of every use runner makes of torch's private names.

Each gate is checked before anything is replaced: it opens only on a torch release
runner was tested on (``TESTED_TORCH``) whose private names still have the shape
runner relies on. A closed gate changes nothing, and runner does what it would
without it:

- ``prompt`` (:mod:`runner.launch.prompt`): torchrun's agent wakes when a rank ends
  and its log tailers stop at once. Closed: torchrun's own agent and tailers (a job's
  end is seen at ``monitor_interval``, tailers poll every 0.1 s).
- ``dataloader`` (:mod:`runner.stop`): a rank that takes SIGTERM as a stop keeps its
  DataLoader workers. Closed: torch's workers end on SIGTERM, so such a rank may fail
  at its next batch instead of saving the agreed step.
- ``process_group`` (:func:`runner.launch.worker.watch_process_group`): a task that
  formed a process group and destroyed it is still seen to have had one. Closed:
  ``is_initialized()`` when the task returns is the sign.

``RUNNER_TORCH_GATES=off`` closes every gate: the path users of another torch get,
tested by a real sweep (tests/test_gates.py) and measured by ``bench/overhead.py``.
The sweep's parent, which never imports torch, says once on its console when the
release keeps the gates closed (:func:`release_note`).
"""

from __future__ import annotations

import os
from importlib import metadata

# torch releases (major.minor) the gated paths were tested on.
TESTED_TORCH = ("2.13",)
GATES_ENV = "RUNNER_TORCH_GATES"

# Private names the prompt agent reads, by the torch function that defines them.
_TAILLOG_FIELDS = {
    "_threadpool",
    "_name",
    "_dst",
    "_log_files",
    "_log_line_prefixes",
    "_log_line_filter",
    "_finished_events",
    "_futs",
    "_interval_sec",
}
_MULTIPROCESS_FIELDS = {"_pc", "_ret_vals", "_return_values"}


def _release(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def release_problem(version: str | None = None) -> str | None:
    """Why every gate stays closed on this torch (``version``, else the imported
    one's), or None: forced off, or a release runner was not tested on."""
    if os.environ.get(GATES_ENV, "").lower() == "off":
        return f"{GATES_ENV}=off"
    if version is None:
        import torch

        version = torch.__version__
    if _release(version) not in TESTED_TORCH:
        return f"torch {version} (tested on {', '.join(TESTED_TORCH)})"
    return None


def release_note() -> str | None:
    """For a parent that never imports torch: the console's one line when the gates
    stay closed for the installed torch (read from its metadata), else None."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None
    problem = release_problem(version)
    if problem is None:
        return None
    return (
        f"runner's torch fast paths are off ({problem}): jobs run with torchrun's own "
        "agent and DataLoader workers (see runner.launch.gates)"
    )


def prompt_problem() -> str | None:
    """Why the ``prompt`` gate is closed, or None."""
    if problem := release_problem():
        return problem
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.api import (
        MultiprocessContext,
        SubprocessContext,
    )
    from torch.distributed.elastic.multiprocessing.tail_log import TailLog

    names = set(TailLog.__init__.__code__.co_names)
    if not _TAILLOG_FIELDS <= names:
        return f"TailLog lacks {sorted(_TAILLOG_FIELDS - names)}"
    names = set(MultiprocessContext.__init__.__code__.co_names) | set(
        MultiprocessContext._poll.__code__.co_names
    )
    if not _MULTIPROCESS_FIELDS <= names:
        return f"MultiprocessContext lacks {sorted(_MULTIPROCESS_FIELDS - names)}"
    if "subprocess_handlers" not in SubprocessContext.__init__.__code__.co_names:
        return "SubprocessContext lacks subprocess_handlers"
    if not callable(getattr(LocalElasticAgent, "_monitor_workers", None)):
        return "LocalElasticAgent lacks _monitor_workers"
    return None


def dataloader_problem() -> str | None:
    """Why the ``dataloader`` gate is closed, or None."""
    if problem := release_problem():
        return problem
    from torch.utils.data._utils import signal_handling, worker

    if not callable(getattr(worker, "_worker_loop", None)):
        return "torch.utils.data._utils.worker lacks _worker_loop"
    if not callable(getattr(signal_handling, "_set_worker_signal_handlers", None)):
        return "torch.utils.data._utils.signal_handling lacks _set_worker_signal_handlers"
    return None


def process_group_problem() -> str | None:
    """Why the ``process_group`` gate is closed, or None."""
    if problem := release_problem():
        return problem
    import torch.distributed as dist

    if not callable(getattr(dist.distributed_c10d, "_update_default_pg", None)):
        return "torch.distributed.distributed_c10d lacks _update_default_pg"
    return None


def problems() -> dict[str, str | None]:
    """Every gate's problem (None: open), by name."""
    return {
        "prompt": prompt_problem(),
        "dataloader": dataloader_problem(),
        "process_group": process_group_problem(),
    }
