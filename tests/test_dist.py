"""The launch core with real torchrun processes (gloo on CPU)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf, open_dict

from runner.launch.app import launch
from runner.launch.job import LaunchError
from runner.launch.options import LaunchConfig
from runner.launch.procs import free_port, release_port, started
from tests.conftest import (
    APPS,
    REPO,
    entry_dirs,
    interrupt_and_expect_nothing_left,
    modules_imported,
    probe_records,
    processes_of,
    run,
    runner_cli,
    wait_until,
)

ADVERSARIAL = {
    "quotes": 'it\'s "quoted" and \'\'\'triple\'\'\' and """triple"""',
    "newlines": "line one\nline two\r\n\tindented",
    "backslashes": "C:\\temp\\new\\ end\\",
    "python": "__import__('os').system('touch /tmp/runner_pwned')\nexit(3)",
    "unicode": "naïve ☃ 日本",
    "big": "0123456789'\"\\\n" * 7700,  # about 100 kB
}
# Values that read ${...} once resolved: the parent holds them escaped, the way a YAML
# file writes them (OmegaConf's own escaping, checked in the test).
LITERAL_INTERPOLATIONS = {
    "interpolation": ("\\${oc.env:HOME} and \\${now:%Y}", "${oc.env:HOME} and ${now:%Y}"),
    "backslash_interpolation": ("a\\\\\\${x.y}", "a\\${x.y}"),
}


def job_config(job_dir: Path, *overrides: str):
    """A probe job config as Hydra's run mode would set it up, HydraConfig included."""
    with initialize_config_dir(config_dir=str(APPS / "probe_conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)
        cfg.hydra.job.num = 0
        cfg.hydra.job.id = "0"
        cfg.hydra.job.name = "probe"
    HydraConfig.instance().set_config(cfg)
    return cfg


def two_ranks(**kwargs) -> LaunchConfig:
    return LaunchConfig(nproc_per_node=2, **kwargs)


@pytest.mark.slow
def test_closure_task_and_adversarial_values_arrive_intact(tmp_path, entry_base):
    cfg = job_config(tmp_path)
    expected = {**ADVERSARIAL, **{k: v for k, (_, v) in LITERAL_INTERPOLATIONS.items()}}
    with open_dict(cfg):
        cfg.adversarial = {**ADVERSARIAL, **{k: e for k, (e, _) in LITERAL_INTERPOLATIONS.items()}}
    assert OmegaConf.to_container(cfg.adversarial, resolve=True) == expected
    captured = {"secret": 42}

    def task(task_cfg):  # a closure: shipped by value
        from tests.apps.probe_app import probe

        probe(task_cfg)
        assert "hydra" not in task_cfg
        return {"values": OmegaConf.to_container(task_cfg.adversarial, resolve=True), **captured}

    result = launch(cfg, task, two_ranks(), tmp_path, console=False)
    assert result == {"values": expected, "secret": 42}
    records = probe_records(tmp_path)
    assert [r["rank"] for r in records] == [0, 1]
    for record in records:
        assert record["config"]["adversarial"] == expected
    assert records[0]["config_hash"] == records[1]["config_hash"]
    assert records[0]["config"]["stamp"] == records[1]["config"]["stamp"]
    assert not Path("/tmp/runner_pwned").exists()
    assert entry_dirs(entry_base) == []


@pytest.mark.slow
def test_rank_failure_names_rank_exception_and_log(tmp_path, entry_base):
    cfg = job_config(tmp_path, "fail_rank=1")
    from tests.apps.probe_app import probe

    with pytest.raises(LaunchError) as err:
        launch(cfg, probe, two_ranks(), tmp_path, console=False)
    message = str(err.value)
    assert err.value.rank == 1 and err.value.exitcode == 1
    assert "rank 1 (local rank 1) exited with code 1" in message
    assert "ValueError: probe failure on rank 1" in message
    assert "Traceback" in err.value.log_tail
    assert entry_dirs(entry_base) == []


@pytest.mark.slow
def test_timeout_stops_the_job(tmp_path, entry_base):
    cfg = job_config(tmp_path, "hang_rank=0")
    from tests.apps.probe_app import probe

    with pytest.raises(LaunchError, match="timed out after 8 s"):
        launch(cfg, probe, two_ranks(timeout=8), tmp_path, console=False)
    assert processes_of(os.getpid()) == []
    assert entry_dirs(entry_base) == []


KEPT: list = []


def leave_work_for_exit(cfg):
    """What a task may leave for the end of its process: an atexit handler, a running
    non-daemon thread, a thread pool never shut down (MLflow's asynchronous logging
    leaves one) with work queued, unflushed output, and an object only interpreter
    teardown would finalize."""
    import atexit
    import os
    import sys
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    rank = os.environ["RANK"]
    out = Path(cfg.out)
    atexit.register(lambda: (out / f"atexit{rank}").write_text("ran"))

    def late():
        time.sleep(0.5)
        (out / f"thread{rank}").write_text("ran")

    threading.Thread(target=late).start()
    pool = ThreadPoolExecutor(max_workers=1)
    pool.submit(time.sleep, 0.3)
    pool.submit(lambda: (out / f"pool{rank}").write_text("ran"))
    KEPT.append(pool)  # held for good, as a library's own pool is
    sys.stdout.write(f"unflushed {rank}")

    class TornDown:
        def __del__(self):
            (out / f"teardown{rank}").write_text("ran")

    sys.modules["__main__"].torn_down = TornDown()
    return "returned"


@pytest.mark.slow
def test_successful_rank_ends_like_python_without_the_teardown(tmp_path, entry_base):
    """A finished rank ends its thread pools and joins the task's threads, runs its
    atexit handlers and flushes its output, as interpreter exit does, then skips
    interpreter teardown (where torch can abort a rank that succeeded). A pool's idle
    worker would wait forever to be joined: the job's timeout turns that into a
    failure here rather than a hang."""
    out = tmp_path / "out"
    out.mkdir()
    cfg = OmegaConf.create({"out": str(out)})
    job = two_ranks(timeout=90)
    assert launch(cfg, leave_work_for_exit, job, tmp_path, console=False) == "returned"
    assert sorted(p.name for p in out.iterdir()) == [
        "atexit0",
        "atexit1",
        "pool0",
        "pool1",
        "thread0",
        "thread1",
    ]
    stdout = {p.parent.name: p.read_text() for p in tmp_path.glob("torchrun/*/*/*/stdout.log")}
    assert stdout == {"0": "unflushed 0", "1": "unflushed 1"}
    assert entry_dirs(entry_base) == []


def test_tee_tailer_stops_at_once_and_copies_everything(tmp_path, prompt_agent):
    """torchrun's tailer of a rank's log (``tee``) sleeps its interval between reads,
    and stopping it waits that sleep out; runner's agent uses one that wakes when told
    to stop and still copies the lines written last."""
    import io
    import threading

    import torch.distributed.elastic.multiprocessing.api as processes

    log = tmp_path / "stdout.log"
    log.write_text("first\n")
    out = io.StringIO()
    tail = processes.TailLog("rank", {0: str(log)}, out, interval_sec=600).start()
    wait_until(lambda: "first" in out.getvalue(), 30, "the first line")
    with log.open("a") as file:
        file.write("last\n")
    stopping = threading.Thread(target=tail.stop, daemon=True)
    stopping.start()
    stopping.join(timeout=60)  # far under the interval
    assert not stopping.is_alive()
    assert out.getvalue() == "[rank0]:first\n[rank0]:last\n"


def double_world_size(cfg):
    import os

    return cfg.x * int(os.environ["WORLD_SIZE"])


@pytest.mark.slow
def test_launch_from_plain_python_without_hydra(tmp_path, entry_base):
    assert (
        launch(OmegaConf.create({"x": 21}), double_world_size, two_ranks(), tmp_path, console=False)
        == 42
    )
    assert entry_dirs(entry_base) == []


def report_pid(queue) -> None:
    import os

    queue.put(os.getpid())


def start_a_spawned_process(cfg) -> int:
    """What a DataLoader with a "spawn" context or Lightning's ddp_spawn does: the
    child re-imports the main module (the entry script) as ``__mp_main__``."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=report_pid, args=(queue,))
    child.start()
    pid = queue.get(timeout=120)
    child.join(timeout=120)
    assert child.exitcode == 0 and pid == child.pid
    return cfg.x


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_task_may_start_spawned_processes(tmp_path, entry_base, warm, caplog):
    """The entry script runs the worker only as ``__main__``, so a spawned child does
    not start the task again inside itself."""
    config = OmegaConf.create({"x": 7})
    with caplog.at_level(logging.INFO, logger="runner.launch.app"):
        value = launch(
            config, start_a_spawned_process, two_ranks(), tmp_path, console=False, warm=warm
        )
    assert value == 7
    assert ("its ranks fork from a warm process" in caplog.text) == warm
    assert entry_dirs(entry_base) == []


def test_free_port_skips_ports_of_running_jobs(monkeypatch):
    """A port given to a running job is not handed out again, even after its socket
    closed: here the OS is made to offer exactly that port first (a real socket bound
    to it), and free_port must pass it over for the next."""
    import socket

    from runner.launch import procs

    first = free_port()
    port = first.getsockname()[1]
    first.close()  # the OS may now offer it again, but the job still has it
    offers = [port]

    class OfferingTheReservedPort(socket.socket):
        def bind(self, address):
            host, wanted = address
            super().bind((host, offers.pop() if offers and wanted == 0 else wanted))

    monkeypatch.setattr(procs.socket, "socket", OfferingTheReservedPort)
    try:
        sock = free_port()
        other = sock.getsockname()
        sock.close()
        release_port(other[1])
        assert offers == []  # the reserved port was offered
        assert other[1] != port and other[0] == "127.0.0.1"
    finally:
        release_port(port)


LISTENING = "0A"


def listeners(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net shows them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == LISTENING:
                found.append(address)
    return found


@pytest.mark.slow
def test_single_node_rendezvous_listens_on_loopback_only(tmp_path):
    from runner.launch.job import TorchrunJob, stop_jobs

    cfg = job_config(tmp_path, "sleep=4")
    from tests.apps.probe_app import probe

    job = TorchrunJob(cfg, probe, two_ranks(), tmp_path, console=False)
    job.start()
    try:
        # Entry dir and files are private to this user, and not at a fixed shared path.
        assert job.entry_dir.stat().st_mode & 0o777 == 0o700
        # Named by its parent's pid, start time and host (what the stale-dir sweep reads).
        host = socket.gethostname().replace("-", "_")
        assert job.entry_dir.name.startswith(f"runner-{os.getpid()}-{started(os.getpid())}-{host}-")
        for path in job.entry_dir.iterdir():
            assert path.stat().st_mode & 0o777 == 0o600, path
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not (tmp_path / "probe_rank0.json").exists() and time.monotonic() < deadline:
            seen = listeners(job.port) or seen
            time.sleep(0.2)
        seen = listeners(job.port) or seen
        assert job.wait() == 0
    finally:
        stop_jobs([job])
        job.cleanup()
    assert seen and set(seen) == {"0100007F"}, seen  # 127.0.0.1, nothing else
    records = probe_records(tmp_path)
    assert {r["master_addr"] for r in records} == {"127.0.0.1"}
    assert {r["master_port"] for r in records} == {str(job.port)}


INTERRUPTIBLE = textwrap.dedent(
    """
    import sys
    from tests.test_dist import job_config, two_ranks
    from tests.apps.probe_app import probe
    from runner.launch.app import launch
    from pathlib import Path
    job_dir = Path(sys.argv[1])
    config = job_config(job_dir, "sleep=600", f"gate={job_dir}", "gate_points=1")
    launch(config, probe, two_ranks(), job_dir, console=False)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_parent_interrupted_or_killed_leaves_nothing(tmp_path, entry_base, sig):
    parent = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTIBLE, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Rank 0 marks its task's start (the probe's gate): the ranks run the task.
    wait_until(lambda: (tmp_path / "started_0").exists(), 90, "the task to start")
    assert len(processes_of(parent.pid)) >= 3  # the agent and two workers
    assert entry_dirs(entry_base)
    interrupt_and_expect_nothing_left(parent, sig, entry_base)
    if sig != signal.SIGKILL:
        assert parent.returncode != 0


@pytest.mark.slow
def test_ddp_is_exact_and_parent_stays_light(tmp_path):
    """2 ranks with global batch B end with the weights of 1 process with batch B."""
    import torch

    common = [
        "optim=sgd",
        "optim.lr=0.05",
        "trainer.epochs=3",
        "trainer.batch_size=32",
        "data.n_samples=640",
        "model.hidden=32",
        "trainer.progress=lines",
    ]
    runner_cli(*common, f"hydra.run.dir={tmp_path / 'one'}")
    proc = run(
        [
            sys.executable,
            "-X",
            "importtime",
            "-m",
            "runner",
            *common,
            "trainer.nproc_per_node=2",
            f"hydra.run.dir={tmp_path / 'two'}",
        ],
        cwd=REPO,
    )
    parent_imports = modules_imported(proc.stderr)
    assert "hydra" in parent_imports
    assert not [m for m in parent_imports if m == "torch" or m.startswith("torch.")]
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["model"]
    two = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=False)["model"]
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "two" / "runner_rank1.log").exists()
    assert sorted(p.name for p in tmp_path.glob("*/.hydra")) == [".hydra", ".hydra"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*"ab$\\{}:'\"\n", "${", "\\${", "${x}"])).map("".join) | st.text())
def test_resolved_strings_survive_the_round_trip(text):
    """Whatever a resolved string holds (``${``, backslashes, braces), the rank reads it
    back as that literal string, never as an interpolation."""
    from runner.launch.codec import _escape, resolved_data, restore_config

    parent = OmegaConf.create({"v": _escape(text)})
    assert parent.v == text  # the parent holds the literal
    assert restore_config(resolved_data(parent)).v == text  # and so does the rank
