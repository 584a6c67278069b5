"""What runner trusts on disk, where another user of the machine could reach it.

A dir is *private* when the current user or root owns it and no other user can
write it; a dir others can write is still safe to hold a file when it is sticky
(like ``/tmp``: nobody swaps or removes a file they do not own). Files runner loads
as code (pickles, a job's kept copy) are read only when the current user or root
owns them, they are regular files with one link (never followed as a link), and
their dir is safe in that sense; anything else is refused with an
:class:`UntrustedFileError` naming the file, what is wrong and the fix.

Group write access counts as another user's unless the group is the owner's own
(a user private group, as Debian and Ubuntu make for every user).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
from pathlib import Path

from hydra.errors import CompactHydraException


class UntrustedFileError(CompactHydraException, PermissionError):
    """A file or dir that another user could have written (Hydra prints it alone)."""


def user_name(uid: int) -> str:
    """``ana (uid 1001)``, or the bare uid where it has no name."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _private_group(st: os.stat_result) -> bool:
    """Whether the file's group holds its owner alone (a user private group)."""
    try:
        group = grp.getgrgid(st.st_gid)
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return False
    return group.gr_name == owner and set(group.gr_mem) <= {owner}


def others_can_write(st: os.stat_result) -> bool:
    """Whether a user other than the owner (and root) can write what ``st`` describes."""
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st)


def owner_problem(st: os.stat_result) -> str | None:
    """Why a file or dir with ``st`` is not this user's or root's, else None."""
    if st.st_uid in (0, os.geteuid()):
        return None
    return f"it is owned by {user_name(st.st_uid)}, not by you or root"


def dir_problem(st: os.stat_result) -> str | None:
    """Why a dir with ``st`` could have its files swapped by another user, else None:
    not this user's or root's, or others can write it and it is not sticky."""
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if problem := owner_problem(st):
        return problem
    if others_can_write(st) and not st.st_mode & stat.S_ISVTX:
        mode = stat.filemode(st.st_mode)
        return f"other users can write it and it is not sticky (mode {mode})"
    return None


def file_problem(st: os.stat_result) -> str | None:
    """Why a file with ``st`` is not one to load as code, else None."""
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_nlink != 1:
        return f"it has {st.st_nlink} hard links (a link to a file elsewhere)"
    if problem := owner_problem(st):
        return problem
    if others_can_write(st):
        return f"other users can write it (mode {stat.filemode(st.st_mode)})"
    return None


def read_trusted(path: Path, fix: str) -> bytes:
    """The bytes of ``path``, a file runner loads as code, if this user or root owns it
    and nobody else could have written it or swapped it (see the module docstring);
    else :class:`UntrustedFileError` with ``fix``. OSError if it cannot be read."""
    where = path.parent
    problem = dir_problem(os.stat(where))  # the dir itself may be a link (to scratch)
    if problem is None:
        where = path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            problem = "it is a symbolic link"
        else:
            with os.fdopen(fd, "rb") as file:
                problem = file_problem(os.fstat(fd))
                if problem is None:
                    return file.read()
    raise UntrustedFileError(
        f"{path} is refused: runner loads it as code, and {where} could have been "
        f"written by another user: {problem}. Fix: {fix}"
    )


def check_trusted(path: Path, what: str, fix: str) -> None:
    """Refuse ``path``, a dir or file runner runs code from or writes through (``what``,
    said in the error), if it is a link, or it or the dir it is in is not safe in the
    module's sense; nothing if it does not exist yet (its dir is still checked)."""
    problem = None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        problem = "it is a symbolic link"
    elif st is not None and stat.S_ISDIR(st.st_mode):
        problem = dir_problem(st)
    elif st is not None:
        problem = file_problem(st)
    if problem is None and path.parent.exists():
        if parent_problem := dir_problem(os.stat(path.parent)):
            problem = f"its dir {path.parent}: {parent_problem}"
    if problem is not None:
        raise UntrustedFileError(f"{what} {path} is refused: {problem}. Fix: {fix}")
