"""What runs on each node of a Slurm job (``hydra/launcher=torchrun_slurm``): a
:class:`NodeTask` per node starts runner's torchrun agent for the point
(:class:`~runner.launch.job.TorchrunJob`, the same entry file and worker as a local
run), meets the other nodes at the head node's rendezvous port, turns Slurm's
warning before the time limit into a stop for its ranks and a requeue, and records
each allocation of the job in its folder. The parent side is :mod:`runner.sweep.slurm`.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

from runner.launch.job import LaunchError, TorchrunJob, stop_jobs
from runner.launch.options import LaunchConfig
from runner.launch.procs import exit_on_signal, write_atomic
from runner.stop import request_stop

PORT_WAIT_S = 300.0


def _rendezvous_port(port_file: Path, head: bool) -> int:
    """The head node picks a free port and publishes it in the job's folder (shared by
    every node, as submitit requires); the other nodes read it."""
    if head:
        with socket.socket() as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        write_atomic(port_file, str(port).encode())
        return port
    deadline = time.monotonic() + PORT_WAIT_S
    while not port_file.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the head node published no rendezvous port in {port_file}")
        time.sleep(0.2)
    return int(port_file.read_text())


ALLOCATIONS_FILE = "allocations.jsonl"


def _allocation_event(folder: Path, **fields: Any) -> None:
    """One line of a point's allocation history (its job's folder): a start or an end."""
    with open(folder / ALLOCATIONS_FILE, "a") as file:
        file.write(json.dumps(fields) + "\n")


def allocations(folder: Path) -> list[dict]:
    """Each allocation of a point's job (requeues make several): job id, host, start,
    end and why it ended; an allocation killed outright has no end."""
    found: list[dict] = []
    try:
        lines = (folder / ALLOCATIONS_FILE).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if "start" in event:
            found.append({**event, "end": None, "ended": None})
        elif found and found[-1]["end"] is None:
            found[-1].update(event)
    return found


class NodeTask:
    """What each Slurm task (one per node) runs: :meth:`__call__` with the point's
    payload; on node 0, submitit calls :meth:`checkpoint` when Slurm's warning before
    the time limit (SIGUSR2) comes, and requeues the job with what it returns."""

    def __init__(self) -> None:
        self.job: TorchrunJob | None = None
        self.requeued = False

    def __getstate__(self) -> dict:
        return {}  # the running job stays on this node

    def __setstate__(self, state: dict) -> None:
        self.job, self.requeued = None, False

    def __call__(self, payload: dict) -> dict:
        """Run this node's torchrun agent for the point. Returns what the parent needs
        as data: ok, whether rank 0 ran here and its value, or the structured failure.
        Never raises for a failing job."""
        import submitit

        env = submitit.JobEnvironment()
        launch: LaunchConfig = payload["launch"]
        if env.num_nodes == 1:
            launch = dataclasses.replace(launch, nnodes="1", node_rank=0)
        else:
            port_file = Path(payload["folder"]) / f"{env.job_id}_rdzv_port"
            port = _rendezvous_port(port_file, head=env.node == 0)
            launch = dataclasses.replace(
                launch,
                nnodes=str(env.num_nodes),
                node_rank=env.node,
                rdzv_backend="c10d",
                rdzv_endpoint=f"{env.hostnames[0]}:{port}",
                rdzv_id=f"slurm-{env.job_id}",
            )
        job = self.job = TorchrunJob(
            None,
            payload["task"],
            launch,
            payload["job_dir"],
            console=True,
            config_data=payload["config"],
            sys_path=payload["sys_path"],
        )
        where = {"node": env.node, "host": socket.gethostname(), "slurm_job_id": env.job_id}
        folder = Path(payload["folder"])
        if env.global_rank == 0:
            _allocation_event(folder, job_id=env.job_id, host=where["host"], start=time.time())
        ended = "failed"  # or ran out of time or was killed, with no signal first
        warned = signal.getsignal(signal.SIGUSR2)  # submitit's: checkpoint, requeue

        def ask_ranks_to_stop() -> None:
            if job.entry_dir is not None and job.entry_dir.is_dir():
                request_stop(job.entry_dir)  # the ranks agree on a step, save, return

        def on_warning(signum: int, frame: Any) -> None:
            ask_ranks_to_stop()
            if callable(warned):
                warned(signum, frame)

        def on_sigterm(signum: int, frame: Any) -> None:
            # A preemption, ``scontrol requeue`` or a cancel (Slurm then requeues or
            # ends the job itself). submitit ignores SIGTERM; here the ranks get the
            # grace period to save the step they agree on, then the agent is stopped
            # before Slurm's SIGKILL.
            nonlocal ended
            ended = "stopped by SIGTERM (a preemption, a requeue or a cancel)"
            ask_ranks_to_stop()
            self.wait_for_ranks(float(payload.get("stop_grace", 10.0)))
            exit_on_signal(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        signal.signal(signal.SIGUSR2, on_warning)
        try:
            job.start()
            job.wait()
            where.update(port=job.port, command=job.command)
            if job.returncode == 0:
                value = job.result()
                ended = "completed"
                return {**where, "ok": True, "rank0_here": job.rank0_here, "value": value}
            error = job.error()
            return {
                **where,
                "ok": False,
                "error": str(error),
                "log_tail": error.log_tail,
                "log_file": str(error.log_file) if error.log_file else None,
                "exitcode": error.exitcode,
                "rank": error.rank,
                "failures": error.failures,
            }
        except LaunchError as error:
            return {
                **where,
                "ok": False,
                "error": str(error),
                "log_tail": error.log_tail,
                "exitcode": error.exitcode,
            }
        finally:
            stop_jobs([job])
            job.cleanup()
            if env.global_rank == 0 and not self.requeued:
                _allocation_event(folder, job_id=env.job_id, end=time.time(), ended=ended)

    def wait_for_ranks(self, seconds: float) -> None:
        """After a stop request: wait up to ``seconds`` for this node's agent to end (its
        ranks have saved the agreed step and returned)."""
        deadline = time.monotonic() + seconds
        while self.job is not None and self.job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)

    def checkpoint(self, payload: dict) -> Any:
        """Slurm's warning (node 0): wait until this node's ranks have saved the step
        they agreed on and ended, then give submitit the same call to requeue; the
        next allocation resumes from the checkpoint."""
        import submitit

        self.wait_for_ranks(max(1.0, float(payload.get("lead_s", 90)) - 5.0))
        env = submitit.JobEnvironment()
        self.requeued = True
        _allocation_event(
            Path(payload["folder"]),
            job_id=env.job_id,
            end=time.time(),
            ended="requeued (Slurm's time-limit warning or a preemption notice)",
        )
        return submitit.helpers.DelayedSubmission(self, payload)
