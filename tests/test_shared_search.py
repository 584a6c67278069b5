"""One search shared by several sweep parents on one PostgreSQL study (a real server
from Debian's package, started by the session's fixture): parents started at the same
moment on a fresh database both run, together exactly ``n_trials``, never the same
trial twice, each keeping its own trials' job dirs."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run, search_app, serving_postgres, started

pytestmark = pytest.mark.slow


def parent(sweep_dir: Path, storage: str, *overrides: str) -> list[str]:
    """A sweep parent's command: a warm search of the search app on ``storage``'s
    study "shared"."""
    return search_app(
        sweep_dir,
        "hydra.launcher.warm=true",
        f"hydra.sweeper.storage={storage}",
        "hydra.sweeper.study_name=shared",
        *overrides,
    )


def shared_study(storage: str):
    import optuna

    return optuna.load_study(study_name="shared", storage=storage)


def test_two_parents_started_at_once_on_a_fresh_database_share_one_search(tmp_path, postgres):
    parents = [
        started(parent(tmp_path / name, postgres, "hydra.sweeper.n_trials=8")) for name in "ab"
    ]
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
    # The report of either parent's sweep dir shows the whole study with --study: the
    # other's trials read from their job dirs, or from the study where this machine
    # cannot see them.
    for hidden in (False, True):
        if hidden:
            (tmp_path / "b").rename(tmp_path / "b-elsewhere")
        report = run([sys.executable, "-m", "runner.report", str(tmp_path / "a"), "--study"])
        table = (tmp_path / "a" / "summary.md").read_text()
        assert table.count("| COMPLETED |") == 8, report.stdout
        others = len([d for d in dirs if Path(d).parent == tmp_path / "b"])
        assert table.count(f"| {socket.gethostname()}:") == others, table  # their parent
    alone = run([sys.executable, "-m", "runner.report", str(tmp_path / "a"), "--no-plots"])
    assert (tmp_path / "a" / "summary.md").read_text().count("| COMPLETED |") == len(
        [d for d in dirs if Path(d).parent == tmp_path / "a"]
    ), alone.stdout


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


# The study's trials as JSON, read where the database can be reached (a namespace).
TRIALS = """
import json, sys
import optuna
study = optuna.load_study(study_name="shared", storage=sys.argv[1])
print(json.dumps([
    {"number": t.number, "state": t.state.name, "params": t.params,
     "user_attrs": t.user_attrs, "start": t.datetime_start.timestamp()}
    for t in study.trials
]))
"""


def check_failover(sweep_dir: Path, storage: str, on=lambda k, argv: argv) -> list[dict]:
    """Parent a (``on`` node 1) is SIGKILLed while its trials run; parent b (node 0),
    still searching, sees their beats stop for the grace period, fails them and runs
    their parameters again, once. Together: exactly n_trials completed, nothing else
    run twice."""
    import json
    import signal
    import time

    from tests.conftest import launch_status, wait_until

    beats = ("hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=3")
    slow = ("epochs=4", "epoch_s=1.0", "hydra.sweeper.n_trials=6", *beats)
    a = b = None
    try:
        a = started(on(1, parent(sweep_dir / "a", storage, *slow)))
        wait_until(
            lambda: launch_status(sweep_dir / "a" / "0") == "RUNNING", 120, "a's first trial"
        )
        b = started(on(0, parent(sweep_dir / "b", storage, *slow)))
        wait_until(
            lambda: any(launch_status(d) == "RUNNING" for d in (sweep_dir / "b").glob("[0-9]*")),
            120,
            "b's first trial",
        )
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=60)
        killed_at = time.time()
        out = b.communicate(timeout=300)[0]
        assert b.returncode == 0, out[-3000:]
    finally:  # a failed wait leaves no parent running
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    read = subprocess.run(
        on(0, [sys.executable, "-c", TRIALS, storage]), capture_output=True, text=True, check=True
    )
    trials = json.loads(read.stdout)
    done = [t for t in trials if t["state"] == "COMPLETE"]
    assert len(done) == 6, trials
    lost = [t for t in trials if t["state"] == "FAIL"]
    assert lost, trials
    for trial in lost:  # each lost trial's parameters ran again, once, by b
        again = [t for t in done if t["params"] == trial["params"]]
        assert len(again) == 1, (trial, trials)
        assert again[0]["user_attrs"]["runner_owner"] != trial["user_attrs"]["runner_owner"]
        assert again[0]["start"] >= killed_at
    # Nothing else ran twice: every completed trial's parameters are its own.
    assert len({tuple(sorted(t["params"].items())) for t in done}) == 6
    return trials


def test_a_parent_killed_mid_trial_has_its_trial_run_again_by_the_other(tmp_path, postgres):
    """Heartbeats, not pids (both parents on this host)."""
    check_failover(tmp_path, postgres)


def test_parents_on_two_hosts_share_one_search_and_fail_over(tmp_path, two_nodes):
    """Two hosts for real: each parent in its own network namespace with its own
    hostname; the study's PostgreSQL on host 0's address, reached by host 1 across
    the veth. Host 1's parent is SIGKILLed mid-trial; host 0's finishes the search."""
    inside = ["ip", "netns", "exec", two_nodes.ns[0]]
    with serving_postgres(two_nodes.addrs[0], inside) as server:
        trials = check_failover(tmp_path, f"{server}/postgres", two_nodes.command)
    hosts = {t["user_attrs"]["runner_owner"].rpartition(":")[0] for t in trials}
    assert hosts == set(two_nodes.hosts)
    for t in trials:  # each host's trials ran in its own sweep dir (a's last, asked
        if "runner_job_dir" not in t["user_attrs"]:  # ahead, may never have started)
            continue
        host = t["user_attrs"]["runner_owner"].rpartition(":")[0]
        name = "b" if host == two_nodes.hosts[0] else "a"
        assert Path(t["user_attrs"]["runner_job_dir"]).parent == tmp_path / name
