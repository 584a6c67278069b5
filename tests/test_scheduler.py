"""The scheduler's rules in milliseconds: the real launcher plugin and scheduler over
fake jobs (tests/fakes.py). The same rules are tested with real torchrun processes in
tests/test_launcher.py, tests/test_faults.py and tests/test_warm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.utils import JobStatus

from runner.errors import LauncherConfigError
from runner.launch.devices import DevicePool
from runner.launch.job import LaunchError
from tests import fakes
from tests.conftest import PROBE_APP, read_json
from tests.fakes import FakeJobs, spans

pytestmark = pytest.mark.usefixtures("fake_jobs")


def fake_sweep(hydra_sweep_runner, sweep_dir: Path, *overrides: str):
    """The probe app's sweep over fake jobs; returns the batch's JobReturns."""
    returns = fakes.fake_sweep(
        hydra_sweep_runner, sweep_dir, *overrides, app=PROBE_APP, conf="probe_conf"
    )
    return returns[0]


def test_results_come_back_in_input_order(hydra_sweep_runner, tmp_path):
    FakeJobs.sleeps = {0: 0.8, 1: 0.4, 2: 0.0}
    returns = fake_sweep(
        hydra_sweep_runner, tmp_path, "value=3,2,1", "hydra.launcher.max_parallel=3"
    )
    assert [r.return_value for r in returns] == [3.0, 2.0, 1.0]
    assert [r.overrides[0] for r in returns] == ["value=3", "value=2", "value=1"]
    ends = [spans(n)[1] for n in range(3)]
    assert ends[2] < ends[1] < ends[0]  # they ended in the other order
    assert all(job.cleaned for job in FakeJobs.jobs)


def test_max_parallel_bounds_the_points_at_once(hydra_sweep_runner, tmp_path):
    fake_sweep(
        hydra_sweep_runner,
        tmp_path,
        "value=1,2,3,4,5",
        "sleep=0.2",
        "hydra.launcher.max_parallel=2",
    )
    moments = sorted({e.at for e in FakeJobs.events})
    for moment in moments:
        running = [n for n in range(5) if spans(n)[0] <= moment < spans(n)[1]]
        assert len(running) <= 2


def test_a_failed_point_does_not_stop_those_running(hydra_sweep_runner, tmp_path):
    """The healthy points are still running when the other one fails, and finish."""
    FakeJobs.sleeps = {0: 1.5, 1: 0.02, 2: 1.5}  # room for a slow first compose
    with pytest.raises(LaunchError, match="fake point 1 failed"):
        fake_sweep(
            hydra_sweep_runner, tmp_path, "fail_rank=-1,0,-1", "hydra.launcher.max_parallel=3"
        )
    assert spans(1)[1] < min(spans(0)[1], spans(2)[1])
    statuses = [read_json(tmp_path / str(n) / "launch.json")["status"] for n in range(3)]
    assert statuses == ["COMPLETED", "FAILED", "COMPLETED"]


def test_fail_fast_stops_running_points_and_starts_no_more(hydra_sweep_runner, tmp_path):
    FakeJobs.sleeps = {0: 0.05, 1: 600.0}
    with pytest.raises(LaunchError):
        fake_sweep(
            hydra_sweep_runner,
            tmp_path,
            "fail_rank=0,-1,-1,-1",  # four points; only the first fails
            "hydra.launcher.max_parallel=2",
            "hydra.launcher.fail_fast=true",
        )
    assert read_json(tmp_path / "0" / "launch.json")["status"] == "FAILED"
    # Point 1 would run for 10 minutes: fail_fast stopped it.
    record = read_json(tmp_path / "1" / "launch.json")
    assert (record["status"], record["stopped_by"]) == ("STOPPED", "fail_fast")
    assert "was stopped by fail_fast after a failed point" in record["error"]
    assert FakeJobs.jobs[1].stopped
    assert {e.point for e in FakeJobs.events} == {0, 1}  # 2 and 3 never started


def test_timeout_stops_that_point_only(hydra_sweep_runner, tmp_path):
    FakeJobs.sleeps = {0: 600.0, 1: 1.0}
    with pytest.raises(LaunchError, match="timed out"):
        fake_sweep(
            hydra_sweep_runner,
            tmp_path,
            "value=0.3,30",
            "hydra.launcher.timeout=${value}",  # read per point: 0.3 s, then 30 s
            "hydra.launcher.max_parallel=2",
        )
    assert FakeJobs.jobs[0].timed_out and not FakeJobs.jobs[1].timed_out
    timed_out = read_json(tmp_path / "0" / "launch.json")
    assert (timed_out["status"], timed_out["stopped_by"]) == ("STOPPED", "timeout")
    # The other point was still running when the first was stopped, and completed.
    assert spans(0)[1] < spans(1)[1]
    assert read_json(tmp_path / "1" / "launch.json")["status"] == "COMPLETED"


def test_resume_keeps_completed_points_and_reruns_the_rest(hydra_sweep_runner, tmp_path):
    FakeJobs.failing = {1}
    with pytest.raises(LaunchError):
        fake_sweep(hydra_sweep_runner, tmp_path, "value=1,2,3")
    FakeJobs.reset()
    returns = fake_sweep(hydra_sweep_runner, tmp_path, "value=1,2,3", "hydra.launcher.resume=true")
    assert [r.return_value for r in returns] == [1.0, 2.0, 3.0]
    assert all(r.status == JobStatus.COMPLETED for r in returns)
    assert {e.point for e in FakeJobs.events} == {1}  # only the failed point ran again


@pytest.mark.parametrize("boots", [False, True], ids=["ready", "booting"])
def test_the_first_points_are_composed_while_the_jobs_boot(
    hydra_sweep_runner, tmp_path, monkeypatch, boots
):
    """While a warm process boots, the points that start first are composed, so they
    start one right after another once it is ready; with jobs ready at once, each
    point starts as soon as it is composed."""
    from runner.sweep.scheduler import SweepScheduler

    order = []
    compose = SweepScheduler._compose

    def recording(self, pending, *, ahead=False):
        order.append(f"compose {pending.idx}")
        compose(self, pending, ahead=ahead)

    monkeypatch.setattr(SweepScheduler, "_compose", recording)
    make = FakeJobs.make

    def made(self, config, launch, job_dir):
        order.append(f"start {config.hydra.job.num}")
        return make(self, config, launch, job_dir)

    monkeypatch.setattr(FakeJobs, "make", made)
    FakeJobs.boots = boots
    fake_sweep(hydra_sweep_runner, tmp_path, "value=1,2,3", "hydra.launcher.max_parallel=2")
    first = order[:4]
    if boots:
        assert first == ["compose 0", "compose 1", "start 0", "start 1"]
    else:
        assert first == ["compose 0", "start 0", "compose 1", "start 1"]


def test_a_result_is_stored_before_the_record_says_completed(
    hydra_sweep_runner, tmp_path, monkeypatch
):
    """Resume trusts COMPLETED: a parent killed between the two writes must leave a
    point that runs again, never one marked done without its result."""
    from runner.launch.entry import RETURN_VALUE
    from runner.sweep.points import Point

    stored_first = []
    write_record = Point.write_record

    def checking(self, status, error=None):
        if status == "COMPLETED":
            stored_first.append((self.job_dir / RETURN_VALUE).is_file())
        return write_record(self, status, error)

    monkeypatch.setattr(Point, "write_record", checking)
    fake_sweep(hydra_sweep_runner, tmp_path, "value=1,2")
    assert stored_first == [True, True]
    # The other half: a record that says COMPLETED beside no result runs again.
    (tmp_path / "1" / RETURN_VALUE).unlink()
    FakeJobs.reset()
    returns = fake_sweep(hydra_sweep_runner, tmp_path, "value=1,2", "hydra.launcher.resume=true")
    assert [r.return_value for r in returns] == [1.0, 2.0]
    assert {e.point for e in FakeJobs.events} == {1}


def test_ctrl_c_stops_every_running_point_and_keeps_finished_ones(
    hydra_sweep_runner, tmp_path, capsys
):
    FakeJobs.interrupt_after = 0.6
    FakeJobs.sleeps = {0: 0.0, 1: 600.0, 2: 600.0, 3: 600.0}
    with pytest.raises(SystemExit) as stopped:  # no KeyboardInterrupt traceback
        fake_sweep(hydra_sweep_runner, tmp_path, "value=0,1,2,3", "hydra.launcher.max_parallel=3")
    assert stopped.value.code == 130
    assert read_json(tmp_path / "0" / "launch.json")["status"] == "COMPLETED"
    for num in (1, 2, 3):  # running when Ctrl-C came: point 3 took point 0's slot
        record = read_json(tmp_path / str(num) / "launch.json")
        assert (record["status"], record["stopped_by"]) == ("STOPPED", "Ctrl-C")
        assert "was stopped by Ctrl-C" in record["error"]
    assert [job.stopped for job in FakeJobs.jobs] == [False, True, True, True]
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert sorted(line.split(",")[2] for line in summary[1:]) == [
        "COMPLETED",
        *["STOPPED (Ctrl-C)"] * 3,
    ]
    captured = capsys.readouterr()
    out = captured.out
    assert "The sweep was stopped by Ctrl-C. To go on where it stopped:" in captured.err
    assert f"hydra.sweep.dir={tmp_path} hydra.launcher.resume=true" in captured.err
    assert "#1 stopped value=1" in out and "(by Ctrl-C)" in out
    assert "0 failed, 3 stopped]" in out
    assert all(job.cleaned for job in FakeJobs.jobs)


def test_the_next_point_is_composed_ahead_and_keeps_its_own_job(hydra_sweep_runner, tmp_path):
    """The third point is composed while the first two run; its .hydra/ still says
    it is job 2 with its own overrides and output dir."""
    returns = fake_sweep(
        hydra_sweep_runner, tmp_path, "value=1,2,3", "sleep=0.3", "hydra.launcher.max_parallel=2"
    )
    for num, ret in enumerate(returns):
        hydra_yaml = (Path(ret.working_dir) / ".hydra" / "hydra.yaml").read_text()
        assert f"num: {num}" in hydra_yaml and f"- value={num + 1}" in hydra_yaml
        assert ret.working_dir == str(tmp_path / str(num))


DEVICES = "hydra.launcher.devices='0,1,2,3'"


def test_every_point_gets_one_device_per_rank_sized_by_its_own_world_size(
    hydra_sweep_runner, tmp_path
):
    """World sizes 1, 3, 2, 1 through an app key the launcher interpolates: each point
    holds exactly its own world size in devices, and points that overlap never share."""
    returns = fake_sweep(
        hydra_sweep_runner,
        tmp_path,
        "ranks=1,3,2,1",
        "sleep=0.3",
        DEVICES,
    )
    assert all(r.status == JobStatus.COMPLETED for r in returns)
    starts = {e.point: e for e in FakeJobs.events if e.what == "start"}
    slices = {n: starts[n].devices.split(",") for n in range(4)}
    assert [len(slices[n]) for n in range(4)] == [1, 3, 2, 1]
    for a in range(4):
        for b in range(a + 1, 4):
            (a0, a1), (b0, b1) = spans(a), spans(b)
            if a0 < b1 and b0 < a1:  # ran at the same time
                assert not set(slices[a]) & set(slices[b]), (a, b, slices)
    records = [read_json(tmp_path / str(n) / "launch.json") for n in range(4)]
    assert [r["devices"] for r in records] == [slices[n] for n in range(4)]


def test_points_per_device_lets_that_many_points_share_a_device(hydra_sweep_runner, tmp_path):
    """Two devices, two points each: four one-rank points run at once (max_parallel
    follows), spread before they stack; a two-rank point still gets distinct devices."""
    FakeJobs.sleeps = {n: 0.6 for n in range(6)}
    fake_sweep(
        hydra_sweep_runner,
        tmp_path,
        "ranks=1,1,1,1,2,1",
        "hydra.launcher.devices='0,1'",
        "hydra.launcher.points_per_device=2",
    )
    starts = {e.point: e.devices for e in FakeJobs.events if e.what == "start"}
    assert [starts[n] for n in range(4)] == ["0", "1", "0", "1"]
    assert starts[4] == "0,1"
    moments = sorted({e.at for e in FakeJobs.events})
    for moment in moments:
        running = [n for n in range(6) if spans(n)[0] <= moment < spans(n)[1]]
        assert len(running) <= 4
        for device in "01":
            assert sum(device in starts[n].split(",") for n in running) <= 2


def test_a_point_larger_than_the_pool_fails_naming_key_value_and_fix(hydra_sweep_runner, tmp_path):
    with pytest.raises(LauncherConfigError) as err:
        fake_sweep(hydra_sweep_runner, tmp_path, "ranks=1,8", DEVICES)
    message = str(err.value)
    assert "hydra.launcher.nproc_per_node=8 is invalid: sweep point #1 (ranks=8)" in message
    assert "needs 8 devices" in message
    assert "Fix: hydra.launcher.nproc_per_node=4 or fewer" in message
    assert {e.point for e in FakeJobs.events} == {0}  # nothing of point 1 started
    refused = read_json(tmp_path / "1" / "launch.json")  # a job that failed at once
    assert refused["status"] == "FAILED" and "needs 8 devices" in refused["error"]
    assert "command" not in refused and (tmp_path / "1" / ".hydra").is_dir()
    assert read_json(tmp_path / "0" / "launch.json")["status"] == "COMPLETED"


@pytest.mark.slow  # several seconds: out of the quick subset
def test_a_waiting_large_point_is_not_starved_by_small_ones(hydra_sweep_runner, tmp_path):
    """Four devices, a 4-rank point behind a long 1-rank point, then many short 1-rank
    points: the short ones may fill the devices free while the large one waits, but
    devices freed after it began to wait are held for it, so it starts when the
    long point ends, before the small points behind it are done."""
    FakeJobs.sleeps = {0: 1.5, 1: 0.1, **{n: 0.3 for n in range(2, 10)}}
    fake_sweep(
        hydra_sweep_runner,
        tmp_path,
        "ranks=1,4," + ",".join(["1"] * 8),
        DEVICES,
    )
    large_start = spans(1)[0]
    assert large_start >= spans(0)[1]  # it waited for the long point...
    backfilled = [n for n in range(2, 10) if spans(n)[0] < large_start]
    assert 1 <= len(backfilled) <= 3  # ...while the three free devices were used
    assert all(spans(n)[1] <= large_start for n in backfilled)
    assert large_start < max(spans(n)[0] for n in range(2, 10))  # and did not go last


def test_pool_policy_holds_freed_devices_for_the_waiting_head():
    pool = DevicePool(["0", "1", "2", "3"])
    assert pool.take(1, head=True) == ["0"]
    assert pool.take(4, head=True) is None  # the head waits
    assert pool.take(1, head=False) == ["1"]  # backfill onto a device free now
    pool.give_back(["0"])  # freed while the head waits: held for it
    assert pool.take(1, head=False) == ["2"]
    assert pool.take(1, head=False) == ["3"]
    assert pool.take(1, head=False) is None  # "0" is the head's
    assert not pool.backfillable and pool.free == ["0"]
    pool.give_back(["1", "2", "3"])
    assert pool.take(4, head=True) == ["0", "1", "2", "3"]
    pool.give_back(["0", "1", "2", "3"])
    assert pool.take(2, head=False) == ["0", "1"]  # no head waiting: all free again


def test_cpu_points_split_the_cores_instead_of_devices(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    pool = DevicePool([])
    assert pool.take(3, head=True) == []
    assert pool.environment([], 2, 4, {}) == {"OMP_NUM_THREADS": "2"}
    assert pool.environment([], 2, 4, {"OMP_NUM_THREADS": "7"}) == {}
    assert DevicePool([], split_threads=False).environment([], 2, 4, {}) == {}
    assert pool.environment([], 1, 3, {}) == {"OMP_NUM_THREADS": "5"}  # 16 // 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own: left alone
    assert pool.environment([], 2, 4, {}) == {}


def test_console_lines_show_compact_numbers_and_short_override_lists(
    hydra_sweep_runner, tmp_path, capsys
):
    """Values in the same compact form as the best; a long override list shortened on
    the console, whole in launch.json."""
    fake_sweep(
        hydra_sweep_runner,
        tmp_path,
        "value=0.03642549514770508",
        "+a_rather_long_key_name=1",
        "+another_rather_long_key_name=2",
        "+yet_another_key=3",
    )
    out = capsys.readouterr().out
    (done,) = [line for line in out.splitlines() if "#0 done" in line]
    assert "-> 0.0364255  [" in done and "-> 0.03642549514770508" not in done
    assert "...(+" in done and "yet_another_key" not in done
    record = read_json(tmp_path / "0" / "launch.json")
    assert "+yet_another_key=3" in record["overrides"]


def test_short_labels_and_compact_values():
    from runner.sweep.console import LABEL_WIDTH, compact, short_label

    assert compact(0.03642549514770508) == "0.0364255"
    assert compact([0.5, 2]) == "(0.5, 2)"
    assert compact(True) == "True" and compact("text") == "'text'"
    assert short_label(["a=1", "b=2"]) == "a=1 b=2"
    many = [f"key_number_{n}=value_{n}" for n in range(10)]
    label = short_label(many)
    assert len(label) <= LABEL_WIDTH and label.endswith("...(+8)")
    assert label.startswith("key_number_0=value_0 key_number_1=value_1")
    assert len(short_label(["x=" + "9" * 200])) == LABEL_WIDTH
    # Numbers in labels as the console, the summary and the legends write them.
    from runner.sweep.console import compact_number, compact_override

    assert compact_number("0.0018662266976517971") == "0.00186623"
    assert compact_number("64") == "64" and compact_number("resmlp") == "resmlp"
    assert compact_number("1e-4") == "0.0001" and compact_number("nan") == "nan"
    assert compact_override("optim.lr=0.0018662266976517971") == "optim.lr=0.00186623"
    assert short_label(["optim.lr=0.0018662266976517971", "model=res"]) == (
        "optim.lr=0.00186623 model=res"
    )


def test_the_summary_groups_over_the_seed_key_its_callback_names(hydra_sweep_runner, tmp_path):
    """hydra.callbacks.summary.seed_key: the repeats of each setting are that key's."""
    fake_sweep(
        hydra_sweep_runner,
        tmp_path,
        "value=1,2",
        "+rep=0,1",
        "+hydra.callbacks.summary._target_=runner.sweep.summary.SummaryCallback",
        "+hydra.callbacks.summary.seed_key=rep",
    )
    groups = (tmp_path / "summary_groups.csv").read_text().splitlines()
    assert groups[0].startswith("value,points,completed,return_value_mean")
    assert [line.split(",")[:3] for line in groups[1:]] == [["1", "2", "2"], ["2", "2", "2"]]
    # Written after every batch and again by the callback as the sweep ends: both use it.
    assert "Over seeds (rep)" in (tmp_path / "summary.md").read_text()


