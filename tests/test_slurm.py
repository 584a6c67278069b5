"""``hydra/launcher=torchrun_slurm`` against a real Slurm cluster (one node here).

`.ci/run` starts one with the verified recipe (../shared/slurm/slurm_up.sh, with
accounting, which submitit needs to see jobs that die hard). Elsewhere these tests
skip, saying how to start one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from runner.sweep.console import compact
from tests.conftest import (
    MARK_OWN_DIR,
    PROBE_APP,
    REPO,
    probe_records,
    read_json,
    run,
    runner_cli,
    started,
    unavailable,
    wait_until,
)

pytestmark = pytest.mark.slow


HOW_TO_START = (
    "start a local one: BASE=$(mktemp -d) ../shared/slurm/slurm_up.sh && "
    "export SLURM_CONF=$BASE/etc/slurm.conf (needs root and apt; .ci/run does this)"
)


@pytest.fixture(scope="module")
def slurm():
    """Skip (or fail, where required) unless a Slurm cluster with accounting answers."""
    if not shutil.which("sinfo"):
        unavailable("slurm", f"no Slurm client on PATH; {HOW_TO_START}")
    for cmd in (["sinfo", "-h", "-o", "%T"], ["sacct", "-n", "-X", "-S", "now"]):
        probe = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            unavailable(
                "slurm",
                f"`{' '.join(cmd)}` failed ({probe.stderr.strip()[:200]}); {HOW_TO_START}",
            )
    states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout
    if not {"idle", "mixed", "allocated"} & set(states.split()):
        unavailable("slurm", f"no Slurm node is up (states: {states.split()}); {HOW_TO_START}")


def slurm_sweep(sweep_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        str(PROBE_APP),
        "-m",
        "hydra/launcher=torchrun_slurm",
        "hydra.launcher.nproc_per_node=2",
        "hydra.launcher.poll_interval=1",
        "hydra.launcher.stop_grace=20",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def job_state(job_id: str) -> str:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"], capture_output=True, text=True
    ).stdout.split()
    return out[0] if out else ""


def in_queue(job_ids: list[str]) -> list[str]:
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True
    ).stdout.split()
    return [j for j in job_ids if j in out]


def processes_of_job(job_id: str) -> list[int]:
    """Live processes of Slurm job ``job_id``: its batch script, agents and ranks (each
    has the job's id in its environment, whatever its command line)."""
    needle = f"SLURM_JOB_ID={job_id}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if needle in environ and state != "Z":
                found.append(int(proc.name))
    return found


def nothing_left_of(job_ids: list[str]) -> None:
    wait_until(
        lambda: not [pid for job_id in job_ids for pid in processes_of_job(job_id)],
        30,
        f"every process of Slurm jobs {job_ids} to end",
    )


def test_two_point_two_rank_sweep_returns_every_result(tmp_path, slurm):
    # Each job's batch script lingers 3 s after its node has written the result (an
    # EXIT trap runs after srun), as a slow epilog would: a point is over only once
    # Slurm has finished its job, so its recorded state is Slurm's own.
    linger = "hydra.launcher.setup=[\"trap 'sleep 3' EXIT\"]"
    proc = run(
        slurm_sweep(
            tmp_path, "value=1,2", "allreduce=true", "hydra.launcher.cpus_per_task=1", linger
        )
    )
    for num, value in enumerate([1.0, 2.0]):
        job_dir = tmp_path / str(num)
        records = probe_records(job_dir)
        assert sorted(r["rank"] for r in records) == [0, 1]
        assert {r["world_size"] for r in records} == {2}
        assert {r["allreduce"] for r in records} == {3.0}
        assert len({r["config_hash"] for r in records}) == 1
        launch = read_json(job_dir / "launch.json")
        assert launch["status"] == "COMPLETED" and launch["slurm_state"] == "COMPLETED"
        assert launch["slurm_job_id"] and job_state(launch["slurm_job_id"]) == "COMPLETED"
        assert not in_queue([launch["slurm_job_id"]])
        assert all(Path(p).is_file() for p in launch["slurm_logs"])
        assert launch["rank0_here"] is True
        done = [line for line in (proc.stdout + proc.stderr).splitlines() if f"#{num} done" in line]
        assert done and f"-> {compact(value)}  [" in done[0]  # rank 0's value reached it
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert [line.split(",")[2] for line in summary[1:]] == ["COMPLETED", "COMPLETED"]


def test_failing_point_is_reported_and_the_other_completes(tmp_path, slurm):
    proc = run(
        slurm_sweep(tmp_path, "fail_rank=-1,1", "hydra.launcher.cpus_per_task=1"), check=False
    )
    assert proc.returncode != 0  # Hydra's basic sweeper re-raises the failed point
    ok, failed = (read_json(tmp_path / str(n) / "launch.json") for n in (0, 1))
    assert ok["status"] == "COMPLETED"
    assert failed["status"] == "FAILED"
    assert "rank 1" in failed["error"] and "probe failure on rank 1" in failed["error"]
    assert failed["slurm_job_id"] in failed["error"]


@pytest.fixture
def sweep_parent(tmp_path):
    """Start a Slurm sweep in the background; whatever the test does, its parent and
    its jobs are gone afterwards."""
    parents = []

    def start(*overrides: str) -> subprocess.Popen:
        parent = started(slurm_sweep(tmp_path, *overrides))
        parents.append(parent)
        return parent

    yield start
    for parent in parents:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
    for record in tmp_path.glob("*/launch.json"):
        subprocess.run(["scancel", str(read_json(record)["slurm_job_id"])], capture_output=True)


def start_requeued_now(job_id: str) -> None:
    """A requeued job waits out Slurm's two-minute hold; start it sooner. Not at once:
    slurmd refuses an allocation in the same second as the requeue revoked the job's
    credential ("Job credential revoked"), and the job fails."""
    time.sleep(1.5)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def squeue_states(job_ids: list[str]) -> list[str]:
    return subprocess.run(
        ["squeue", "-h", "-o", "%T", "-j", ",".join(job_ids)], capture_output=True, text=True
    ).stdout.split()


def interrupt_and_finish(parent: subprocess.Popen, job_dir: Path, command: list[str]) -> dict:
    """Interrupt the point's running job with ``command`` (``scontrol requeue``,
    ``scancel --signal=USR2``), start it again once it is pending, and let the sweep
    end well: the point's launch.json then."""
    job_id = read_json(job_dir / "launch.json")["slurm_job_id"]
    subprocess.run([*command, job_id], check=True)
    wait_until(lambda: squeue_states([job_id]) == ["PENDING"], 60, "the job requeued")
    start_requeued_now(job_id)
    out, _ = parent.communicate(timeout=300)
    assert parent.returncode == 0, out[-3000:]
    return read_json(job_dir / "launch.json")


def test_callbacks_see_their_own_job_on_slurm(tmp_path, slurm):
    """As cold and warm (tests/test_callbacks.py): a callback that saves into
    ``HydraConfig.get().runtime.output_dir`` writes into its own point's dir, though
    point #1 ends before #0 (one rank each, so both jobs fit on the node at once)."""
    sweep_dir = tmp_path / "sweep"
    command = [
        arg
        for arg in slurm_sweep(
            sweep_dir, "sleep=8,0", "hydra.launcher.max_parallel=2", MARK_OWN_DIR
        )
        if arg != "hydra.launcher.nproc_per_node=2"
    ]
    run([*command, "ranks=1"], env={"PYTHONPATH": str(REPO)}, timeout=400)
    ends = []
    for n in (0, 1):
        job_dir = sweep_dir / str(n)
        assert read_json(job_dir / "launch.json")["status"] == "COMPLETED"
        for when in ("on_job_start", "on_job_end"):
            assert read_json(job_dir / f"{when}.json") == {"num_seen": n, "num_told": n}, when
        ends.append((job_dir / "on_job_end.json").stat().st_mtime)
    assert ends[1] < ends[0]  # the points did end out of start order


def test_job_killed_hard_is_reported_failed_not_waited_on(tmp_path, slurm, sweep_parent):
    parent = sweep_parent("hang_rank=0", "hydra.launcher.cpus_per_task=1")
    record = tmp_path / "0" / "launch.json"
    wait_until(lambda: record.is_file(), 60, "the point to be submitted")
    job_id = read_json(record)["slurm_job_id"]
    wait_until(lambda: len(probe_records(tmp_path / "0")) == 2, 120, "both ranks to start")
    [hanging] = [r["pid"] for r in probe_records(tmp_path / "0") if r["rank"] == 0]
    assert hanging in processes_of_job(job_id)  # the leftover check sees the ranks
    subprocess.run(["scancel", "--signal=KILL", "--full", job_id], check=True)
    out, _ = parent.communicate(timeout=120)
    assert parent.returncode != 0
    launch = read_json(record)
    assert launch["status"] == "FAILED"
    assert f"Slurm job {job_id}" in launch["error"]
    assert launch["slurm_state"] not in ("RUNNING", "PENDING", "COMPLETED")
    # Seen within a few looks (poll_interval=1), not at some later timeout: the point's
    # recorded end against the end Slurm's accounting gives the job (whole seconds).
    ended = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "End"], capture_output=True, text=True
    ).stdout.split()[0]
    assert launch["end_time"] - datetime.fromisoformat(ended).timestamp() < 10
    nothing_left_of([job_id])


