"""A copy of the project's source for a sweep's Slurm jobs (``hydra.launcher.snapshot``).

Jobs wait in a queue; the code on disk changes meanwhile. At the sweep's first
submission the project's files (git's tracked files, or ``snapshot_files``) are copied
as they are on disk into ``<sweep dir>/code/``, and every job imports from that copy
first, so an edit after submission reaches no queued job.

Written here rather than with submitit's ``RsyncSnapshot``: that one needs rsync,
makes a git clone, and changes the submitting process's working directory for as
long as it is entered, while this sweep submits its points one at a time over its
whole life.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from runner.errors import LauncherConfigError
from runner.launch.trust import check_trusted

SNAPSHOT_DIR = "code"


def project_root(cwd: str) -> Path | None:
    """The git checkout ``cwd`` is in, or None."""
    found = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True
    )
    return Path(found.stdout.strip()) if found.returncode == 0 else None


def check_snapshot(snapshot: bool, files: Sequence[str] | None, cwd: str) -> None:
    """Before anything is submitted: a snapshot needs git's list of files, or a set."""
    if snapshot and not files and project_root(cwd) is None:
        raise LauncherConfigError(
            f"hydra.launcher.snapshot=true is invalid here: {cwd} is not in a git "
            "checkout, so there is no list of the project's files to copy for the jobs. "
            'Fix: hydra.launcher.snapshot_files=\'["*.py", "conf/**"]\' (globs under the '
            "working directory), or hydra.launcher.snapshot=false to run the code on disk"
        )


def source_files(root: Path, files: Sequence[str] | None) -> list[str]:
    """The files to copy, relative to ``root``: ``files``' globs, else git's tracked
    files that exist on disk."""
    if files:
        found = {
            os.path.relpath(p, root)
            for pattern in files
            for p in glob.glob(str(root / pattern), recursive=True)
            if os.path.isfile(p)
        }
        return sorted(found)
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    return [f for f in listed.split("\0") if f and (root / f).is_file()]


def take_snapshot(sweep_dir: Path, cwd: str, files: Sequence[str] | None) -> tuple[Path, Path]:
    """Copy the project's files into ``<sweep_dir>/code`` (once per sweep dir: a resumed
    sweep keeps the copy its first jobs ran); return (the project root, the copy)."""
    root = Path(cwd) if files else project_root(cwd)
    assert root is not None  # check_snapshot ran first
    copy = sweep_dir / SNAPSHOT_DIR
    check_trusted(
        copy,
        "hydra.launcher.snapshot: the jobs' code copy",
        f"remove {copy} (a new copy is made), or a fresh hydra.sweep.dir",
    )
    if not copy.exists():
        partial = sweep_dir / f".{SNAPSHOT_DIR}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for name in source_files(root, files):
            target = partial / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, target)
        partial.mkdir(parents=True, exist_ok=True)
        partial.rename(copy)
    return root.resolve(), copy.resolve()


def in_snapshot(sys_path: list[str], root: Path, copy: Path) -> list[str]:
    """``sys_path`` with the project's entries pointing into the copy, ahead of the
    rest (the originals stay behind them, for files the copy lacks)."""
    moved = []
    for entry in sys_path:
        path = Path(entry).resolve()
        if path == root or root in path.parents:
            moved.append(str(copy / path.relative_to(root)))
    return list(dict.fromkeys([*moved, *sys_path]))
