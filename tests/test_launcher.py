"""``hydra/launcher=torchrun``: Hydra's own launcher conformance suites, then what a
sweep user sees: parallel points on distinct ports, results in order, failures,
timeouts, signals, Optuna, and an app that is not runner's."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)
from omegaconf import OmegaConf

from runner.launch.job import LaunchError
from tests.conftest import (
    FAST,
    PROBE_APP,
    entry_dirs,
    launch_status,
    probe_records,
    read_json,
    run,
    runner_cli,
)

pytestmark = pytest.mark.slow


WARM = "hydra.launcher.warm=true"


@pytest.mark.parametrize(
    "launcher_name, overrides", [("torchrun", []), ("torchrun", [WARM])], ids=["cold", "warm"]
)
class TestTorchrunLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [
        ("torchrun", ["hydra.sweeper.max_batch_size=2", "hydra.launcher.max_parallel=2"]),
        ("torchrun", ["hydra.sweeper.max_batch_size=2", "hydra.launcher.max_parallel=2", WARM]),
    ],
    ids=["cold", "warm"],
)
class TestTorchrunLauncherBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/launcher=torchrun"]), ({}, ["-m", "hydra/launcher=torchrun", WARM])],
    ids=["cold", "warm"],
)
class TestTorchrunLauncherIntegration(IntegrationTestSuite):
    pass


# --------------------------------------------------------------------------- the probe app


@pytest.fixture(scope="module", params=[False, True], ids=["cold", "warm"])
def probe_sweep(request, tmp_path_factory):
    """The probe app, run as a script from another cwd: three 2-rank points at once
    (each waits at a gate until all three have started), with chdir, a custom subdir
    and env_set; every rank records what it sees. Cold, and warm (agents and workers
    forked from a warm process)."""
    work = tmp_path_factory.mktemp("probe_cwd")
    modules = work / "parent_modules.json"
    (work / "gate").mkdir()
    proc = run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=1,2,3",
            f"gate={work / 'gate'}",
            "gate_points=3",
            "hydra.sweep.dir=sweep",
            "hydra.sweep.subdir=point_${hydra.job.num}",
            "hydra.job.chdir=true",
            "+hydra.job.env_set.PROBE_ENV=from_env_set",
            "hydra.launcher.max_parallel=3",
            *([WARM] if request.param else []),
        ],
        cwd=work,
        env={"PROBE_PARENT_MODULES": str(modules), "PROBE_LOADS": str(work / "loads.txt")},
    )
    return work, work / "sweep", proc, read_json(modules)


def test_sweep_parent_never_imports_torch(probe_sweep):
    *_, modules = probe_sweep
    assert "hydra" in modules and "torch" not in modules


def test_ranks_load_the_script_once_and_warm_ones_not_at_all(probe_sweep):
    """The task lives in the script: a rank loads it as ``__mp_main__`` (its
    ``__main__`` block does not run); in warm mode only the warm process loads it,
    ahead of every point, and the forked ranks find it loaded (an import-counting
    probe: the script notes each load)."""
    work, sweep, proc, _ = probe_sweep
    warm = WARM in proc.args
    loads = [line.split() for line in (work / "loads.txt").read_text().splitlines()]
    by_pid: dict[int, list[str]] = {}
    for pid, name in loads:
        by_pid.setdefault(int(pid), []).append(name)
    assert list(by_pid.values()).count(["__main__"]) == 1  # the parent, as a script
    rank_pids = {r["pid"] for n in range(3) for r in probe_records(sweep / f"point_{n}")}
    assert len(rank_pids) == 6
    loaded_ahead = {pid for pid, names in by_pid.items() if names == ["__mp_main__"]}
    if warm:
        assert len(loaded_ahead) == 1 and not loaded_ahead & rank_pids, by_pid
    else:
        assert loaded_ahead == rank_pids, by_pid
    assert len(loads) == len(by_pid)  # no process loaded it twice


def test_every_rank_sees_the_parents_hydra_state(probe_sweep):
    work, sweep, _, _ = probe_sweep
    for num in range(3):
        job_dir = sweep / f"point_{num}"
        parent = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra
        parent_cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        records = probe_records(job_dir)
        assert [r["rank"] for r in records] == [0, 1]
        assert len({r["config_hash"] for r in records}) == 1
        assert len({r["config"]["stamp"] for r in records}) == 1
        for r in records:
            assert r["world_size"] == 2
            assert r["job_name"] == parent.job.name == "probe_app"
            assert r["job_num"] == num == parent.job.num
            assert list(parent.overrides.task) == [
                f"value={num + 1}",
                f"gate={work / 'gate'}",
                "gate_points=3",
            ]
            assert r["overrides"] == list(parent.overrides.task)
            assert r["output_dir"] == parent.runtime.output_dir == str(job_dir.resolve())
            assert r["choices"] == dict(parent.runtime.choices)
            assert r["cwd"] == str(job_dir.resolve())  # hydra.job.chdir=true
            assert r["original_cwd"] == str(work.resolve())
            assert r["probe_env"] == "from_env_set"
            assert r["config"]["value"] == parent_cfg.value
            assert r["master_addr"] == "127.0.0.1"
        assert (job_dir / "probe_app.log").exists() and (job_dir / "probe_app_rank1.log").exists()


def test_points_overlap_on_distinct_ports(probe_sweep):
    _, sweep, _, _ = probe_sweep
    launches = [read_json(sweep / f"point_{n}" / "launch.json") for n in range(3)]
    ports = [record["port"] for record in launches]
    assert len(set(ports)) == 3
    for n, record in enumerate(launches):
        assert {r["master_port"] for r in probe_records(sweep / f"point_{n}")} == {
            str(record["port"])
        }
        assert record["exit_code"] == 0 and record["status"] == "COMPLETED"
        assert record["command"][:3] == [sys.executable, "-m", "runner.launch.agent"]
    spans = [
        (
            min(r["start"] for r in probe_records(sweep / f"point_{n}")),
            max(r["end"] for r in probe_records(sweep / f"point_{n}")),
        )
        for n in range(3)
    ]
    # Each point's ranks waited at the gate for all three: no point can end before
    # the last one started unless they ran at once.
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    # CPU threads are shared out between concurrent ranks.
    assert {
        r["omp_num_threads"] for n in range(3) for r in probe_records(sweep / f"point_{n}")
    } == {"1"}


def test_console_shows_points_not_rank_output(probe_sweep):
    _, _, proc, _ = probe_sweep
    console = proc.stdout + proc.stderr
    for num in range(3):
        assert f"#{num} start" in console and f"#{num} done" in console
    assert "[3/3 ended: 3 done, 0 running, 0 failed]" in console
    assert "probe_rank" not in console and "[default0]" not in console


# --------------------------------------------------------------------------- in-process sweeps


def sweep_probe(hydra_sweep_runner, tmp_path, *overrides, task=None):
    from tests.apps.probe_app import probe

    return hydra_sweep_runner(
        calling_file=str(PROBE_APP),
        calling_module=None,
        task_function=task or probe,
        config_path="probe_conf",
        config_name="config",
        overrides=list(overrides),
        temp_dir=str(tmp_path),
    )


def test_env_log_dir_and_redirects_reach_the_ranks(hydra_sweep_runner, tmp_path):
    """``env`` is every rank's environment; ``log_dir`` holds the ranks' output files,
    and ``redirects=1`` sends only stdout there (stderr stays with the agent)."""
    logs = tmp_path / "logs"
    with sweep_probe(
        hydra_sweep_runner,
        tmp_path / "sweep",
        "say=hello",
        "+hydra.launcher.env.PROBE_ENV=from_launcher",
        f"hydra.launcher.log_dir={logs}",
        "hydra.launcher.redirects=1",
        "hydra.launcher.tee=0",
    ):  # the sweep dir goes when the block ends
        records = probe_records(tmp_path / "sweep" / "0")
        default_log_dir = (tmp_path / "sweep" / "0" / "torchrun").exists()
    assert {r["probe_env"] for r in records} == {"from_launcher"}
    outs = {p.parent.name: p.read_text() for p in logs.glob("*/attempt_0/*/stdout.log")}
    assert outs == {"0": "hello from rank 0\n", "1": "hello from rank 1\n"}
    errs = "".join(p.read_text() for p in logs.glob("*/attempt_0/*/stderr.log"))
    assert "hello" not in errs
    assert not default_log_dir  # <job dir>/torchrun


def last_first(cfg) -> float:
    """Point N of three ends only after the sweep has recorded point N + 1 as ended:
    the first point ends last, whatever the machine's speed."""
    from tests.apps.probe_app import wait_for

    hc = HydraConfig.get()
    after = Path(hc.sweep.dir) / str(hc.job.num + 1)
    if hc.job.num < 2:
        wait_for(lambda: launch_status(after) == "COMPLETED", f"point {after.name} to end")
    return float(cfg.value)


