"""Slurm mode of the launcher (``hydra/launcher=torchrun_slurm``): every sweep point is
one Slurm job, submitted with submitit.

The sweep parent composes and resolves each point exactly as in local mode (the same
:class:`~runner.sweep.scheduler.SweepScheduler` does the bookkeeping); only "how the
job runs" changes: :class:`SlurmJobs` is the sweep's job factory, and each
:class:`SlurmJob` (a :class:`~runner.launch.job.Job`) submits a :class:`NodeTask` as one Slurm
task per allocated node. On each node, it starts runner's torchrun agent
(:class:`~runner.launch.job.TorchrunJob`, the same entry file and worker as a local run):
one node alone uses the loopback path of a local run; several nodes meet over
torchrun's c10d rendezvous at the head node (the first of the allocation) on a port
the head node picks for this job and shares through the job's folder. Rank 0's
return value comes back through submitit as the point's result.

Failures are data, not hangs: a node whose ranks fail returns the structured failure
(rank, exit code, exception, log); a job that dies outside Python (``scancel``, OOM,
node failure, time limit) is seen through ``sacct`` (the cluster needs accounting,
as submitit does) and reported with its Slurm state and log paths. Ctrl-C or SIGTERM
of the sweep cancels every job of the sweep, queued or running.

The parent side imports neither torch nor submitit until a point is submitted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.errors import first_line
from runner.launch.codec import job_config_data
from runner.launch.devices import DevicePool
from runner.launch.job import (
    Job,
    LaunchError,
    LaunchTimeout,
    run_times,
)
from runner.launch.options import LaunchConfig, option_names
from runner.launch.procs import import_path
from runner.launch.trust import check_trusted
from runner.record import JobRecord, Outcome, read_record
from runner.sweep.options import SlurmOptions, check_options, check_slurm_options
from runner.sweep.points import SweepLauncher
from runner.sweep.slurm_node import NodeTask, allocations
from runner.sweep.snapshot import check_snapshot, in_snapshot, take_snapshot

# Slurm states of a job that may still produce a result.
UNFINISHED = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "CONFIGURING"}
# Every node has returned its result: how long to wait for Slurm to finish the job too
# (the batch script's end, epilogs, the record reaching sacct), and how often to look.
RELEASE_WAIT_S = 120.0
RELEASE_LOOK_S = 0.25


class SlurmUnavailable(RuntimeError):
    """No Slurm client here (sbatch/sacct not on PATH)."""


def check_slurm_client() -> None:
    """Fail before anything is submitted if this machine cannot talk to Slurm."""
    missing = [tool for tool in ("sbatch", "squeue", "sacct", "scancel") if not shutil.which(tool)]
    if missing:
        raise SlurmUnavailable(
            f"hydra/launcher=torchrun_slurm needs Slurm's client tools, but {missing} "
            "are not on PATH here. Fix: run the sweep on a Slurm login node, or use "
            "hydra/launcher=torchrun to run on this machine."
        )


def slurm_options(settings: Mapping[str, Any]) -> SlurmOptions:
    """The Slurm keys among a point's launcher settings."""
    return SlurmOptions(**{k: settings[k] for k in option_names(SlurmOptions) & set(settings)})


