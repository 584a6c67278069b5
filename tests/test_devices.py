"""Devices shared across runs, with real sweeps and runs at once on named devices (CPU
stands in for GPUs: every point records the CUDA_VISIBLE_DEVICES it was given). The
rules alone, with processes holding leases, are in tests/test_leases.py."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from runner.launch.leases import LeaseDir
from tests.conftest import (
    FAST,
    PROBE_APP,
    REPO,
    Followed,
    launch_status,
    probe_records,
    wait_until,
)

pytestmark = pytest.mark.slow


@dataclass
class Sweep:
    """The probe app's sweep (of one-rank points unless ranks= is given), running in
    the background."""

    dir: Path
    proc: subprocess.Popen

    @property
    def log(self) -> str:
        return Path(f"{self.dir}.log").read_text()

    def finish(self) -> None:
        assert self.proc.wait(timeout=240) == 0, self.log[-4000:]


def start_sweep(sweep_dir: Path, *overrides: str) -> Sweep:
    with open(f"{sweep_dir}.log", "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(PROBE_APP),
                "-m",
                *([] if any(o.startswith("ranks=") for o in overrides) else ["ranks=1"]),
                f"hydra.sweep.dir={sweep_dir}",
                *overrides,
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Sweep(sweep_dir, proc)


def spans(*sweep_dirs: Path) -> list[tuple[str, float, float, str]]:
    """(point, start, end, CUDA_VISIBLE_DEVICES) of every point of the sweeps."""
    found = []
    for sweep_dir in sweep_dirs:
        for job_dir in sorted(p for p in sweep_dir.iterdir() if p.name.isdigit()):
            record = probe_records(job_dir)[0]  # rank 0's
            point = f"{sweep_dir.name}/{job_dir.name}"
            found.append((point, record["start"], record["end"], record["cuda_visible_devices"]))
    return found


def most_at_once(found: list[tuple[str, float, float, str]], device: str) -> int:
    """The most points on ``device`` at one moment."""
    on = [(s, e) for _, s, e, d in found if device in d.split(",")]
    return max(sum(s <= moment < e for s, e in on) for moment, _ in on)


def overlap(a: tuple[str, float, float, str], b: tuple[str, float, float, str]) -> bool:
    return a[1] < b[2] and b[1] < a[2]


def test_two_sweeps_at_once_never_put_two_points_on_one_device(tmp_path):
    common = ["value=1,2,3", "sleep=2", "hydra.launcher.devices='0,1'"]
    a = start_sweep(tmp_path / "a", *common)
    b = start_sweep(tmp_path / "b", *common)
    a.finish()
    b.finish()
    found = spans(tmp_path / "a", tmp_path / "b")
    assert len(found) == 6
    assert all(devices in ("0", "1") for *_, devices in found)
    for device in ("0", "1"):
        assert most_at_once(found, device) == 1
    # The sweeps ran at once (one point of each on its own device), not one after the
    # other, and a sweep said which run held the device its next point waited for.
    a_points = [f for f in found if f[0].startswith("a/")]
    b_points = [f for f in found if f[0].startswith("b/")]
    assert any(overlap(x, y) for x in a_points for y in b_points)
    logs = a.log + b.log
    assert re.search(r"waits .* for device [01], which other runs hold: sweep \S+/[ab] ", logs)


def test_a_large_point_of_one_sweep_is_not_starved_by_small_ones_of_another(tmp_path):
    """Sweep a streams one-rank points over both devices; sweep b's two-rank point,
    started behind them, waits first in line: the devices go to it as they free, so it
    runs before a has started all of its points."""
    a = start_sweep(tmp_path / "a", "value=1,2,3,4,5,6", "sleep=2", "hydra.launcher.devices='0,1'")
    wait_until(lambda: launch_status(tmp_path / "a" / "1") == "RUNNING", 60, "a on both devices")
    b = start_sweep(tmp_path / "b", "value=9", "ranks=2", "hydra.launcher.devices='0,1'")
    a.finish()
    b.finish()
    found = spans(tmp_path / "a", tmp_path / "b")
    (large,) = [f for f in found if f[0].startswith("b/")]
    assert large[3] == "0,1"
    small = [f for f in found if f[0].startswith("a/")]
    assert not any(overlap(large, f) for f in small)
    assert any(f[1] > large[2] for f in small)  # a's later points ran after it


def test_points_per_device_bounds_the_points_of_all_sweeps_on_a_device(tmp_path):
    common = ["value=1,2,3", "sleep=2", "hydra.launcher.devices=0"]
    a = start_sweep(tmp_path / "a", *common, "hydra.launcher.points_per_device=2")
    b = start_sweep(tmp_path / "b", *common, "hydra.launcher.points_per_device=2")
    a.finish()
    b.finish()
    found = spans(tmp_path / "a", tmp_path / "b")
    assert {devices for *_, devices in found} == {"0"}  # each sees only its slice
    assert most_at_once(found, "0") == 2  # shared on purpose, never by three


def test_a_sweep_killed_while_holding_devices_frees_them_for_another(tmp_path):
    holder = start_sweep(tmp_path / "a", "value=1", "sleep=600", "hydra.launcher.devices=0")
    wait_until(lambda: launch_status(tmp_path / "a" / "0") == "RUNNING", 60, "a's point")
    waiter = start_sweep(tmp_path / "b", "value=2", "hydra.launcher.devices=0")
    wait_until(
        lambda: f"(pid {holder.proc.pid}," in waiter.log, 60, "b to say that a holds device 0"
    )
    assert launch_status(tmp_path / "b" / "0") is None  # b waits: it has not started
    held = Followed(holder.proc.pid)
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait()
    waiter.finish()
    (record,) = probe_records(tmp_path / "b" / "0")
    assert record["cuda_visible_devices"] == "0"
    held.wait_gone("a's agent and rank to end")
    assert LeaseDir(None).try_take("0", "check") is not None  # nothing left holding it


def test_a_single_run_waits_for_the_device_a_sweep_holds(tmp_path):
    holder = start_sweep(tmp_path / "a", "value=1", "sleep=6", "hydra.launcher.devices=0")
    wait_until(lambda: launch_status(tmp_path / "a" / "0") == "RUNNING", 60, "a's point")
    single = subprocess.run(
        [
            sys.executable,
            "-m",
            "runner",
            *FAST,
            "trainer.nproc_per_node=2",
            "hydra.launcher.devices='0,1'",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    holder.finish()
    out = single.stdout + single.stderr
    assert single.returncode == 0, out[-3000:]
    assert f"waiting for device 0, which other runs hold: sweep {tmp_path / 'a'} point #0" in out
    started = re.search(r"\[([\d-]+ [\d:]+,\d+)\]\[[^]]+\]\[INFO\] - on devices 0,1", out)
    assert started, out[-3000:]
    at = datetime.strptime(started[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    (record,) = probe_records(tmp_path / "a" / "0")
    assert at > record["end"]  # it started after the sweep's point ended
