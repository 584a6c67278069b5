"""Device leases across processes (runner.launch.leases) and the pool's rules over
them (runner.launch.devices), with real processes holding real file locks. The same
rules are tested end to end with two real sweeps in tests/test_devices.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runner.launch.devices import DeviceOptions, DevicePool
from runner.launch.leases import LeaseDir, LeaseDirError

# Another run in a process of its own: takes COUNT of DEVICES for one job (as a
# waiting head, trying again every 20 ms), says what it got, then holds them.
HOLDER = """
import sys, time
from runner.launch.devices import DevicePool
from runner.launch.leases import LeaseDir
devices, what = sys.argv[1].split(","), sys.argv[4]
count, per_device = int(sys.argv[2]), int(sys.argv[3])
pool = DevicePool(devices, per_device=per_device, leases=LeaseDir(None, per_device))
got = pool.take(count, head=True, what=what)
if got is None:
    print("waiting", flush=True)
while got is None:
    time.sleep(0.02)
    got = pool.take(count, head=True, what=what)
print(",".join(got), flush=True)
time.sleep(600)
"""


@pytest.fixture(autouse=True)
def ask_again_at_once(monkeypatch):
    """Each take asks the other runs' leases again (the pause between asks has a test
    of its own)."""
    monkeypatch.setattr("runner.launch.devices.LEASE_RETRY_S", 0.0)


@pytest.fixture
def other_runs():
    """Start other runs holding leases; every one is killed at the end."""
    procs: list[subprocess.Popen] = []

    def start(devices: str, count: int = 1, per_device: int = 1, what: str = "other run"):
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, devices, str(count), str(per_device), what],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def said(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def pool(devices: str, per_device: int = 1) -> DevicePool:
    return DeviceOptions(devices=devices, points_per_device=per_device).pool()


def test_a_lease_holds_across_processes_until_its_holder_is_killed(other_runs):
    holder = other_runs("0", what="sweep A point #3")
    assert said(holder) == "0"
    mine = pool("0")
    assert mine.take(1, head=False) is None
    assert mine.take(1, head=True) is None
    news = mine.waiting_news()
    assert news is not None and "device 0" in news
    assert "sweep A point #3" in news and f"pid {holder.pid}" in news
    assert mine.take(1, head=True) is None and mine.waiting_news() is None  # said once
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert mine.take(1, head=True) == ["0"]  # the kernel dropped the lock at once


def test_a_job_kept_out_by_other_runs_asks_them_again_after_a_pause(other_runs, monkeypatch):
    """A waiting head costs a few file locks per ask, not per scheduler loop: after
    other runs kept it out it asks again only after LEASE_RETRY_S, or at once when a
    device of its own pool frees."""
    monkeypatch.setattr("runner.launch.devices.LEASE_RETRY_S", 3600.0)
    holder = other_runs("1")
    assert said(holder) == "1"
    mine = pool("0,1")
    assert mine.take(1, head=True) == ["0"]
    assert mine.take(1, head=True) is None  # "1" is the other run's
    holder.kill()
    holder.wait()
    assert mine.take(1, head=True) is None  # not asked again yet
    mine.give_back(["0"])
    assert mine.take(2, head=True) == ["0", "1"]  # asked again at once


def test_two_runs_share_out_devices_and_each_job_gets_distinct_ones(other_runs):
    holder = other_runs("0,1,2,3", count=2)
    assert said(holder) == "0,1"
    mine = pool("0,1,2,3")
    assert mine.take(2, head=True) == ["2", "3"]
    assert mine.take(1, head=False) is None
    mine.give_back(["2", "3"])
    assert mine.take(1, head=False) == ["2"]


def test_points_per_device_counts_the_holders_of_every_run(other_runs, lease_dir):
    assert said(other_runs("0", per_device=2)) == "0"
    # A run that wants the device to itself does not get it, though its holder shares.
    assert LeaseDir(None, 1).try_take("0", "alone") is None
    mine = LeaseDir(None, 2)
    first = mine.try_take("0", "shared")
    assert first is not None  # 2 holders, within both limits
    assert LeaseDir(None, 2).try_take("0", "third") is None
    first.release()
    assert LeaseDir(None, 3).try_take("0", "shared again") is not None
    assert {p.name for p in lease_dir.iterdir()} >= {"device-0.0.lock", "device-0.1.lock"}


def test_a_device_held_alone_is_not_shared_by_a_run_that_would_share(other_runs):
    assert said(other_runs("0", per_device=1)) == "0"
    mine = pool("0", per_device=4)
    assert mine.take(1, head=False) is None
    assert mine.take(1, head=True) is None
    assert "other run" in (mine.waiting_news() or "")


def test_a_waiting_run_gets_the_devices_that_free_before_other_runs(other_runs):
    """First come, first served across runs: while another run waits for devices (it
    is first in line), a device that frees goes to it, not to the run that freed it,
    which is told who waits first."""
    mine = pool("0,1")
    assert mine.take(1, head=True) == ["0"]
    assert mine.take(1, head=True) == ["1"]
    waiter = other_runs("0,1", count=2, what="sweep B point #0")
    assert said(waiter) == "waiting"
    mine.give_back(["0"])
    assert mine.take(1, head=True, what="mine") is None  # device 0 is the waiter's turn
    assert "sweep B point #0, which waits for devices first" in (mine.waiting_news() or "")
    assert mine.leases is not None and mine.leases.in_line  # second in line
    assert "sweep B point #0" in str(mine.leases.first_in_line())
    mine.give_back(["1"])
    assert said(waiter) == "0,1"  # it kept device 0 while it waited for device 1
    assert mine.take(1, head=False) is None


def test_runs_get_a_device_in_the_order_they_began_to_wait(other_runs, lease_dir):
    """The line is first come, first served; a waiter killed in line leaves it."""
    mine = pool("0")
    assert mine.take(1, head=True) == ["0"]
    waiters = []
    for n in range(3):  # each joins the line before the next one starts
        waiters.append(other_runs("0", what=f"waiter {n}"))
        assert said(waiters[-1]) == "waiting"
    first, second, third = waiters
    first.send_signal(signal.SIGKILL)
    first.wait()
    mine.give_back(["0"])
    assert said(second) == "0"  # not the dead first, not the third
    assert len(list(lease_dir.glob("waiting-*.lock"))) == 1  # the third's ticket only
    second.kill()
    assert said(third) == "0"


def test_a_run_further_back_in_line_keeps_nothing_back(other_runs):
    """Two waiting runs cannot deadlock: one that is not first in line takes all its
    devices at once or none."""
    assert said(other_runs("0,3", count=2)) == "0,3"
    first = other_runs("3", what="first waiter")  # first in line, for device 3
    assert said(first) == "waiting"
    mine = pool("0,1,2")
    assert mine.take(3, head=True) is None  # 1 and 2 are free, 0 is not
    assert mine.leases is not None and "first waiter" in str(mine.leases.first_in_line())
    assert "device 0," in (mine.waiting_news() or "")
    assert LeaseDir(None).try_take("1", "anyone") is not None  # not kept back
    assert LeaseDir(None).try_take("2", "anyone") is not None


def test_points_per_device_spreads_points_before_stacking_them():
    shared = DevicePool(["0", "1"], per_device=2)
    assert [shared.take(1, head=False) for _ in range(4)] == [["0"], ["1"], ["0"], ["1"]]
    assert shared.take(1, head=False) is None
    shared.give_back(["1"])
    assert shared.take(2, head=True) is None  # two distinct devices, one per rank
    shared.give_back(["0"])
    assert shared.take(2, head=True) == ["0", "1"]
    assert DevicePool(["0", "1"], per_device=3).capacity == 6


def test_no_leases_when_turned_off_or_without_devices(lease_dir):
    assert DeviceOptions(devices="0,1", leases=False).pool().leases is None
    assert DeviceOptions(devices="none").pool().leases is None
    off = DeviceOptions(devices="0", leases=False).pool()
    assert off.take(1, head=True) == ["0"]
    assert not list(lease_dir.iterdir())


def test_a_lease_dir_that_cannot_be_made_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    leases = DeviceOptions(devices="0", lease_dir=str(blocker / "leases")).pool().leases
    assert leases is not None
    with pytest.raises(LeaseDirError) as error:
        leases.try_take("0", "a run")
    message = str(error.value)
    assert f"hydra.launcher.lease_dir='{blocker / 'leases'}' is invalid" in message
    assert "Fix: hydra.launcher.lease_dir=" in message and "leases=false" in message


def test_the_default_lease_dir_is_shared_by_every_user(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNNER_LEASE_DIR", str(tmp_path / "shared"))
    leases = LeaseDir(None)
    lease = leases.try_take("0", "a run")
    assert lease is not None
    assert (tmp_path / "shared").stat().st_mode & 0o7777 == 0o1777
    assert os.stat(tmp_path / "shared" / "device-0.0.lock").st_mode & 0o777 == 0o666
    assert Path(leases.path) == tmp_path / "shared"
    lease.release()


def test_a_one_process_run_sees_only_its_leased_device_while_it_runs(other_runs, monkeypatch):
    """``python -m runner`` with one process trains in-process: its device is leased
    like a sweep's and set in its own environment for the run, then put back."""
    from runner.launch.app import run_devices

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # devices=auto reads it
    assert said(other_runs("3,5")) == "3"
    with run_devices(1, in_process=True) as env:
        assert env == {"CUDA_VISIBLE_DEVICES": "5"}
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert LeaseDir(None).try_take("5", "another run") is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert LeaseDir(None).try_take("5", "another run") is not None