def test_results_come_back_in_input_order(hydra_sweep_runner, tmp_path):
    with sweep_probe(
        hydra_sweep_runner,
        tmp_path,
        "value=4,2,0",
        "hydra.launcher.max_parallel=3",
        "hydra.launcher.nproc_per_node=1",
        task=last_first,
    ) as sweep:
        returns = sweep.returns[0]
        ends = [read_json(Path(r.working_dir) / "launch.json")["end_time"] for r in returns]
    assert [r.return_value for r in returns] == [4.0, 2.0, 0.0]
    assert [r.overrides for r in returns] == [["value=4"], ["value=2"], ["value=0"]]
    assert ends[2] < ends[1] < ends[0]


def test_concurrent_points_get_disjoint_device_slices(hydra_sweep_runner, tmp_path):
    """With devices to share, each running point gets its own CUDA_VISIBLE_DEVICES slice
    (on a CPU machine the variable is set all the same, and torch ignores it). The
    first two wait at a gate for each other, so they run at once."""
    gate = tmp_path / "gate"
    gate.mkdir()
    with sweep_probe(
        hydra_sweep_runner,
        tmp_path,
        "value=1,2,3",
        f"gate={gate}",
        "gate_points=2",
        "hydra.launcher.devices='0,1,2,3'",
        "hydra.launcher.max_parallel=4",
    ) as sweep:
        slices = [
            {r["cuda_visible_devices"] for r in probe_records(Path(ret.working_dir))}
            for ret in sweep.returns[0]
        ]
        launches = [read_json(Path(r.working_dir) / "launch.json") for r in sweep.returns[0]]
        # The third point was composed while the first two ran: its .hydra/ and its
        # ranks still see its own job, not the point composed or started before it.
        for num, ret in enumerate(sweep.returns[0]):
            saved = OmegaConf.load(Path(ret.working_dir) / ".hydra" / "hydra.yaml").hydra
            assert saved.job.num == num and saved.runtime.output_dir == ret.working_dir
            assert list(saved.overrides.task) == [
                f"value={num + 1}",
                f"gate={gate}",
                "gate_points=2",
            ]
            assert {r["job_num"] for r in probe_records(Path(ret.working_dir))} == {num}
    assert all(len(s) == 1 for s in slices)
    first, second, third = (s.pop() for s in slices)
    assert {first, second} == {"0,1", "2,3"}  # two fit at once, disjoint
    assert third in ("0,1", "2,3")
    assert launches[2]["start_time"] >= min(launches[0]["end_time"], launches[1]["end_time"])


