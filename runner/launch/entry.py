"""Entry dirs: where the parent leaves a job for its agent and ranks.

A job's resolved config and its task's reference (:mod:`runner.launch.codec`) are
written as ``job.json`` into a private entry directory (0700, files 0600) beside a
fixed entry script, which every rank runs and which hands the job to
:mod:`runner.launch.worker`. The dir is removed when the job ends; dirs left by a
parent killed with -9 are removed by the next sweep. The names of the files parent,
agent and ranks share (in the entry dir and in a job dir) are defined here, once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from runner.launch.codec import task_reference
from runner.launch.procs import import_path, pid_alive, started

# What every agent runs: ``python -m runner.launch.agent`` (torchrun, and runner's parts).
AGENT_MODULE = "runner.launch.agent"


def agent_command(args: list[str]) -> list[str]:
    """The agent's command line, however it is started (what launch.json records)."""
    return [sys.executable, "-m", AGENT_MODULE, *args]


# In the entry dir (private, removed when the job ends).
ENTRY_SCRIPT = "entry.py"
JOB_FILE = "job.json"
TASK_FILE = "task.pkl"
RESULT_FILE = "result.pkl"
# What rank 0 saw of its job beyond the return value (whether the ranks formed a group).
RANK0_FILE = "rank0.json"
FAILURE_FILE = "failure.json"
# In a job dir (kept).
AGENT_LOG = "torchrun.log"
# A copy of the job (job.json, task.pkl) to run it again: python -m runner.rerun JOB_DIR.
RERUN_DIR = ".runner"
# Where reruns of a sweep's points go, inside the sweep dir (the report leaves it out).
RERUNS = "reruns"
RETURN_VALUE = "return_value.pkl"

# The entry script is fixed text: the job is data in job.json beside it. Only as
# __main__ does it run the worker: a process the task starts with the "spawn" method
# re-imports this file as __mp_main__ and must not start the task again.
ENTRY_SOURCE = f"""\
# Written by runner for one torchrun job; removed when the job ends.
# Every rank runs this file. The job itself is data, in {JOB_FILE} beside it.
import json
import sys
from pathlib import Path

_job_dir = Path(__file__).resolve().parent
_job = json.loads((_job_dir / "{JOB_FILE}").read_text())
sys.path[:0] = [p for p in _job["sys_path"] if p not in sys.path]

if __name__ == "__main__":
    from runner.launch.worker import main

    main(_job, _job_dir)
"""


# This machine, as entry dir names carry it (no "-": it parts the name).
_HOST = re.sub(r"[^\w.]", "_", socket.gethostname())


def entry_base() -> Path:
    """Where entry dirs are made: ``$RUNNER_TMPDIR`` or the system temp dir."""
    base = Path(os.environ.get("RUNNER_TMPDIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return base


def remove_stale_entry_dirs() -> list[Path]:
    """Remove entry dirs left by runner parents that no longer exist (killed with -9
    together with their agents); returns what was removed. Only this user's own real
    dirs: the temp dir is shared, so a link or another user's dir is left alone."""
    removed = []
    for path in entry_base().glob("runner-*-*"):
        # runner-PID-STARTED-HOST-random (procs.started: the pid may be a later process's;
        # the host: $RUNNER_TMPDIR may be shared, and another machine's pid means nothing
        # here). Older names lack the start time and host.
        match = re.fullmatch(r"runner-(\d+)-(?:(\d+)-(?:([\w.]+)-)?)?[^-]*", path.name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
        here = match is not None and match[3] in (None, _HOST)
        if match and mine and here and not pid_alive(int(match[1]), int(match[2] or 0) or None):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_entry(
    config_data: dict,
    task_function: Callable,
    cwd: str,
    sys_path: list[str] | None = None,
    keep_in: Path | None = None,
) -> Path:
    """Create the private entry dir (0700) with the entry script, job.json and, for a
    task with no import path, task.pkl (all 0600). Returns the entry script's path.
    ``sys_path``: the import path the ranks get (default: this process's); ``keep_in``:
    a dir that keeps a copy of job.json and task.pkl (the job dir's RERUN_DIR)."""
    prefix = f"runner-{os.getpid()}-{started(os.getpid()) or 0}-{_HOST}-"
    entry_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=entry_base()))
    try:
        reference = task_reference(task_function)
        if reference is None:
            import cloudpickle

            _write_private(entry_dir / TASK_FILE, cloudpickle.dumps(task_function))
        job = {
            "config": config_data,
            "task": reference,
            "sys_path": list(dict.fromkeys(sys_path or import_path(cwd))),
            "cwd": cwd,
        }
        _write_private(entry_dir / JOB_FILE, json.dumps(job).encode())
        _write_private(entry_dir / ENTRY_SCRIPT, ENTRY_SOURCE.encode())
        if keep_in is not None:
            keep_in.mkdir(parents=True, exist_ok=True)
            for name in (JOB_FILE, TASK_FILE):
                if (entry_dir / name).is_file():
                    shutil.copyfile(entry_dir / name, keep_in / name)
    except BaseException:
        shutil.rmtree(entry_dir, ignore_errors=True)
        raise
    return entry_dir / ENTRY_SCRIPT
