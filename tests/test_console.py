"""What a sweep and a run say, as a researcher sees it: a failed point in one line and
no traceback, the summary and the sweep dir however the sweep ends, a bad value caught
in the parent before any torchrun starts, what varies first with numbers compact, and
where a run went."""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import (
    FAST,
    PROBE_APP,
    REPO,
    in_terminal,
    launch_status,
    read_json,
    run,
    runner_cli,
)

pytestmark = pytest.mark.slow


def test_a_bad_value_fails_its_point_at_once_in_one_line(tmp_path):
    """The trainer's config check runs in the parent on every point: the bad one fails
    without a torchrun (no agent log), the other trains; the error is said on the
    point's line, in the summary's row and once by Hydra at the end, with no
    traceback; the summary and the sweep dir are printed though the sweep failed."""
    sweep = tmp_path / "sweep"
    proc = runner_cli(
        "-m", *FAST, "trainer.batch_size=0,64", f"hydra.sweep.dir={sweep}", check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "Traceback" not in out
    error = "trainer.batch_size=0 is invalid: must be >= 1"
    # The point's line, its row in the summary, Hydra's closing message: once each.
    assert out.count(error) == 3, out[-3000:]
    (failed_line,) = [line for line in out.splitlines() if "#0 failed" in line]
    assert error in failed_line
    assert not (sweep / "0" / "torchrun.log").exists()  # no torchrun started for it
    record = read_json(sweep / "0" / "launch.json")
    assert record["status"] == "FAILED" and error in record["error"]
    assert read_json(sweep / "1" / "launch.json")["status"] == "COMPLETED"
    assert "Sweep summary" in proc.stdout and f"Sweep dir: {sweep}" in proc.stdout


def test_a_failed_rank_is_one_line_its_traceback_in_its_log(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run(
        [sys.executable, str(PROBE_APP), "-m", "fail_rank=-1,1", f"hydra.sweep.dir={sweep}"],
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out, out[-3000:]
    (failed_line,) = [line for line in out.splitlines() if "#1 failed" in line]
    assert "rank 1 (local rank 1) exited with code 1: ValueError: probe failure on rank 1" in (
        failed_line
    )
    log = re.search(r"its log: (\S+)", failed_line)
    assert log is not None and "Traceback" in open(log.group(1)).read()
    assert out.count("probe failure on rank 1") <= 2
    record = read_json(sweep / "1" / "launch.json")
    assert "Traceback" in record["error"]  # the full text stays in launch.json


def test_search_lines_lead_with_the_sampled_value_in_compact_form(tmp_path):
    sweep = tmp_path / "sweep"
    proc = runner_cli(
        "-m",
        "hydra/sweeper=search",
        "optim.lr=interval(0.001,0.1)",
        "hydra.sweeper.n_trials=2",
        "trainer.epochs=1",
        "data.n_samples=200",
        f"hydra.sweep.dir={sweep}",
    )
    out = proc.stdout + proc.stderr
    starts = [line for line in out.splitlines() if re.search(r"#\d start ", line)]
    assert len(starts) == 2, out[-3000:]
    for line in starts:
        label = line.split(" start ", 1)[1].strip()
        assert label.startswith("optim.lr="), line  # what is searched leads
        value = label.split()[0].removeprefix("optim.lr=")
        assert len(value.replace(".", "").lstrip("0")) <= 6, line  # 6 significant digits
        assert "trainer.epochs=1" not in line  # fixed: said once, in the first line
    (launching,) = [line for line in out.splitlines() if "Launching" in line]
    assert "every point with trainer.epochs=1 data.n_samples=200" in launching


def test_a_run_says_where_it_went_without_torchruns_thread_banner(tmp_path):
    run_dir = tmp_path / "run"
    proc = runner_cli(*FAST, "trainer.nproc_per_node=2", f"hydra.run.dir={run_dir}")
    out = proc.stdout + proc.stderr
    assert f"Run dir: {run_dir}" in out
    assert "OMP_NUM_THREADS" not in out  # runner gives the ranks their threads
    # A run's dir is not a sweep's: the report says so and writes nothing there.
    report = run([sys.executable, "-m", "runner.report", str(run_dir)], check=False)
    assert report.returncode == 2
    assert "is one run's dir (its .hydra/ is at the top), not a sweep's" in report.stderr
    assert not (run_dir / "summary.md").exists()


def test_a_run_that_fails_its_check_leaves_no_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = runner_cli("trainer.batch_size=0", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 1
    assert "trainer.batch_size=0 is invalid" in proc.stderr
    assert not run_dir.exists()


def test_an_apps_own_check_runs_in_the_parent_for_every_point(tmp_path):
    """Any app: ``@runner.checked_by(check)`` under ``@runner.main``; a point its check refuses
    fails before its torchrun starts, a single run before its run dir is kept."""
    app = tmp_path / "checked_app.py"
    app.write_text(
        "import runner\n"
        "from runner.errors import ConfigError, invalid\n\n"
        "def check(cfg):\n"
        "    if cfg.x < 0:\n"
        "        raise ConfigError(invalid('x', cfg.x, 'must be >= 0', 'x=1'))\n\n"
        "@runner.main(version_base='1.3', config_path=None, config_name=None)\n"
        "@runner.checked_by(check)\n"
        "def main(cfg):\n"
        "    return float(cfg.x)\n\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
    )
    sweep = tmp_path / "sweep"
    proc = run(
        [
            sys.executable,
            str(app),
            "-m",
            "+x=-1,2",
            "hydra/launcher=torchrun",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "x=-1 is invalid: must be >= 0. Fix: x=1" in out, out
    assert not (sweep / "0" / "torchrun.log").exists()
    assert read_json(sweep / "1" / "launch.json")["status"] == "COMPLETED"
    single = run(
        [sys.executable, str(app), "+x=-1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        check=False,
    )
    assert single.returncode == 1 and "x=-1 is invalid" in single.stderr
    assert not (tmp_path / "run").exists()


def screen_lines(screen: str) -> list[str]:
    """The lines a terminal shows: each row's text after its last carriage return,
    control sequences taken out."""
    rows = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", screen).replace("\r\n", "\n").split("\n")
    return [row.rsplit("\r", 1)[-1] for row in rows]


def test_every_line_fits_a_100_column_terminal(tmp_path):
    """Long swept values and a long error: on a terminal the point lines take a short
    time prefix, leave the count to the live line, and are cut to the width (Hydra's
    own closing error is Hydra's)."""
    sweep = tmp_path / "sweep"
    long_text = "a-rather-long-value-" * 4
    code, screen = in_terminal(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            f"text={long_text}1,{long_text}2",
            "fail_rank=-1,0",
            "hydra.launcher.nproc_per_node=1",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    lines = screen_lines(screen)
    assert code == 1, screen
    ours = [line for line in lines if re.match(r"\d\d:\d\d:\d\d ", line)]  # not Hydra's own
    assert any(re.match(r"\d\d:\d\d:\d\d #\d start ", line) for line in ours), screen
    assert any(" failed " in line for line in ours), screen
    assert all(len(line) <= 100 for line in ours), [line for line in ours if len(line) > 100]
    assert "Traceback" not in screen


def test_ctrl_c_in_a_terminal_says_how_to_go_on(tmp_path):
    sweep, gate = tmp_path / "sweep", tmp_path / "gate"
    gate.mkdir()
    code, screen = in_terminal(
        [
            sys.executable,
            "-m",
            "runner",
            "-m",
            "trainer.epochs=50",
            "data.n_samples=4000",
            "optim.lr=0.01,0.02",
            f"hydra.sweep.dir={sweep}",
        ],
        interrupt_when=lambda: all(launch_status(sweep / str(n)) == "RUNNING" for n in (0, 1)),
    )
    lines = screen_lines(screen)
    assert code == 130, screen
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
    assert "Sweep summary" in screen and f"Sweep dir: {sweep}" in screen
    hint = lines.index("The sweep was stopped by Ctrl-C. To go on where it stopped:")
    again = lines[hint + 1].strip()
    assert again.startswith("python -m runner -m trainer.epochs=50")
    assert again.endswith(f"hydra.sweep.dir={sweep} hydra.launcher.resume=true")
    for n in (0, 1):
        record = read_json(sweep / str(n) / "launch.json")
        assert (record["status"], record["stopped_by"]) == ("STOPPED", "Ctrl-C")


def test_a_misspelt_key_gets_did_you_mean(tmp_path):
    proc = runner_cli("optim.lrr=0.1", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1
    assert "Did you mean optim.lr=0.1?" in proc.stderr
    added = runner_cli("+trainer.epoch=3", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert added.returncode == 1
    assert "trainer.epoch is not a key of trainer" in added.stderr
    assert "Did you mean trainer.epochs?" in added.stderr
    assert not (tmp_path / "run").exists()


def test_a_groups_schemas_are_not_options_to_pick(tmp_path):
    proc = runner_cli("model=mlp_schema", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 1
    assert "Could not find 'model/mlp_schema'" in proc.stderr
    options = proc.stderr.split("Available options in 'model':")[1]
    assert "_schema" not in options and "mlp" in options and "resmlp" in options