@pytest.mark.parametrize(("sig", "by"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_cancels_running_and_queued_jobs(tmp_path, slurm, sweep_parent, sig, by):
    """Each point takes every core of the node, so one runs and two wait in the queue;
    Ctrl-C or SIGTERM to the parent cancels them all."""
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    parent = sweep_parent("value=1,2,3", "hang_rank=0", f"hydra.launcher.cpus_per_task={cores}")
    records = [tmp_path / str(n) / "launch.json" for n in range(3)]
    wait_until(lambda: all(r.is_file() for r in records), 60, "all three points to be submitted")
    job_ids = [read_json(r)["slurm_job_id"] for r in records]
    wait_until(lambda: len(probe_records(tmp_path / "0")) == 2, 120, "point 0's ranks to run")
    assert sorted(squeue_states(job_ids)) == ["PENDING", "PENDING", "RUNNING"]
    [hanging] = [r["pid"] for r in probe_records(tmp_path / "0") if r["rank"] == 0]
    assert hanging in processes_of_job(job_ids[0])  # the leftover check sees the ranks
    parent.send_signal(sig)
    parent.communicate(timeout=120)
    assert not in_queue(job_ids)
    wait_until(
        lambda: all(job_state(j).startswith("CANCELLED") for j in job_ids),
        30,
        "sacct to show every job cancelled",
    )
    for record in records:
        assert read_json(record)["status"] == "STOPPED"
        assert read_json(record)["stopped_by"] == by
    nothing_left_of(job_ids)


def test_a_lost_parents_jobs_are_adopted_not_submitted_again(tmp_path, slurm, sweep_parent):
    """The parent dies (SIGKILL: a lost ssh session) while its points' jobs run; the
    same command with resume=true takes those jobs over instead of submitting the
    points again, and gets their results. The ranks wait at a gate the test opens
    only once the second parent has taken over."""
    gate = tmp_path / "gate"
    gate.mkdir()
    args = ["value=1,2", f"gate={gate}", "gate_points=3", "hydra.launcher.cpus_per_task=1"]
    lost = sweep_parent(*args)
    wait_until(
        lambda: all((gate / f"started_{n}").exists() for n in (0, 1)), 120, "both tasks to run"
    )
    first_ids = [read_json(tmp_path / str(n) / "launch.json")["slurm_job_id"] for n in (0, 1)]
    lost.kill()
    lost.wait()
    again = sweep_parent(*args, "hydra.launcher.resume=true")
    wait_until(
        lambda: all(read_json(tmp_path / str(n) / "launch.json").get("adopted") for n in (0, 1)),
        60,
        "the second parent to take both jobs over",
    )
    (gate / "started_open").touch()
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out[-3000:]
    for num, value in enumerate([1.0, 2.0]):
        launch = read_json(tmp_path / str(num) / "launch.json")
        assert launch["status"] == "COMPLETED" and launch["adopted"] is True
        assert launch["slurm_job_id"] == first_ids[num]
        # One job for the point: its Slurm folder holds one submission.
        assert len(list((tmp_path / str(num) / ".slurm").glob("*_submitted.pkl"))) == 1
        assert f"-> {compact(value)}  [" in out
    assert out.count("adopted from an earlier run") == 2
    nothing_left_of(first_ids)


SNAPSHOT_APP = """
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

import helper


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    gate = Path(cfg.gate)
    (gate / f"started_{cfg.value}").touch()
    deadline = time.monotonic() + 120
    while not (gate / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    value = helper.VALUE * cfg.value
    Path(HydraConfig.get().runtime.output_dir, "value.txt").write_text(str(value))
    return value


if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "code_on_disk"])
def test_an_edit_after_submission_reaches_no_queued_job(tmp_path, slurm, snapshot):
    """Point 1 waits in the queue behind point 0 (each takes every core), and the
    project's helper module is edited meanwhile: with the snapshot the queued job
    still imports the code as it was at submission; without, it runs the edit."""
    project, sweep, gate = tmp_path / "project", tmp_path / "sweep", tmp_path / "gate"
    project.mkdir()
    gate.mkdir()
    (project / "app.py").write_text(SNAPSHOT_APP)
    (project / "helper.py").write_text("VALUE = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run(["git", "add", "app.py", "helper.py"], cwd=project, check=True)
    cores = int(subprocess.run(["nproc"], capture_output=True, text=True).stdout)
    parent = started(
        [
            sys.executable,
            "app.py",
            "-m",
            "+value=1,2",
            f"+gate={gate}",
            "hydra/launcher=torchrun_slurm",
            f"hydra.launcher.cpus_per_task={cores}",
            "hydra.launcher.poll_interval=1",
            f"hydra.launcher.snapshot={str(snapshot).lower()}",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=project,
    )
    try:
        wait_until(lambda: (gate / "started_1").exists(), 120, "point 0 to run")
        queued = read_json(sweep / "1" / "launch.json")["slurm_job_id"]
        assert squeue_states([queued]) == ["PENDING"]
        (project / "helper.py").write_text("VALUE = 100\n")
        (gate / "open").touch()
        out, _ = parent.communicate(timeout=180)
    finally:
        parent.kill()
    assert parent.returncode == 0, out[-3000:]
    assert (sweep / "1" / "value.txt").read_text() == ("2" if snapshot else "200")
    launch = read_json(sweep / "1" / "launch.json")
    if snapshot:
        assert launch["code"] == str((sweep / "code").resolve())
        assert (sweep / "code" / "helper.py").read_text() == "VALUE = 1\n"
        assert sorted(p.name for p in (sweep / "code").iterdir()) == ["app.py", "helper.py"]
    else:
        assert launch["code"] is None and not (sweep / "code").exists()


def test_a_snapshot_outside_git_without_a_file_set_is_refused(tmp_path, slurm):
    proc = run(
        [sys.executable, str(PROBE_APP), "-m", "hydra/launcher=torchrun_slurm"],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0
    assert "hydra.launcher.snapshot=true is invalid here" in proc.stderr
    assert "Fix: hydra.launcher.snapshot_files=" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.rglob(".slurm"))


# How the first allocation of the point ends: Slurm's warning before the time limit
# (SIGUSR2, signal_lead_s ahead; sent here by hand), or a requeue as a preemption
# does it (SIGTERM to every process of the job, SIGKILL KillWait later).
INTERRUPTIONS = {
    "warning": (["scancel", "--signal=USR2"], "requeued (Slurm's time-limit warning"),
    "requeue": (["scontrol", "requeue"], "stopped by SIGTERM (a preemption, a requeue"),
}


@pytest.mark.parametrize("how", list(INTERRUPTIONS))
def test_an_interrupted_point_saves_its_agreed_step_is_requeued_and_resumes(tmp_path, slurm, how):
    """The ranks agree on a step and save it, the job is requeued, and its next
    allocation resumes there. The point ends equal to a run never interrupted, one
    result for the sweeper, both allocations in its launch.json, and one MLflow run
    over both (its history continuous, tagged with the Slurm job id)."""
    from tests.test_faults import TRAIN, TWO_RANKS, same_training
    from tests.test_tracking import client_of, history, jsonl, runs_of

    command, first_ended = INTERRUPTIONS[how]
    longer = [*TRAIN, *TWO_RANKS, "trainer.epochs=8", "data.n_samples=8000"]
    runner_cli(*longer, f"hydra.run.dir={tmp_path / 'undisturbed'}")
    sweep = tmp_path / "sweep"
    parent = started(
        [
            sys.executable,
            "-m",
            "runner",
            "-m",
            *longer,
            "hydra/launcher=torchrun_slurm",
            "hydra.launcher.poll_interval=1",
            "logger=mlflow",
            f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    try:
        wait_until(lambda: (sweep / "0" / "metrics.jsonl").exists(), 120, "the first epoch")
        launch = interrupt_and_finish(parent, sweep / "0", command)
    finally:
        parent.kill()
    job_id = launch["slurm_job_id"]
    assert launch["status"] == "COMPLETED"
    ends = [a["ended"] for a in launch["allocations"]]
    assert len(ends) == 2 and ends[0].startswith(first_ended) and ends[1] == "completed", ends
    assert {a["job_id"] for a in launch["allocations"]} == {job_id}
    logs = (sweep / "0" / "runner.log").read_text()
    assert "stop requested: saved the checkpoint of step" in logs and "resuming at step" in logs
    same_training(tmp_path / "undisturbed", sweep / "0")
    [point] = [r for r in runs_of(tmp_path / "mlflow.db") if "mlflow.parentRunId" in r.data.tags]
    assert point.info.status == "FINISHED" and point.data.tags["runner.slurm_job_id"] == job_id
    lines = jsonl(sweep / "0" / "metrics.jsonl")
    assert history(client_of(tmp_path / "mlflow.db"), point.info.run_id, "val_loss") == [
        (line["epoch"], line["val_loss"]) for line in lines
    ]
    nothing_left_of([job_id])


def test_a_requeued_task_with_dataloader_workers_saves_its_step_and_goes_on(tmp_path, slurm):
    """``scontrol requeue`` signals every process of the job, DataLoader workers too:
    the ranks of a task that listens (the probe's steps come from 2 forked workers per
    rank) still reach their agreed step and save it, and the requeued job does every
    other step once."""
    parent = started(slurm_sweep(tmp_path, "steps=200", "step_s=0.05", "loader=fork"))
    steps_log = tmp_path / "0" / "steps.log"
    try:
        wait_until(
            lambda: steps_log.is_file() and len(steps_log.read_text().split()) >= 5,
            120,
            "the first steps",
        )
        launch = interrupt_and_finish(parent, tmp_path / "0", ["scontrol", "requeue"])
    finally:
        parent.kill()
    ends = [a["ended"] for a in launch["allocations"]]
    assert len(ends) == 2 and ends[0].startswith("stopped by SIGTERM") and ends[1] == "completed"
    assert steps_log.read_text().split() == [str(n) for n in range(200)]
    logs = "".join(p.read_text() for p in (tmp_path / "0").rglob("*.log"))
    assert "killed by signal" not in logs and "exited unexpectedly" not in logs
    nothing_left_of([launch["slurm_job_id"]])


def test_a_point_past_its_time_limit_is_warned_requeued_and_goes_on(tmp_path, slurm):
    """Slurm's own clock: a 1-minute limit warns the job (SIGUSR2, signal_lead_s
    ahead, or up to a tick earlier) before the task's 50 s of steps are done. A task
    that is not runner's trainer stops through runner.stop_requested(), saves its
    place, and the requeued job goes on from there, as often as it takes: every step
    is done exactly once and the sweeper gets the point's one result."""
    sweep = tmp_path
    parent = started(
        slurm_sweep(
            sweep,
            "steps=500",
            "step_s=0.1",
            "value=7",
            "hydra.launcher.time_min=1",
            "hydra.launcher.max_requeues=6",
            "hydra.launcher.cpus_per_task=1",
        )
    )
    record = sweep / "0" / "launch.json"
    kicked: set[str] = set()
    try:
        wait_until(lambda: record.is_file(), 60, "the point to be submitted")
        job_id = read_json(record)["slurm_job_id"]
        while parent.poll() is None:  # start each requeue (a new begin time) sooner
            begin = subprocess.run(
                ["squeue", "-h", "-o", "%T %r %S", "-j", job_id], capture_output=True, text=True
            ).stdout.split()
            if begin[:2] == ["PENDING", "BeginTime"] and begin[2] not in kicked:
                kicked.add(begin[2])
                start_requeued_now(job_id)
            time.sleep(0.5)
        out = parent.communicate(timeout=10)[0]
    finally:
        parent.kill()
    assert parent.returncode == 0, out[-3000:]
    launch = read_json(record)
    assert launch["status"] == "COMPLETED" and launch["slurm_job_id"] == job_id
    ends = [a["ended"] for a in launch["allocations"]]
    assert len(ends) >= 2 and ends[-1] == "completed", ends
    assert all(e.startswith("requeued (Slurm's time-limit warning") for e in ends[:-1]), ends
    steps = (sweep / "0" / "steps.log").read_text().split()
    assert steps == [str(n) for n in range(500)]  # each exactly once, in order
    assert "this job is timed-out" in (sweep / "0" / ".slurm" / f"{job_id}_0_log.out").read_text()
    assert "#0 done" in out and "-> 7" in out
    nothing_left_of([job_id])


def test_max_parallel_env_and_timeout_on_slurm(tmp_path, slurm):
    """One job at a time: point 0 hangs past its timeout, so its job is cancelled and
    the point STOPPED; only then does point 1 start, with the launcher's env."""
    proc = run(
        slurm_sweep(
            tmp_path,
            "hang_rank=0,-1",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.max_parallel=1",
            "hydra.launcher.timeout=20",
            "+hydra.launcher.env.PROBE_ENV=from_launcher",
        ),
        check=False,
    )
    assert proc.returncode != 0  # the timed-out point is a failure for Hydra's sweeper
    hung, ok = (read_json(tmp_path / str(n) / "launch.json") for n in (0, 1))
    assert (hung["status"], hung["stopped_by"]) == ("STOPPED", "timeout")
    wait_until(
        lambda: job_state(hung["slurm_job_id"]).startswith("CANCELLED"), 30, "the job cancelled"
    )
    assert ok["status"] == "COMPLETED"
    assert ok["start_time"] >= hung["end_time"]
    assert {r["probe_env"] for r in probe_records(tmp_path / "1")} == {"from_launcher"}
    nothing_left_of([hung["slurm_job_id"], ok["slurm_job_id"]])


def test_fail_fast_cancels_the_running_job_on_slurm(tmp_path, slurm):
    """Point 1 runs while point 0 fails (a gate holds it until the failure is
    recorded); fail_fast cancels its job instead of letting it sleep ten minutes."""
    gate = tmp_path / "gate"
    gate.mkdir()
    proc = run(
        slurm_sweep(
            tmp_path,
            "fail_rank=0,-1",
            "sleep=600",
            f"gate={gate}",
            "gate_points=2",
            "gate_failure=true",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.max_parallel=2",
            "hydra.launcher.fail_fast=true",
        ),
        check=False,
    )
    assert proc.returncode != 0
    failed, stopped = (read_json(tmp_path / str(n) / "launch.json") for n in (0, 1))
    assert failed["status"] == "FAILED"
    assert (stopped["status"], stopped["stopped_by"]) == ("STOPPED", "fail_fast")
    wait_until(
        lambda: job_state(stopped["slurm_job_id"]).startswith("CANCELLED"),
        30,
        "the running job cancelled",
    )
    nothing_left_of([failed["slurm_job_id"], stopped["slurm_job_id"]])


def test_bad_slurm_settings_fail_before_submitting(tmp_path, slurm):
    proc = run(
        slurm_sweep(tmp_path, "hydra.launcher.time_min=0", "hydra.launcher.nnodes=1:2"),
        check=False,
    )
    assert proc.returncode != 0
    assert "hydra.launcher.time_min=0 is invalid" in proc.stderr
    assert "hydra.launcher.nnodes='1:2' is invalid" in proc.stderr
    assert not list(tmp_path.glob("*/.slurm"))


def test_a_search_runs_trials_as_slurm_jobs_and_prunes_them(tmp_path, slurm):
    """hydra/sweeper=search on torchrun_slurm: trials are Slurm jobs started as slots
    free; a losing one is pruned through its metrics.jsonl and its job cancelled."""
    import optuna

    run(
        [
            sys.executable,
            str(PROBE_APP.parent / "search_app.py"),
            "-m",
            "hydra/launcher=torchrun_slurm",
            "hydra.launcher.poll_interval=1",
            "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.max_parallel=2",
            f"hydra.sweep.dir={tmp_path}",
            "x=interval(-1,1)",
            "epochs=12",
            "epoch_s=0.5",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 2}",
            "hydra.sweeper.enqueue=[{x: 0.3},{x: 0.31},{x: 0.9}]",
        ]
    )
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    records = [read_json(tmp_path / str(n) / "launch.json") for n in range(3)]
    assert [r["status"] for r in records] == ["COMPLETED", "COMPLETED", "PRUNED"]
    assert records[1]["start_time"] < records[0]["end_time"]  # two at a time
    pruned_job = records[2]["slurm_job_id"]
    assert pruned_job and job_state(pruned_job).startswith("CANCELLED")
    assert not in_queue([r["slurm_job_id"] for r in records])


