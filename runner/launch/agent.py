"""``python -m runner.launch.agent``: torchrun, plus what runner needs around it.

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
* Prompt ends: the agent wakes at once when a worker ends or hands back its value
  (:func:`runner.launch.gates.install_prompt`, where that is known to work; else it says so in its
  output and keeps torchrun's own sleeps).
* ``RUNNER_PARENT_PID`` (and ``RUNNER_PARENT_STARTED``, its start time: a later
  process may get the pid) / ``RUNNER_ENTRY_DIR``: the launch core asked the kernel to
  SIGTERM this agent when the parent dies (torchrun then stops its workers); if the
  parent is gone when the agent ends, the agent removes the job's entry dir itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from runner.launch import gates
from runner.launch.procs import exit_on_signal, parent_gone


def _parent_gone() -> bool:
    """The runner parent that launched this job has exited. A cold agent is its child;
    a warm agent is a child of the warm process, so it asks about the parent's pid and
    start time."""
    if os.environ.get("RUNNER_WARM_AGENT") == "1":
        return parent_gone()
    expected = os.environ.get("RUNNER_PARENT_PID")
    return expected is not None and os.getppid() != int(expected)


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


def failure_report(error: Any, log_dir: Path | None) -> dict:
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


def install(quiet_release: bool = False) -> None:
    """Make ``--rdzv_backend runner-static`` known to torchrun in this process, and its
    agent and log tailers prompt (once: a warm agent inherits this from the warm
    process). Why they are not prompt is said on stderr, unless ``quiet_release`` and
    the reason is the torch release, which a sweep's parent has said already."""
    global _installed
    if _installed:
        return
    _register_rendezvous()
    reason = gates.install_prompt()
    if reason is not None and not (quiet_release and gates.release_problem() is not None):
        print(
            f"runner: prompt agent off ({reason}): ranks' ends are seen at torchrun's "
            "monitor_interval",
            file=sys.stderr,
        )
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


def _port_of(argv: list[str]) -> int:
    for flag in ("--rdzv_endpoint", "--rdzv-endpoint"):
        if flag in argv:
            return int(argv[argv.index(flag) + 1].rsplit(":", 1)[1])
    return int(argv[argv.index("--master_port") + 1])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Until torchrun installs its own handlers, a SIGTERM (e.g. the parent died while
    # torch was still importing) must still unwind through the clean-up below.
    signal.signal(signal.SIGTERM, exit_on_signal)
    # Slurm's warning before a time limit (SIGUSR2) may reach every process of the
    # step: it is for the ranks (runner.stop), not a reason for the agent to end.
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
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
