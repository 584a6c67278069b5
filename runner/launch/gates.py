"""The one module that uses torch's private names, each behind a gate.

Each gate is checked before anything is replaced: it opens only on a torch release
runner was tested on (``TESTED_TORCH``) whose private names still have the shape
runner relies on. A closed gate changes nothing, and runner does what it would
without it:

- ``prompt`` (:func:`install_prompt`): torchrun's agent wakes when a rank ends and
  its log tailers stop at once. torchrun's agent sleeps ``monitor_interval`` before
  each look at its workers, and its tailers (``tee``) poll every 0.1 s, so a job that
  is done is seen up to 0.1 s late and closing the two tailers waits out their sleeps:
  0.15-0.3 s a job here, half of a warm point; torchrun offers no option for either.
  Closed: torchrun's own agent and tailers.
- ``dataloader`` (:func:`replace_worker_loop`, used by :mod:`runner.stop`): a rank
  that takes SIGTERM as a stop keeps its DataLoader workers. Closed: torch's workers
  end on SIGTERM, so such a rank may fail at its next batch instead of saving the
  agreed step.
- ``process_group`` (:func:`watch_process_group`): a task that formed a process group
  and destroyed it is still seen to have had one. Closed: ``is_initialized()`` when
  the task returns is the sign.

``RUNNER_TORCH_GATES=off`` closes every gate: the path users of another torch get,
tested by a real sweep (tests/test_gates.py) and measured by ``bench/overhead.py``;
tests/test_prompt.py fails if a gate is closed on the torch the set-up installs. The
sweep's parent, which never imports torch, says once on its console when the release
keeps the gates closed (:func:`release_note`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.tail_log import TailLog

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


# ---------------------------------------------------------------- dataloader


def replace_worker_loop(loop: Callable[..., Any]) -> Callable[..., Any] | None:
    """Have this process's DataLoader workers run ``loop`` instead of torch's worker
    loop, where the ``dataloader`` gate opens; returns torch's loop, or None (closed:
    nothing changed)."""
    if dataloader_problem() is not None:
        return None
    from torch.utils.data._utils import worker

    original = worker._worker_loop
    worker._worker_loop = loop
    return original


def torch_worker_loop() -> Callable[..., Any]:
    """torch's DataLoader worker loop (in a worker started by "spawn", which
    re-imported torch and never had it replaced)."""
    from torch.utils.data._utils import worker

    return worker._worker_loop


def add_worker_signal_handler(then: Callable[[], None]) -> None:
    """In a DataLoader worker: after torch sets the worker's signal handlers, call
    ``then`` (which may replace one of them)."""
    from torch.utils.data._utils import signal_handling

    set_torch_handlers = signal_handling._set_worker_signal_handlers

    def set_handlers() -> None:
        set_torch_handlers()
        then()

    signal_handling._set_worker_signal_handlers = set_handlers


# ---------------------------------------------------------------- process_group


@contextlib.contextmanager
def watch_process_group() -> Iterator[Callable[[], bool]]:
    """Yields a check, true once this process has had torch.distributed's default
    process group while the block ran, even if the task destroyed it again.

    Every way a task forms one (``init_process_group``, ``init_device_mesh``,
    Lightning, whatever name it imported them under) goes through c10d's
    ``_update_default_pg``, which is watched while the block runs; with the gate
    closed, ``is_initialized()`` when the task returns is the sign."""
    import torch.distributed as dist

    c10d = dist.distributed_c10d
    original = None if process_group_problem() else c10d._update_default_pg
    seen = False

    def update_default_pg(pg: Any) -> None:
        nonlocal seen
        seen = seen or pg is not None
        assert original is not None
        original(pg)

    if original is not None:
        c10d._update_default_pg = update_default_pg
    try:
        yield lambda: seen or (dist.is_available() and dist.is_initialized())
    finally:
        if original is not None:
            c10d._update_default_pg = original


# ---------------------------------------------------------------- prompt


_prompt: dict[str, Any] = {"active": False, "reason": "not installed"}


def prompt_active() -> bool:
    """Whether this process's torchrun agents are the prompt ones."""
    return bool(_prompt["active"])


