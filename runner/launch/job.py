"""One job as one torchrun: the :class:`Job` interface, the local job, and ``launch``.

What a user sees:

* The job's config is resolved once, here in the parent, and travels as data
  (:mod:`runner.launch.entry`).
* Single-node jobs get a loopback port that this module binds itself and hands to the
  agent as an open socket: no other process can take it between pick and use, and
  the rendezvous store listens on 127.0.0.1 only.
* The agent (``python -m runner.launch.agent``: torchrun with a structured failure
  report) runs in its own session and dies with its parent; :func:`launch` waits for
  it, returns rank 0's return value, or raises :class:`LaunchError` naming the failing
  rank, its exit code, its exception and the tail of its log. Entry files are removed
  on success, failure, Ctrl-C and SIGTERM.

"What to run" (the entry dir and a :class:`LaunchConfig`) stays apart from "how the
agent starts": an :class:`~runner.launch.starters.AgentStarter` the job is given, a
fresh subprocess or a fork of the warm process (:mod:`runner.launch.starters`).

Every kind of job (this one, the Slurm job of :mod:`runner.sweep.slurm`, the tests'
fakes) implements :class:`Job`, so whoever runs jobs never asks which kind it holds.

Nothing here imports torch: the parent stays light.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from runner.errors import first_line
from runner.launch.codec import job_config_data
from runner.launch.entry import (
    AGENT_LOG,
    FAILURE_FILE,
    RANK0_FILE,
    RERUN_DIR,
    RESULT_FILE,
    write_entry,
)
from runner.launch.options import LaunchConfig
from runner.launch.procs import free_port, parent_env, release_port, started
from runner.launch.starters import AgentProcess, AgentStarter, SubprocessStarter

log = logging.getLogger(__name__)


class LaunchError(CompactHydraException, RuntimeError):
    """A job failed: which rank, how, the error's own first line and where its log is.
    Its message is what a console shows (Hydra prints it alone, no traceback); its
    ``details`` add the end of that log (what ``launch.json`` keeps)."""

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        rank: int | None = None,
        failures: list[dict] | None = None,
        log_tail: str = "",
        log_file: Path | None = None,
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.rank = rank
        self.failures = failures or []
        self.log_tail = log_tail
        self.log_file = log_file

    @property
    def details(self) -> str:
        """The message, then the last lines of the failed rank's (or agent's) log."""
        if not self.log_tail:
            return str(self)
        return f"{self}\n--- {self.log_file or 'its log'} (last lines) ---\n{self.log_tail}"


class LaunchTimeout(LaunchError):
    """The job ran past its ``timeout`` and was stopped."""


class Job(Protocol):
    """One job, however it runs: a local torchrun (cold or warm), a Slurm job, a fake.

    ``start`` it, ``poll`` it until it returns an exit code (a job past its
    ``launch.timeout`` stops itself and reports :class:`LaunchTimeout`), then take its
    ``result`` (rank 0's return value, or the :class:`LaunchError`), its
    ``launch_record`` (what ``launch.json`` says) and ``cleanup``. ``stop`` asks a job
    to stop and returns at once; ``wait_stopped`` waits for it and forces it past a
    deadline. :func:`stop_jobs` stops many at once within one grace period.
    """

    launch: LaunchConfig
    job_dir: Path

    def start(self, extra_env: dict[str, str] | None = None) -> None: ...

    def poll(self) -> int | None: ...

    def running(self) -> bool: ...

    def stop(self) -> None: ...

    def wait_stopped(self, deadline: float) -> None: ...

    def result(self) -> Any: ...

    def launch_record(self) -> dict: ...

    def describe(self) -> str: ...

    def cleanup(self) -> None: ...


def run_times(start: float | None, end: float | None) -> dict[str, float | None]:
    """The start, end and duration fields of a job's ``launch.json``."""
    duration = round(end - start, 3) if start and end else None
    return {"start_time": start, "end_time": end, "duration_s": duration}


def log_tail(path: Path | None, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ("" if there is none)."""
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


class TorchrunJob:
    """One job as one torchrun agent on this machine: start it, poll it, stop it,
    collect its result. Implements :class:`Job`."""

    def __init__(
        self,
        config: DictConfig | None,
        task_function: Callable,
        launch: LaunchConfig,
        job_dir: str | Path,
        *,
        console: bool = True,
        config_data: dict | None = None,
        sys_path: list[str] | None = None,
        starter: AgentStarter | None = None,
    ) -> None:
        """``config`` is resolved here; or pass ``config_data`` resolved elsewhere (a
        Slurm node runs what its submitter resolved), with that process's ``sys_path``.
        ``console``: the agent's output goes to this process's console, else to
        ``torchrun.log`` in the job dir. ``starter``: how the agent starts (default: a
        fresh subprocess)."""
        self.launch = launch
        self.job_dir = Path(job_dir)
        self.console = console
        data = config_data if config is None else job_config_data(config)
        assert data is not None, "pass config or config_data"
        self.config_data: dict = data
        self.task_function = task_function
        self.sys_path = sys_path
        self.starter: AgentStarter = starter or SubprocessStarter()
        self.cwd = str(data["hydra"]["runtime"]["cwd"]) if "hydra" in data else os.getcwd()
        self.entry_file: Path | None = None
        self.proc: AgentProcess | None = None
        self.port: int | None = None
        self.command: list[str] = []
        self.started_at: float | None = None
        self.agent_started: int | None = None  # procs.started of the agent
        self.ended_at: float | None = None
        self.returncode: int | None = None
        self.timed_out = False
        self.rank0_here = False
        # Whether the ranks formed a process group (rank 0 says; None: not known here).
        self.process_group: bool | None = None

    @property
    def entry_dir(self) -> Path | None:
        return self.entry_file.parent if self.entry_file else None

    @property
    def agent_log(self) -> Path:
        return self.job_dir / AGENT_LOG

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        """Write the entry dir and start the agent in its own session."""
        launch = self.launch
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if launch.log_dir is None:
            launch = self.launch = dataclasses.replace(
                launch, log_dir=str(self.job_dir / "torchrun")
            )
        self.entry_file = write_entry(
            self.config_data,
            self.task_function,
            self.cwd,
            self.sys_path,
            keep_in=self.job_dir / RERUN_DIR,
        )
        listen = free_port() if launch.single_node else None
        try:
            if listen is not None:
                self.port = listen.getsockname()[1]
            elif launch.rdzv_endpoint:
                self.port = int(launch.rdzv_endpoint.rpartition(":")[2])
            else:
                self.port = launch.master_port
            args = launch.agent_args(str(self.entry_file), self.port, self.starter.flags)
            self.command = self.starter.command(args)
            env = dict(os.environ)
            env.update(launch.env)
            env.update(extra_env or {})
            env.update(parent_env())
            env["RUNNER_ENTRY_DIR"] = str(self.entry_file.parent)
            env["RUNNER_FAILURE_FILE"] = str(self.entry_file.parent / FAILURE_FILE)
            env["PYTHONUNBUFFERED"] = "1"
            if listen is not None:
                env["RUNNER_LISTEN_FD"] = str(listen.fileno())
                env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # ranks talk over loopback only
            self.started_at = time.time()
            log = None if self.console else self.agent_log
            self.proc = self.starter.start(args, env, self.cwd, log, listen)
            self.agent_started = started(self.proc.pid)
        except BaseException:
            if listen is not None:
                release_port(listen.getsockname()[1])
            self.cleanup()
            raise
        finally:
            if listen is not None:
                listen.close()  # the agent holds it now

    def poll(self) -> int | None:
        """The agent's exit code, or None while it runs; stops it past its timeout."""
        assert self.proc is not None
        code = self.proc.poll()
        if (
            code is None
            and self.launch.timeout
            and self.started_at
            and time.time() - self.started_at > self.launch.timeout
        ):
            self.timed_out = True
            stop_jobs([self])
            code = self.proc.poll()
        if code is not None and self.returncode is None:
            self.returncode = code
            self.ended_at = time.time()
            assert self.entry_dir is not None
            self.rank0_here = (self.entry_dir / RESULT_FILE).is_file()
            with contextlib.suppress(OSError, ValueError):
                facts = json.loads((self.entry_dir / RANK0_FILE).read_text())
                self.process_group = facts.get("process_group")
            if self.port is not None and self.launch.single_node:
                release_port(self.port)
        return code

    def wait(self) -> int:
        """Block until the agent ends (or its timeout stops it)."""
        while (code := self.poll()) is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert self.proc is not None
                self.proc.wait(timeout=0.2)
        return code

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM to the agent's process group: torchrun stops its workers."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the agent until ``deadline`` (monotonic), then SIGKILL its group."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def result(self) -> Any:
        """Rank 0's return value; raises LaunchError if the job failed."""
        assert self.returncode is not None, "result() before the job ended"
        assert self.entry_dir is not None
        if self.returncode == 0:
            import cloudpickle

            result_file = self.entry_dir / RESULT_FILE
            if not result_file.is_file() and not self.launch.single_node:
                return None  # rank 0 ran on another node: its parent has the result
            if not result_file.is_file():
                raise LaunchError(
                    f"torchrun exited 0 but rank 0 left no result in {result_file}", exitcode=0
                )
            return cloudpickle.loads(result_file.read_bytes())
        raise self.error()

    def error(self) -> LaunchError:
        """The failure of this job as a LaunchError, from the agent's failure report."""
        assert self.entry_dir is not None
        report_file = self.entry_dir / FAILURE_FILE
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
        failures = report.get("failures", [])
        first = failures[0] if failures else {}
        log_path: Path | None = Path(first["log_file"]) if first.get("log_file") else None
        if log_path is None and self.agent_log.is_file():  # (a single run's agent
            log_path = self.agent_log  # writes to the console instead)
        # Where to look: the log of the rank that failed (or the agent's), else the dir.
        where = f"its log: {log_path}" if log_path else f"job dir {self.job_dir}"
        tail = log_tail(log_path)
        if self.timed_out:
            return LaunchTimeout(
                f"torchrun job timed out after {self.launch.timeout:g} s and was stopped "
                f"(raise hydra.launcher.timeout if it needs longer); job dir {self.job_dir}",
                exitcode=self.returncode,
                failures=failures,
                log_tail=tail,
                log_file=log_path,
            )
        if not failures:
            detail = report.get("error") or "the agent failed before any worker reported"
            return LaunchError(
                f"torchrun exited with code {self.returncode}: "
                f"{first_line(detail, 'its log')}; {where}",
                exitcode=self.returncode,
                log_tail=tail,
                log_file=log_path,
            )
        how = (
            f"was killed by {first['signal']}"
            if first.get("signal")
            else f"exited with code {first['exitcode']}"
        )
        exception = first.get("exception") or "no exception recorded"
        return LaunchError(
            f"rank {first['rank']} (local rank {first['local_rank']}) {how}: "
            f"{first_line(exception, 'its log')}; {where}",
            exitcode=first["exitcode"],
            rank=first["rank"],
            failures=failures,
            log_tail=tail,
            log_file=log_path,
        )

    def launch_record(self) -> dict:
        """What launch.json records: enough to see, and repeat, how the job ran."""
        launch = self.launch
        multinode = {
            "node_rank": launch.node_rank,
            "rdzv_backend": launch.rdzv_backend,
            "rdzv_endpoint": launch.rdzv_endpoint,
            "rdzv_id": launch.rdzv_id,
            "rank0_here": self.rank0_here,
        }
        return {
            "command": self.command,
            # The command that runs this job again, alone, with its exact config.
            "rerun": [sys.executable, "-m", "runner.rerun", str(self.job_dir)],
            "cwd": self.cwd,
            "port": self.port,
            "nproc_per_node": launch.nproc_per_node,
            "nnodes": launch.nnodes,
            "world_size": launch.world_size,
            "process_group": self.process_group,
            **({} if launch.single_node else multinode),
            **run_times(self.started_at, self.ended_at),
            "exit_code": self.returncode,
            "timed_out": self.timed_out,
            "host": socket.gethostname(),  # where agent_pid means something
            "agent_pid": self.proc.pid if self.proc else None,
            "agent_started": self.agent_started,  # with the pid, the agent and no other
            "warm": bool(self.starter.flags),
        }

    def describe(self) -> str:
        return f"port {self.port}"

    def cleanup(self) -> None:
        """Remove the entry dir (idempotent)."""
        if self.entry_dir is not None:
            shutil.rmtree(self.entry_dir, ignore_errors=True)


def stop_jobs(jobs: Sequence[Job], grace: float = 10.0) -> None:
    """Ask every running job to stop (a torchrun agent gets SIGTERM and stops its own
    workers; a Slurm job is cancelled), wait up to ``grace`` seconds in all, then force
    what is left (SIGKILL; ``scancel -s KILL``). Workers outliving their agent get
    SIGKILL from the kernel (they ask for it at start, see runner.launch.worker)."""
    live = [job for job in jobs if job.running()]
    for job in live:
        job.stop()
    deadline = time.monotonic() + grace
    for job in live:
        job.wait_stopped(deadline)
