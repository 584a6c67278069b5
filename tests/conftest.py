"""Shared fixtures. Anything that starts torchrun is slow (every rank imports torch),
so expensive runs are session fixtures that several tests read."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.launch.procs import pid_alive
from runner.launch.procs import started as process_started

# A shell starts background jobs with SIGINT ignored, and an ignored signal stays
# ignored across exec: run from `.ci/run &`, every runner parent a test interrupts with
# SIGINT (Ctrl-C) would ignore it and hang. The tests are about Ctrl-C, so they get it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
APPS = Path(__file__).resolve().parent / "apps"
PROBE_APP = APPS / "probe_app.py"
# A callback that saves into HydraConfig.get().runtime.output_dir (tests.apps.callbacks).
MARK_OWN_DIR = "+hydra.callbacks.mark._target_=tests.apps.callbacks.MarkOwnDir"


@pytest.fixture(scope="session", autouse=True)
def session_entries(tmp_path_factory) -> Path:
    """Entry dirs of the jobs that module and session fixtures start."""
    base = tmp_path_factory.mktemp("entries")
    os.environ["RUNNER_TMPDIR"] = str(base)
    return base


@pytest.fixture(autouse=True)
def entry_base(tmp_path_factory, monkeypatch) -> Path:
    """Entry dirs of this test's jobs, in a dir of its own (inherited by what it
    starts): a leftover fails the test that left it, not a later one."""
    base = tmp_path_factory.mktemp("entries")
    monkeypatch.setenv("RUNNER_TMPDIR", str(base))
    return base


@pytest.fixture(autouse=True)
def no_hydra_state():
    """Each test starts, and leaves, with no Hydra state in this process (a sweep run
    in-process sets HydraConfig's singleton; plain-Python callers expect none)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    def clear() -> None:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()

    clear()
    yield
    clear()


@pytest.fixture(autouse=True)
def lease_dir(tmp_path_factory, monkeypatch) -> Path:
    """Each test's device leases in a dir of its own (inherited by what it starts), so
    tests with named devices never wait on each other or on other runs here."""
    path = tmp_path_factory.mktemp("leases")
    monkeypatch.setenv("RUNNER_LEASE_DIR", str(path))
    return path


@pytest.fixture
def prompt_agent(monkeypatch):
    """runner's prompt agent and log tailers installed in this process (as in a
    torchrun agent) for one test; torch's own are put back after it."""
    import torch.distributed.elastic.multiprocessing.api as processes
    import torch.distributed.launcher.api as launcher

    from runner.launch import gates

    monkeypatch.setattr(launcher, "LocalElasticAgent", launcher.LocalElasticAgent)
    monkeypatch.setattr(processes, "TailLog", processes.TailLog)
    monkeypatch.setattr(gates, "_prompt", dict(gates._prompt))
    reason = gates.install_prompt()
    assert reason is None, f"the prompt agent is off: {reason}"


# What this run of the suite must have (comma-separated: slurm, netns, other_user,
# postgres).
# .ci/run sets it, so a cluster, namespaces or a second user that CI asked for and
# did not get fail the tests that need them instead of skipping them; locally they
# skip, saying why.
REQUIRED = {w.strip() for w in os.environ.get("RUNNER_TESTS_REQUIRE", "").split(",") if w.strip()}


def unavailable(what: str, reason: str):
    """Skip a test that needs ``what`` (slurm, netns, other_user), or fail it where it
    is required."""
    if what in REQUIRED:
        pytest.fail(f"{what} is required here (RUNNER_TESTS_REQUIRE) but {reason}")
    pytest.skip(reason)


def entry_dirs(base: Path) -> list[Path]:
    return sorted(base.glob("runner-*"))


def run(
    args: list[str],
    *,
    cwd: Path | str = REPO,
    env: dict | None = None,
    timeout: float = 300,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run a command with the test's environment; fail with its output if ``check``."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        pytest.fail(
            f"{args} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
            f"\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def started(args: list[str], *, cwd: Path | str = REPO) -> subprocess.Popen:
    """A command started in the background, its stdout and stderr in one text pipe
    (``communicate()`` reads them)."""
    return subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def runner_cli(*overrides: str, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "runner", *overrides], **kwargs)


def modules_imported(stderr: str) -> list[str]:
    """The modules a ``python -X importtime`` process imported, nested ones included
    (its stderr lines read ``import time: SELF | CUMULATIVE |   indented.name``)."""
    return [
        line.split("|")[-1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:")
    ]


def processes_of(parent_pid: int) -> list[int]:
    """PIDs (agents and workers) started for jobs of runner parent ``parent_pid``."""
    needle = f"RUNNER_PARENT_PID={parent_pid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            status = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if needle in environ.split(b"\0") and status != "Z":
            found.append(int(proc.name))
    return found


def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def _started(pid: int) -> int | None:
    """A live (not zombie) process's start time (procs.started); None once it has
    ended."""
    born = process_started(pid)
    return born if born is not None and pid_alive(pid, born) else None


class Followed:
    """The processes of a runner parent's jobs, followed by pid from when they are first
    seen. ``processes_of`` alone cannot tell when one has ended: a process that is
    exiting has dropped its memory, so its environ reads empty, while it still holds its
    files and locks until it is a zombie. The start time tells a reused pid apart."""

    def __init__(self, parent_pid: int) -> None:
        self.parent_pid = parent_pid
        self.seen: dict[int, int | None] = {}
        self.look()

    def look(self) -> None:
        for pid in processes_of(self.parent_pid):
            self.seen.setdefault(pid, _started(pid))

    def left(self) -> list[int]:
        self.look()
        return [pid for pid, born in self.seen.items() if born and pid_alive(pid, born)]

    def wait_gone(self, what: str, timeout: float = 30) -> None:
        wait_until(lambda: not self.left(), timeout, what)


def interrupt_and_expect_nothing_left(parent: subprocess.Popen, sig: int, entry_base: Path):
    """Send ``sig`` to a runner parent; then no agent or worker of it may be left, nor
    any entry dir of this test session."""
    followed = Followed(parent.pid)
    parent.send_signal(sig)
    parent.wait(timeout=60)
    wait_until(
        lambda: not followed.left() and not entry_dirs(entry_base),
        30,
        f"the processes and entry dirs of parent {parent.pid} to go after {sig!r}",
    )


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def launch_status(job_dir: Path) -> str | None:
    """The status in a point's launch.json (RUNNING from its start), or None."""
    try:
        return read_json(job_dir / "launch.json")["status"]
    except (OSError, ValueError, KeyError):
        return None


def probe_records(job_dir: Path) -> list[dict]:
    return [read_json(p) for p in sorted(job_dir.glob("probe_rank*.json"))]


# Small, fast training settings for tests that do not measure learning.
FAST = ["trainer.epochs=2", "data.n_samples=400", "trainer.progress=lines"]


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """``python -m runner`` with no overrides but the run dir: the default experiment."""
    run_dir = tmp_path_factory.mktemp("default") / "run"
    proc = runner_cli(f"hydra.run.dir={run_dir}")
    return run_dir, proc


@pytest.fixture
def fake_jobs(monkeypatch):
    """``hydra/launcher=torchrun`` with the fake jobs of tests/fakes.py."""
    from tests.fakes import FakeJobs

    FakeJobs.reset()
    monkeypatch.setattr("runner.sweep.local.LocalJobs", FakeJobs)
    yield
    FakeJobs.reset()


def search_app(sweep_dir: Path, *overrides: str) -> list[str]:
    """A search of the search app (tests/apps/search_app.py, a Hydra app that is not
    runner's) over x, 2 trials at a time, into ``sweep_dir``."""
    return [
        sys.executable,
        str(APPS / "search_app.py"),
        "-m",
        "x=interval(-1,1)",
        "hydra.launcher.max_parallel=2",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def search_study(sweep_dir: Path):
    """The study of a ``hydra/sweeper=search`` run into ``sweep_dir`` (default storage)."""
    import optuna

    # The sweep dir's own database holds one study, whatever its name.
    return optuna.load_study(study_name=None, storage=f"sqlite:///{sweep_dir / 'study.db'}")


def in_terminal(
    args: list[str],
    *,
    columns: int = 100,
    timeout: float = 120,
    interrupt_when=None,
) -> tuple[int, str]:
    """Run ``args`` in a pseudo-terminal of ``columns`` columns, as a user's shell
    would (its own process group); with ``interrupt_when``, press Ctrl-C (SIGINT to
    the group) once that predicate holds. Returns the exit code and the screen's bytes
    as text."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    env = dict(os.environ, COLUMNS=str(columns))
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=env,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + timeout
    interrupted = interrupt_when is None
    while time.monotonic() < deadline:
        if not interrupted and interrupt_when():
            os.killpg(proc.pid, signal.SIGINT)
            interrupted = True
        if not select.select([leader], [], [], 0.2)[0]:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(leader, 65536)
        except OSError:  # the program ended and closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    os.close(leader)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session (see :func:`serving_postgres`):
    yields its URL without a database name."""
    with serving_postgres("127.0.0.1") as url:
        yield url


@contextlib.contextmanager
def serving_postgres(address: str, inside: list[str] | None = None):
    """:func:`tests.postgres.serving`; where this machine cannot, the test skips (or
    fails, where RUNNER_TESTS_REQUIRE names postgres)."""
    from tests.postgres import Unavailable, serving

    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(serving(address, inside))
        except Unavailable as why:
            unavailable("postgres", str(why))
        yield url


@pytest.fixture
def postgres(postgres_server) -> str:
    """A fresh database on the session's PostgreSQL server: its URL."""
    import uuid

    import psycopg

    name = f"t{uuid.uuid4().hex[:12]}"
    admin = postgres_server.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"{postgres_server}/{name}"


class TwoNodes:
    """Two network namespaces joined by a veth pair, hostnames rnode0 and rnode1."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.ns = [f"rn{tag}n{k}" for k in range(2)]
        self.hosts = ["rnode0", "rnode1"]
        self.addrs = [f"10.{tag % 200 + 20}.{tag % 250}.{k + 1}" for k in range(2)]
        veth = [f"rv{tag}x{k}" for k in range(2)]
        for ns in self.ns:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            # `ip netns exec` bind-mounts /etc/netns/NS/hosts over /etc/hosts.
            Path(f"/etc/netns/{ns}").mkdir(parents=True, exist_ok=True)
            Path(f"/etc/netns/{ns}/hosts").write_text(
                "127.0.0.1 localhost\n"
                + "".join(f"{a} {h}\n" for a, h in zip(self.addrs, self.hosts, strict=True))
            )
        ip = ["ip"]
        steps = [
            ["link", "add", veth[0], "type", "veth", "peer", "name", veth[1]],
            *[["link", "set", veth[k], "netns", self.ns[k]] for k in range(2)],
            *[
                ["-n", self.ns[k], "addr", "add", f"{self.addrs[k]}/24", "dev", veth[k]]
                for k in range(2)
            ],
            *[["-n", self.ns[k], "link", "set", veth[k], "up"] for k in range(2)],
            *[["-n", self.ns[k], "link", "set", "lo", "up"] for k in range(2)],
        ]
        for step in steps:
            subprocess.run(ip + step, check=True, capture_output=True)

    def command(self, k: int, argv: list[str]) -> list[str]:
        """``argv`` run on node ``k``: its namespace, its own hostname."""
        script = f'hostname {self.hosts[k]} && exec "$@"'
        return [
            "ip",
            "netns",
            "exec",
            self.ns[k],
            "unshare",
            "--uts",
            "sh",
            "-c",
            script,
            "sh",
        ] + argv

    def close(self) -> None:
        for ns in self.ns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes():
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        unavailable(
            "netns",
            "two network namespaces need root and iproute2/util-linux "
            f"(missing: {missing or 'root'}); the loopback tests cover the rest",
        )
    try:
        nodes = TwoNodes()
    except subprocess.CalledProcessError as error:
        unavailable("netns", f"cannot create network namespaces here: {error.stderr!r}")
    yield nodes
    nodes.close()
