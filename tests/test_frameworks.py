"""Real training code under the launcher: tasks that start processes of their own,
Lightning's DDP, a task whose ranks never form a process group, and a foreign app
running N ranks without ``-m``."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from tests.conftest import APPS, REPO, entry_dirs, probe_records, read_json, run

WARM = "hydra.launcher.warm=true"


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_a_script_task_may_start_spawn_and_forkserver_children(tmp_path, entry_base, warm):
    """A DataLoader with "spawn" workers over a dataset class of the script, and
    "spawn" and "forkserver" children whose target the script defines: each child
    loads the script (as under ``python spawn_app.py``), finds what it unpickles, and
    does not start the task again."""
    sweep = tmp_path / "sweep"
    proc = run(
        [
            sys.executable,
            str(APPS / "spawn_app.py"),
            "-m",
            "value=1",
            f"hydra.sweep.dir={sweep}",
            *([WARM] if warm else []),
        ],
        cwd=tmp_path,
    )
    record = read_json(sweep / "0" / "launch.json")
    assert record["status"] == "COMPLETED" and record["warm"] == warm
    assert "-> 15" in proc.stdout + proc.stderr  # 0 + 1 + 4 + 9 from the workers, + 1
    assert entry_dirs(entry_base) == []


# ------------------------------------------------------------------ a script's task by name

GUARDED = """
import functools, json
from runner.launch.codec import task_reference

inner = []


def decorator(function):  # what @hydra.main does: a wrapper that knows __wrapped__
    inner.append(function)

    @functools.wraps(function)
    def wrapper(cfg):
        return function(cfg)

    return wrapper


def plain(cfg):
    return cfg


@decorator
def task(cfg):
    return cfg


if __name__ == "__main__":
    print(json.dumps([task_reference(plain), task_reference(inner[0])]))
"""

UNGUARDED = """
import json
from runner.launch.codec import task_reference

def task(cfg):
    return cfg

print(json.dumps(task_reference(task)))
"""


def test_a_script_task_goes_by_name_only_when_the_script_is_guarded(tmp_path):
    """Ranks load the script only if that starts nothing: the app must have started
    from inside ``if __name__ == "__main__":``; else the task travels by value."""
    (tmp_path / "guarded.py").write_text(GUARDED)
    (tmp_path / "unguarded.py").write_text(UNGUARDED)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "app.py").write_text(GUARDED)
    env = {"PYTHONPATH": f"{REPO}:{tmp_path}"}
    guarded = json.loads(run([sys.executable, "guarded.py"], cwd=tmp_path, env=env).stdout)
    script = str(tmp_path / "guarded.py")
    assert guarded == [
        {"script": script, "source": GUARDED, "qualname": "plain", "unwrap": 0},
        {"script": script, "source": GUARDED, "qualname": "task", "unwrap": 1},
    ]
    as_module = json.loads(run([sys.executable, "-m", "pkg.app"], cwd=tmp_path, env=env).stdout)
    assert as_module[1] == {"module": "pkg.app", "qualname": "task", "unwrap": 1}
    unguarded = run([sys.executable, "unguarded.py"], cwd=tmp_path, env=env).stdout
    assert json.loads(unguarded) is None


EDITED_MID_SWEEP = """
from pathlib import Path

import hydra

