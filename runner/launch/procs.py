"""Process helpers shared by the parent, the agent, the warm process and the ranks.

Small and dependency-free (no torch, no Hydra): the parent-death signal, whether a
pid is alive (and still the process it was), atomic writes, SIGTERM as
``SystemExit``, loopback ports reserved for the lifetime of a job, and the import path
handed to other processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import BinaryIO

LOOPBACK = "127.0.0.1"

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no-op elsewhere)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


def stat_fields(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` from its state on (field 3 of proc(5); the start
    time, field 22, is at index 19); FileNotFoundError once the process is reaped."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, field 22 of
    ``/proc/PID/stat``): with the pid, a name no later process can take. None once it
    is reaped (a zombie still has one), or where there is no ``/proc``."""
    try:
        return int(stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def parent_env() -> dict[str, str]:
    """What a process this one starts is told of it (``RUNNER_PARENT_PID`` and
    ``RUNNER_PARENT_STARTED``), to know when it is gone: see :func:`parent_gone`."""
    return {
        "RUNNER_PARENT_PID": str(os.getpid()),
        "RUNNER_PARENT_STARTED": str(started(os.getpid()) or ""),
    }


def parent_gone() -> bool:
    """The process that set :func:`parent_env` for this one has exited (False when
    none did)."""
    pid = os.environ.get("RUNNER_PARENT_PID", "")
    born = os.environ.get("RUNNER_PARENT_STARTED", "")
    return pid.isdigit() and not pid_alive(int(pid), int(born) if born.isdigit() else None)


def pid_alive(pid: int, started_at: int | None = None) -> bool:
    """Whether ``pid`` is a live process: it exists and is not a zombie waiting to be
    reaped (a dead parent's pid stays in the table as a zombie until then). With
    ``started_at`` (:func:`started` of it then), only if it is that same process, not a
    later one the kernel gave its pid."""
    try:
        fields = stat_fields(pid)
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc here: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if started_at is not None and int(fields[19]) != started_at:
        return False  # the pid is another process's now
    return fields[0] not in ("Z", "X")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A file to write ``path``'s new content into: on leaving the block it is synced
    and renamed into place (the rename synced too), so a reader sees the old file or
    the new one, never half of one, even after a crash. On an error nothing changes."""
    tmp = path.with_name(f".{path.name}.tmp")  # one name: a crash's leftover is replaced
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename is done; some filesystems cannot sync a dir
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(data)


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """Signal handler: end like ``kill`` would (exit code 128 + signal), but through
    ``SystemExit``, so ``finally`` blocks clean up."""
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) so ``finally`` clean-up runs
    (only the main thread can install handlers; elsewhere the block runs as is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption() -> str | None:
    """In a ``finally`` or ``except`` block: ``Ctrl-C`` or ``SIGTERM`` if that is what
    ends it (SIGTERM as :func:`sigterm_as_exit` raises it), else None."""
    error = sys.exc_info()[1]
    if isinstance(error, KeyboardInterrupt):
        return "Ctrl-C"
    if isinstance(error, SystemExit) and error.code == 128 + signal.SIGTERM:
        return "SIGTERM"
    return None


_ports_lock = threading.Lock()
_ports_in_use: set[int] = set()


def free_port(host: str = LOOPBACK) -> socket.socket:
    """Return a socket bound to a free port on ``host`` (port from ``getsockname()``).

    The port is never one already handed to a job of this process that is still
    running; it stays reserved until :func:`release_port`. Keep the socket open until
    the agent has it, so no other process can take the port in between.
    """
    with _ports_lock:
        for _ in range(100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in _ports_in_use:
                _ports_in_use.add(port)
                return sock
            sock.close()
    raise RuntimeError("no free loopback port found in 100 tries")


def release_port(port: int) -> None:
    """Make ``port`` available to :func:`free_port` again (its job has ended)."""
    with _ports_lock:
        _ports_in_use.discard(port)


def import_path(cwd: str) -> list[str]:
    """This process's ``sys.path`` as absolute paths (the script's dir, "", as ``cwd``),
    without repeats: what another process needs to import what this one can."""
    return list(dict.fromkeys(os.path.abspath(p) if p else cwd for p in sys.path))