def test_the_launchers_direction_orders_the_best_and_the_summary(
    hydra_sweep_runner, tmp_path, capsys
):
    """An app whose sweeper has no direction (and no trainer.objective_mode) says it on
    the launcher: the live line's best, the summary's order and its heading follow."""
    fake_sweep(
        hydra_sweep_runner,
        tmp_path,
        "value=0.2,0.9,0.5",
        "hydra.launcher.direction=maximize",
        "+hydra.callbacks.summary._target_=runner.sweep.summary.SummaryCallback",
    )
    ends = [line for line in capsys.readouterr().out.splitlines() if " done " in line]
    assert "best 0.9 (#1)" in ends[-1], ends
    summary = (tmp_path / "summary.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in summary[1:]] == ["1", "2", "0"]
    assert (
        (tmp_path / "summary.md")
        .read_text()
        .startswith("Best first by return_value (higher is better).")
    )


def test_a_direction_that_is_neither_way_is_refused(hydra_sweep_runner, tmp_path):
    with pytest.raises(LauncherConfigError, match="hydra.launcher.direction=maximize"):
        fake_sweep(hydra_sweep_runner, tmp_path, "value=1", "hydra.launcher.direction=up")


def test_fail_fast_stops_the_sweep_on_a_point_refused_before_it_starts(
    hydra_sweep_runner, tmp_path
):
    """A point refused in the parent (here: more ranks than devices) is a failed point:
    fail_fast stops the one running and starts nothing more, and every point taken
    still has its result (the sweeper gets one per point)."""
    FakeJobs.sleeps = {0: 30.0}
    with pytest.raises(LaunchError, match="was stopped by fail_fast"):
        fake_sweep(
            hydra_sweep_runner,
            tmp_path,
            "ranks=1,8,1",
            DEVICES,
            "hydra.launcher.fail_fast=true",
            "hydra.launcher.max_parallel=2",
        )
    stopped = read_json(tmp_path / "0" / "launch.json")
    assert (stopped["status"], stopped["stopped_by"]) == ("STOPPED", "fail_fast")
    assert read_json(tmp_path / "1" / "launch.json")["status"] == "FAILED"
    assert {e.point for e in FakeJobs.events} == {0}  # point 2 never started


def test_finished_points_hand_hydra_their_configs_from_their_job_dirs(hydra_sweep_runner, tmp_path):
    """A long sweep's parent keeps no finished point's config in memory: the sweeper
    gets each point's JobReturn with ``cfg`` and ``hydra_cfg`` read back from its
    ``.hydra/`` files, the same configs Hydra would hand it."""
    from runner.sweep.hydra_job import StoredReturn

    returns = fake_sweep(hydra_sweep_runner, tmp_path, "value=1,2,3")
    assert all(isinstance(r, StoredReturn) for r in returns)
    assert [r.cfg.value for r in returns] == [1, 2, 3]
    assert [r.hydra_cfg.hydra.job.num for r in returns] == [0, 1, 2]
    assert [r.hydra_cfg.hydra.runtime.output_dir for r in returns] == [
        str(tmp_path / str(n)) for n in range(3)
    ]
    assert [r.return_value for r in returns] == [1.0, 2.0, 3.0]
