"""``python -m runner.agent``: torchrun, plus what runner needs around it.

It takes torchrun's arguments and runs ``torch.distributed.run`` in this process,
adding what the launch core asks for through environment variables, and one
rendezvous backend:

* ``RUNNER_LISTEN_FD``: a socket the parent already bound to 127.0.0.1:PORT. The
  rendezvous store serves on it, so the port cannot be lost between pick and bind and
  single-node rendezvous listens on loopback only.
* ``RUNNER_FAILURE_FILE``: when workers fail, the structured failures torchrun knows
  (rank, exit code, signal, the exception from the ``@record`` error file, the log
  path) are written there as JSON, so the parent never parses console text.
* ``--rdzv_backend runner-static``: torchrun's static single-node rendezvous, except
  that every restart of the workers gets a fresh loopback store. Stock static
  rendezvous hands restarted workers the store of the failed attempt, still holding
  its gloo addresses, and the new group then hangs or fails to connect
  (``max_restarts`` would not work); torch's own comment assumes a new store per retry.
* Prompt ends: torchrun's agent sleeps ``monitor_interval`` before each look at its
  workers, and its log tailers (``tee``) poll every 0.1 s, so a job that is done is
  seen up to 0.1 s late and closing the two tailers waits out their sleeps: 0.15-0.3
  s a job here, half of a warm point. This agent still looks no more often than
  ``monitor_interval``, but wakes at once when a worker ends or hands back its value,
  and its tailers stop at once (after copying what is left). Both lean on torch
  2.13's internals (what the set-up installs); with another torch whose internals
  differ, the agent falls back to torchrun's own sleeps.
* ``RUNNER_PARENT_PID`` / ``RUNNER_ENTRY_DIR``: the launch core asked the kernel to
  SIGTERM this agent when the parent dies (torchrun then stops its workers); if the
  parent is gone when the agent ends, the agent removes the job's entry dir itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path


def _parent_gone() -> bool:
    """The runner parent that launched this job has exited. A cold agent is its child;
    a warm agent is a child of the warm process, so it asks about the parent's pid."""
    expected = os.environ.get("RUNNER_PARENT_PID")
    if expected is None:
        return False
    if os.environ.get("RUNNER_WARM_AGENT") != "1":
        return os.getppid() != int(expected)
    try:
        state = Path(f"/proc/{expected}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def _rank_log(error_file: str, log_dir: Path | None, local_rank: int) -> str | None:
    """The failing rank's stderr log, next to its error file or under torchrun's log dir."""
    candidates = []
    if error_file and os.path.isabs(error_file):
        candidates.append(Path(error_file).with_name("stderr.log"))
    if log_dir is not None:
        candidates += sorted(
            log_dir.glob(f"*/attempt_*/{local_rank}/stderr.log"),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
    return next((str(p) for p in candidates if p.is_file()), None)


def failure_report(error, log_dir: Path | None) -> dict:
    """JSON-able report of a ChildFailedError, root cause first."""
    first_rank, _ = error.get_first_failure()
    failures = []
    for rank, failure in sorted(error.failures.items(), key=lambda kv: kv[0] != first_rank):
        message = failure.message
        traceback = None
        if isinstance(message, dict):
            traceback = message.get("extraInfo", {}).get("py_callstack")
            message = message.get("message")
        failures.append(
            {
                "rank": rank,
                "local_rank": failure.local_rank,
                "exitcode": failure.exitcode,
                "signal": failure.signal_name() if failure.exitcode < 0 else None,
                "pid": failure.pid,
                "exception": message,
                "traceback": traceback,
                "timestamp": failure.timestamp,
                "log_file": _rank_log(failure.error_file, log_dir, failure.local_rank),
            }
        )
    return {"failures": failures}


def _log_dir(argv: list[str]) -> Path | None:
    for flag in ("--log_dir", "--log-dir"):
        if flag in argv:
            return Path(argv[argv.index(flag) + 1])
    return None


RDZV_BACKEND = "runner-static"


_installed = False


def install() -> None:
    """Make ``--rdzv_backend runner-static`` known to torchrun in this process, and its
    agent and log tailers prompt (once: a warm agent inherits this from the warm
    process)."""
    global _installed
    if _installed:
        return
    _register_rendezvous()
    _make_prompt()
    _installed = True


def _register_rendezvous() -> None:
    import socket

    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import RendezvousInfo, RendezvousParameters
    from torch.distributed.elastic.rendezvous.api import RendezvousStoreInfo
    from torch.distributed.elastic.rendezvous.registry import handler_registry
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    class FreshStoreRendezvous(StaticTCPRendezvous):
        """Single-node static rendezvous; attempt N > 0 gets its own worker store, on a
        loopback socket bound here (port 0: nothing can race for it)."""

        attempts = 0
        worker_store = None

        def get_backend(self) -> str:
            return RDZV_BACKEND

        def next_rendezvous(self) -> RendezvousInfo:
            info = super().next_rendezvous()
            self.attempts += 1
            if self.attempts == 1:
                return info
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            port = listener.getsockname()[1]
            self.worker_store = dist.TCPStore(
                "127.0.0.1",
                port,
                None,
                True,
                self.timeout,
                wait_for_workers=False,
                multi_tenant=True,
                master_listen_fd=listener.detach(),
            )
            return RendezvousInfo(
                info.store, info.rank, info.world_size, RendezvousStoreInfo("127.0.0.1", port)
            )

    def create(params: RendezvousParameters) -> FreshStoreRendezvous:
        addr, port = parse_rendezvous_endpoint(params.endpoint, -1)
        timeout = int(params.config.get("timeout", 900))
        return FreshStoreRendezvous(addr, port, 0, params.max_nodes, params.run_id, timeout)

    handler_registry.register(RDZV_BACKEND, create)


def _wait_for_news(pcontext, timeout: float) -> None:
    """Sleep up to ``timeout``, waking as soon as one of the workers has news: a worker
    started by multiprocessing (warm start) hands back its value through a queue and
    then waits for the agent; a subprocess worker (cold start) just ends."""
    import multiprocessing.connection

    from torch.distributed.elastic.multiprocessing.api import (
        MultiprocessContext,
        SubprocessContext,
    )

    ready: list = []
    pidfds: list[int] = []
    try:
        if isinstance(pcontext, MultiprocessContext) and pcontext._pc is not None:
            ready += [
                queue._reader
                for rank, queue in pcontext._ret_vals.items()
                if rank not in pcontext._return_values
            ]
            ready += [p.sentinel for p in pcontext._pc.processes if p.exitcode is None]
        elif isinstance(pcontext, SubprocessContext) and hasattr(os, "pidfd_open"):
            for handler in pcontext.subprocess_handlers.values():
                if handler.proc.poll() is None:  # an ended one stays ready: leave it out
                    pidfds.append(os.pidfd_open(handler.proc.pid))
        multiprocessing.connection.wait(ready + pidfds, timeout)
    except (OSError, AttributeError):  # no pidfd (Linux < 5.3), another torch: its sleep
        time.sleep(timeout)
    finally:
        for fd in pidfds:
            os.close(fd)


def _make_prompt() -> None:
    import torch.distributed.elastic.multiprocessing.api as processes
    import torch.distributed.launcher.api as launcher
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    from torch.distributed.elastic.multiprocessing.tail_log import TailLog

    class PromptAgent(LocalElasticAgent):
        """torchrun's agent, waking at once when a worker has news (see above)."""

        def __init__(self, spec, *args, **kwargs) -> None:
            # torchrun sleeps spec.monitor_interval before each look; the wait for
            # news takes that time instead, so the looks stay as far apart.
            self._look_every = spec.monitor_interval
            spec.monitor_interval = 1e-4
            super().__init__(spec, *args, **kwargs)

        def _monitor_workers(self, worker_group):
            _wait_for_news(self._pcontext, self._look_every)
            return super()._monitor_workers(worker_group)

    def tail(header, path, dst, finished, interval_sec, log_line_filter=None) -> None:
        """torchrun's tail of a rank's log file, sleeping on its ``finished`` event."""
        while not os.path.exists(path):
            if finished.wait(interval_sec) and not os.path.exists(path):
                return
        with open(path, errors="replace") as file:
            while True:
                line = file.readline()
                if line:
                    if log_line_filter is None or log_line_filter(line):
                        dst.write(f"{header}{line}")
                elif finished.is_set():
                    break
                else:
                    finished.wait(interval_sec)

    class PromptTailLog(TailLog):
        """torchrun's log tailer (``tee``) that stops as soon as it is told to."""

        def start(self) -> TailLog:
            try:
                pool, files, prefixes = self._threadpool, self._log_files, self._log_line_prefixes
                events, futures = self._finished_events, self._futs
                interval, keep = self._interval_sec, self._log_line_filter
            except AttributeError:  # another torch's TailLog: its own start
                return super().start()
            if not pool or not self._dst:
                return self
            for local_rank, path in files.items():
                header = f"[{self._name}{local_rank}]:"
                if prefixes and local_rank in prefixes:
                    header = prefixes[local_rank]
                futures.append(
                    pool.submit(tail, header, path, self._dst, events[local_rank], interval, keep)
                )
            return self

    launcher.LocalElasticAgent = PromptAgent
    processes.TailLog = PromptTailLog


def _port_of(argv: list[str]) -> int:
    for flag in ("--rdzv_endpoint", "--rdzv-endpoint"):
        if flag in argv:
            return int(argv[argv.index(flag) + 1].rsplit(":", 1)[1])
    return int(argv[argv.index("--master_port") + 1])


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Until torchrun installs its own handlers, a SIGTERM (e.g. the parent died while
    # torch was still importing) must still unwind through the clean-up below.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    listen_fd = os.environ.pop("RUNNER_LISTEN_FD", None)
    failure_file = os.environ.pop("RUNNER_FAILURE_FILE", None)
    store = None
    try:
        if _parent_gone():
            return 1
        import torch.distributed as dist
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import main as torchrun_main

        install()
        if listen_fd is not None:
            port = _port_of(argv)
            # multi_tenant: torchrun's own TCPStore on this port reuses this server.
            store = dist.TCPStore(
                "127.0.0.1",
                port,
                None,
                True,
                timedelta(minutes=30),
                wait_for_workers=False,
                multi_tenant=True,
                master_listen_fd=int(listen_fd),
            )
        try:
            torchrun_main(argv)
        except ChildFailedError as error:
            if failure_file:
                Path(failure_file).write_text(json.dumps(failure_report(error, _log_dir(argv))))
            return 1
        return 0
    except Exception as error:
        if failure_file:
            Path(failure_file).write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        raise
    finally:
        del store
        entry_dir = os.environ.get("RUNNER_ENTRY_DIR")
        if entry_dir and _parent_gone():
            shutil.rmtree(entry_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
