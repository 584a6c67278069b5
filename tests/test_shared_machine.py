"""runner on a machine it shares with another user, who plays the attacker: lease dirs
they prepared (their own dir, links, FIFOs, records with escape sequences) and files
runner loads as code that they could have written. Root runs the sweeps and runs (as
in CI and in many containers); every target file keeps its contents and its mode.

The second user is made here (``useradd -M``), so these tests need root: locally
without it they skip saying why; in CI (``RUNNER_TESTS_REQUIRE=other_user``) they fail."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.launch.leases import LeaseDir, LeaseDirError
from runner.launch.trust import UntrustedFileError, read_trusted
from tests.conftest import APPS, PROBE_APP, launch_status, run, unavailable

OTHER = "runner-other"


@dataclass
class Machine:
    """A place under /tmp both users reach, the other user, and a root-only secret."""

    base: Path
    uid: int
    target: Path

    def as_other(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runuser", "-u", OTHER, "--", *args], check=True, capture_output=True, **kwargs
        )

    def target_intact(self) -> None:
        st = os.stat(self.target)
        assert self.target.read_text() == "root's secret\n"
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0

    def theirs(self) -> Path:
        """A dir the other user owns, where they make what they will."""
        path = self.base / "theirs"
        if not path.exists():
            path.mkdir()
            os.chown(path, self.uid, -1)
        return path

    def lease_dir(self, mode: int = 0o1777, owner: int = 0) -> Path:
        path = self.base / "leases"
        path.mkdir()
        os.chown(path, owner, -1)
        os.chmod(path, mode)
        return path


@pytest.fixture(scope="session")
def other_user() -> int:
    """The second local user's uid (made once, without a home)."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("runuser"):
        unavailable("other_user", "a second local user needs root, useradd and runuser")
    found = subprocess.run(["id", "-u", OTHER], capture_output=True, text=True)
    if found.returncode != 0:
        subprocess.run(["useradd", "-M", OTHER], check=True)
        found = subprocess.run(["id", "-u", OTHER], capture_output=True, text=True, check=True)
    return int(found.stdout)


@pytest.fixture
def machine(other_user) -> Iterator[Machine]:
    base = Path(tempfile.mkdtemp(prefix="runner-shared-", dir="/tmp"))
    os.chmod(base, 0o755)
    secrets = base / "root-only"
    secrets.mkdir(mode=0o700)
    target = secrets / "secret"
    target.write_text("root's secret\n")
    os.chmod(target, 0o600)
    yield Machine(base, other_user, target)
    shutil.rmtree(base, ignore_errors=True)


