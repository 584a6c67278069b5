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

The lease dir is shared with every user of the machine, so it is treated as hostile.
Before first use it is opened once (never through a link) and refused unless root or
the current user owns it and, if others can write it, it is sticky
(:mod:`runner.launch.trust`); every file in it is then opened relative to that
descriptor with ``O_NOFOLLOW``, and used only if it is a regular file with one link.
A holder writes nothing but these, which is all the protocol needs:

- a slot or ticket file it makes (``O_EXCL``): mode 0666, so every user's runs can
  lock it and write it when they hold it (the only ``fchmod`` runner does here);
- the slot file whose lock it holds: truncated and rewritten with its holder record;
- a ticket file whose lock is free (its run ended): removed.

A link, a FIFO or any other file under a slot's name is not a slot: it is skipped
(said once); one under a guard's name stops the run with an error naming it. What a
slot file says is read capped at 4 KiB, checked field by field and stripped of
control characters before anything shows it.

Linux and macOS (``fcntl.flock``); nothing here imports torch or Hydra's app code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import getpass
import itertools
import json
import logging
import os
import re
import stat
import time
import unicodedata
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException

from runner.errors import invalid
from runner.launch.trust import dir_problem

log = logging.getLogger(__name__)

DEFAULT_LEASE_DIR = "/tmp/runner-device-leases"
LEASE_DIR_ENV = "RUNNER_LEASE_DIR"
# The guard of the line of waiting runs (device files are all named device-*).
LINE = "line"
# What a holder record may take; a larger slot file is not runner's.
RECORD_BYTES = 4096
# Every open in the lease dir: never a link, never a controlling terminal, never
# blocking on a FIFO someone put there.
OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
# What opening a name in the lease dir says when it is not a lease file (a link, a
# dir, a socket); any other error is the machine's, and raised.
NOT_A_LEASE_FILE = {errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EOPNOTSUPP}
# A guard another user has just made is theirs until they open it to all (microseconds).
GUARD_RETRIES = 50


class LeaseDirError(CompactHydraException, OSError):
    """The lease dir cannot be made, written or trusted (Hydra prints the message alone)."""


def printable(text: Any, limit: int) -> str:
    """``text`` as a string fit for the console: control characters (escape sequences
    included) dropped, at most ``limit`` characters."""
    kept = "".join(c for c in str(text) if unicodedata.category(c)[0] != "C")
    return kept[:limit]


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


