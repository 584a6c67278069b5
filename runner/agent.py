"""``python -m runner.agent``: torchrun, plus what runner needs around it.

It takes torchrun's arguments unchanged and runs ``torch.distributed.run`` in this
process, adding three things, each driven by an environment variable the launch core
sets:

* ``RUNNER_LISTEN_FD``: a socket the parent already bound to 127.0.0.1:PORT. The
  rendezvous store serves on it, so the port cannot be lost between pick and bind and
  single-node rendezvous listens on loopback only.
* ``RUNNER_FAILURE_FILE``: when workers fail, the structured failures torchrun knows
  (rank, exit code, signal, the exception from the ``@record`` error file, the log
  path) are written there as JSON, so the parent never parses console text.
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
from datetime import timedelta
from pathlib import Path


def _parent_gone() -> bool:
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

        if listen_fd is not None:
            port = int(argv[argv.index("--master_port") + 1])
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
