"""runner's search sweeper (``hydra/sweeper=search``), its rules in milliseconds:
the real sweeper, launcher plugin and scheduler over fake jobs (tests/fakes.py), with
a real SQLite study. tests/test_search_real.py runs the same rules with torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.distributions import IntDistribution
from optuna.trial import TrialState

from runner.errors import SearchConfigError
from runner.launch.procs import started
from runner.metrics import MetricsReader, keep_epochs, read_metrics
from runner.record import Outcome
from runner.sweep.options import PRUNERS, SAMPLERS, SearchOptions
from runner.sweep.rows import collect
from runner.sweep.space import parse_space
from runner.sweep.study import JOB_DIR, OWNER, OWNER_STARTED, make_pruner, make_sampler
from tests.conftest import PROBE_APP, read_json, search_study
from tests.fakes import FakeJobs, fake_sweep, spans

SEARCH_APP = PROBE_APP.parent / "search_app.py"
SEARCH = ["hydra/sweeper=search", "hydra.launcher.max_parallel=2", "sleep=0.1"]


pytestmark = pytest.mark.usefixtures("fake_jobs")


def search(hydra_sweep_runner, sweep_dir: Path, *overrides: str, app: Path = PROBE_APP) -> None:
    """A search of the probe app (or the search app) over fake jobs."""
    if app == PROBE_APP:
        fake_sweep(hydra_sweep_runner, sweep_dir, *SEARCH, *overrides, app=app, conf="probe_conf")
    else:
        fake_sweep(hydra_sweep_runner, sweep_dir, *overrides, app=app, conf="search_conf")


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow  # several seconds: out of the quick subset
def test_a_trial_starts_the_moment_a_slot_frees(hydra_sweep_runner, tmp_path):
    """While one long trial runs, short ones end and the next start: no batch waits."""
    FakeJobs.sleeps = {0: 1.5}
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=6")
    long_end = spans(0)[1]
    assert all(spans(n)[0] < long_end for n in range(1, 6))
    moments = sorted(e.at for e in FakeJobs.events)
    for moment in moments:
        assert sum(spans(n)[0] <= moment < spans(n)[1] for n in range(6)) <= 2
    trials = search_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    # Each trial's value is its point's result, and its params its point's overrides.
    for t in trials:
        assert t.value == pytest.approx(t.params["value"])
        assert read_json(tmp_path / str(t.number) / "launch.json")["status"] == "COMPLETED"
    results = (tmp_path / "optimization_results.yaml").read_text()
    best = min(trials, key=lambda t: t.value)
    assert f"best_trial: {best.number}" in results
    assert f"best_job_dir: {tmp_path / str(best.number)}" in results


@pytest.mark.slow  # several seconds: out of the quick subset
def test_a_losing_trial_is_pruned_and_its_slot_reused(hydra_sweep_runner, tmp_path):
    # MedianPruner compares a trial's last step with the completed trials' values at
    # that step: the winners' curves span every step the loser reaches, so the loser
    # is pruned at whichever watch first sees both winners told (on a slow machine
    # trial 1 is told after trial 2 has written steps 0 to 2).
    FakeJobs.curve_step = 0.01
    FakeJobs.curves = {0: [1.0] * 30, 1: [1.0] * 30, 2: [9.0] * 30}
    FakeJobs.sleeps = {0: 0.35, 1: 0.35, 2: 3.0}
    search(
        hydra_sweep_runner,
        tmp_path,
        "value=interval(0,1)",
        "hydra.sweeper.n_trials=4",
        "hydra.launcher.max_parallel=1",
        "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 2}",
    )
    states = [t.state for t in search_study(tmp_path).trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED] + [
        TrialState.COMPLETE
    ]
    assert read_json(tmp_path / "2" / "launch.json")["status"] == "PRUNED"
    summary = (tmp_path / "summary.md").read_text()
    (pruned_row,) = [line for line in summary.splitlines() if "PRUNED" in line]
    # Its error says why it was stopped, not every override again.
    assert "pruned at step" in pruned_row and "sweep point" not in pruned_row
    # Trial 3 ran in the slot trial 2 would have held for 3 s.
    assert spans(3)[0] < spans(2)[0] + 1.0
    pruned_at = search_study(tmp_path).trials[2].intermediate_values
    assert pruned_at and all(v == 9.0 for v in pruned_at.values())
    # The completed trials' whole curves reached the study (the pruner compares with them).
    assert search_study(tmp_path).trials[0].intermediate_values == {i: 1.0 for i in range(30)}


@pytest.mark.slow  # several seconds: out of the quick subset
def test_the_same_command_continues_the_search(hydra_sweep_runner, tmp_path):
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=3")
    first = [(t.number, t.params) for t in search_study(tmp_path).trials]
    FakeJobs.reset()
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=5")
    trials = search_study(tmp_path).trials
    assert [(t.number, t.params) for t in trials[:3]] == first
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert sorted({e.point for e in FakeJobs.events}) == [3, 4]  # none ran twice
    # A continued seeded search does not replay the first run's draws.
    assert {t.params["value"] for t in trials[3:]}.isdisjoint(p["value"] for _, p in first)
    # Nothing more to do: no trial starts.
    FakeJobs.reset()
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=5")
    assert FakeJobs.events == [] and len(search_study(tmp_path).trials) == 5


@pytest.mark.parametrize("gone", ["exited", "pid reused"])
def test_trials_of_a_dead_sweep_run_again(hydra_sweep_runner, tmp_path, gone):
    """The orphan's job was running as its parent died: its launch.json says STOPPED
    (parent lost) and names the trial that ran it again; its summary row says so, and
    the summary has one COMPLETED row per trial. A parent is gone when its pid is, or
    when the process that has its pid now started at another time (pid 1 here)."""
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=2")
    study = search_study(tmp_path)
    space = study.trials[0].distributions
    orphan = study.ask(fixed_distributions=space)
    pid, born = (dead_pid(), None) if gone == "exited" else (1, (started(1) or 0) + 1)
    orphan.set_user_attr(OWNER, f"{socket.gethostname()}:{pid}")
    orphan.set_user_attr(OWNER_STARTED, born)
    lost_dir = tmp_path / str(orphan.number)
    orphan.set_user_attr(JOB_DIR, str(lost_dir))  # as the trial's start recorded it
    (lost_dir / ".hydra").mkdir(parents=True)
    (lost_dir / ".hydra" / "overrides.yaml").write_text("- value=0.5\n")
    agent = {"agent_pid": pid, "agent_started": born}
    (lost_dir / "launch.json").write_text(
        json.dumps({"status": "RUNNING", "overrides": ["value=0.5"], **agent})
    )
    elsewhere = study.ask(fixed_distributions=space)  # another machine's: left alone
    elsewhere.set_user_attr(OWNER, "some-other-host:1")
    FakeJobs.reset()
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=3")
    trials = search_study(tmp_path).trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert trials[elsewhere.number].state == TrialState.RUNNING
    rerun = [t for t in trials if t.user_attrs.get("runner_rerun_of") == orphan.number]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE
    assert rerun[0].params == orphan.params
    # Its parent (this process: the search ran in it) by host, pid and start time.
    me = (f"{socket.gethostname()}:{os.getpid()}", started(os.getpid()))
    assert (rerun[0].user_attrs[OWNER], rerun[0].user_attrs[OWNER_STARTED]) == me
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    record = read_json(lost_dir / "launch.json")
    assert record["status"] == "STOPPED" and record["stopped_by"] == "parent lost"
    assert record["rerun_as"] == rerun[0].number
    rows = {r.job_dir: r for r in collect(tmp_path)}
    assert rows[lost_dir].shown_status == "STOPPED (parent lost)"
    assert rows[lost_dir].error == f"run again as #{rerun[0].number}"
    assert [r.status for r in rows.values()].count(Outcome.COMPLETED) == 3


@pytest.mark.parametrize(
    ("shared", "n_trials", "ahead"),
    [(False, 5, True), (True, 9, True), (True, 5, False)],
    ids=["alone", "shared", "shared-last-round"],
)
def test_a_trial_is_asked_ahead_but_in_the_last_round_of_a_shared_study(
    hydra_sweep_runner, tmp_path, shared, n_trials, ahead
):
    """A parent asks for one trial ahead of its free slots (composed while the others
    run), but not in the last round of a search another parent runs too (no more trials
    left than run now): a trial held ahead here is one the other parent's free slot
    could run now (its slots would idle a whole round)."""
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=1")
    if shared:
        study = search_study(tmp_path)
        other = study.ask(fixed_distributions=study.trials[0].distributions)
        other.set_user_attr(OWNER, "some-other-host:1")  # running there
    FakeJobs.reset()
    search(
        hydra_sweep_runner,
        tmp_path,
        "value=interval(0,1)",
        f"hydra.sweeper.n_trials={n_trials}",
        "sleep=0.4",
    )
    mine = [
        t
        for t in search_study(tmp_path).trials
        if t.number > 0 and t.user_attrs.get(OWNER) != "some-other-host:1"
    ]
    assert len(mine) == n_trials - 1
    first_end = min(read_json(tmp_path / str(t.number) / "launch.json")["end_time"] for t in mine)
    third_asked = sorted(t.datetime_start.timestamp() for t in mine)[2]
    # 0.4 s trials on 2 slots: the third is asked at once, ahead, or as the first ends.
    assert (third_asked < first_end - 0.1) is ahead


def test_a_trial_whose_job_was_pruned_as_its_sweep_died_is_told_pruned(
    hydra_sweep_runner, tmp_path
):
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=2")
    study = search_study(tmp_path)
    orphan = study.ask(fixed_distributions=study.trials[0].distributions)
    orphan.set_user_attr(OWNER, f"{socket.gethostname()}:{dead_pid()}")
    job_dir = tmp_path / str(orphan.number)
    orphan.set_user_attr(JOB_DIR, str(job_dir))
    job_dir.mkdir()
    (job_dir / "launch.json").write_text('{"status": "PRUNED", "overrides": []}')
    FakeJobs.reset()
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=3")
    trials = search_study(tmp_path).trials
    assert trials[orphan.number].state == TrialState.PRUNED
    assert len(trials) == 3 and FakeJobs.events == []  # it counts; nothing ran again


def test_a_trial_whose_job_completed_as_its_sweep_died_is_told_not_run_again(
    hydra_sweep_runner, tmp_path
):
    """The parent wrote the trial's result and launch.json (COMPLETED), then died before
    telling the study: the study still says RUNNING. Continuing tells it the stored
    value; its parameters do not run a second time."""
    import cloudpickle

    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=2")
    study = search_study(tmp_path)
    orphan = study.ask(fixed_distributions=study.trials[0].distributions)
    orphan.set_user_attr(OWNER, f"{socket.gethostname()}:{dead_pid()}")
    job_dir = tmp_path / str(orphan.number)
    orphan.set_user_attr(JOB_DIR, str(job_dir))  # as the trial's start recorded it
    job_dir.mkdir()
    (job_dir / "launch.json").write_text('{"status": "COMPLETED", "overrides": []}')
    (job_dir / "return_value.pkl").write_bytes(cloudpickle.dumps(0.25))
    FakeJobs.reset()
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=3")
    trials = search_study(tmp_path).trials
    assert trials[orphan.number].state == TrialState.COMPLETE
    assert trials[orphan.number].value == 0.25
    assert len(trials) == 3 and FakeJobs.events == []  # nothing ran again


def test_enqueued_points_run_first(hydra_sweep_runner, tmp_path):
    search(
        hydra_sweep_runner,
        tmp_path,
        "value=interval(0,1)",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.enqueue=[{value: 0.25},{value: 0.75}]",
    )
    params = [t.params["value"] for t in search_study(tmp_path).trials]
    assert params[:2] == [0.25, 0.75]


@pytest.mark.slow  # several seconds: out of the quick subset
def test_a_timeout_starts_no_trial_after_it(hydra_sweep_runner, tmp_path):
    FakeJobs.sleeps = {0: 4.0, 1: 4.0}
    search(
        hydra_sweep_runner,
        tmp_path,
        "value=interval(0,1)",
        "hydra.sweeper.n_trials=50",
        "hydra.sweeper.timeout=2",
    )
    assert sorted({e.point for e in FakeJobs.events}) == [0, 1]
    states = [t.state for t in search_study(tmp_path).trials]
    assert states.count(TrialState.COMPLETE) == 2
    assert TrialState.RUNNING not in states  # the one asked ahead was given back


@pytest.mark.slow  # several seconds: out of the quick subset
def test_an_interrupted_search_gives_its_trials_back(hydra_sweep_runner, tmp_path):
    """Ctrl-C: the running trials are stopped and failed in the study, and queued to
    run again when the search continues."""
    FakeJobs.sleeps = {0: 5.0, 1: 5.0}
    FakeJobs.interrupt_after = 0.5
    with pytest.raises(SystemExit) as stopped:  # as Ctrl-C ends a sweep: no traceback
        search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=4")
    assert stopped.value.code == 130
    trials = search_study(tmp_path).trials
    assert TrialState.RUNNING not in [t.state for t in trials]
    waiting = [t.system_attrs["fixed_params"] for t in trials if t.state == TrialState.WAITING]
    assert waiting[:2] == [t.params for t in trials[:2]]
    FakeJobs.reset()
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=4")
    trials = search_study(tmp_path).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4


def test_a_batch_launcher_runs_the_search_in_batches(hydra_sweep_runner, tmp_path):
    """Hydra's basic launcher (in this process, running Hydra's test task, which
    returns 100): trials in batches, each told its point's result."""
    search(
        hydra_sweep_runner,
        tmp_path,
        "hydra/launcher=basic",
        "x=interval(0,1)",
        "hydra.sweeper.n_trials=3",
        app=SEARCH_APP,
    )
    trials = search_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert [t.value for t in trials] == [100.0] * 3
    assert [t.user_attrs["runner_job_dir"] for t in trials] == [
        str(tmp_path / str(n)) for n in range(3)
    ]


