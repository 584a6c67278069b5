"""Device leases that every runner process on this machine respects: OS file locks.

A lease on a device is an exclusive ``flock`` on one of the device's slot files in
the lease dir (``hydra.launcher.lease_dir``; by default ``$RUNNER_LEASE_DIR``, else
``/tmp/runner-device-leases``, shared by every user of the machine). The kernel drops
a lock when its holder's process ends, however it ends (SIGKILL included): there are
no stale leases to clean up and no daemon to run.

Taking a lease happens under the device's guard lock: the taker counts the slot files
whose lock is held, reads what each holder allows on the device at once (its
``points_per_device``, written into its slot file), and takes a free slot only if all
of them, itself included, stay within every one of those limits. So a sweep that
wants a device to itself never shares it, and two sweeps that each allow two points
per device never put three on it.

First come, first served across runs: runs whose next job cannot get its devices
wait in line (a ticket file each, ordered by when they began to wait, locked while
they live). Only the run first in line keeps the leases of devices as they free
while it waits for enough of them, and no other run takes any device it waits for,
so a job waits at most for the jobs running when it got to the front (a large job is
not starved by a stream of small ones from other sweeps, and a sweep whose point just
started cannot take the next free device ahead of another sweep that waited first).
Runs further back take devices all at once or not at all, so waiting runs never
deadlock on each other's partial holdings.

Linux and macOS (``fcntl.flock``); nothing here imports torch or Hydra.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from hydra.errors import CompactHydraException

DEFAULT_LEASE_DIR = "/tmp/runner-device-leases"
LEASE_DIR_ENV = "RUNNER_LEASE_DIR"
# The guard of the line of waiting runs (device files are all named device-*).
LINE = "line"


class LeaseDirError(CompactHydraException, OSError):
    """The lease dir cannot be made or written (Hydra prints the message alone)."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a slot of a device, as its slot file says."""

    pid: int
    user: str
    what: str
    limit: int
    # A run waiting in line: the devices it waits for.
    devices: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.what} (pid {self.pid}, user {self.user})"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _open(path: Path) -> int:
    """Open (creating) a lock file that every user may lock and write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    with contextlib.suppress(OSError):  # not ours to change: made by another user
        os.fchmod(fd, 0o666)
    return fd


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _read_holder(fd: int) -> Holder:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode())
        devices = tuple(str(d) for d in data.get("devices", ()))
        return Holder(int(data["pid"]), data["user"], data["what"], int(data["limit"]), devices)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return Holder(0, "?", "a process whose slot file says nothing", 1)


def _write_holder(fd: int, holder: Holder) -> None:
    data = json.dumps(dataclasses.asdict(holder)).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


class Lease:
    """One held slot of one device, until :meth:`release` or the holder's end."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd = None


