"""Warm start (``hydra.launcher.warm=true``): what only warm mode has to prove. The
launcher's own tests (tests/test_launcher.py, Hydra's suites included) also run warm."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

import pytest

from runner.launch import warm
from runner.launch.procs import pid_alive
from runner.sweep.console import compact
from tests.conftest import (
    APPS,
    FAST,
    PROBE_APP,
    REPO,
    entry_dirs,
    interrupt_and_expect_nothing_left,
    launch_status,
    probe_records,
    processes_of,
    read_json,
    run,
    runner_cli,
    wait_until,
)

WARM = "hydra.launcher.warm=true"


def probe(tmp_path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(
        [sys.executable, str(PROBE_APP), "-m", WARM, f"hydra.sweep.dir={tmp_path}", *overrides],
        check=check,
    )


@pytest.mark.slow
def test_points_are_forked_isolated_and_complete(tmp_path, entry_base):
    """Each point starts from the pristine warm state: the mark one point leaves in
    torch's module state is never seen by the next, though all run in one warm process."""
    proc = probe(
        tmp_path, "value=1,2,3,4", "mark=true", "allreduce=true", "hydra.launcher.max_parallel=1"
    )
    for num in range(4):
        records = probe_records(tmp_path / str(num))
        assert sorted(r["rank"] for r in records) == [0, 1]
        assert {r["allreduce"] for r in records} == {3.0}
        assert {r["mark_seen"] for r in records} == {None}
        launch = read_json(tmp_path / str(num) / "launch.json")
        assert launch["warm"] is True and launch["status"] == "COMPLETED"
        assert "--start_method" in launch["command"] and "--run_path" in launch["command"]
    out = proc.stdout + proc.stderr
    assert "warm start unavailable" not in out
    assert [f"-> {compact(float(v))}  [" in out for v in (1, 2, 3, 4)] == [True] * 4
    assert not entry_dirs(entry_base)


