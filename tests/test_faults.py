"""The fault suite: faults injected for real, each test checking that no process of
the sweep is left, no entry file is left, and finished points' results are intact.
Run it alone with ``pytest -m faults``."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from runner.launch.job import LaunchTimeout, TorchrunJob, stop_jobs
from runner.trainer.train import CheckpointError, train
from tests.conftest import (
    PROBE_APP,
    REPO,
    Followed,
    entry_dirs,
    interrupt_and_expect_nothing_left,
    launch_status,
    probe_records,
    processes_of,
    read_json,
    run,
    runner_cli,
    started,
    wait_until,
)
from tests.test_config import make
from tests.test_dist import job_config, two_ranks
from tests.test_launcher import sweep_probe

pytestmark = [pytest.mark.slow, pytest.mark.faults]

TRAIN = [
    "trainer.epochs=4",
    "trainer.checkpoint_every=7",
    "data.n_samples=800",
    "trainer.progress=lines",
]


# Two ranks with dropout: each rank draws its own masks from its own random state.
TWO_RANKS = ["trainer.nproc_per_node=2", "model.dropout=0.1"]


def same_training(a, b) -> None:
    """Same final weights (bit for bit) and the same per-epoch metrics."""
    wa = torch.load(a / "checkpoint.pt", weights_only=False)["model"]
    wb = torch.load(b / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def epochs(run_dir):
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "elapsed_s"} for x in lines]

    assert epochs(a) == epochs(b)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """Reference runs, never interrupted: 1 process and 2 ranks, with dropout (so a
    rank whose random state were restored wrongly would train differently)."""
    root = tmp_path_factory.mktemp("undisturbed")
    runner_cli(*TRAIN, "model.dropout=0.1", f"hydra.run.dir={root / 'one'}")
    runner_cli(*TRAIN, *TWO_RANKS, f"hydra.run.dir={root / 'two'}")
    return root


def test_killed_run_resumes_bit_for_bit(undisturbed, tmp_path):
    args = [*TRAIN, "model.dropout=0.1", f"hydra.run.dir={tmp_path}"]
    killed = runner_cli(*args, env={"RUNNER_FAULT": "0:30"}, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    # What a kill in the middle of writing the next checkpoint leaves beside it.
    (tmp_path / ".checkpoint.pt.tmp").write_bytes(b"half a checkpoi")
    resumed = runner_cli(*args)
    assert "resuming at step 28" in resumed.stdout + resumed.stderr
    same_training(undisturbed / "one", tmp_path)
    assert not (tmp_path / ".checkpoint.pt.tmp").exists()


KILLED_WHILE_SAVING = """
import os, sys, time
from pathlib import Path
import torch
from runner.launch.procs import atomic_file

path = Path(sys.argv[1])
def stalled_fsync(fd):  # the new checkpoint is written, not yet renamed: killed here
    (path.parent / "writing").touch()
    time.sleep(600)
os.fsync = stalled_fsync
with atomic_file(path) as f:
    torch.save({"weights": torch.ones(1000)}, f)