def install_prompt() -> str | None:
    """Make this process's torchrun agents and tailers prompt, where the ``prompt``
    gate opens; returns None when active, else the reason it is not (nothing was
    changed). Only in an agent's process (and the warm process, whose forks become
    agents): torchrun's ``launch_agent`` and process context look the two replaced
    names up there, and nothing else runs in that process."""
    if _prompt["active"]:
        return None
    reason = prompt_problem()
    if reason is not None:
        _prompt["reason"] = reason
        return reason
    import torch.distributed.elastic.multiprocessing.api as processes
    import torch.distributed.launcher.api as launcher

    # The fenced replacement itself: the names torchrun looks up in this process.
    launcher.LocalElasticAgent = _prompt_agent()  # type: ignore[misc]
    processes.TailLog = _prompt_tail_log()  # type: ignore[misc]
    _prompt.update(active=True, reason=None)
    return None


def _wait_for_news(pcontext: Any, timeout: float) -> None:
    """Sleep up to ``timeout``, waking as soon as one of the workers has news: a worker
    started by multiprocessing (warm start) hands back its value through a queue and
    then waits for the agent; a subprocess worker (cold start) just ends."""
    import multiprocessing.connection

    from torch.distributed.elastic.multiprocessing.api import (
        MultiprocessContext,
        SubprocessContext,
    )

    ready: list[Any] = []
    pidfds: list[int] = []
    try:
        if isinstance(pcontext, MultiprocessContext) and pcontext._pc is not None:
            ready += [
                queue._reader  # type: ignore[attr-defined]  # the queue's pipe: fenced above
                for rank, queue in pcontext._ret_vals.items()
                if rank not in pcontext._return_values
            ]
            ready += [p.sentinel for p in pcontext._pc.processes if p.exitcode is None]
        elif isinstance(pcontext, SubprocessContext) and hasattr(os, "pidfd_open"):
            for handler in pcontext.subprocess_handlers.values():
                if handler.proc.poll() is None:  # an ended one stays ready: leave it out
                    pidfds.append(os.pidfd_open(handler.proc.pid))
        multiprocessing.connection.wait(ready + pidfds, timeout)
    except OSError:  # no pidfd (Linux < 5.3): torchrun's sleep
        time.sleep(timeout)
    finally:
        for fd in pidfds:
            os.close(fd)


def _prompt_agent() -> type[LocalElasticAgent]:
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    class PromptAgent(LocalElasticAgent):
        """torchrun's agent, waking at once when a worker has news (see above)."""

        def __init__(self, spec: Any, *args: Any, **kwargs: Any) -> None:
            # torchrun sleeps spec.monitor_interval before each look; the wait for
            # news takes that time instead, so the looks stay as far apart.
            self._look_every = spec.monitor_interval
            spec.monitor_interval = 1e-4
            super().__init__(spec, *args, **kwargs)

        def _monitor_workers(self, worker_group: Any) -> Any:
            _wait_for_news(self._pcontext, self._look_every)
            return super()._monitor_workers(worker_group)

    return PromptAgent


def _tail(
    header: str,
    path: str,
    dst: Any,
    finished: Any,
    interval_sec: float,
    log_line_filter: Any = None,
) -> None:
    """torchrun's tail of a rank's log file, sleeping on its ``finished`` event."""
    while not os.path.exists(path):
        if finished.wait(interval_sec) and not os.path.exists(path):
            return
    with open(path, errors="replace") as file:
        while True:
            # Asked before the read (torch 2.15's fix of its own tailer): once the rank
            # is finished, the reads that follow reach everything it wrote.
            done = finished.is_set()
            line = file.readline()
            if line:
                if log_line_filter is None or log_line_filter(line):
                    dst.write(f"{header}{line}")
            elif done:
                break
            else:
                finished.wait(interval_sec)


def _prompt_tail_log() -> type[TailLog]:
    from torch.distributed.elastic.multiprocessing.tail_log import TailLog

    class PromptTailLog(TailLog):
        """torchrun's log tailer (``tee``) that stops as soon as it is told to. Its
        start is torch's own but for the tail function, which torch hard-codes."""

        def start(self) -> TailLog:
            if not self._threadpool or not self._dst:
                return self
            for local_rank, path in self._log_files.items():
                header = f"[{self._name}{local_rank}]:"
                if self._log_line_prefixes and local_rank in self._log_line_prefixes:
                    header = self._log_line_prefixes[local_rank]
                self._futs.append(
                    self._threadpool.submit(
                        _tail,
                        header,
                        path,
                        self._dst,
                        self._finished_events[local_rank],
                        self._interval_sec,
                        self._log_line_filter,
                    )
                )
            return self

    return PromptTailLog