@pytest.mark.slow
def test_elastic_restart_and_timeout_work_warm(tmp_path):
    proc = probe(
        tmp_path,
        "fail_once=true,false",
        "sleep=0,600",
        "hydra.launcher.max_restarts=1",
        "hydra.launcher.timeout=20",
        check=False,
    )
    assert proc.returncode != 0
    assert launch_status(tmp_path / "0") == "COMPLETED"  # failed once, restarted, done
    assert list((tmp_path / "0" / "torchrun").glob("*/attempt_1"))
    timed_out = read_json(tmp_path / "1" / "launch.json")
    assert timed_out["status"] == "STOPPED" and timed_out["timed_out"] is True
    assert timed_out["stopped_by"] == "timeout"
    assert "timed out after 20 s" in timed_out["error"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_parent_signal_ends_warm_process_agents_and_workers(tmp_path, entry_base, sig):
    parent = subprocess.Popen(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            WARM,
            "sleep=600",
            "value=1,2",
            f"hydra.sweep.dir={tmp_path}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # the warm process, two agents, four workers
    wait_until(lambda: len(processes_of(parent.pid)) >= 7, 120, "both points to run")
    interrupt_and_expect_nothing_left(parent, sig, entry_base)


@pytest.mark.slow
def test_module_that_cannot_be_imported_ahead_falls_back_to_cold(tmp_path):
    proc = run(
        [
            sys.executable,
            str(APPS / "guarded_app.py"),
            "-m",
            WARM,
            "value=1,2",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    notices = [line for line in (proc.stdout + proc.stderr).splitlines() if "warm start" in line]
    assert len(notices) == 1
    assert "refuses to be imported ahead" in notices[0] and "running cold" in notices[0]
    for num, value in enumerate([1, 2]):
        launch = read_json(tmp_path / str(num) / "launch.json")
        assert launch["status"] == "COMPLETED" and launch["warm"] is False
        assert f"-> {compact(2.0 * value)}  [" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_single_run_warm_trains_exactly_as_cold(tmp_path):
    """The same 2-rank training, cold and warm: bit-identical final metrics; the warm
    run says its ranks forked from the warm process (a dropped flag, or a fall back to
    cold, would not)."""
    metrics = {}
    for mode in ("cold", "warm"):
        run_dir = tmp_path / mode
        proc = runner_cli(
            *FAST,
            "trainer.nproc_per_node=2",
            f"hydra.launcher.warm={mode == 'warm'}",
            f"hydra.run.dir={run_dir}",
        )
        said = proc.stdout + proc.stderr
        assert ("its ranks fork from a warm process" in said) == (mode == "warm"), said[-2000:]
        assert "running cold" not in said
        metrics[mode] = read_json(run_dir / "metrics.json")
        metrics[mode].pop("elapsed_s")  # wall time: the one thing allowed to differ
    assert metrics["warm"] == metrics["cold"]
    assert metrics["warm"]["world_size"] == 2


def test_cuda_initialised_in_the_warm_process_is_refused(monkeypatch):
    """Simulated: a forked child cannot use CUDA the warm process initialised, so the
    warm process refuses to fork (and the parent falls back or reports it)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(warm.os, "fork", lambda: pytest.fail("forked despite CUDA"))
    with pytest.raises(warm.WarmStartError, match="CUDA was initialised in the warm process"):
        warm._fork_agent({"argv": [], "env": {}, "cwd": str(REPO), "log": None}, [], None)


def test_no_fork_means_cold_with_a_notice(monkeypatch, caplog):
    from runner.launch.starters import warm_starter

    monkeypatch.delattr(warm.os, "fork")
    assert warm.warm_available() is not None
    assert warm_starter(lambda cfg: None, str(REPO)) is None
    assert "has no fork" in caplog.text and "running cold" in caplog.text


def thread_count(cfg) -> tuple[str, int]:
    import torch

    return os.environ["OMP_NUM_THREADS"], torch.get_num_threads()


@pytest.mark.slow
def test_warm_workers_take_their_own_thread_count(tmp_path, caplog):
    """torch in the warm process sized its thread pool before any point's environment
    existed; each forked rank must still get the OMP_NUM_THREADS it was given."""
    from omegaconf import OmegaConf

    from runner.launch.app import launch
    from runner.launch.options import LaunchConfig

    launch_config = LaunchConfig(nproc_per_node=2, env={"OMP_NUM_THREADS": "1"})
    with caplog.at_level(logging.INFO, logger="runner.launch.app"):
        value = launch(OmegaConf.create({}), thread_count, launch_config, tmp_path, warm=True)
    assert value == ("1", 1)
    assert "its ranks fork from a warm process" in caplog.text  # warm, not cold


@pytest.mark.slow
def test_warm_trials_of_the_trainer_start_at_once_and_never_hang_at_exit(tmp_path):
    """Consecutive warm 2-rank trials of the trainer, with torch._dynamo preloaded:
    every one completes (before the trainer dropped its DDP wrapper ahead of
    destroy_process_group, 8 of 30 hung in the gloo group's teardown), and every rank
    of every point reaches its first step (runner.trace marks it)."""
    trace = tmp_path / "trace"
    run(
        [
            sys.executable,
            "-m",
            "runner",
            "-m",
            "trainer.nproc_per_node=2",
            "seed=range(0,12)",
            "data.n_samples=2000",
            "trainer.epochs=1",
            "trainer.progress=off",
            WARM,
            "hydra.launcher.max_parallel=1",
            "hydra.launcher.timeout=30",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        env={"RUNNER_START_TRACE": str(trace)},
    )
    records = [read_json(tmp_path / "sweep" / str(n) / "launch.json") for n in range(12)]
    assert [r["status"] for r in records] == ["COMPLETED"] * 12
    for record in records:
        ranks = sorted((trace / str(record["agent_pid"])).glob("rank*.jsonl"))
        assert [r.name for r in ranks] == ["rank0.jsonl", "rank1.jsonl"]
        for rank in ranks:
            stages = [
                line.split('"stage": "')[1].split('"')[0] for line in rank.read_text().splitlines()
            ]
            assert stages == ["worker", "task", "group", "optimizer", "first_step"]


PRELOADED = """
import sys
from runner.launch import codec, warm
import runner.trainer.task as task

warm._preload(codec.task_reference(task.main))
print(" ".join(m for m in ("torch._dynamo", "runner.trainer.train") if m in sys.modules))
"""


@pytest.mark.slow  # imports torch
def test_the_warm_process_imports_what_a_trial_imports():
    """torch._dynamo (an optimizer's first construction imports it) and the modules the
    task names in RANK_IMPORTS (runner's trainer: its training module)."""
    proc = run([sys.executable, "-c", PRELOADED])
    assert proc.stdout.split() == ["torch._dynamo", "runner.trainer.train"]


SLOW_SWEEPER = '''
import os
import time
from pathlib import Path

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


class CheckingSweeper(Sweeper):
    """Takes its time over its input (until the warm process has imported the task),
    then refuses it."""

    def __init__(self, **params):
        pass

    def setup(self, *, hydra_context, task_function, config):
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments):
        deadline = time.monotonic() + 60
        while not Path(os.environ["WARM_MARK"]).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        raise ValueError("this sweeper refuses its input")
'''

MARKING_APP = """
import os
from pathlib import Path

import hydra

if __name__ != "__main__":  # imported ahead by the warm process
    Path(os.environ["WARM_MARK"]).write_text(str(os.getpid()))


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    return 0


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_the_warm_process_boots_at_set_up_and_goes_with_a_refused_sweep(tmp_path, entry_base):
    """The warm process starts as the launcher is set up, so it imports torch and the
    task while the sweeper checks its input and opens its study (the first point starts
    that much sooner); a sweeper that then refuses its input leaves no process behind."""
    (tmp_path / "hydra_plugins" / "checking_sweeper").mkdir(parents=True)
    (tmp_path / "hydra_plugins" / "checking_sweeper" / "__init__.py").write_text(SLOW_SWEEPER)
    (tmp_path / "app.py").write_text(MARKING_APP)
    mark = tmp_path / "warm_pid"
    proc = run(
        [
            sys.executable,
            str(tmp_path / "app.py"),
            "-m",
            "hydra/launcher=torchrun",
            WARM,
            "hydra.sweeper._target_=hydra_plugins.checking_sweeper.CheckingSweeper",
            "+x=1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        env={"WARM_MARK": str(mark), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
        check=False,
    )
    assert proc.returncode != 0 and "this sweeper refuses its input" in proc.stderr
    assert mark.exists(), "the warm process had not imported the task while the sweeper checked"
    warm_pid = int(mark.read_text())
    wait_until(lambda: not pid_alive(warm_pid), 30, "the warm process to end with its parent")
    assert not entry_dirs(entry_base)


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_task_may_leave_its_ddp_group_to_runner(tmp_path, entry_base, warm):
    """README: a task may return with its DDP model alive and its gloo group not
    destroyed (after an all_gather_object, as a checkpoint save does); runner ends each
    rank without tearing the group down, so no 2-rank point hangs or aborts at its exit
    (pytorch/pytorch#56297)."""
    run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            f"hydra.launcher.warm={str(warm).lower()}",
            "ddp=true",
            "value=1,2,3,4,5,6",
            f"hydra.sweep.dir={tmp_path}",
        ]
    )
    for num in range(6):
        assert read_json(tmp_path / str(num) / "launch.json")["status"] == "COMPLETED"
        assert [r["ddp_grad"] for r in probe_records(tmp_path / str(num))] == [2.0, 2.0]
    assert not entry_dirs(entry_base)
