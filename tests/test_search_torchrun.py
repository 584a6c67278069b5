"""runner's search sweeper over real torchrun processes: 2-rank trials of runner's
trainer, a Hydra app that is not runner's pruned through its metrics, SIGKILL of the
sweep then the same command, and several objectives. The rules in milliseconds are
in tests/test_search.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from runner.record import Outcome
from runner.sweep.search_run import stored_end
from runner.sweep.study import JOB_DIR, OWNER, RERUN_OF
from tests.conftest import (
    FAST,
    REPO,
    Followed,
    processes_of,
    read_json,
    run,
    runner_cli,
    search_app,
    search_study,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_two_rank_trials_of_the_trainer(tmp_path, warm):
    """Every trial is one 2-rank torchrun; its value and its every epoch reach the study."""
    runner_cli(
        "-m",
        "hydra/sweeper=search",
        "hydra.sweeper.n_trials=3",
        "optim.lr=tag(log, interval(0.001, 0.1))",
        "trainer.nproc_per_node=2",
        f"hydra.launcher.warm={str(warm).lower()}",
        f"hydra.sweep.dir={tmp_path}",
        *FAST,
    )
    study = search_study(tmp_path)
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    # As optuna-dashboard shows it: the objective by name, the space readable.
    assert study.metric_names == ["val_loss"]
    assert study.user_attrs["runner_space"] == {
        "optim.lr": "FloatDistribution(high=0.1, log=True, low=0.001, step=None)"
    }
    for t in trials:
        final = read_json(tmp_path / str(t.number) / "metrics.json")
        assert final["world_size"] == 2
        assert t.value == final["objective_value"]
        lines = (tmp_path / str(t.number) / "metrics.jsonl").read_text().splitlines()
        assert len(t.intermediate_values) == len(lines) == 2
        assert t.params["optim.lr"] == pytest.approx(
            read_json(tmp_path / str(t.number) / "metrics.json")["lr"]
        )
    assert (tmp_path / "optimization_results.yaml").is_file()


def test_a_foreign_app_is_pruned_and_its_slot_reused(tmp_path):
    """Two good trials first, then two that lose from their first epoch: those are
    stopped (their ranks too) and the next trials take their slots at once."""
    run(
        search_app(
            tmp_path,
            "hydra.sweeper.n_trials=5",
            "hydra.launcher.nproc_per_node=2",
            "hydra.launcher.warm=true",
            "epochs=8",
            "epoch_s=0.4",
            "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 2}",
            "hydra.sweeper.enqueue=[{x: 0.3},{x: 0.31},{x: 0.9},{x: -0.9},{x: 0.3}]",
        )
    )
    trials = search_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED] * 2 + [
        TrialState.COMPLETE
    ]
    records = {n: read_json(tmp_path / str(n) / "launch.json") for n in range(5)}
    assert [records[n]["status"] for n in (2, 3)] == ["PRUNED", "PRUNED"]
    assert all(records[n]["nproc_per_node"] == 2 for n in range(5))
    # A pruned trial ended well before its 8 epochs, and trial 4 started in its slot.
    assert records[2]["duration_s"] < 8 * 0.4
    assert records[4]["start_time"] < records[2]["start_time"] + 8 * 0.4
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("PRUNED") == 2
    # Of the two ranks, only rank 0 wrote metrics: one line per epoch.
    lines = (tmp_path / "0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(8))


def test_sigkill_of_the_sweep_then_the_same_command_continues(tmp_path, entry_base):
    """A lost terminal: the sweep parent dies by SIGKILL mid-search (its agents with
    it). The same command continues: completed trials are not rerun (nor one whose job
    ended as the kill came, before the study heard), the interrupted ones are failed
    and their parameters run again, and n_trials counts the whole search."""
    command = search_app(tmp_path, "hydra.sweeper.n_trials=4", "epochs=8", "epoch_s=0.5")
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def epochs_done(number: int) -> int:
        metrics = tmp_path / str(number) / "metrics.jsonl"
        return len(metrics.read_text().splitlines()) if metrics.exists() else 0

    def one_done_one_midway() -> bool:
        """A completed trial, and a running one with at least 2.5 s of its 4 to go (so
        the kill interrupts it, however slow the machine is to deliver it)."""
        try:
            trials = search_study(tmp_path).trials
        except Exception:
            return False
        return any(t.state == TrialState.COMPLETE for t in trials) and any(
            t.state == TrialState.RUNNING and 1 <= epochs_done(t.number) <= 3 for t in trials
        )

    wait_until(one_done_one_midway, 120, "a completed trial while another is midway")
    followed = Followed(parent.pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    followed.wait_gone("the killed sweep's agents to go")
    before = {t.number: t for t in search_study(tmp_path).trials}
    completed = [n for n, t in before.items() if t.state == TrialState.COMPLETE]
    # Trials whose job started (a trial the kill caught inside Optuna's ask, before
    # it had an owner, is left RUNNING: no parent can tell it is not another's).
    orphans = [
        t
        for t in before.values()
        if t.state == TrialState.RUNNING and (tmp_path / str(t.number) / "launch.json").exists()
    ]
    assert orphans
    for orphan in orphans:  # recorded at its start, for a continued search to look in
        assert orphan.user_attrs.get(JOB_DIR) == str(tmp_path / str(orphan.number))
    # An orphan whose job had ended before the kill reached its agent (the study had
    # not heard yet) is told from its job dir; the others were interrupted.
    ended = {t.number: stored_end(str(tmp_path / str(t.number)), 1) for t in orphans}
    interrupted = [t for t in orphans if ended[t.number] is None]
    assert interrupted
    started = time.time()
    run(command)
    trials = search_study(tmp_path).trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    for n in completed:  # kept, not rerun
        assert trials[n].state == TrialState.COMPLETE
        assert read_json(tmp_path / str(n) / "launch.json")["end_time"] < started
    for n, end in ended.items():
        if end is not None:  # told, not rerun
            assert (trials[n].state, trials[n].values) == end
            assert not [t for t in trials if t.user_attrs.get(RERUN_OF) == n]
    for orphan in interrupted:
        assert trials[orphan.number].state == TrialState.FAIL
        again = [t for t in trials if t.user_attrs.get(RERUN_OF) == orphan.number]
        assert len(again) == 1 and again[0].state == TrialState.COMPLETE
        assert again[0].params == orphan.params


# The sweep parent, killed by SIGKILL the moment trial DIE_AT's job has completed
# (its launch.json and value written) and before the study hears of it.
DIES_BEFORE_TELLING = """
import os, runpy, signal, sys
from runner.record import Outcome
from runner.sweep import search