class TwoSlurmNodes:
    """A second Slurm cluster of two nodes on this machine, for real: each slurmd in its
    own network namespace with its own hostname (snode0, snode1) and address on a
    bridge, its controller in this namespace, its accounting in the running cluster's
    slurmdbd (a cluster name of its own). Its jobs' ranks reach each other only
    through the nodes' addresses."""

    def __init__(self, base: Path) -> None:
        self.tag = tag = os.getpid() % 100000
        self.base, self.name = base, f"two{tag}"
        self.ns = [f"rsn{tag}n{k}" for k in range(2)]
        self.bridge = f"rsb{tag}"
        self.hosts = ["snode0", "snode1"]
        self.procs: list[subprocess.Popen] = []
        self.conf = base / "etc" / "slurm.conf"
        self.env = {"SLURM_CONF": str(self.conf)}

    def up(self) -> None:
        """The network, then the controller and both nodes (each step checked)."""
        tag, base = self.tag, self.base
        net = f"172.{16 + tag % 16}.{tag % 250}"
        addrs = [f"{net}.{k + 2}" for k in range(2)]
        for sub in ("etc", "state", "log", "run", *(f"spool/{h}" for h in self.hosts)):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "hosts").write_text(
            "127.0.0.1 localhost\n"
            + "".join(f"{a} {h}\n" for a, h in zip(addrs, self.hosts, strict=True))
        )
        ip = ["ip", "link"]
        steps = [
            [*ip, "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{net}.1/24", "dev", self.bridge],
            [*ip, "set", self.bridge, "up"],
        ]
        for k, ns in enumerate(self.ns):
            host_end, node_end = f"rsv{tag}h{k}", f"rsv{tag}n{k}"
            steps += [
                ["ip", "netns", "add", ns],
                [*ip, "add", host_end, "type", "veth", "peer", "name", node_end],
                [*ip, "set", host_end, "master", self.bridge],
                [*ip, "set", host_end, "up"],
                [*ip, "set", node_end, "netns", ns],
                ["ip", "-n", ns, "addr", "add", f"{addrs[k]}/24", "dev", node_end],
                ["ip", "-n", ns, "link", "set", node_end, "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
            ]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        self.conf.write_text(self._config(net))
        self._start(["slurmctld", "-D"], base / "log" / "slurmctld.out")
        for k, host in enumerate(self.hosts):
            # The node's network, and a mount and hostname namespace of its own: its
            # /etc/hosts names both nodes, and it keeps this machine's /sys (cgroups).
            script = f'mount --bind {base / "hosts"} /etc/hosts && hostname {host} && exec "$@"'
            self._start(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.ns[k]}",
                    "unshare",
                    "--mount",
                    "--uts",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    "slurmd",
                    "-D",
                    "-N",
                    host,
                ],
                base / "log" / f"slurmd{k}.out",
            )

    def _config(self, net: str) -> str:
        """The running cluster's configuration (auth, accounting, timings), with this
        cluster's name, controller (``net``.1), ports, paths and nodes (.2, .3)."""
        own = {"ClusterName", "SlurmctldHost", "NodeName", "PartitionName", "FirstJobId"}
        own |= {"SlurmctldPort", "SlurmdPort", "StateSaveLocation", "SlurmdSpoolDir"}
        own |= {f"{d}{f}" for d in ("Slurmctld", "Slurmd") for f in ("PidFile", "LogFile")}
        kept = [
            line
            for line in Path(os.environ["SLURM_CONF"]).read_text().splitlines()
            if line.split("=", 1)[0].strip() not in own
        ]
        hw = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True)
        hw_line = hw.stdout.splitlines()[0].split(" ", 1)[1]
        ports = []
        for _ in range(2):
            with socket.socket() as sock:
                sock.bind(("", 0))
                ports.append(sock.getsockname()[1])
        b = self.base
        return "\n".join(
            [
                *kept,
                f"ClusterName={self.name}",
                f"SlurmctldHost={socket.gethostname().split('.')[0]}({net}.1)",
                f"SlurmctldPort={ports[0]}",
                f"SlurmdPort={ports[1]}",
                "FirstJobId=100000",  # never the running cluster's job ids
                f"StateSaveLocation={b}/state",
                f"SlurmdSpoolDir={b}/spool/%n",
                f"SlurmctldPidFile={b}/run/slurmctld.pid",
                f"SlurmdPidFile={b}/run/slurmd.%n.pid",
                f"SlurmctldLogFile={b}/log/slurmctld.log",
                f"SlurmdLogFile={b}/log/slurmd.%n.log",
                *(
                    f"NodeName={h} NodeAddr={net}.{k + 2} {hw_line} State=UNKNOWN"
                    for k, h in enumerate(self.hosts)
                ),
                "PartitionName=two Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )

    def _start(self, argv: list[str], log: Path) -> None:
        with open(log, "w") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        self.procs.append(proc)

    def idle(self) -> bool:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T %D"], capture_output=True, text=True, env=self.slurm_env()
        ).stdout.split()
        return out == ["idle", "2"]

    def slurm_env(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def close(self) -> None:
        env = self.slurm_env()
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, env=env)
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


@pytest.fixture(scope="module")
def two_slurm_nodes(slurm, tmp_path_factory):
    missing = [tool for tool in ("ip", "nsenter", "unshare", "slurmd") if not shutil.which(tool)]
    if os.geteuid() != 0 or missing:
        unavailable("netns", f"two Slurm nodes need root and {missing or 'root'}")
    nodes = TwoSlurmNodes(tmp_path_factory.mktemp("two_slurm_nodes"))
    try:
        try:
            nodes.up()
        except subprocess.CalledProcessError as error:
            unavailable("netns", f"cannot build two namespaced nodes here: {error.stderr!r}")
        wait_until(nodes.idle, 60, "both namespaced Slurm nodes to be idle")
        yield nodes
    finally:
        nodes.close()


def test_a_two_node_point_runs_on_two_real_slurm_nodes(tmp_path, two_slurm_nodes):
    """hydra.launcher.nnodes=2 on two slurmd in their own namespaces: one job, one
    torchrun agent per node, the 4 ranks meet over the nodes' addresses (loopback
    cannot cross namespaces), and the point's value comes back to the sweeper."""
    proc = run(
        slurm_sweep(tmp_path, "hydra.launcher.nnodes=2", "allreduce=true", "value=3"),
        env=two_slurm_nodes.env,
    )
    records = probe_records(tmp_path / "0")
    assert sorted((r["rank"], r["host"]) for r in records) == [
        (0, "snode0"),
        (1, "snode0"),
        (2, "snode1"),
        (3, "snode1"),
    ]
    assert {r["allreduce"] for r in records} == {1.0 + 2 + 3 + 4}
    assert {r["master_addr"] for r in records} == {"snode0"}
    launch = read_json(tmp_path / "0" / "launch.json")
    assert launch["status"] == "COMPLETED" and launch["nodes"] == ["snode0", "snode1"]
    assert "-> 3" in proc.stdout + proc.stderr
    accounted = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State,NodeList"],
        capture_output=True,
        text=True,
        env=two_slurm_nodes.slurm_env(),
    ).stdout.split()
    assert accounted == [f"{launch['slurm_job_id']}|COMPLETED|snode[0-1]"]
