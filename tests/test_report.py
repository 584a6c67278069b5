"""See a sweep: summary files and table, the report command, plots, progress output,
TensorBoard."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest

from runner.launch.procs import started
from runner.report import main
from runner.sweep.rows import collect
from tests.conftest import (
    FAST,
    PROBE_APP,
    in_terminal,
    interrupt_and_expect_nothing_left,
    launch_status,
    read_json,
    run,
    runner_cli,
    wait_until,
)

pytestmark = pytest.mark.slow


def runner_sweep(tmp_path_factory, name: str, *overrides: str):
    """A small runner sweep, 4 at a time, as a user would run it: (sweep dir, process)."""
    sweep_dir = tmp_path_factory.mktemp(name) / "sweep"
    proc = runner_cli(
        "-m", *overrides, f"hydra.sweep.dir={sweep_dir}", "hydra.launcher.max_parallel=4", *FAST
    )
    return sweep_dir, proc


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2 x 2 runner sweep with TensorBoard on."""
    return runner_sweep(
        tmp_path_factory, "report", "optim.lr=0.003,0.03", "model.hidden=8,32", "logger=tensorboard"
    )


def summary_rows(sweep_dir):
    with open(sweep_dir / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_summary_rows_match_each_points_metrics(sweep):
    sweep_dir, proc = sweep
    rows = summary_rows(sweep_dir)
    assert len(rows) == 4
    for row in rows:
        final = read_json(sweep_dir / row["job"] / "metrics.json")
        assert float(row["val_loss"]) == pytest.approx(final["val_loss"], rel=1e-5)
        assert float(row["val_acc"]) == pytest.approx(final["val_acc"], rel=1e-5)
        assert row["status"] == "COMPLETED" and row["world_size"] == "1"
        overrides = (sweep_dir / row["job"] / ".hydra" / "overrides.yaml").read_text()
        assert f"optim.lr={row['optim.lr']}" in overrides
        assert f"model.hidden={row['model.hidden']}" in overrides
    losses = [float(r["val_loss"]) for r in rows]
    assert losses == sorted(losses)  # best (lowest val_loss) first
    assert "trainer.epochs" not in rows[0]  # not swept: not a column
    assert "lr" not in rows[0]  # the final lr is no result (optim.lr is the column)
    md = (sweep_dir / "summary.md").read_text()
    assert md.startswith("Best first by val_loss (lower is better).\n\n| job | optim.lr |")
    assert "Sweep summary" in proc.stdout and "val_loss" in proc.stdout


def test_sweep_output_has_no_control_codes_off_a_terminal(sweep):
    _, proc = sweep
    for stream in (proc.stdout, proc.stderr):
        assert "\x1b" not in stream and "\r" not in stream
    assert "best " in proc.stdout  # the running count names the best point so far


def test_report_draws_the_plots(sweep, capsys):
    import matplotlib.image

    sweep_dir, _ = sweep
    assert main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    for name, size in [
        ("objective_vs_optim_lr.png", (400, 600)),
        ("objective_vs_model_hidden.png", (400, 600)),
        ("learning_curves.png", (450, 700)),
        ("heatmap.png", (450, 600)),
    ]:
        assert f"wrote {sweep_dir / name}" in out
        image = matplotlib.image.imread(sweep_dir / name)
        assert image.shape[:2] == size
        assert image.std() > 0.01  # not a blank canvas


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """The figures the report draws, by file name, kept to read their axes."""
    from runner.sweep import plots

    figures: dict = {}
    save = plots._save

    def keep(fig, path):
        figures[path.name] = fig
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_plots_read_at_a_glance(sweep, drawn):
    """A decade of lr on a log axis, the other swept key as colours with a legend; the
    heat map says which way is better and every label contrasts with its cell."""
    from matplotlib.colors import to_rgb

    from runner.sweep import plots

    sweep_dir, _ = sweep
    plots.plot(sweep_dir, collect(sweep_dir))
    lr = drawn["objective_vs_optim_lr.png"].axes[0]
    assert lr.get_xscale() == "log"
    assert sorted(t.get_text() for t in lr.get_legend().get_texts()) == [
        "model.hidden=32",
        "model.hidden=8",
    ]
    hidden = drawn["objective_vs_model_hidden.png"].axes[0]
    assert hidden.get_xscale() == "linear"  # 8 to 32: less than a decade
    assert {t.get_text() for t in hidden.get_legend().get_texts()} == {
        "optim.lr=0.003",
        "optim.lr=0.03",
    }
    heat = drawn["heatmap.png"].axes[0]
    assert "(lower is better)" in heat.get_title()
    image = heat.get_images()[0]

    def luminance(rgb):
        return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]

    assert len(heat.texts) == 4
    for text in heat.texts:
        cell = image.cmap(image.norm(float(text.get_text())))
        assert abs(luminance(cell[:3]) - luminance(to_rgb(text.get_color()))) > 0.4, text