class LeaseDir:
    """This process's view of the machine's device leases (see the module docstring)."""

    def __init__(self, path: str | Path | None, per_device: int = 1) -> None:
        self.path = Path(path or os.environ.get(LEASE_DIR_ENV) or DEFAULT_LEASE_DIR)
        self.per_device = per_device
        self._ticket: tuple[Path, int] | None = None  # this run's place in the line
        self._made = False
        # Who held the device the last try_take could not have.
        self.refused_by: list[Holder] = []

    def ensure(self) -> None:
        """Make the dir on first use: world-writable and sticky, like /tmp, so every
        user's runs share it; a dir that cannot be written is a clear error."""
        if self._made:
            return
        try:
            self.path.mkdir(parents=True)
            os.chmod(self.path, 0o1777)
        except FileExistsError:
            pass
        except OSError as error:
            raise self._error(error) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise self._error(PermissionError("not writable"))
        self._made = True

    def _error(self, error: OSError) -> LeaseDirError:
        return LeaseDirError(
            f"hydra.launcher.lease_dir={str(self.path)!r} is invalid: the device leases "
            f"live there and it cannot be made or written ({error.strerror or error}). "
            "Fix: hydra.launcher.lease_dir=A_DIR_EVERY_USER_CAN_WRITE (or set "
            f"${LEASE_DIR_ENV}), or hydra.launcher.leases=false to manage devices by hand"
        )

    def _name(self, device: str) -> str:
        return "device-" + re.sub(r"[^A-Za-z0-9_-]", "_", device)

    def _slots(self, device: str) -> list[Path]:
        """The device's slot files, in slot order."""
        name = self._name(device)
        found = []
        for path in self.path.glob(f"{name}.*.lock"):
            slot = path.name[len(name) + 1 : -len(".lock")]
            if slot.isdigit():
                found.append((int(slot), path))
        return [path for _, path in sorted(found)]

    @contextlib.contextmanager
    def _guard(self, name: str) -> Iterator[None]:
        """Hold ``name``.guard: a device's (``device-0``) or the waiting line's."""
        fd = _open(self.path / f"{name}.guard")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds by whoever has it
            yield
        finally:
            os.close(fd)

    def _probe(self, device: str) -> tuple[list[Holder], int | None, Path]:
        """Under the guard: the holders, a free slot's descriptor (locked by us) if
        there is one, and the path a new slot would take."""
        holders: list[Holder] = []
        free: int | None = None
        slots = self._slots(device)
        for path in slots:
            fd = _open(path)
            if _try_lock(fd):
                if free is None:
                    free = fd
                    continue
            else:
                holders.append(_read_holder(fd))
            os.close(fd)
        new = self.path / f"{self._name(device)}.{len(slots)}.lock"
        return holders, free, new

    def try_take(self, device: str, what: str) -> Lease | None:
        """A lease on ``device`` for ``what`` (said to runs that wait for it), or None
        if its holders are at their limit (then ``refused_by`` says who they are)."""
        self.ensure()
        waiter = self.first_in_line()
        if waiter is not None and device in waiter.devices:
            self.refused_by = [waiter]
            return None
        with self._guard(self._name(device)):
            holders, fd, new = self._probe(device)
            limit = min([self.per_device] + [h.limit for h in holders])
            self.refused_by = holders
            if len(holders) >= limit:
                if fd is not None:
                    os.close(fd)
                return None
            if fd is None:
                fd = _open(new)
                if not _try_lock(fd):  # only a run not using the guard could hold it
                    os.close(fd)
                    return None
            _write_holder(fd, Holder(os.getpid(), _user(), what, self.per_device))
            return Lease(fd)

    def wait_in_line(self, what: str, devices: list[str]) -> bool:
        """Join the line of runs that wait for devices (once; see the module docstring)
        as ``what``, waiting for some of ``devices``. True if first in line: then no
        other run takes any of those devices; they go to this one as they free."""
        self.ensure()
        with self._guard(LINE):
            if self._ticket is None:
                name = f"waiting-{time.time_ns():020d}-{os.getpid()}-{id(self)}.lock"
                fd = _open(self.path / name)
                _try_lock(fd)  # a new name: nobody else holds it
                waits = f"{what}, which waits for devices first"
                _write_holder(fd, Holder(os.getpid(), _user(), waits, 0, tuple(devices)))
                self._ticket = (self.path / name, fd)
            return self._first() is None

    def first_in_line(self) -> Holder | None:
        """The run first in the line of waiting runs, if it is another one."""
        self.ensure()
        with self._guard(LINE):
            return self._first()

    def _first(self) -> Holder | None:
        """Under the line's guard: the first live waiter if it is not this one; a
        waiter whose process ended (its lock is free) leaves the line here."""
        for path in sorted(self.path.glob("waiting-*.lock")):
            if self._ticket is not None and path == self._ticket[0]:
                return None
            fd = _open(path)
            try:
                if not _try_lock(fd):
                    return _read_holder(fd)
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return None

    def leave_line(self) -> None:
        """This run waits no more (its job started, or will not)."""
        if self._ticket is not None:
            path, fd = self._ticket
            with self._guard(LINE):
                path.unlink(missing_ok=True)
                os.close(fd)
            self._ticket = None

    @property
    def in_line(self) -> bool:
        return self._ticket is not None