def sbatch_parameters(settings: Mapping[str, Any], launch: LaunchConfig) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters for one point: ``nnodes`` nodes (from the
    launcher keys: ``launch`` is each node's one-node view), one task per node, each
    with ``cpus_per_task`` cores (default: one per rank) for its torchrun agent."""
    params: dict[str, Any] = {
        "nodes": int(settings.get("nnodes", 1)),
        "ntasks_per_node": 1,
        "cpus_per_task": settings.get("cpus_per_task") or launch.nproc_per_node,
        "time": settings["time_min"],
        "job_name": settings.get("job_name") or "runner",
        "additional_parameters": dict(settings.get("additional_parameters") or {}),
        "setup": list(settings.get("setup") or []),
        # SIGUSR2 this long before the time limit (runner.stop: save, requeue).
        "signal_delay_s": slurm_options(settings).lead_s(),
    }
    for key in ("partition", "gpus_per_node", "account", "qos"):
        if settings.get(key) is not None:
            params[key] = settings[key]
    if settings.get("mem_gb") is not None:
        params["mem"] = f"{settings['mem_gb']}GB"
    return params


class SlurmJobs:
    """Makes the points of a sweep as Slurm jobs. The cluster allocates nodes, CPUs
    and GPUs, so the device pool is empty and every point is queued at once unless
    ``max_parallel`` says otherwise; each node's agent is a one-node launch."""

    where = " as Slurm jobs"
    launch_overrides: dict[str, Any] = {"nnodes": "1"}

    @classmethod
    def check(cls, params: dict[str, Any]) -> None:
        """Before anything is submitted: every key, and the Slurm client tools."""
        check_options(params, cls.launch_overrides)
        check_slurm_options(params)
        check_slurm_client()
        check_snapshot(
            bool(params.get("snapshot", True)), params.get("snapshot_files"), os.getcwd()
        )

    def __init__(self, launcher: SweepLauncher) -> None:
        self.task_function = launcher.task_function
        self.pool = DevicePool([], split_threads=False)
        self.code: tuple[Path, Path] | None = None  # (project root, its copy)

    def default_parallel(self, points: int, nproc: int) -> int:
        return points

    def make(self, config: DictConfig, launch: LaunchConfig, job_dir: Path) -> Job:
        settings = OmegaConf.to_container(config.hydra.launcher, resolve=True)
        assert isinstance(settings, dict)
        job = SlurmJob(
            config, self.task_function, launch, job_dir, {str(k): v for k, v in settings.items()}
        )
        if settings.get("snapshot", True):
            if self.code is None:
                files = settings.get("snapshot_files")
                self.code = take_snapshot(Path(str(config.hydra.sweep.dir)), job.cwd, files)
            job.sys_path = in_snapshot(job.sys_path, *self.code)
            job.code = str(self.code[1])
        if settings.get("resume"):
            job.adopt = live_job_of(job_dir, list(config.hydra.overrides.task))
        return job

    def booting(self) -> bool:
        return False

    def wait_for_news(self, timeout: float) -> None:
        time.sleep(timeout)  # each job spaces out its own sacct calls


def queue_state(job_id: str) -> str | None:
    """A job's state in squeue: "" once it has left the queue, None if squeue could
    not answer."""
    queue = subprocess.run(
        ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True
    )
    if queue.returncode == 0:
        return queue.stdout.strip()
    return "" if "Invalid job id" in queue.stderr else None


def live_job_of(job_dir: Path, overrides: list[str]) -> JobRecord | None:
    """The record of the Slurm job an earlier run of this sweep submitted for this
    point (same overrides) and never saw end (its parent died: the record still says
    RUNNING), if that job is still queued or running, or has left its result: that job
    is the point's, and submitting it again would train the point twice."""
    record = read_record(job_dir)
    if record is None or record.status is not Outcome.RUNNING:
        return None
    job_id = record.slurm_job_id
    if not job_id or record.overrides != overrides:
        return None
    check_trusted(  # submitit loads the adopted job's pickles from there
        job_dir / ".slurm",
        "hydra.launcher.resume: the Slurm job's folder",
        f"remove {job_dir} to run the point again, or a fresh hydra.sweep.dir",
    )
    results = [job_dir / ".slurm" / f"{job_id}_{k}_result.pkl" for k in range(record.nnodes)]
    if queue_state(job_id) or all(p.exists() for p in results):
        return record
    return None


class SlurmJob:
    """One sweep point as one Slurm job: a :class:`~runner.launch.job.Job`."""

    # One sacct call refreshes every job of this process (submitit's shared watcher);
    # space them out across jobs.
    _last_refresh = float("-inf")

    def __init__(
        self,
        config: DictConfig,
        task_function: Callable,
        launch: LaunchConfig,
        job_dir: str | Path,
        settings: Mapping[str, Any],
    ) -> None:
        self.launch = launch
        self.job_dir = Path(job_dir)
        self.settings = dict(settings)
        self.config_data = job_config_data(config)
        self.task_function = task_function
        self.cwd = str(self.config_data["hydra"]["runtime"]["cwd"])
        self.sys_path = import_path(self.cwd)
        self.folder = self.job_dir / ".slurm"
        self.sjob: Any = None
        self.port: int | None = None
        self.command: list[str] = []
        self.state = "NOT SUBMITTED"
        self.outcomes: list[dict] = []
        self.started_at: float | None = None
        self.results_at: float | None = None
        self.next_look = 0.0
        self.look_every = RELEASE_LOOK_S
        self.ended_at: float | None = None
        self.returncode: int | None = None
        self.timed_out = False
        self.cancelled = False
        self.rank0_here = False
        # The record of a live job of an earlier run to take over instead of submitting
        # (hydra.launcher.resume=true; see live_job_of).
        self.adopt: JobRecord | None = None
        self.code: str | None = None  # the copy of the project it imports from

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        import submitit

        if self.adopt is not None:
            nodes = self.adopt.nnodes
            job_id = str(self.adopt.slurm_job_id)
            self.sjob = submitit.SlurmJob(folder=self.folder, job_id=job_id, tasks=range(nodes))
            self.started_at = self.adopt.run.get("start_time") or time.time()
            self.state = "ADOPTED"
            return
        self.job_dir.mkdir(parents=True, exist_ok=True)
        launch = self.launch
        if launch.log_dir is None:
            launch = dataclasses.replace(launch, log_dir=str(self.job_dir / "torchrun"))
        options = slurm_options(self.settings)
        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=options.max_requeues)
        executor.update_parameters(**sbatch_parameters(self.settings, launch))
        payload = {
            "lead_s": options.lead_s(),
            "stop_grace": float(self.settings.get("stop_grace", 10.0)),
            "config": self.config_data,
            "task": self.task_function,
            "launch": dataclasses.replace(launch, env={**launch.env, **(extra_env or {})}),
            "job_dir": str(self.job_dir),
            "sys_path": self.sys_path,
            "folder": str(self.folder),
        }
        self.started_at = time.time()
        self.sjob = executor.submit(NodeTask(), payload)
        self.state = "SUBMITTED"

    @property
    def job_id(self) -> str | None:
        return self.sjob.job_id if self.sjob is not None else None

    def _tasks(self) -> list:
        return [self.sjob.task(k) for k in range(self.sjob.num_tasks)]

    def _refresh_state(self) -> str:
        """The job's Slurm state, from sacct at most every ``poll_interval`` seconds."""
        now = time.monotonic()
        refresh = now - SlurmJob._last_refresh >= float(self.settings.get("poll_interval", 5.0))
        if refresh:
            SlurmJob._last_refresh = now
            self.sjob.watcher.update()
        self.state = self.sjob.watcher.get_state(self.sjob.job_id, mode="cache")
        if refresh and self.state == "UNKNOWN" and time.time() - (self.started_at or 0) > 10:
            # sacct does not know the job (a cluster without accounting?): once squeue
            # no longer lists it either, it is over, whatever it left behind.
            if self._queue_state() == "":
                self.state = "ENDED (gone from squeue; sacct has no record)"
        return self.state

    def _queue_state(self) -> str | None:
        return queue_state(str(self.job_id))

    def poll(self) -> int | None:
        """0 or 1 once the job has ended (every node reported, or Slurm says it is
        over), None while it is queued or running; cancels it past ``timeout``."""
        if self.returncode is not None:
            return self.returncode
        assert self.sjob is not None
        tasks = self._tasks()
        if all(t.paths.result_pickle.exists() for t in tasks):
            if not self._released():
                return None
        else:
            if (
                self.launch.timeout
                and not self.timed_out
                and time.time() - (self.started_at or 0) > self.launch.timeout
            ):
                self.timed_out = True
                self.stop()
            if self._refresh_state().upper().split()[0] in UNFINISHED:
                return None
        self._collect(tasks)
        return self.returncode

    def _released(self) -> bool:
        """Whether Slurm has finished the job whose nodes have all returned: it has left
        the queue and sacct has its final state. Until then the job still holds its
        allocation and sacct says RUNNING. Looks after RELEASE_LOOK_S, then twice as
        long each time up to ``poll_interval`` (a lagging or down slurmdbd is not
        hammered), and waits at most RELEASE_WAIT_S (then the state stays what Slurm
        last said)."""
        now = time.monotonic()
        if self.results_at is None:
            self.results_at = self.next_look = now
        if now - self.results_at > RELEASE_WAIT_S:
            return True
        if now < self.next_look:
            return False
        self.next_look = now + self.look_every
        self.look_every = min(2 * self.look_every, float(self.settings.get("poll_interval", 5.0)))
        if self._queue_state() != "":
            return False  # RUNNING or COMPLETING (or squeue could not answer)
        self.sjob.watcher.update()  # one sacct call: the final state
        self.state = self.sjob.watcher.get_state(self.sjob.job_id, mode="cache")
        # UNKNOWN: sacct has no record (a cluster without accounting); the queue is the word.
        return self.state == "UNKNOWN" or self.state.upper().split()[0] not in UNFINISHED

    def _collect(self, tasks: list) -> None:
        outcomes = []
        for k, task in enumerate(tasks):
            task._results_timeout_s = 2  # the job is over: do not wait for stray files
            try:
                outcome = task.result()
            except Exception as error:  # submitit: UncompletedJobError, FailedJobError
                outcome = {
                    "ok": False,
                    "node": k,
                    "error": (
                        f"Slurm job {self.job_id} ended {self.state} without a result "
                        f"from node {k}: {str(error).splitlines()[0]}"
                    ),
                    "exitcode": None,
                }
            outcomes.append(outcome)
        self.outcomes = outcomes
        ok = bool(outcomes) and all(o.get("ok") for o in outcomes)
        self.returncode = 0 if ok else 1
        self.ended_at = time.time()
        head = next((o for o in outcomes if o.get("rank0_here")), outcomes[0] if outcomes else {})
        self.rank0_here = bool(head.get("rank0_here"))
        self.port = head.get("port")
        self.command = head.get("command") or []
        if ok and self.state == "UNKNOWN":
            self.state = "COMPLETED"  # no accounting: every node returned, the queue let go

    def wait(self) -> int:
        while (code := self.poll()) is None:
            time.sleep(0.5)
        return code

    def result(self) -> Any:
        assert self.returncode is not None, "result() before the job ended"
        if self.returncode == 0:
            head = next((o for o in self.outcomes if o.get("rank0_here")), None)
            if head is None:
                raise LaunchError(
                    f"Slurm job {self.job_id} ended, but no node ran rank 0; logs: "
                    f"{self.log_paths()[0]}"
                )
            return head["value"]
        raise self.error()

    def error(self) -> LaunchError:
        failed = [o for o in self.outcomes if not o.get("ok")]
        first = failed[0] if failed else {}
        logs = ", ".join(self.log_paths())
        if self.timed_out:
            return LaunchTimeout(
                f"Slurm job {self.job_id} ran past hydra.launcher.timeout="
                f"{self.launch.timeout:g} s and was cancelled; logs: {logs}",
                exitcode=first.get("exitcode"),
            )
        if self.cancelled:
            detail = f"was cancelled ({self.state})"
        else:
            detail = first_line(first.get("error") or f"ended {self.state}", "its logs")
        log_file = first.get("log_file")
        return LaunchError(
            f"Slurm job {self.job_id} (job dir {self.job_dir}): {detail}; logs: {logs}",
            exitcode=first.get("exitcode"),
            rank=first.get("rank"),
            failures=first.get("failures") or [],
            log_tail=str(first.get("log_tail") or ""),
            log_file=Path(log_file) if log_file else None,
        )

    def log_paths(self) -> list[str]:
        if self.sjob is None:
            return []
        return [str(p) for t in self._tasks() for p in (t.paths.stdout, t.paths.stderr)]

    def launch_record(self) -> dict:
        return {
            "slurm_job_id": self.job_id,
            "slurm_state": self.state,
            "slurm_logs": self.log_paths(),
            "nodes": [o.get("host") for o in self.outcomes],
            "command": self.command,
            "cwd": self.cwd,
            "port": self.port,
            "nproc_per_node": self.launch.nproc_per_node,
            "nnodes": str(self.settings.get("nnodes", 1)),
            "rank0_here": self.rank0_here,
            **run_times(self.started_at, self.ended_at),
            "exit_code": self.returncode,
            "timed_out": self.timed_out,
            "adopted": self.adopt is not None,
            "code": self.code,
            "allocations": allocations(self.folder),
        }

    def describe(self) -> str:
        adopted = ", adopted from an earlier run" if self.adopt is not None else ""
        return f"Slurm job {self.job_id}, {self.settings.get('nnodes', 1)} node(s){adopted}"

    def cleanup(self) -> None:
        """Nothing local to remove: entry dirs live, and go, on the nodes."""

    def running(self) -> bool:
        return self.sjob is not None and self.returncode is None

    def stop(self) -> None:
        """scancel: Slurm sends SIGTERM to the node tasks (which stop their agents),
        then SIGKILL; a queued job just leaves the queue."""
        self.cancelled = not self.timed_out
        subprocess.run(["scancel", str(self.job_id)], capture_output=True)

    def wait_stopped(self, deadline: float) -> None:
        """Wait until Slurm no longer lists the job; past ``deadline``, SIGKILL it."""
        killed = False
        while True:
            if not self._queue_state():  # gone, or squeue cannot answer
                break
            if time.monotonic() > deadline and not killed:
                subprocess.run(["scancel", "-s", "KILL", str(self.job_id)], capture_output=True)
                killed = True
            time.sleep(0.5)
        # Gone from the queue: let sacct catch up, but never wait on it for long.
        SlurmJob._last_refresh = float("-inf")
        settle = time.monotonic() + 30
        with contextlib.suppress(Exception):
            while self.poll() is None and time.monotonic() < settle:
                time.sleep(0.5)
        if self.returncode is None:
            self._collect(self._tasks())