"""


def test_a_kill_while_a_checkpoint_is_written_keeps_the_last_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(1000)}, path)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WHILE_SAVING, str(path)], cwd=REPO)
    try:
        wait_until(lambda: (tmp_path / "writing").exists(), 60, "the save to be under way")
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / ".checkpoint.pt.tmp").exists()
    assert torch.equal(torch.load(path)["weights"], torch.zeros(1000))


def test_resume_never_starts_over_beside_any_checkpoint(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    train(make(f"paths.output_dir={tmp_path}", "trainer.epochs=1", "trainer.resume=never"))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 1  # trained from the start, and saved over the old one


def test_a_corrupt_checkpoint_fails_a_two_rank_run_through_the_cli(tmp_path, entry_base):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    proc = runner_cli(*TRAIN, "trainer.nproc_per_node=2", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0
    assert f"cannot resume from checkpoint {tmp_path / 'checkpoint.pt'}" in proc.stderr
    assert "Fix: delete or move it to start over, or pass trainer.resume=never" in proc.stderr
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"not a checkpoint"
    assert not (tmp_path / "metrics.json").exists()
    assert entry_dirs(entry_base) == []


def test_rank_killed_with_restarts_finishes_like_undisturbed(undisturbed, tmp_path, entry_base):
    proc = runner_cli(
        *TRAIN,
        *TWO_RANKS,
        "hydra.launcher.max_restarts=1",
        f"hydra.run.dir={tmp_path}",
        env={"RUNNER_FAULT": "1:30"},
    )
    assert (tmp_path / ".fault_rank1_step30").exists()
    assert "resuming at step 28" in proc.stdout + proc.stderr
    same_training(undisturbed / "two", tmp_path)
    assert entry_dirs(entry_base) == []


def rank_pid(parent_pid: int, rank: int) -> int | None:
    for pid in processes_of(parent_pid):
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ and b"LOCAL_RANK=" + str(rank).encode() in environ:
            return pid
    return None


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM], ids=["warning", "sigterm"])
def test_a_stop_asked_of_one_rank_stops_both_at_one_step_and_the_rerun_resumes(tmp_path, sig):
    """Slurm's warning (SIGUSR2) or a preemption's SIGTERM may reach one rank before
    the other: the ranks agree (one all_reduce every few steps), both save the same
    step and end; the same command then resumes there and ends bit for bit like a run
    never stopped. (runner's trainer listens for stops, so SIGTERM no longer ends its
    rank mid-step.)"""
    longer = [*TRAIN, *TWO_RANKS, "trainer.epochs=8", "data.n_samples=8000"]
    runner_cli(*longer, f"hydra.run.dir={tmp_path / 'undisturbed'}")
    run_dir = tmp_path / "stopped"
    args = [*longer, f"hydra.run.dir={run_dir}"]
    parent = started([sys.executable, "-m", "runner", *args])
    try:
        wait_until(lambda: (run_dir / "metrics.jsonl").exists(), 120, "the first epoch")
        rank1 = rank_pid(parent.pid, 1)
        assert rank1 is not None
        os.kill(rank1, sig)  # rank 1 only
        out, _ = parent.communicate(timeout=120)
    finally:
        parent.kill()
    assert parent.returncode == 0, out[-3000:]
    assert "stop requested: saved the checkpoint of step" in out
    stopped_at = int(out.split("saved the checkpoint of step ")[1].split(";")[0])
    assert stopped_at < 8 * 8000 * 0.8 // 64  # before the end: 8 epochs of 100 steps
    assert not (run_dir / "metrics.json").exists()  # no result: it resumes
    resumed = runner_cli(*args)
    assert f"resuming at step {stopped_at}" in resumed.stdout + resumed.stderr
    same_training(tmp_path / "undisturbed", run_dir)


def test_the_fault_hook_is_said_when_armed_and_refused_when_malformed(tmp_path):
    args = [*TRAIN, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'bad'}"]
    bad = runner_cli(*args, env={"RUNNER_FAULT": "1-30"}, check=False)
    assert bad.returncode != 0
    assert "RUNNER_FAULT='1-30' is invalid: the test hook takes RANK:STEP" in bad.stderr
    assert "Fix: unset RUNNER_FAULT" in bad.stderr
    assert not (tmp_path / "bad" / "metrics.json").exists()
    armed = runner_cli(
        *TRAIN,
        "trainer.epochs=1",
        f"hydra.run.dir={tmp_path / 'armed'}",
        env={"RUNNER_FAULT": "0:999"},
    )
    said = armed.stdout + armed.stderr
    assert "RUNNER_FAULT=0:999 is set: this rank (0) SIGKILLs itself after global step 999" in said


def test_rank_killed_without_restarts_fails_the_point(tmp_path, entry_base):
    proc = runner_cli(
        *TRAIN,
        "trainer.nproc_per_node=2",
        f"hydra.run.dir={tmp_path}",
        env={"RUNNER_FAULT": "1:30"},
        check=False,
    )
    assert proc.returncode != 0
    assert "rank 1 (local rank 1) was killed by SIGKILL" in proc.stderr
    assert entry_dirs(entry_base) == []
    assert not (tmp_path / "metrics.json").exists()


def test_corrupt_checkpoint_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError) as err:
        train(make(f"paths.output_dir={tmp_path}", "trainer.epochs=1"))
    assert str(tmp_path / "checkpoint.pt") in str(err.value)
    assert "trainer.resume=never" in str(err.value)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_port_cannot_be_taken_between_pick_and_bind(tmp_path, entry_base):
    """The port is bound from the moment it is picked: a squatter fails, the job runs."""
    from tests.apps.probe_app import probe

    job = TorchrunJob(job_config(tmp_path, "sleep=1"), probe, two_ranks(), tmp_path, console=False)
    job.start()
    try:
        for host in ("0.0.0.0", "127.0.0.1"):
            squatter = socket.socket()
            with pytest.raises(OSError) as err:
                squatter.bind((host, job.port))
            squatter.close()
            assert err.value.errno == errno.EADDRINUSE
        assert job.wait() == 0
        assert job.result() == 1.0
    finally:
        stop_jobs([job])
        job.cleanup()
    assert entry_dirs(entry_base) == []


def test_unwritable_sweep_dir_is_a_clear_error(tmp_path, entry_base):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run(
        [sys.executable, str(PROBE_APP), "-m", "value=1,2", f"hydra.sweep.dir={blocker / 'sweep'}"],
        check=False,
    )
    assert proc.returncode != 0
    assert f"hydra.sweep.dir={blocker / 'sweep'}" in proc.stderr
    assert "cannot be created" in proc.stderr
    assert entry_dirs(entry_base) == []


def test_fifty_points_eight_at_a_time(tmp_path, entry_base):
    proc = run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=range(0,50)",
            "hydra.launcher.nproc_per_node=1",
            "hydra.launcher.max_parallel=8",
            f"hydra.sweep.dir={tmp_path}",
        ],
        timeout=900,
    )
    launches = [read_json(tmp_path / str(n) / "launch.json") for n in range(50)]
    assert all(record["status"] == "COMPLETED" for record in launches)
    # No two points that ran at the same time shared a port.
    for i, a in enumerate(launches):
        for b in launches[i + 1 :]:
            if a["start_time"] < b["end_time"] and b["start_time"] < a["end_time"]:
                assert a["port"] != b["port"]
    most = max(
        sum(1 for b in launches if b["start_time"] <= a["start_time"] < b["end_time"])
        for a in launches
    )
    assert 2 <= most <= 8
    assert [probe_records(tmp_path / str(n))[0]["config"]["value"] for n in range(50)] == list(
        range(50)
    )
    assert entry_dirs(entry_base) == []
    assert "[50/50 ended: 50 done, 0 running, 0 failed]" in proc.stdout + proc.stderr


def test_a_rank_deaf_to_sigterm_is_killed_after_stop_grace(
    hydra_sweep_runner, tmp_path, entry_base
):
    """A rank that ignores SIGTERM would keep torchrun's agent waiting 30 s and more:
    ``stop_grace`` after the SIGTERM, the launcher SIGKILLs the agent's whole group."""
    sweep = sweep_probe(
        hydra_sweep_runner,
        tmp_path,
        "hang_rank=0",
        "deaf=true",
        "hydra.launcher.timeout=8",
        "hydra.launcher.stop_grace=1",
    )
    with pytest.raises(LaunchTimeout, match="timed out after 8 s"):
        with sweep:
            pass
    record = read_json(tmp_path / "0" / "launch.json")
    assert (record["stopped_by"], record["exit_code"]) == ("timeout", -signal.SIGKILL)
    assert processes_of(os.getpid()) == []
    assert entry_dirs(entry_base) == []


def cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def gated_probe_sweep(sweep: Path, gate: Path, *overrides: str) -> subprocess.Popen:
    """A probe sweep in the background, its output in ``parent.out`` beside the sweep
    dir: each point's rank 0 marks its task's start in ``gate`` (``started_N``), then
    it runs its ``sleep``."""
    sweep.parent.mkdir(parents=True, exist_ok=True)
    with open(sweep.parent / "parent.out", "w") as out:  # the child keeps its own copy
        return subprocess.Popen(
            [
                sys.executable,
                str(PROBE_APP),
                "-m",
                *overrides,
                f"gate={gate}",
                "gate_points=1",
                f"hydra.sweep.dir={sweep}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def test_workers_die_with_their_agent(tmp_path, entry_base):
    """An agent killed outright (SIGKILL, the OOM killer) cannot stop its workers:
    they asked the kernel for SIGKILL when it dies. The point is recorded failed."""
    sweep, gate = tmp_path / "sweep", tmp_path / "gate"
    gate.mkdir()
    parent = gated_probe_sweep(sweep, gate, "sleep=600")
    try:
        wait_until(lambda: (gate / "started_0").exists(), 120, "the task to start")
        followed = Followed(parent.pid)
        (agent,) = [pid for pid in followed.seen if "runner.launch.agent" in cmdline(pid)]
        assert len(followed.seen) == 3  # the agent and two workers
        os.kill(agent, signal.SIGKILL)
        followed.wait_gone("the agent and its workers to end")
        assert parent.wait(timeout=60) != 0
    finally:
        parent.kill()
    assert read_json(sweep / "0" / "launch.json")["status"] == "FAILED"
    assert processes_of(parent.pid) == []
    assert entry_dirs(entry_base) == []


def test_timeout_ends_that_point_only(hydra_sweep_runner, tmp_path, entry_base):
    sweep = sweep_probe(
        hydra_sweep_runner,
        tmp_path,
        "hang_rank=-1,0",
        "hydra.launcher.timeout=10",
        "hydra.launcher.max_parallel=2",
    )
    with pytest.raises(LaunchTimeout, match="timed out after 10 s"):
        with sweep:
            pass
    assert read_json(tmp_path / "0" / "launch.json")["status"] == "COMPLETED"
    timed_out = read_json(tmp_path / "1" / "launch.json")
    assert timed_out["timed_out"] is True and timed_out["stopped_by"] == "timeout"
    assert processes_of(os.getpid()) == []
    assert entry_dirs(entry_base) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_parent_signal_mid_sweep_leaves_nothing(tmp_path, entry_base, sig):
    sweep, gate = tmp_path / "sweep", tmp_path / "gate"
    gate.mkdir()
    parent = gated_probe_sweep(sweep, gate, "sleep=0,600,600", "hydra.launcher.max_parallel=2")
    wait_until(
        lambda: (
            launch_status(sweep / "0") == "COMPLETED"
            and all((gate / f"started_{n}").exists() for n in (1, 2))
        ),
        120,
        "point 0 to end and points 1 and 2 to run their task",
    )
    assert len(processes_of(parent.pid)) >= 3
    interrupt_and_expect_nothing_left(parent, sig, entry_base)
    assert parent.returncode != 0  # its only non-completed points were stopped: still
    assert read_json(sweep / "0" / "launch.json")["status"] == "COMPLETED"
    assert len(probe_records(sweep / "0")) == 2
    if sig != signal.SIGKILL:  # the others were running: stopped, and by what
        by = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}[sig]
        stopped = [read_json(sweep / str(n) / "launch.json") for n in (1, 2)]
        assert [(r["status"], r["stopped_by"]) for r in stopped] == [("STOPPED", by)] * 2
        # No traceback; the exit code of the signal; the command that goes on.
        out = (sweep.parent / "parent.out").read_text()
        assert parent.returncode == (130 if sig == signal.SIGINT else 143)
        assert "Traceback" not in out, out[-3000:]
        assert f"The sweep was stopped by {by}. To go on where it stopped:" in out
        assert f"hydra.sweep.dir={sweep} hydra.launcher.resume=true" in out


@pytest.mark.parametrize(
    ("loader", "warm"),
    [("fork", False), ("spawn", False), ("forkserver", False), ("fork", True)],
    ids=["fork", "spawn", "forkserver", "fork_warm"],
)
def test_a_stopping_ranks_dataloader_workers_serve_it_to_the_agreed_step(
    tmp_path, entry_base, loader, warm
):
    """SIGTERM reaches a rank's DataLoader workers with it (a stopped sweep signals its
    agents' process groups; Slurm, every process of the job), and torch's handler
    ends them: the rank would fail at its next batch. A rank that takes SIGTERM as a
    stop keeps its workers, whatever their start method: both ranks stop at one step,
    rank 0 saves it, and the same sweep resumed does every other step once."""
    sweep = tmp_path / "sweep"
    args = [
        sys.executable,
        str(PROBE_APP),
        "-m",
        "value=1",
        "steps=200",
        "step_s=0.05",
        f"loader={loader}",
        f"hydra.launcher.warm={str(warm).lower()}",
        f"hydra.sweep.dir={sweep}",
    ]
    steps_log = sweep / "0" / "steps.log"
    parent = started(args)
    try:
        wait_until(
            lambda: steps_log.is_file() and len(steps_log.read_text().split()) >= 5,
            120,
            "the first steps",
        )
        parent.send_signal(signal.SIGTERM)
        parent.communicate(timeout=120)
    finally:
        parent.kill()
    record = read_json(sweep / "0" / "launch.json")
    assert (record["status"], record["stopped_by"], record["warm"]) == ("STOPPED", "SIGTERM", warm)
    rank_logs = "".join(p.read_text() for p in (sweep / "0").rglob("*.log"))
    assert "killed by signal" not in rank_logs and "exited unexpectedly" not in rank_logs
    saved = int((sweep / "0" / "steps_saved").read_text())
    assert [int(s) for s in steps_log.read_text().split()] == list(range(saved))
    assert processes_of(parent.pid) == [] and entry_dirs(entry_base) == []
    run([*args, "hydra.launcher.resume=true"])
    assert [int(s) for s in steps_log.read_text().split()] == list(range(200))
    assert read_json(sweep / "0" / "launch.json")["status"] == "COMPLETED"
