"""One search shared by several sweep parents on one PostgreSQL study (a real server
from Debian's package, started by the session's fixture): parents started at the same
moment on a fresh database both run, together exactly ``n_trials``, never the same
trial twice, each keeping its own trials' job dirs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import APPS, started

pytestmark = pytest.mark.slow

SEARCH_APP = APPS / "search_app.py"


def parent(sweep_dir: Path, storage: str, *overrides: str) -> subprocess.Popen:
    return started(
        [
            sys.executable,
            str(SEARCH_APP),
            "-m",
            "x=interval(-1,1)",
            "hydra.launcher.max_parallel=2",
            "hydra.launcher.warm=true",
            f"hydra.sweep.dir={sweep_dir}",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=shared",
            *overrides,
        ]
    )


def shared_study(storage: str):
    import optuna

    return optuna.load_study(study_name="shared", storage=storage)


def test_two_parents_started_at_once_on_a_fresh_database_share_one_search(tmp_path, postgres):
    parents = [parent(tmp_path / name, postgres, "hydra.sweeper.n_trials=8") for name in "ab"]
    outs = [p.communicate(timeout=300)[0] for p in parents]
    for p, out in zip(parents, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    from optuna.trial import TrialState

    trials = shared_study(postgres).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 8, [(t.number, t.state, t.user_attrs) for t in trials]
    dirs = [t.user_attrs["runner_job_dir"] for t in done]
    assert len(set(dirs)) == 8  # never the same trial twice
    for name in "ab":  # each parent's sweep dir holds its own trials' job dirs
        own = [d for d in dirs if Path(d).parent == tmp_path / name]
        assert own and all(Path(d, "launch.json").is_file() for d in own)
    assert {Path(d).parent for d in dirs} == {tmp_path / "a", tmp_path / "b"}


OPEN_AT_ONCE = """
import sys, time
from runner.sweep.options import SearchOptions
from runner.sweep.study import _storage

start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
_storage(sys.argv[1], SearchOptions())
print("opened")
"""


def test_parents_opening_a_fresh_database_at_the_same_moment_all_open_it(postgres):
    """Each makes Optuna's tables if they are missing: all but one lose that race
    (a duplicate key in PostgreSQL's catalog), wait and find the tables made."""
    import time

    start = time.time() + 3.0
    openers = [
        started([sys.executable, "-c", OPEN_AT_ONCE, postgres, str(start)]) for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0] for p in openers]
    for p, out in zip(openers, outs, strict=True):
        assert p.returncode == 0 and "opened" in out, out[-3000:]


def test_a_parent_killed_mid_trial_has_its_trial_run_again_by_the_other(tmp_path, postgres):
    """Heartbeats, not pids: parent a is SIGKILLed while its trials run; parent b,
    still searching, sees their beats stop for the grace period, fails them and runs
    their parameters again, once. Together: exactly n_trials completed."""
    import signal
    import time

    from optuna.trial import TrialState

    from tests.conftest import launch_status, wait_until

    beats = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")
    slow = ("epochs=4", "epoch_s=1.0", "hydra.sweeper.n_trials=6", *beats)
    a = parent(tmp_path / "a", postgres, *slow)
    wait_until(lambda: launch_status(tmp_path / "a" / "0") == "RUNNING", 120, "a's first trial")
    b = parent(tmp_path / "b", postgres, *slow)
    wait_until(
        lambda: any(launch_status(d) == "RUNNING" for d in (tmp_path / "b").glob("[0-9]*")),
        120,
        "b's first trial",
    )
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=60)
    killed_at = time.time()
    out = b.communicate(timeout=300)[0]
    assert b.returncode == 0, out[-3000:]
    trials = shared_study(postgres).trials
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6, [(t.number, t.state, t.user_attrs) for t in trials]
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert lost, [(t.number, t.state, t.user_attrs, t.system_attrs) for t in trials]
    for trial in lost:  # each lost trial's parameters ran again, once, by b
        again = [t for t in done if t.params == trial.params]
        assert len(again) == 1, (trial.number, trial.params)
        assert again[0].user_attrs["runner_owner"] != trial.user_attrs["runner_owner"]
        assert again[0].datetime_start.timestamp() >= killed_at
    # Nothing else ran twice: every completed trial's parameters are its own.
    assert len({tuple(sorted(t.params.items())) for t in done}) == 6
