"""The one place runner leans on torch internals: a prompt torchrun agent.

torchrun's agent sleeps ``monitor_interval`` before each look at its workers, and its
log tailers (``tee``) poll every 0.1 s, so a job that is done is seen up to 0.1 s
late and closing the two tailers waits out their sleeps: 0.15-0.3 s a job here, half
of a warm point. The prompt agent still looks no more often than
``monitor_interval``, but wakes at once when a worker ends or hands back its value,
and its tailers stop at once (after copying what is left). torchrun offers no option
for either (the tail interval is not even a parameter of its process context).

Fenced: :func:`install` applies it only when its gate opens
(:func:`runner.launch.gates.prompt_problem`: a torch release it was tested on whose
internals still have the shape it uses, checked before anything is replaced);
otherwise it changes nothing and says why, and the agent runs with torchrun's own
sleeps. It is installed only in an agent's process (and in the
warm process, whose forks become agents): the two replaced names are looked up by
torchrun's ``launch_agent`` and process context there, and nothing else runs in that
process. ``tests/test_prompt.py`` fails if the fast path is not active on the torch
the set-up installs.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from runner.launch import gates

if TYPE_CHECKING:
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.tail_log import TailLog

_state: dict[str, Any] = {"active": False, "reason": "not installed"}


def active() -> bool:
    """Whether this process's torchrun agents are the prompt ones."""
    return bool(_state["active"])


def install() -> str | None:
    """Make this process's torchrun agents and tailers prompt, where that is known to
    work; returns None when active, else the reason it is not (nothing was changed)."""
    if _state["active"]:
        return None
    reason = gates.prompt_problem()
    if reason is not None:
        _state["reason"] = reason
        return reason
    import torch.distributed.elastic.multiprocessing.api as processes
    import torch.distributed.launcher.api as launcher

    # The fenced replacement itself: the names torchrun looks up in this process.
    launcher.LocalElasticAgent = _prompt_agent()  # type: ignore[misc]
    processes.TailLog = _prompt_tail_log()  # type: ignore[misc]
    _state.update(active=True, reason=None)
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
