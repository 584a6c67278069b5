"""What runner trusts on disk, where another user of the machine could reach it.

A dir is *safe* when the current user or root owns it and no other user can write
it, or when others can write it but it is sticky (like ``/tmp``: nobody swaps or
removes a file they do not own). Files runner loads as code (pickles, a job's kept
copy) are read only when the current user or root owns them, they are regular files
with one link (never followed as a link), and their dir is safe; anything else is
refused with an :class:`UntrustedFileError` naming the file, what is wrong and the
fix. An SQLite store is opened unless it is a link another user made, a file with
other links, or not a file at all (a store written in a colleague's dir is theirs).

"Others" are the users of the machine's other accounts: the world bits. In the
lease dir, shared by everyone, a group that can write counts too, unless it is the
owner's own (a user private group, as Debian and Ubuntu make for every user); in job
dirs a writing group is the project's, trusted like the dir (umask 002 on shared
project dirs is common on clusters).
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


def others_can_write(st: os.stat_result, group_counts: bool = False) -> bool:
    """Whether another account can write what ``st`` describes: anyone (world bits),
    or with ``group_counts`` also a group that is not the owner's own."""
    if st.st_mode & stat.S_IWOTH:
        return True
    return group_counts and bool(st.st_mode & stat.S_IWGRP) and not _private_group(st)


def owner_problem(st: os.stat_result) -> str | None:
    """Why a file or dir with ``st`` is not this user's or root's, else None."""
    if st.st_uid in (0, os.geteuid()):
        return None
    return f"it is owned by {user_name(st.st_uid)}, not by you or root"


def dir_problem(st: os.stat_result, group_counts: bool = False) -> str | None:
    """Why a dir with ``st`` could have its files swapped by another user, else None:
    not this user's or root's, or others can write it and it is not sticky."""
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if problem := owner_problem(st):
        return problem
    if others_can_write(st, group_counts) and not st.st_mode & stat.S_ISVTX:
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
    else :class:`UntrustedFileError` with ``fix``. OSError if it cannot be read. The
    file is opened relative to the dir that was checked, never through a link."""
    # The dir itself may be a link (outputs/ on a scratch disk): followed, then checked.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        where, problem = path.parent, dir_problem(os.fstat(dir_fd))
        if problem is None:
            where = path
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
            try:
                fd = os.open(path.name, flags, dir_fd=dir_fd)
            except OSError as error:
                if error.errno != errno.ELOOP:
                    raise
                problem = "it is a symbolic link"
            else:
                with os.fdopen(fd, "rb") as file:
                    problem = file_problem(os.fstat(fd))
                    if problem is None:
                        return file.read()
    finally:
        os.close(dir_fd)
    raise UntrustedFileError(
        f"{path} is refused: runner loads it as code, and {where} could have been "
        f"written by another user: {problem}. Fix: {fix}"
    )


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # not there: opening it says why
        return None


def check_trusted(path: Path, what: str, fix: str) -> None:
    """Refuse ``path``, a dir runner runs code from (``what``, said in the error), if
    it is a link or not a safe dir, or the dir it is in is not; nothing if it does not
    exist yet."""
    st = _lstat(path)
    if st is None:
        return
    problem = "it is a symbolic link" if stat.S_ISLNK(st.st_mode) else dir_problem(st)
    if problem is None and (parent := dir_problem(os.stat(path.parent))):
        problem = f"its dir {path.parent}: {parent}"
    if problem is not None:
        raise UntrustedFileError(f"{what} {path} is refused: {problem}. Fix: {fix}")


def check_store(path: Path, what: str, fix: str) -> None:
    """Refuse the SQLite file ``path`` (``what``) where writing it would write
    somewhere else: a link another user made, a file with other links, not a file."""
    st = _lstat(path)
    problem = None
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        if st.st_uid not in (0, os.geteuid()):
            problem = f"it is a symbolic link made by {user_name(st.st_uid)}, not by you or root"
    elif not stat.S_ISREG(st.st_mode):
        problem = "it is not a regular file"
    elif st.st_nlink != 1:
        problem = f"it has {st.st_nlink} hard links (a link to a file elsewhere)"
    if problem:
        raise UntrustedFileError(f"{what} {path} is refused: {problem}. Fix: {fix}")