def test_points_of_different_world_sizes_get_one_device_per_rank(hydra_sweep_runner, tmp_path):
    """World sizes 1, 3, 2, 1 through the app key the launcher reads (``ranks``), on
    four named devices: every rank of a point sees the point's own slice, one device
    per local rank, and points that run at the same time never share a device (the
    first two wait at a gate for each other)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    with sweep_probe(
        hydra_sweep_runner,
        tmp_path,
        "ranks=1,3,2,1",
        f"gate={gate}",
        "gate_points=2",
        "hydra.launcher.devices='0,1,2,3'",
    ) as sweep:
        records = [probe_records(Path(ret.working_dir)) for ret in sweep.returns[0]]
        launches = [read_json(Path(r.working_dir) / "launch.json") for r in sweep.returns[0]]
    slices = []
    for point, ranks in zip(records, [1, 3, 2, 1], strict=True):
        assert len(point) == ranks and {r["world_size"] for r in point} == {ranks}
        seen = {r["cuda_visible_devices"] for r in point}
        assert len(seen) == 1  # every rank of the point sees the same slice
        slices.append(set(seen.pop().split(",")))
        assert len(slices[-1]) == ranks
    assert [set(record["devices"]) for record in launches] == slices
    spans = [(min(r["start"] for r in p), max(r["end"] for r in p)) for p in records]
    overlapped = 0
    for a in range(4):
        for b in range(a + 1, 4):
            if spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]:
                overlapped += 1
                assert not slices[a] & slices[b], (a, b, slices)
    assert overlapped >= 1  # 1 and 3 ranks ran together (the gate), then likely 2 and 1


@pytest.mark.parametrize("mode", [[], [WARM]], ids=["cold", "warm"])
def test_failed_point_does_not_stop_the_others(hydra_sweep_runner, tmp_path, entry_base, mode):
    """The healthy points are running when the other fails (they wait at a gate until
    the sweep has recorded the failure), and then complete; like Hydra's basic
    launcher, the sweep raises the failure after the batch ends."""
    gate = tmp_path / "gate"
    gate.mkdir()
    sweep = sweep_probe(
        hydra_sweep_runner,
        tmp_path / "sweep",
        "fail_rank=-1,1,-1",
        f"gate={gate}",
        "gate_points=3",
        "gate_failure=true",
        "hydra.launcher.max_parallel=3",
        *mode,
    )
    with pytest.raises(LaunchError, match="ValueError: probe failure on rank 1") as err:
        with sweep:
            pass
    assert err.value.rank == 1
    sweep_dir = tmp_path / "sweep"
    statuses = [read_json(sweep_dir / str(n) / "launch.json")["status"] for n in range(3)]
    assert statuses == ["COMPLETED", "FAILED", "COMPLETED"]
    assert read_json(sweep_dir / "1" / "launch.json")["exit_code"] == 1
    assert [len(probe_records(sweep_dir / str(n))) for n in (0, 2)] == [2, 2]
    # The failing rank wrote its record; its partner may have been stopped before.
    assert 1 in [r["rank"] for r in probe_records(sweep_dir / "1")]
    assert entry_dirs(entry_base) == []


@pytest.mark.parametrize("mode", [[], [WARM]], ids=["cold", "warm"])
def test_fail_fast_stops_at_first_failure(hydra_sweep_runner, tmp_path, mode):
    """Point 0 fails once points 0 and 1 run; point 1 would then sleep two minutes and
    complete, but fail_fast stops it, and point 2 never starts."""
    gate = tmp_path / "gate"
    gate.mkdir()
    sweep = sweep_probe(
        hydra_sweep_runner,
        tmp_path / "sweep",
        "fail_rank=0,-1,-1",
        "sleep=120",
        f"gate={gate}",
        "gate_points=2",
        "gate_failure=true",
        "hydra.launcher.max_parallel=2",
        "hydra.launcher.fail_fast=true",
        *mode,
    )
    with pytest.raises(LaunchError, match="probe failure on rank 0"):
        with sweep:
            pass
    sweep_dir = tmp_path / "sweep"
    assert read_json(sweep_dir / "0" / "launch.json")["status"] == "FAILED"
    stopped = read_json(sweep_dir / "1" / "launch.json")
    assert (stopped["status"], stopped["stopped_by"]) == ("STOPPED", "fail_fast")
    assert not (sweep_dir / "2").exists()


@pytest.mark.parametrize("mode", [[], [WARM]], ids=["cold", "warm"])
def test_agents_see_ended_ranks_at_once_not_at_their_next_look(tmp_path, mode):
    """torchrun's agent sleeps ``monitor_interval`` before each look at its workers
    (and its tee tailers stop only after their next 0.1 s poll). runner's agent wakes
    as soon as a rank hands back its value, ends or fails: with looks ten minutes
    apart, a point that succeeds and a point whose rank 0 fails both end with their
    ranks, and the tee'd copy of rank 0's output is whole."""
    proc = run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            f"hydra.sweep.dir={tmp_path}",
            "fail_rank=-1,0",
            "hydra.launcher.monitor_interval=600",
            "hydra.launcher.max_parallel=2",
            *mode,
        ],
        check=False,
        timeout=150,  # far under one look: stock torchrun's agent would still be asleep
    )
    assert proc.returncode != 0, proc.stderr[-3000:]
    launches = [read_json(tmp_path / str(n) / "launch.json") for n in (0, 1)]
    assert [launch["status"] for launch in launches] == ["COMPLETED", "FAILED"]
    tee = (tmp_path / "1" / "torchrun.log").read_text()
    assert "ValueError: probe failure on rank 0" in tee


# --------------------------------------------------------------------------- the CLI


def test_sweep_failure_exits_nonzero_like_basic_launcher(tmp_path):
    proc = run(
        [sys.executable, str(PROBE_APP), "-m", "fail_rank=-1,0", f"hydra.sweep.dir={tmp_path}"],
        check=False,
    )
    assert proc.returncode != 0
    assert "ValueError: probe failure on rank 0" in proc.stderr
    assert (tmp_path / "0" / "probe_rank0.json").exists()


def test_sweep_resume_keeps_completed_points(tmp_path):
    sweep = [
        sys.executable,
        str(PROBE_APP),
        "-m",
        "fail_once=false,true,false",
        f"hydra.sweep.dir={tmp_path}",
        "hydra.launcher.nproc_per_node=1",
    ]
    first = run(sweep, check=False)
    assert first.returncode != 0 and "probe fails once" in first.stderr
    assert read_json(tmp_path / "1" / "launch.json")["status"] == "FAILED"
    # As a parent killed while point 2 ran leaves its record: RUNNING, its agent gone.
    record = read_json(tmp_path / "2" / "launch.json")
    record.update(status="RUNNING", end_time=None, duration_s=None, exit_code=None)
    (tmp_path / "2" / "launch.json").write_text(json.dumps(record))
    before = {n: probe_records(tmp_path / str(n))[0]["start"] for n in range(3)}

    second = run([*sweep, "hydra.launcher.resume=true"])
    console = second.stdout + second.stderr
    assert "#0 kept" in console and "#1 start" in console and "#2 start" in console
    after = {n: probe_records(tmp_path / str(n))[0]["start"] for n in range(3)}
    assert after[0] == before[0]  # not run again
    assert after[1] > before[1] and after[2] > before[2]
    assert [read_json(tmp_path / str(n) / "launch.json")["status"] for n in range(3)] == [
        "COMPLETED"
    ] * 3


def test_resumed_points_reach_the_sweeper_as_if_run_now(hydra_sweep_runner, tmp_path):
    overrides = ("value=3,4", "hydra.launcher.nproc_per_node=1")
    sweep_dir, kept = tmp_path / "sweep", tmp_path / "kept"
    with sweep_probe(hydra_sweep_runner, sweep_dir, *overrides) as sweep:
        first = [r.return_value for r in sweep.returns[0]]
        started = [probe_records(Path(r.working_dir))[0]["start"] for r in sweep.returns[0]]
        shutil.copytree(sweep_dir, kept)  # the runner removes its temp dir on exit
    shutil.copytree(kept, sweep_dir)
    with sweep_probe(
        hydra_sweep_runner, sweep_dir, *overrides, "hydra.launcher.resume=true"
    ) as sweep:
        again = sweep.returns[0]
        assert [r.return_value for r in again] == first == [3.0, 4.0]
        assert [r.overrides for r in again] == [["value=3"], ["value=4"]]
        assert [probe_records(Path(r.working_dir))[0]["start"] for r in again] == started


@pytest.mark.parametrize(
    "override, message",
    [
        ("hydra.launcher.max_parallel=0", "hydra.launcher.max_parallel=0 is invalid"),
        ("hydra.launcher.nproc_per_node=0", "hydra.launcher.nproc_per_node=0 is invalid"),
        ("hydra.launcher.timeout=-5", "hydra.launcher.timeout=-5"),
        ("hydra.launcher.devices=gpu0", "hydra.launcher.devices='gpu0' is invalid"),
        ("hydra.launcher.procs=2", "Key 'procs' not in 'TorchrunLauncherConf'"),
        ("+hydra.launcher.procs=2", "unknown key(s) ['procs']"),
        ("hydra.launcher.max_parallel=many", "hydra.launcher.max_parallel"),
        (
            "hydra.launcher.devices='0'",  # the probe's points have 2 ranks each
            "hydra.launcher.nproc_per_node=2 is invalid: every point needs 2 devices",
        ),
    ],
)
def test_bad_launcher_config_fails_before_anything_starts(tmp_path, override, message):
    proc = run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=1,2",
            override,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not list(tmp_path.glob("sweep/*/probe_rank*.json"))


def test_world_size_is_read_per_point(tmp_path):
    runner_cli("-m", "trainer.nproc_per_node=1,2", f"hydra.sweep.dir={tmp_path}", *FAST)
    assert [read_json(tmp_path / str(n) / "metrics.json")["world_size"] for n in (0, 1)] == [1, 2]
    assert [read_json(tmp_path / str(n) / "launch.json")["nproc_per_node"] for n in (0, 1)] == [
        1,
        2,
    ]


def test_runner_sweep_default_launcher_is_torchrun():
    out = runner_cli("--cfg", "hydra").stdout
    assert "TorchrunLauncher" in out and "nproc_per_node: ${trainer.nproc_per_node}" in out