def sweep(tmp_path: Path, lease_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """A two-point sweep of the probe app on named devices 0 and 1."""
    return run(
        [
            sys.executable,
            str(PROBE_APP),
            "-m",
            "ranks=1",
            "value=1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "hydra.launcher.devices='0,1'",
            f"hydra.launcher.lease_dir={lease_dir}",
            *extra,
        ],
        check=False,
        timeout=240,
    )


def single_run(tmp_path: Path, lease_dir: Path) -> subprocess.CompletedProcess:
    """A one-process run of a Hydra app on named device 0 (leased in-process)."""
    return run(
        [
            sys.executable,
            str(APPS / "single_run_app.py"),
            "ranks=1",
            f"hydra.run.dir={tmp_path / 'run'}",
            "hydra.launcher.devices=0",
            f"hydra.launcher.lease_dir={lease_dir}",
        ],
        check=False,
        timeout=120,
    )


def points_done(tmp_path: Path) -> list[str | None]:
    return [launch_status(tmp_path / "sweep" / str(n)) for n in range(2)]


def refused(proc: subprocess.CompletedProcess, lease_dir: Path, problem: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"hydra.launcher.lease_dir='{lease_dir}' is refused" in out, out[-3000:]
    assert problem in out, out[-3000:]
    assert "Fix: a shared dir root owns (sudo install -d -m 1777 -o root" in out
    assert "RUNNER_LEASE_DIR" in out and "hydra.launcher.leases=false" in out
    assert "Traceback" not in out, out[-3000:]


@pytest.mark.slow
def test_a_lease_dir_another_user_owns_is_refused_before_anything_starts(machine, tmp_path):
    """Their own dir, with a slot named link to root's secret: refused, not followed."""
    lease_dir = machine.lease_dir(mode=0o755, owner=machine.uid)
    machine.as_other("ln", "-s", str(machine.target), str(lease_dir / "device-0.0.lock"))
    for proc in (sweep(tmp_path, lease_dir), single_run(tmp_path, lease_dir)):
        refused(proc, lease_dir, f"it is owned by {OTHER} (uid {machine.uid}), not by you")
    assert not (tmp_path / "sweep" / "0").exists()  # no point started
    machine.target_intact()


def test_a_world_writable_lease_dir_that_is_not_sticky_is_refused(machine):
    lease_dir = machine.lease_dir(mode=0o777)
    with pytest.raises(LeaseDirError) as error:
        LeaseDir(lease_dir).try_take("0", "a run")
    assert "other users can write it and it is not sticky (mode drwxrwxrwx)" in str(error.value)


def test_a_lease_dir_that_is_a_link_is_refused(machine):
    real = machine.lease_dir()
    link = machine.theirs() / "leases"
    machine.as_other("ln", "-s", str(real), str(link))
    with pytest.raises(LeaseDirError, match="is refused.*it is a symbolic link"):
        LeaseDir(link).try_take("0", "a run")


@pytest.mark.slow
def test_links_and_fifos_named_like_slots_are_never_written_through(machine, tmp_path):
    """In a sticky dir root owns (as /tmp): the other user's symlink and FIFO under
    slot names, and a hard link to root's secret (made by root here: the kernel's
    fs.protected_hardlinks stops the other user on this machine, not on every one).
    The sweep and the run skip them and take slots of their own."""
    lease_dir = machine.lease_dir()
    machine.as_other("ln", "-s", str(machine.target), str(lease_dir / "device-0.0.lock"))
    machine.as_other("mkfifo", str(lease_dir / "device-1.0.lock"))
    os.link(machine.target, lease_dir / "device-0.1.lock")
    proc = sweep(tmp_path, lease_dir)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert points_done(tmp_path) == ["COMPLETED", "COMPLETED"]
    assert "ignoring device-0.0.lock" in proc.stdout + proc.stderr
    assert single_run(tmp_path, lease_dir).returncode == 0
    machine.target_intact()
    made = {p.name for p in lease_dir.iterdir() if p.stat(follow_symlinks=False).st_uid == 0}
    assert {"device-0.2.lock", "device-1.1.lock"} <= made


@pytest.mark.slow
def test_a_link_named_like_a_guard_stops_the_sweep_naming_it(machine, tmp_path):
    lease_dir = machine.lease_dir()
    machine.as_other("ln", "-s", str(machine.target), str(lease_dir / "device-0.guard"))
    proc = sweep(tmp_path, lease_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"hydra.launcher.lease_dir='{lease_dir}' holds device-0.guard" in out, out[-3000:]
    assert "Fix: remove it" in out
    assert not (tmp_path / "sweep" / "0").exists()
    machine.target_intact()


HOLD = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, sys.argv[2].encode())
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def other_holds(machine) -> Iterator:
    """Start a process of the other user that holds a slot file with a record of theirs."""
    procs: list[subprocess.Popen] = []

    python = "/usr/bin/python3"  # the venv's may sit under a dir only root can enter
    if not os.access(python, os.X_OK):
        unavailable("other_user", f"the other user's holder needs {python}")

    def hold(path: Path, record: str) -> None:
        proc = subprocess.Popen(
            ["runuser", "-u", OTHER, "--", python, "-c", HOLD, str(path), record],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

    yield hold
    for proc in procs:
        os.killpg(proc.pid, signal.SIGKILL)  # runuser and the holder under it
        proc.wait()


ESCAPES = "\x1b[2J\x1b]0;owned\x07\r\n"


@pytest.mark.slow
def test_what_another_users_slot_says_is_capped_checked_and_printed_clean(
    machine, other_holds, tmp_path
):
    lease_dir = machine.lease_dir()
    record = {"pid": 4242, "user": f"ana{ESCAPES}", "what": f"sweep{ESCAPES}x", "limit": 1}
    other_holds(lease_dir / "device-0.0.lock", json.dumps(record))
    other_holds(lease_dir / "device-2.0.lock", json.dumps({**record, "what": "w" * 5000}))
    leases = LeaseDir(lease_dir)
    assert leases.try_take("0", "mine") is None
    clean = "sweep[2J]0;ownedx (pid 4242, user ana[2J]0;owned)"
    assert [h.describe() for h in leases.refused_by] == [clean]
    assert leases.try_take("2", "mine") is None
    assert leases.refused_by[0].pid == 0  # not a record runner wrote: an unknown holder
    # A sweep beside them: device 0 stays theirs, so both points take turns on device
    # 1, and what the console says of device 0's holder is clean.
    proc = sweep(tmp_path, lease_dir)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert points_done(tmp_path) == ["COMPLETED", "COMPLETED"]
    assert f"for device 0, which other runs hold: {clean}" in out, out[-3000:]
    assert "\x1b" not in out and "\x07" not in out


def test_pickles_are_loaded_only_from_files_nobody_else_could_write(machine):
    job_dir = machine.base / "job"
    job_dir.mkdir(mode=0o755)
    mine = job_dir / "return_value.pkl"
    mine.write_bytes(b"ok")
    os.chmod(mine, 0o600)
    assert read_trusted(mine, "none") == b"ok"
    theirs = job_dir / "theirs.pkl"
    theirs.write_bytes(b"evil")
    os.chown(theirs, machine.uid, -1)
    with pytest.raises(UntrustedFileError, match=f"owned by {OTHER}"):
        read_trusted(theirs, "remove it")
    link = job_dir / "link.pkl"
    link.symlink_to(mine)
    with pytest.raises(UntrustedFileError, match="it is a symbolic link"):
        read_trusted(link, "remove it")
    os.chmod(job_dir, 0o777)
    with pytest.raises(UntrustedFileError, match="not sticky"):
        read_trusted(mine, "remove it")


def test_sqlite_stores_and_code_dirs_are_refused_where_another_user_could_redirect_them(
    machine,
):
    from runner.launch.trust import check_store, check_trusted

    home = machine.base / "mine"
    home.mkdir(mode=0o755)
    db = home / "study.db"
    check_store(db, "the study", "fix")  # not made yet
    machine.as_other("ln", "-s", str(machine.target), str(machine.theirs() / "study.db"))
    os.rename(machine.theirs() / "study.db", db)  # their link, in a dir of mine
    with pytest.raises(
        UntrustedFileError, match=f"study.db is refused: it is a symbolic link made by {OTHER}"
    ):
        check_store(db, "the study", "fix")
    db.unlink()
    os.link(machine.target, db)
    with pytest.raises(UntrustedFileError, match="it has 2 hard links"):
        check_store(db, "the study", "fix")
    db.unlink()
    db.symlink_to(home / "elsewhere.db")  # my own link (a store on another disk) is fine
    check_store(db, "the study", "fix")
    code = home / "code"
    code.mkdir()
    check_trusted(code, "the snapshot", "fix")
    os.chown(code, machine.uid, -1)
    with pytest.raises(
        UntrustedFileError, match=f"the snapshot .*code is refused: it is owned by {OTHER}"
    ):
        check_trusted(code, "the snapshot", "fix")
    os.chown(code, 0, -1)
    os.chmod(home, 0o777)
    with pytest.raises(UntrustedFileError, match="its dir .*not sticky"):
        check_trusted(code, "the snapshot", "fix")
    machine.target_intact()


def test_stale_entry_dirs_of_other_users_and_links_are_left_alone(machine, entry_base):
    from runner.launch.entry import remove_stale_entry_dirs
    from runner.launch.procs import started

    dead = 2**22 + 1  # above pid_max's default: no such process
    mine = entry_base / f"runner-{dead}-a"
    theirs = entry_base / f"runner-{dead}-b"
    link = entry_base / f"runner-{dead}-c"
    # Named by pid, start time and host: pid 1 now is not the parent that started
    # later; another machine's pid (a shared $RUNNER_TMPDIR) is not this one's to judge.
    host = socket.gethostname().replace("-", "_")
    reused = entry_base / f"runner-1-{(started(1) or 0) + 1}-{host}-d"
    live = entry_base / f"runner-{os.getpid()}-{started(os.getpid())}-{host}-e"
    elsewhere = entry_base / f"runner-{dead}-1234-other_host.lan-f"
    for path in (mine, theirs, reused, live, elsewhere):
        path.mkdir()
        (path / "job.json").write_text("{}")
    os.chown(theirs, machine.uid, -1)
    link.symlink_to(machine.target.parent)
    assert sorted(remove_stale_entry_dirs()) == [reused, mine]
    assert theirs.is_dir() and link.is_symlink() and live.is_dir() and elsewhere.is_dir()
    machine.target_intact()


@pytest.mark.slow
def test_resume_report_and_rerun_refuse_pickles_another_user_could_have_written(machine, tmp_path):
    proc = sweep(tmp_path, machine.lease_dir())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    sweep_dir = tmp_path / "sweep"
    os.chown(sweep_dir / "0" / "return_value.pkl", machine.uid, -1)
    resumed = sweep(tmp_path, machine.base / "leases", "hydra.launcher.resume=true")
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert f"{sweep_dir / '0' / 'return_value.pkl'} is refused: runner loads it as code" in out
    assert f"owned by {OTHER}" in out and "Fix: remove" in out
    # The report leaves that point's value out and says why; the others are read.
    report = run([sys.executable, "-m", "runner.report", str(sweep_dir), "--no-plots"])
    assert "return_value.pkl is refused" in report.stdout + report.stderr
    os.chown(sweep_dir / "1" / ".runner" / "job.json", machine.uid, -1)
    rerun = run([sys.executable, "-m", "runner.rerun", str(sweep_dir / "1")], check=False)
    assert rerun.returncode == 2, rerun.stdout + rerun.stderr
    assert "job.json is refused" in rerun.stderr and f"owned by {OTHER}" in rerun.stderr
    assert not (sweep_dir / "reruns").exists()