def test_a_searched_log_scale_is_read_from_the_sweeps_own_config(tmp_path):
    from runner.sweep.plots import log_axis, searched_on_log_scale

    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task: ['optim.lr=tag(log, interval(0.001, 0.1))', 'x=1,2']\n"
        "  sweeper:\n    params:\n      model.hidden: tag(log, int(interval(8, 64)))\n"
    )
    assert searched_on_log_scale(tmp_path) == {"optim.lr", "model.hidden"}
    assert log_axis([0.002, 0.004], searched_on_log=True)
    assert not log_axis([0.002, 0.004]) and log_axis([0.002, 0.02])
    assert not log_axis([0.0, 0.02], searched_on_log=True)  # a log axis has no zero


def test_tensorboard_event_files_per_job(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    sweep_dir, _ = sweep
    for job in range(4):
        job_dir = sweep_dir / str(job)
        events = list(job_dir.glob("events.out.tfevents.*"))
        assert len(events) == 1 and (job_dir / "metrics.jsonl").exists()
        acc = EventAccumulator(str(job_dir))
        acc.Reload()
        val_loss = [e.value for e in acc.Scalars("val_loss")]
        history = [json.loads(x)["val_loss"] for x in (job_dir / "metrics.jsonl").open()]
        assert val_loss == pytest.approx(history, rel=1e-6)
        # HParams: the columns are what the point chose, the sweep's keys among them,
        # not the whole config (which is the run's config text).
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        chosen = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        assert {"optim.lr", "model.hidden"} <= set(chosen.hparams)
        assert "model.dropout" not in chosen.hparams and len(chosen.hparams) <= 8
        overrides = (job_dir / ".hydra" / "overrides.yaml").read_text()
        assert f"optim.lr={chosen.hparams['optim.lr'].number_value:g}" in overrides
        assert "model.dropout" in str(acc.Tensors("config/text_summary")[0])


def test_failed_points_appear_with_their_error(tmp_path):
    proc = run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "fail_rank=-1,1",
            "sleep=0",
            f"hydra.sweep.dir={tmp_path}",
        ],
        check=False,
    )
    assert proc.returncode != 0
    rows = {r["job"]: r for r in summary_rows(tmp_path)}
    assert rows["0"]["status"] == "COMPLETED" and rows["0"]["return_value"] == "1"
    assert rows["1"]["status"] == "FAILED"
    assert "rank 1 (local rank 1) exited with code 1" in rows["1"]["error"]