UNKNOWN = Holder(0, "?", "a process whose slot file says nothing runner wrote", 1)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _share(fd: int) -> None:
    """A lease file this process made: every user's runs may lock and write it (the
    only mode runner sets in the lease dir; a file system without modes keeps its own)."""
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _count(value: Any, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(value)
    return value


def _read_holder(fd: int) -> Holder:
    """The holder record of a slot file another process holds: untrusted, so size
    capped, checked field by field, and printable (UNKNOWN if it is not a record)."""
    try:
        raw = os.pread(fd, RECORD_BYTES + 1, 0)
        data = json.loads(raw.decode()) if len(raw) <= RECORD_BYTES else None
        if not isinstance(data, dict) or not isinstance(data.get("devices", []), list):
            return UNKNOWN
        return Holder(
            pid=_count(data["pid"], 1, 2**31),
            user=printable(data["user"], 32),
            what=printable(data["what"], 200),
            limit=_count(data["limit"], 0, 1024),
            devices=tuple(printable(d, 64) for d in data.get("devices", [])[:64]),
        )
    except (OSError, ValueError, KeyError, RecursionError):
        return UNKNOWN


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
        self._ticket: tuple[str, int] | None = None  # this run's place in the line
        self._fd: int | None = None  # the checked dir, every file opened relative to it
        self._skipped: set[str] = set()  # names that are not slots, said once
        # Who held the device the last try_take could not have.
        self.refused_by: list[Holder] = []

    def ensure(self) -> None:
        """Make the dir on first use (world-writable and sticky, like /tmp, so every
        user's runs share it), open it and check it may be trusted: a dir that cannot
        be made or written, or that another user could swap files in, is a clear error."""
        if self._fd is not None:
            return
        made = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
            made = True
        except FileExistsError:
            pass
        except OSError as error:
            raise self._error(error) from None
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENOTDIR) and self.path.is_symlink():
                raise self._refused("it is a symbolic link") from None
            raise self._error(error) from None
        st = os.fstat(fd)
        if made and st.st_uid == os.geteuid():  # the dir opened is the one made here
            os.fchmod(fd, 0o1777)
            st = os.fstat(fd)
        if problem := dir_problem(st, group_counts=True):
            os.close(fd)
            raise self._refused(problem)
        if not os.access(self.path, os.W_OK | os.X_OK):
            os.close(fd)
            raise self._error(PermissionError(errno.EACCES, "not writable"))
        self._fd = fd
        weakref.finalize(self, os.close, fd)

    def _error(self, error: OSError) -> LeaseDirError:
        return LeaseDirError(
            invalid(
                "hydra.launcher.lease_dir",
                str(self.path),
                "the device leases live there and it cannot be made or written "
                f"({error.strerror or error})",
                f"hydra.launcher.lease_dir=A_DIR_EVERY_USER_CAN_WRITE (or set "
                f"${LEASE_DIR_ENV}), or hydra.launcher.leases=false to manage devices by hand",
            )
        )

    def _refused(self, problem: str) -> LeaseDirError:
        return LeaseDirError(
            f"hydra.launcher.lease_dir={str(self.path)!r} is refused: the device leases "
            f"live there and another user could swap its files under your runs: "
            f"{problem}. Fix: a shared dir root owns (sudo install -d -m 1777 -o root "
            f"{self.path}), or a dir of your own (${LEASE_DIR_ENV}=~/.runner-leases or "
            "hydra.launcher.lease_dir=...), or hydra.launcher.leases=false to manage "
            "devices by hand"
        )

    def _open(self, name: str, create: bool = False) -> int | None:
        """A descriptor of the lease file ``name`` (made by this process with mode
        0666 if missing and ``create``), or None if there is none, or what is there is
        not a lease file: a link, a FIFO, a file with other links, one not readable."""
        assert self._fd is not None
        attempt = 0
        while True:
            if create:
                try:
                    fd = os.open(name, OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=self._fd)
                except FileExistsError:
                    pass
                else:
                    _share(fd)
                    return fd
            try:
                fd = os.open(name, OPEN_FLAGS, dir_fd=self._fd)
            except FileNotFoundError:
                if create:
                    continue  # removed since: make it
                return None
            except PermissionError as error:
                if create and attempt < GUARD_RETRIES:  # made a moment ago, not yet 0666
                    attempt += 1
                    time.sleep(0.01)
                    continue
                self._skip(name, error.strerror or str(error))
                return None
            except OSError as error:
                if error.errno not in NOT_A_LEASE_FILE:
                    raise
                self._skip(name, error.strerror or str(error))
                return None
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                return fd
            os.close(fd)
            self._skip(name, "a hard link" if stat.S_ISREG(st.st_mode) else "not a regular file")
            return None

    def _skip(self, name: str, why: str) -> None:
        if name not in self._skipped:
            self._skipped.add(name)
            log.warning(
                "lease dir %s: ignoring %s (%s), which runner did not make",
                self.path,
                printable(name, 80),
                why,
            )

    def _name(self, device: str) -> str:
        return "device-" + re.sub(r"[^A-Za-z0-9_-]", "_", device)

    def _names(self, pattern: str) -> list[tuple[str, str]]:
        """(name, what ``pattern``'s group matched) for each entry of the dir matching it."""
        assert self._fd is not None
        found = []
        for name in os.listdir(self._fd):
            if match := re.fullmatch(pattern, name):
                found.append((name, match.group(1)))
        return found

    @contextlib.contextmanager
    def _guard(self, name: str) -> Iterator[None]:
        """Hold ``name``.guard: a device's (``device-0``) or the waiting line's."""
        fd = self._open(f"{name}.guard", create=True)
        if fd is None:
            raise LeaseDirError(
                f"hydra.launcher.lease_dir={str(self.path)!r} holds "
                f"{printable(name, 80)}.guard, which runner did not make (a link or not a "
                "regular file): no run can take its lock safely. Fix: remove it (its "
                f"owner or root can), or a dir of your own (${LEASE_DIR_ENV}="
                "~/.runner-leases), or hydra.launcher.leases=false"
            )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds by whoever has it
            yield
        finally:
            os.close(fd)

    def _probe(self, device: str) -> tuple[list[Holder], int | None, int]:
        """Under the guard: the holders, a free slot's descriptor (locked by us) if
        there is one, and the number a new slot would take."""
        holders: list[Holder] = []
        free: int | None = None
        prefix = re.escape(self._name(device))
        slots = sorted((int(n), name) for name, n in self._names(rf"{prefix}\.(\d{{1,6}})\.lock"))
        try:
            for _, name in slots:
                fd = self._open(name)
                if fd is None:
                    continue
                try:
                    if _try_lock(fd):
                        if free is None:
                            free, fd = fd, None  # kept
                    else:
                        holders.append(_read_holder(fd))
                finally:
                    if fd is not None:
                        os.close(fd)
        except BaseException:
            if free is not None:
                os.close(free)
            raise
        return holders, free, slots[-1][0] + 1 if slots else 0

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
                _, fd = self._new_file(lambda n: f"{self._name(device)}.{new + n}.lock")
            try:
                if not _try_lock(fd):  # only a run not using the guard could hold it
                    os.close(fd)
                    return None
                _write_holder(fd, Holder(os.getpid(), _user(), what, self.per_device))
            except BaseException:
                os.close(fd)
                raise
            return Lease(fd)

    def _new_file(self, name_of: Callable[[int], str]) -> tuple[str, int]:
        """A file this process makes (its name and descriptor), at the first of
        ``name_of(0)``, ``name_of(1)``, ... that nothing in the dir has taken."""
        assert self._fd is not None
        for n in itertools.count():
            name = name_of(n)
            try:
                fd = os.open(name, OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o666, dir_fd=self._fd)
            except FileExistsError:
                continue
            _share(fd)
            return name, fd
        raise AssertionError("unreachable")

    def wait_in_line(self, what: str, devices: list[str]) -> bool:
        """Join the line of runs that wait for devices (once; see the module docstring)
        as ``what``, waiting for some of ``devices``. True if first in line: then no
        other run takes any of those devices; they go to this one as they free."""
        self.ensure()
        with self._guard(LINE):
            if self._ticket is None:
                name = f"waiting-{time.time_ns():020d}-{os.getpid()}-{id(self)}"
                self._ticket = self._new_file(lambda n: f"{name}-{n}.lock")
                fd = self._ticket[1]
                _try_lock(fd)  # a new file: nobody else holds it
                waits = f"{what}, which waits for devices first"
                _write_holder(fd, Holder(os.getpid(), _user(), waits, 0, tuple(devices)))
            return self._first() is None

    def first_in_line(self) -> Holder | None:
        """The run first in the line of waiting runs, if it is another one."""
        self.ensure()
        with self._guard(LINE):
            return self._first()

    def _first(self) -> Holder | None:
        """Under the line's guard: the first live waiter if it is not this one; a
        waiter whose process ended (its lock is free) leaves the line here."""
        for name, _ in sorted(self._names(r"waiting-(.*)\.lock")):
            if self._ticket is not None and name == self._ticket[0]:
                return None
            fd = self._open(name)
            if fd is None:
                continue
            try:
                if not _try_lock(fd):
                    return _read_holder(fd)
                self._remove(name)
            finally:
                os.close(fd)
        return None

    def _remove(self, name: str) -> None:
        """Remove a ticket (a sticky dir keeps another user's, unless this is root)."""
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self._fd)

    def leave_line(self) -> None:
        """This run waits no more (its job started, or will not)."""
        if self._ticket is not None:
            name, fd = self._ticket
            with self._guard(LINE):
                self._remove(name)
                os.close(fd)
            self._ticket = None

    @property
    def in_line(self) -> bool:
        return self._ticket is not None