BAD = [
    (["hydra.sweeper.sampler=tpee"], "hydra.sweeper.sampler='tpee' is invalid"),
    (["hydra.sweeper.pruner=medain"], "hydra.sweeper.pruner='medain' is invalid"),
    (
        ["hydra.sweeper.sampler={_target_: optuna.samplers.NoSuchSampler}"],
        "hydra.sweeper.sampler",
    ),
    (["hydra.sweeper.direction=minimise"], "each direction is minimize or maximize"),
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0 is invalid"),
    (["valeu=interval(0,1)"], "Could not override 'valeu'"),
    (["value=interval(1,0)"], "the interval is empty or reversed"),
    (["value=range(5,1)"], "the range is empty"),
    (["value=tag(log,interval(0,1))"], "a log scale needs low > 0"),
    (["value=0.5"], "has no search space"),
    (
        ["hydra.sweeper.storage=sqlite:////no/such/dir/study.db"],
        "hydra.sweeper.storage='sqlite:////no/such/dir/study.db' is invalid",
    ),
    (
        ["hydra.sweeper.direction=[minimize,maximize]", "hydra.sweeper.pruner=median"],
        "Optuna prunes only single-objective studies",
    ),
    (["hydra.sweeper.enqueue=[{other: 1}]"], "not searched"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[m for _, m in BAD])
def test_bad_input_is_named_before_any_trial(hydra_sweep_runner, tmp_path, overrides, message):
    args = [o for o in overrides]
    if not any(o.startswith(("value=", "valeu=")) for o in args):
        args.append("value=interval(0,1)")
    with pytest.raises(Exception) as error:
        search(hydra_sweep_runner, tmp_path, *args)
    text = str(error.value)
    assert message in text and "Fix:" in text, text
    assert FakeJobs.events == []


@pytest.mark.parametrize(
    "changed,message",
    [
        (["hydra.sweeper.direction=maximize"], "was made with direction ['minimize']"),
        (["value=interval(0,2)"], "it searched other parameters or ranges (value differ)"),
    ],
)
def test_continuing_another_search_is_refused(hydra_sweep_runner, tmp_path, changed, message):
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=2")
    FakeJobs.reset()
    args = [*changed] if changed[0].startswith("value=") else ["value=interval(0,1)", *changed]
    with pytest.raises(SearchConfigError, match="Fix:") as error:
        search(hydra_sweep_runner, tmp_path, *args, "hydra.sweeper.n_trials=4")
    assert message in str(error.value)
    assert FakeJobs.events == []
    assert [t.state for t in search_study(tmp_path).trials] == [TrialState.COMPLETE] * 2


def test_batches_show_the_best_of_the_whole_sweep(hydra_sweep_runner, tmp_path, capsys, caplog):
    """Hydra's batch protocol (asynchronous=false: one launch per batch): the console's
    best is the sweep's, not the batch's, in the sweeper's direction."""
    search(
        hydra_sweep_runner,
        tmp_path,
        "value=interval(0,1)",
        "hydra.sweeper.asynchronous=false",
        "hydra.sweeper.direction=maximize",
        "hydra.launcher.max_parallel=1",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.enqueue=[{value: 0.9},{value: 0.2},{value: 0.5}]",
    )
    out = capsys.readouterr().out
    ends = [line for line in out.splitlines() if " done " in line]
    assert len(ends) == 3 and all("best 0.9 (#0)" in line for line in ends), ends
    assert "trials run in batches of 1" in caplog.text


def test_a_search_whose_every_trial_failed_fails(hydra_sweep_runner, tmp_path):
    with pytest.raises(RuntimeError, match="every trial of this search failed"):
        search(
            hydra_sweep_runner,
            tmp_path,
            "value=interval(0,1)",
            "fail_rank=0",
            "hydra.sweeper.n_trials=2",
        )
    assert [t.state for t in search_study(tmp_path).trials] == [TrialState.FAIL] * 2


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_named_sampler_is_made(name):
    sampler = make_sampler(SearchOptions(sampler=name))
    assert type(sampler).__name__ == SAMPLERS[name].rpartition(".")[2]


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_named_pruner_is_made(name):
    pruner = make_pruner(SearchOptions(pruner=name))
    assert type(pruner).__name__ == PRUNERS[name].rpartition(".")[2]


def test_params_in_the_config_join_the_command_line_which_wins(hydra_sweep_runner, tmp_path):
    search(
        hydra_sweep_runner,
        tmp_path,
        "value=choice(0.25,0.5)",
        "+hydra.sweeper.params.value='interval(5,6)'",
        "+hydra.sweeper.params.text='choice(alpha,beta)'",
        "hydra.sweeper.n_trials=4",
    )
    trials = search_study(tmp_path).trials
    assert {t.params["value"] for t in trials} <= {0.25, 0.5}
    assert {t.params["text"] for t in trials} <= {"alpha", "beta"}
    for t in trials:  # what each point ran with is what the study says
        overrides = (tmp_path / str(t.number) / ".hydra" / "overrides.yaml").read_text()
        assert f"text={t.params['text']}" in overrides


def test_an_integer_range_is_an_integer_distribution():
    space, fixed = parse_space(["a=range(1,7,2)", "b=x"], {})
    assert fixed == ["b=x"]
    assert space[0].distribution == IntDistribution(1, 5, step=2)


def test_the_metrics_reader_takes_whole_new_lines_of_its_key(tmp_path):
    path = tmp_path / "metrics.jsonl"
    reader = MetricsReader(tmp_path, "val")
    assert reader.new_values() == []
    path.write_text('{"epoch": 3, "val": 1.5}\n{"step": 7, "val": 2}\n{"val": 0.5}\n{"val"')
    assert reader.new_values() == [(3, 1.5), (7, 2.0), (2, 0.5)]
    with open(path, "a") as f:
        f.write(': 9, "other": 1}\n{"other": 4}\n')
    assert reader.new_values() == [(3, 9.0)]
    path.write_text('{"epoch": 0, "val": 1.0}\n')  # a resumed run rewrote it
    assert reader.new_values() == [(0, 1.0)]
    # The whole file's reader: the same whole lines, a line being written left out.
    path.write_text('{"epoch": 0, "val": 1.0}\n[1, 2]\nnot json\n{"epoch": 1')
    assert read_metrics(tmp_path) == [{"epoch": 0, "val": 1.0}]
    keep_epochs(tmp_path, 0)
    assert path.read_text() == '{"epoch": 0, "val": 1.0}\n'


def test_a_search_with_all_its_trials_says_how_to_search_further(
    hydra_sweep_runner, tmp_path, capsys
):
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=2")
    FakeJobs.reset()
    search(hydra_sweep_runner, tmp_path, "value=interval(0,1)", "hydra.sweeper.n_trials=2")
    assert FakeJobs.events == []  # nothing left to run
    said = capsys.readouterr().out
    assert "none will run. To search further, raise hydra.sweeper.n_trials" in said