def test_report_on_an_interrupted_sweep(tmp_path, capsys, entry_base):
    parent = subprocess.Popen(
        [sys.executable, str(PROBE_APP), "-m", "sleep=0,600", f"hydra.sweep.dir={tmp_path}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: launch_status(tmp_path / "0") == "COMPLETED", 120, "point 0 to complete")
    wait_until(lambda: launch_status(tmp_path / "1") == "RUNNING", 120, "point 1 to start")
    # Its agent is named by host, pid and start time (what the report judges it by).
    record = read_json(tmp_path / "1" / "launch.json")
    assert record["host"] == socket.gethostname()
    assert record["agent_started"] == started(record["agent_pid"]) is not None
    interrupt_and_expect_nothing_left(parent, signal.SIGKILL, entry_base)
    assert main([str(tmp_path), "--no-plots"]) == 0
    statuses = {r.job: r.status for r in collect(tmp_path)}
    assert statuses == {0: "COMPLETED", 1: "NOT FINISHED"}
    assert "NOT FINISHED" in capsys.readouterr().out


def test_a_point_whose_agent_pid_names_a_later_process_is_not_finished(tmp_path):
    """launch.json names a running point's agent by host, pid and start time: a live
    process that has the pid but started at another time is not its agent (the kernel
    reuses pids), so its sweep was killed; another host's agent is that host's to tell
    (a sweep dir on a shared filesystem), taken as running."""
    me, born, host = os.getpid(), started(os.getpid()), socket.gethostname()
    assert born is not None
    agents = [(host, born), (host, born + 1), ("other-host", born + 1)]
    for job, (agent_host, agent_started) in enumerate(agents):
        job_dir = tmp_path / str(job)
        (job_dir / ".hydra").mkdir(parents=True)
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        record = {"status": "RUNNING", "host": agent_host, "agent_pid": me}
        record["agent_started"] = agent_started
        (job_dir / "launch.json").write_text(json.dumps(record))
    statuses = {r.job: r.status for r in collect(tmp_path)}
    assert statuses == {0: "RUNNING", 1: "NOT FINISHED", 2: "RUNNING"}


def test_report_on_a_single_point_sweep(tmp_path, capsys):
    runner_cli("-m", "seed=3", f"hydra.sweep.dir={tmp_path}", *FAST)
    capsys.readouterr()
    assert main([str(tmp_path)]) == 0
    rows = summary_rows(tmp_path)
    assert len(rows) == 1 and rows[0]["seed"] == "3"
    assert (tmp_path / "learning_curves.png").exists()
    assert not (tmp_path / "heatmap.png").exists()


def test_report_says_how_to_get_matplotlib(tmp_path, monkeypatch, sweep):
    sweep_dir, _ = sweep
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit, match=r"pip install 'runner\[plot\]'"):
        main([str(sweep_dir)])


def test_live_status_line_on_a_terminal(tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    code, screen = in_terminal(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "value=1,1",
            "sleep=1",  # after the gate: both run at once for a second
            f"gate={gate}",
            "gate_points=2",
            "hydra.launcher.nproc_per_node=1",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ]
    )
    assert code == 0, screen
    assert "\r\x1b[K[0/2 ended: 0 done, 2 running, 0 failed]" in screen
    # Both return 1: the best is whichever ended first; the last count has its own line.
    assert re.search(r"\[2/2 ended: 2 done, 0 running, 0 failed\] best 1 \(#[01]\)", screen)


@pytest.fixture(scope="module")
def seeded_sweep(tmp_path_factory):
    """Two settings, three seeds each."""
    return runner_sweep(tmp_path_factory, "seeds", "optim.lr=0.003,0.03", "seed=0,1,2")


def test_settings_over_seeds_are_the_mean_and_spread_of_their_points(seeded_sweep):
    import statistics

    sweep_dir, proc = seeded_sweep
    points = summary_rows(sweep_dir)
    with open(sweep_dir / "summary_groups.csv") as f:
        groups = list(csv.DictReader(f))
    assert [g["optim.lr"] for g in groups] and len(groups) == 2
    assert "seed" not in groups[0]
    for group in groups:
        members = [p for p in points if p["optim.lr"] == group["optim.lr"]]
        assert sorted(p["seed"] for p in members) == ["0", "1", "2"]
        assert (group["points"], group["completed"]) == ("3", "3")
        for metric in ("val_loss", "val_acc", "train_loss"):
            values = [float(p[metric]) for p in members]
            mean = float(group[f"{metric}_mean"])
            assert mean == pytest.approx(statistics.fmean(values), rel=1e-5)
            assert float(group[f"{metric}_std"]) == pytest.approx(
                statistics.stdev(values), rel=1e-3, abs=1e-9
            )
    means = [float(g["val_loss_mean"]) for g in groups]
    assert means == sorted(means)  # best setting first
    md = (sweep_dir / "summary.md").read_text()
    assert "Over seeds (seed)" in md and " ± " in md
    assert "Over seeds (seed)" in proc.stdout  # printed as the sweep ends


def test_report_plots_each_setting_over_seeds(seeded_sweep, capsys, drawn):
    sweep_dir, _ = seeded_sweep
    assert main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "summary_groups.csv" in out  # every file it wrote is named
    # Bands that stay apart: light, each edged in its own line's colour.
    curves = drawn["learning_curves_by_setting.png"].axes[0]
    assert all(band.get_alpha() <= 0.15 for band in curves.collections)
    colours = [line.get_color() for line in curves.get_lines()]
    assert all(colours.count(c) == 3 for c in set(colours))  # mean, low and high edges
    for name in ("objective_by_setting.png", "learning_curves_by_setting.png"):
        path = sweep_dir / name
        assert path.is_file() and path.stat().st_size > 10_000, name
        assert str(path) in out
    # Another key named as the seed: the settings are then the seeds.
    assert main([str(sweep_dir), "--no-plots", "--seed-key", "optim.lr"]) == 0
    with open(sweep_dir / "summary_groups.csv") as f:
        assert sorted(g["seed"] for g in csv.DictReader(f)) == ["0", "1", "2"]