VALUE = 1


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg) -> float:
    if cfg.edit:  # the user edits the script while the sweep runs
        path = Path(__file__)
        path.write_text(path.read_text().replace("VALUE = 1", "VALUE = 2"))
    return float(VALUE)


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_a_script_edited_mid_sweep_does_not_change_the_points_after(tmp_path):
    """Every point runs the script as it was when the sweep began: point 0 edits it on
    disk, point 1 (started after) still runs the text the sweep started with."""
    script = tmp_path / "app.py"
    script.write_text(EDITED_MID_SWEEP)
    sweep = tmp_path / "sweep"
    proc = run(
        [
            sys.executable,
            str(script),
            "-m",
            "+edit=true,false",
            "hydra/launcher=torchrun",
            "hydra.launcher.max_parallel=1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
    )
    assert "VALUE = 2" in script.read_text()  # point 0 did edit it
    said = proc.stdout + proc.stderr
    assert "#0 done" in said and "#1 done" in said
    assert [line for line in said.splitlines() if "#1 done" in line][0].count("-> 1  ") == 1


# --------------------------------------------------------------------------- Lightning

SUMMARY = "+hydra.callbacks.summary._target_=runner.sweep.summary.SummaryCallback"
RECORD = "+hydra.callbacks.record._target_=tests.apps.callbacks.RecordReturn"


def lightning_sweep(tmp_path, *overrides: str):
    """The Lightning app (tests/apps/lightning_app.py), swept under
    ``hydra/launcher=torchrun``; the parent's Hydra writes each point's return value."""
    returns = tmp_path / "returns.jsonl"
    proc = run(
        [
            sys.executable,
            str(APPS / "lightning_app.py"),
            "-m",
            *overrides,
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            SUMMARY,
            RECORD,
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PROBE_RETURN": str(returns)},
    )
    records = [json.loads(line) for line in returns.read_text().splitlines()]
    values = [r["value"] for r in sorted(records, key=lambda r: r["num"])]  # by point
    return tmp_path / "sweep", proc, values


@pytest.mark.slow
def test_lightning_ddp_points_train_on_two_ranks_and_report_to_the_sweeper(tmp_path):
    """``Trainer(strategy="ddp")``, 2 ranks per point, 2 points: one dir per point,
    Lightning sees one world of two ranks in each, and the validation loss it logged
    is what the parent's Hydra (the sweeper's side) gets back."""
    sweep, proc, values = lightning_sweep(tmp_path, "lr=0.1,0.05")
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for num in range(2):
        job_dir = sweep / str(num)
        ranks = [read_json(job_dir / f"lightning_rank{r}.json") for r in range(2)]
        assert [r["global_rank"] for r in ranks] == [0, 1] == [r["env_rank"] for r in ranks]
        assert {r["world_size"] for r in ranks} == {2}
        assert ranks[0]["val_loss"] == ranks[1]["val_loss"] == values[num]  # synced
        record = read_json(job_dir / "launch.json")
        assert record["status"] == "COMPLETED" and record["process_group"] is True
        assert "warning" not in record
    assert values[0] != values[1]
    assert "never joined a process group" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_lightning_ranks_that_never_form_a_group_are_flagged(tmp_path):
    """2 ranks, but Lightning on one device with no DDP: each rank trains alone in the
    same dir. launch.json, the console and the summary say so, with the fix."""
    sweep, proc, _ = lightning_sweep(tmp_path, "trainer.devices=1", "trainer.strategy=auto")
    record = read_json(sweep / "0" / "launch.json")
    assert record["status"] == "COMPLETED" and record["process_group"] is False
    warning = "2 ranks ran, but the task never joined a process group: each rank trained alone"
    assert record["warning"].startswith(warning) and "strategy='ddp'" in record["warning"]
    assert f"#0 {warning}" in proc.stdout + proc.stderr
    row = next(csv.DictReader((sweep / "summary.csv").open()))
    assert row["world_size"] == "2 (no group)" and row["error"] == f"warning: {warning}"


# --------------------------------------------------------------------------- @runner.main


def single_run(tmp_path, *overrides: str):
    """tests/apps/single_run_app.py (``@runner.main``) without ``-m``: the probe task;
    its parent's Hydra writes the run's return value."""
    returns = tmp_path / "returns.jsonl"
    run_dir = tmp_path / "run"
    proc = run(
        [
            sys.executable,
            str(APPS / "single_run_app.py"),
            f"hydra.run.dir={run_dir}",
            RECORD,
            *overrides,
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PROBE_RETURN": str(returns)},
    )
    [returned] = [json.loads(line) for line in returns.read_text().splitlines()]
    return run_dir, proc, returned


@pytest.mark.slow
def test_a_foreign_apps_single_run_takes_the_launchers_ranks(tmp_path, entry_base):
    """``@runner.main`` in place of ``@hydra.main``: without ``-m``, the run takes
    ``hydra.launcher.nproc_per_node`` ranks of one torchrun, in one run dir, the same
    config in every rank (``${now:}`` resolved once), and rank 0's value comes back."""
    run_dir, proc, returned = single_run(tmp_path, "allreduce=true", "value=7")
    records = probe_records(run_dir)
    assert [r["rank"] for r in records] == [0, 1]
    assert {r["world_size"] for r in records} == {2}
    assert {r["allreduce"] for r in records} == {3.0}  # one group: 1 + 2
    assert len({r["config_hash"] for r in records}) == 1
    assert {r["output_dir"] for r in records} == {str(run_dir.resolve())}
    assert records[0]["pid"] != returned["pid"] != records[1]["pid"]
    assert returned["value"] == 7.0
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["run"]
    assert "never joined a process group" not in proc.stdout + proc.stderr
    assert entry_dirs(entry_base) == []


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_calling_a_runner_main_app_returns_its_runs_value(tmp_path, ranks):
    """``print(main())`` prints the single run's value: rank 0's of a torchrun, or the
    task's in this process (``@hydra.main`` alone returns None)."""
    app = str(APPS / "single_run_app.py")
    proc = run([sys.executable, app, f"ranks={ranks}", "value=7", f"hydra.run.dir={tmp_path}"])
    assert "returned 7.0" in proc.stdout, proc.stdout[-2000:]
    assert len(probe_records(tmp_path)) == ranks


@pytest.mark.slow
def test_a_single_run_whose_ranks_never_form_a_group_says_so(tmp_path):
    run_dir, proc, returned = single_run(tmp_path, "ranks=2")
    assert len(probe_records(run_dir)) == 2 and returned["value"] == 1.0
    assert "2 ranks ran, but the task never joined a process group" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_foreign_apps_single_run_with_one_rank_runs_in_its_process(tmp_path):
    run_dir, _, returned = single_run(tmp_path, "ranks=1", "value=5")
    [record] = probe_records(run_dir)
    assert record["pid"] == returned["pid"] and returned["value"] == 5.0