tell = search.Search.tell

def dies(self, number, status, value, job_dir):
    if number == int(os.environ["DIE_AT"]) and status is Outcome.COMPLETED:
        os.kill(os.getpid(), signal.SIGKILL)
    tell(self, number, status, value, job_dir)

search.Search.tell = dies
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_parent_killed_between_a_result_and_the_study_hearing_it(tmp_path):
    """The window the issue found: trial 2 has completed (launch.json COMPLETED, its
    value stored) but the study still has it RUNNING. The same command again tells the
    study its value and never runs it twice; an attempt the kill stopped says STOPPED
    (parent lost) and names its rerun; 6 trials in the study, one job dir each plus one
    per stopped attempt, and one COMPLETED summary row per trial."""
    from runner.sweep.rows import collect

    command = search_app(tmp_path, "hydra.sweeper.n_trials=6", "hydra.launcher.warm=true")
    command += ["epochs=2", "epoch_s=0.3"]
    env = {**os.environ, "DIE_AT": "2"}
    killed = subprocess.run(
        [sys.executable, "-c", DIES_BEFORE_TELLING, *command[1:]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    before = {t.number: t for t in search_study(tmp_path).trials}
    assert before[2].state == TrialState.RUNNING  # the window: its job is done
    assert read_json(tmp_path / "2" / "launch.json")["status"] == "COMPLETED"
    wait_until(lambda: not processes_of(killed_pid(tmp_path)), 30, "the killed sweep's ranks")
    run(command)
    trials = search_study(tmp_path).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6, [(t.number, t.state, t.user_attrs) for t in trials]
    assert trials[2].state == TrialState.COMPLETE  # told from its job, not run again
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6
    # Each attempt the kill caught (asked, maybe started) ran again once.
    stopped = [t for t in trials if t.state == TrialState.FAIL]
    assert stopped, [(t.number, t.state) for t in trials]
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    rows = {r.job_dir: r for r in collect(tmp_path)}
    started = [t for t in stopped if tmp_path / str(t.number) in dirs]
    assert len(dirs) == len(rows) == 6 + len(started)
    assert [r.status for r in rows.values()].count(Outcome.COMPLETED) == 6
    for trial in stopped:
        again = [t for t in done if t.user_attrs.get(RERUN_OF) == trial.number]
        assert len(again) == 1 and again[0].params == trial.params
        if trial in started:
            row = rows[tmp_path / str(trial.number)]
            assert row.shown_status == "STOPPED (parent lost)"
            assert row.error == f"run again as #{again[0].number}"
    assert Outcome.NOT_FINISHED not in [r.status for r in rows.values()]


def killed_pid(sweep_dir: Path) -> int:
    """The parent pid a killed sweep's jobs recorded (their ranks' RUNNER_PARENT_PID)."""
    owners = {t.user_attrs.get(OWNER) for t in search_study(sweep_dir).trials}
    return int(next(o for o in owners if o).rpartition(":")[2])


def test_two_objectives_give_a_pareto_front(tmp_path):
    run(
        search_app(
            tmp_path,
            "objectives=2",
            "hydra.sweeper.direction=[minimize,maximize]",
            "hydra.sweeper.n_trials=4",
            "hydra.launcher.warm=true",
            "epochs=1",
            "epoch_s=0",
        )
    )
    study = search_study(tmp_path)
    front = {t.number for t in study.best_trials}
    assert front and all(len(t.values) == 2 for t in study.trials)
    results = (tmp_path / "optimization_results.yaml").read_text()
    assert "solutions:" in results
    summary = (tmp_path / "summary.md").read_text()
    assert "pareto" in summary
    marked = {int(line.split("|")[1]) for line in summary.splitlines() if "| yes |" in line}
    assert marked == front


def test_a_pruned_trial_of_the_trainer_saves_its_step_and_ends_unforced(tmp_path):
    """runner's trainer listens for stops, so the SIGTERM that prunes its trial is a
    stop request: both ranks save the step they agree on and end on their own. Warm,
    the forked ranks must not then wait for their shutting-down agent to collect a
    value (it never does: SIGKILL after stop_grace, exit -9)."""
    runner_cli(
        "-m",
        "hydra/sweeper=search",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_startup_trials: 2}",
        "hydra.sweeper.enqueue=[{optim.lr: 0.01},{optim.lr: 0.01},{optim.lr: 0.000001}]",
        "optim.lr=tag(log, interval(0.000001, 0.1))",
        "trainer.nproc_per_node=2",
        "trainer.epochs=20",
        "data.n_samples=2000",
        "trainer.progress=lines",
        "hydra.launcher.warm=true",
        "hydra.launcher.max_parallel=1",
        "hydra.launcher.stop_grace=30",
        f"hydra.sweep.dir={tmp_path}",
    )
    trials = search_study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 + [TrialState.PRUNED]
    pruned = read_json(tmp_path / "2" / "launch.json")
    assert pruned["status"] == "PRUNED"
    assert pruned["exit_code"] != -9, pruned  # not killed after stop_grace
    assert (
        "stop requested: saved the checkpoint of step"
        in (tmp_path / "2" / "runner.log").read_text()
    )
