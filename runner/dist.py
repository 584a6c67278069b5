"""The launch core: run one job (a resolved Hydra config and a task) as one torchrun.

What a user sees:

* The job's full config, ``hydra`` node included, is resolved once here, in the parent,
  and written as JSON data into a private entry directory (0700, files 0600) with a
  fixed entry script. Every rank runs that script, which hands the data to
  :mod:`runner.worker`; no value is ever turned into code, and ``${now:...}`` and
  friends have the same value in every rank.
* The task travels by import path when it has one, else by value (cloudpickle), so
  closures and functions defined in a script's ``__main__`` work too.
* Single-node jobs get a loopback port that this module binds itself and hands to the
  agent as an open socket: no other process can take it between pick and use, and
  the rendezvous store listens on 127.0.0.1 only.
* The agent (``python -m runner.agent``: torchrun with a structured failure report) runs
  in its own session and dies with its parent; :func:`launch` waits for it, returns
  rank 0's return value, or raises :class:`LaunchError` naming the failing rank, its
  exit code, its exception and the tail of its log. Entry files are removed on success,
  failure, Ctrl-C and SIGTERM.

Nothing here imports torch: the parent stays light.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig
from omegaconf.errors import OmegaConfBaseException

ENTRY_SCRIPT = "entry.py"
JOB_FILE = "job.json"
TASK_FILE = "task.pkl"
RESULT_FILE = "result.pkl"
FAILURE_FILE = "failure.json"
LOOPBACK = "127.0.0.1"

# The entry script is fixed text: the job is data in job.json beside it.
ENTRY_SOURCE = """\
# Written by runner for one torchrun job; removed when the job ends.
# Every rank runs this file. The job itself is data, in job.json beside it.
import json
import sys
from pathlib import Path

_job_dir = Path(__file__).resolve().parent
_job = json.loads((_job_dir / "job.json").read_text())
sys.path[:0] = [p for p in _job["sys_path"] if p not in sys.path]

from runner.worker import main  # noqa: E402

main(_job, _job_dir)
"""


# --------------------------------------------------------------------------- config


@dataclass
class LaunchConfig:
    """Every option of one torchrun launch, under torchrun's own names, plus ``env``
    (extra environment for the agent and its workers) and ``timeout`` (seconds)."""

    nproc_per_node: int = 1
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_backend: str = "static"
    rdzv_endpoint: str = ""
    rdzv_id: str = "none"
    rdzv_conf: str = ""
    master_addr: str = LOOPBACK
    master_port: int | None = None
    max_restarts: int = 0
    monitor_interval: float = 0.1
    redirects: str = "3"
    tee: str = "0:3"
    log_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None

    @classmethod
    def from_config(cls, node: Any, **overrides: Any) -> LaunchConfig:
        """Take the fields this class knows from a config node (e.g. ``hydra.launcher``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: node[k] for k in names if k in node}
        if "env" in values and values["env"] is not None:
            values["env"] = {str(k): str(v) for k, v in dict(values["env"]).items()}
        values["nnodes"] = str(values.get("nnodes", "1"))
        values.update(overrides)
        launch = cls(**values)
        launch.check()
        return launch

    @property
    def max_nodes(self) -> int:
        return int(self.nnodes.split(":")[-1])

    @property
    def single_node(self) -> bool:
        return self.max_nodes == 1

    def check(self) -> None:
        """Raise ValueError, naming the key, the value and the fix, for unusable values."""

        def bad(key: str, value: Any, rule: str, fix: str) -> ValueError:
            return ValueError(f"hydra.launcher.{key}={value!r} is invalid: {rule}. Fix: {fix}")

        if not isinstance(self.nproc_per_node, int) or self.nproc_per_node < 1:
            raise bad(
                "nproc_per_node",
                self.nproc_per_node,
                "must be an integer >= 1",
                "nproc_per_node=1 (or trainer.nproc_per_node=N for runner's app)",
            )
        if (
            not re.fullmatch(r"\d+(:\d+)?", self.nnodes)
            or min(int(n) for n in self.nnodes.split(":")) < 1
        ):
            raise bad("nnodes", self.nnodes, "must be N or MIN:MAX with N >= 1", "nnodes=1")
        if self.timeout is not None and self.timeout <= 0:
            raise bad(
                "timeout", self.timeout, "must be > 0 seconds, or null for none", "timeout=3600"
            )
        if self.max_restarts < 0:
            raise bad("max_restarts", self.max_restarts, "must be >= 0", "max_restarts=0")
        if self.monitor_interval <= 0:
            raise bad(
                "monitor_interval", self.monitor_interval, "must be > 0", "monitor_interval=0.1"
            )
        if not self.single_node:
            if not (self.rdzv_endpoint or self.master_port):
                raise bad(
                    "rdzv_endpoint",
                    self.rdzv_endpoint,
                    f"a {self.nnodes}-node job needs a rendezvous address every node reaches",
                    "rdzv_endpoint=HOST:PORT of the first node, the same on every node",
                )
            if self.rdzv_endpoint and not re.fullmatch(r"\[?[\w.:-]+\]?:\d+", self.rdzv_endpoint):
                raise bad(
                    "rdzv_endpoint",
                    self.rdzv_endpoint,
                    "must be HOST:PORT (sweep point N uses PORT + N)",
                    "rdzv_endpoint=node001:29400",
                )
            if self.rdzv_backend == "static" and ":" in self.nnodes:
                raise bad(
                    "nnodes",
                    self.nnodes,
                    "MIN:MAX needs an elastic rendezvous (static waits for a fixed count)",
                    "rdzv_backend=c10d",
                )

    def for_point(self, num: int) -> LaunchConfig:
        """This launch for sweep point ``num``: a multi-node point gets its own rendezvous
        id (``<rdzv_id>-<num>``) and port (``PORT + num``), so the agents of two points
        can never join each other's group, and every node computes the same values
        from the same command. Single-node points need neither (each binds its own
        free loopback port)."""
        if self.single_node:
            return self

        def shifted(endpoint: str) -> str:
            host, _, port = endpoint.rpartition(":")
            return f"{host}:{int(port) + num}"

        return dataclasses.replace(
            self,
            rdzv_id=f"{self.rdzv_id}-{num}",
            rdzv_endpoint=shifted(self.rdzv_endpoint) if self.rdzv_endpoint else "",
            master_port=self.master_port + num if self.master_port else self.master_port,
        )


# --------------------------------------------------------------------------- ports

_ports_lock = threading.Lock()
_ports_in_use: set[int] = set()


def free_port(host: str = LOOPBACK) -> socket.socket:
    """Return a socket bound to a free port on ``host`` (port from ``getsockname()``).

    The port is never one already handed to a job of this process that is still
    running; it stays reserved until :func:`release_port`. Keep the socket open until
    the agent has it, so no other process can take the port in between.
    """
    with _ports_lock:
        for _ in range(100):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            port = sock.getsockname()[1]
            if port not in _ports_in_use:
                _ports_in_use.add(port)
                return sock
            sock.close()
    raise RuntimeError("no free loopback port found in 100 tries")


def release_port(port: int) -> None:
    """Make ``port`` available to :func:`free_port` again (its job has ended)."""
    with _ports_lock:
        _ports_in_use.discard(port)


# --------------------------------------------------------------------------- config as data


def _escape(value: str) -> str:
    """Escape ``${`` (and backslashes before it) so OmegaConf reads the literal string."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)


def resolved_data(node: DictConfig | ListConfig) -> Any:
    """The config as plain JSON-able data, every interpolation resolved here and now.

    Resolved strings are escaped so that a value which itself reads ``${...}`` stays
    that literal string when the rank rebuilds the config. An interpolation that cannot
    be resolved yet (``hydra.job.num`` in a single run) is kept as written, so it
    behaves in the rank exactly as it would have in the parent.
    """
    if isinstance(node, DictConfig):
        keys: Iterator[Any] = iter(node.keys())
        out: Any = {}
    else:
        keys = iter(range(len(node)))
        out = []
    for key in keys:
        try:
            value = node[key]
        except OmegaConfBaseException:
            value = node._get_node(key)._value()  # unresolvable: keep it as written
        else:
            if isinstance(value, (DictConfig, ListConfig)):
                value = None if value._is_none() else resolved_data(value)
            elif isinstance(value, Enum):
                value = value.name
            elif isinstance(value, str):
                value = _escape(value)
            elif isinstance(value, bytes | Path):
                value = str(value)
        if isinstance(out, dict):
            out[str(key.name if isinstance(key, Enum) else key)] = value
        else:
            out.append(value)
    return out


def job_config_data(config: DictConfig) -> dict:
    """The full job config (task config plus its ``hydra`` node) as resolved data."""
    from hydra.core.hydra_config import HydraConfig

    data = resolved_data(config)
    if "hydra" not in data and HydraConfig.initialized():
        data["hydra"] = resolved_data(HydraConfig.instance().cfg)["hydra"]
    return data


# --------------------------------------------------------------------------- entry files


def _entry_base() -> Path:
    base = Path(os.environ.get("RUNNER_TMPDIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return base


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_entry_dirs() -> list[Path]:
    """Remove entry dirs left by runner parents that no longer exist (killed with -9
    together with their agents); returns what was removed."""
    removed = []
    for path in _entry_base().glob("runner-*-*"):
        match = re.fullmatch(r"runner-(\d+)-.*", path.name)
        if match and path.is_dir() and not _pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path`` and rename it into place: a reader sees
    the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def task_reference(task_function: Callable) -> str | None:
    """``module:qualname`` when the task can be imported by name in another process."""
    module = getattr(task_function, "__module__", None)
    qualname = getattr(task_function, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    try:
        import importlib

        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if obj is task_function else None


def write_entry(
    config_data: dict, task_function: Callable, cwd: str, sys_path: list[str] | None = None
) -> Path:
    """Create the private entry dir (0700) with the entry script, job.json and, for a
    task with no import path, task.pkl (all 0600). Returns the entry script's path.
    ``sys_path``: the import path the ranks get (default: this process's)."""
    entry_dir = Path(tempfile.mkdtemp(prefix=f"runner-{os.getpid()}-", dir=_entry_base()))
    try:
        reference = task_reference(task_function)
        if reference is None:
            import cloudpickle

            _write_private(entry_dir / TASK_FILE, cloudpickle.dumps(task_function))
        if sys_path is None:
            sys_path = [os.path.abspath(p) if p else cwd for p in sys.path]
        job = {
            "config": config_data,
            "task": reference,
            "sys_path": list(dict.fromkeys(sys_path)),
            "cwd": cwd,
        }
        _write_private(entry_dir / JOB_FILE, json.dumps(job).encode())
        _write_private(entry_dir / ENTRY_SCRIPT, ENTRY_SOURCE.encode())
    except BaseException:
        shutil.rmtree(entry_dir, ignore_errors=True)
        raise
    return entry_dir / ENTRY_SCRIPT


# --------------------------------------------------------------------------- command


def torchrun_command(
    launch: LaunchConfig, entry_file: Path, port: int | None, warm: bool = False
) -> list[str]:
    """The agent's command line: torchrun's own options, in torchrun's own spelling.
    ``warm``: the agent is forked from a warm process and forks its workers, which run
    the entry file in that same interpreter (torchrun's ``--start_method fork
    --run_path``)."""
    cmd = [
        sys.executable,
        "-m",
        "runner.agent",
        "--nproc_per_node",
        str(launch.nproc_per_node),
        "--nnodes",
        launch.nnodes,
        "--max_restarts",
        str(launch.max_restarts),
        "--monitor_interval",
        str(launch.monitor_interval),
    ]
    if launch.single_node:
        # torchrun's static rendezvous on 127.0.0.1, with a fresh worker store per
        # restart (see runner.agent).
        cmd += ["--rdzv_backend", "runner-static", "--rdzv_endpoint", f"{LOOPBACK}:{port}"]
    else:
        # Multi-node: torchrun's own rendezvous (c10d, or static with node ranks); the
        # same command runs on every node.
        cmd += [
            "--node_rank",
            str(launch.node_rank),
            "--rdzv_backend",
            launch.rdzv_backend,
            "--rdzv_id",
            launch.rdzv_id,
        ]
        if launch.rdzv_endpoint:
            cmd += ["--rdzv_endpoint", launch.rdzv_endpoint]
        if launch.rdzv_conf:
            cmd += ["--rdzv_conf", launch.rdzv_conf]
        cmd += ["--master_addr", launch.master_addr]
        if launch.master_port:
            cmd += ["--master_port", str(launch.master_port)]
    if launch.log_dir:
        cmd += ["--log_dir", launch.log_dir]
        if launch.redirects:
            cmd += ["--redirects", launch.redirects]
        if launch.tee:
            cmd += ["--tee", launch.tee]
    if warm:
        cmd += ["--start_method", "fork", "--run_path"]
    cmd.append(str(entry_file))
    return cmd


# --------------------------------------------------------------------------- errors


class LaunchError(RuntimeError):
    """A torchrun job failed: which rank, how, and the end of its log."""

    def __init__(
        self,
        message: str,
        *,
        exitcode: int | None = None,
        rank: int | None = None,
        failures: list[dict] | None = None,
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.exitcode = exitcode
        self.rank = rank
        self.failures = failures or []
        self.log_tail = log_tail


class LaunchTimeout(LaunchError):
    """The job ran past its ``timeout`` and was stopped."""


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- running jobs

_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_PR_SET_PDEATHSIG = 1


def run_times(started: float | None, ended: float | None) -> dict[str, float | None]:
    """The start, end and duration fields of a job's ``launch.json``."""
    duration = round(ended - started, 3) if started and ended else None
    return {"start_time": started, "end_time": ended, "duration_s": duration}


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (no-op elsewhere)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


class TorchrunJob:
    """One job as one torchrun agent: start it, poll it, stop it, collect its result.

    The sweep launcher keeps several of these running; :func:`launch` runs one.
    """

    def __init__(
        self,
        config: DictConfig | None,
        task_function: Callable,
        launch: LaunchConfig,
        job_dir: str | Path,
        *,
        console: bool = True,
        config_data: dict | None = None,
        sys_path: list[str] | None = None,
        warm: Any = None,
    ) -> None:
        """``config`` is resolved here; or pass ``config_data`` resolved elsewhere (a
        Slurm node runs what its submitter resolved), with that process's ``sys_path``.
        ``warm``: a :class:`runner.warm.WarmServer` to fork the agent from (else the
        agent is a fresh ``python -m runner.agent``)."""
        self.launch = launch
        self.job_dir = Path(job_dir)
        self.console = console
        self.config_data = config_data if config is None else job_config_data(config)
        assert self.config_data is not None
        self.task_function = task_function
        self.sys_path = sys_path
        self.warm = warm
        self.cwd = (
            str(self.config_data["hydra"]["runtime"]["cwd"])
            if "hydra" in self.config_data
            else os.getcwd()
        )
        self.entry_file: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.command: list[str] = []
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.returncode: int | None = None
        self.timed_out = False
        self.rank0_here = False
        self._log_file: Any = None

    @property
    def entry_dir(self) -> Path | None:
        return self.entry_file.parent if self.entry_file else None

    def start(self, extra_env: dict[str, str] | None = None) -> None:
        """Write the entry dir and start the agent in its own session."""
        launch = self.launch
        self.job_dir.mkdir(parents=True, exist_ok=True)
        if launch.log_dir is None:
            launch = self.launch = dataclasses.replace(
                launch, log_dir=str(self.job_dir / "torchrun")
            )
        self.entry_file = write_entry(self.config_data, self.task_function, self.cwd, self.sys_path)
        listen = free_port() if launch.single_node else None
        try:
            if listen is not None:
                self.port = listen.getsockname()[1]
            elif launch.rdzv_endpoint:
                self.port = int(launch.rdzv_endpoint.rpartition(":")[2])
            else:
                self.port = launch.master_port
            self.command = torchrun_command(
                launch, self.entry_file, self.port, warm=self.warm is not None
            )
            env = dict(os.environ)
            env.update(launch.env)
            env.update(extra_env or {})
            env["RUNNER_PARENT_PID"] = str(os.getpid())
            env["RUNNER_ENTRY_DIR"] = str(self.entry_dir)
            env["RUNNER_FAILURE_FILE"] = str(self.entry_dir / FAILURE_FILE)
            env["PYTHONUNBUFFERED"] = "1"
            if listen is not None:
                env["RUNNER_LISTEN_FD"] = str(listen.fileno())
                env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # ranks talk over loopback only
            if self.console:
                out = None
            else:
                self._log_file = out = open(self.job_dir / "torchrun.log", "ab")
            self.started_at = time.time()
            if self.warm is not None:
                self.proc = self.warm.spawn(
                    self.command[3:],  # after "python -m runner.agent"
                    env,
                    self.cwd,
                    None if self.console else str(self.job_dir / "torchrun.log"),
                    listen.fileno() if listen is not None else None,
                )
                return
            self.proc = subprocess.Popen(
                self.command,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                pass_fds=[listen.fileno()] if listen else (),
                preexec_fn=die_with_parent,
            )
        except BaseException:
            if listen is not None:
                release_port(listen.getsockname()[1])
            self.cleanup()
            raise
        finally:
            if listen is not None:
                listen.close()  # the agent holds it now

    def poll(self) -> int | None:
        """The agent's exit code, or None while it runs; stops it past its timeout."""
        assert self.proc is not None
        code = self.proc.poll()
        if (
            code is None
            and self.launch.timeout
            and self.started_at
            and time.time() - self.started_at > self.launch.timeout
        ):
            self.timed_out = True
            self.stop()
            code = self.proc.poll()
        if code is not None and self.returncode is None:
            self.returncode = code
            self.ended_at = time.time()
            assert self.entry_dir is not None
            self.rank0_here = (self.entry_dir / RESULT_FILE).is_file()
            if self.port is not None and self.launch.single_node:
                release_port(self.port)
        return code

    def wait(self) -> int:
        """Block until the agent ends (or its timeout stops it)."""
        while (code := self.poll()) is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                assert self.proc is not None
                self.proc.wait(timeout=0.2)
        return code

    def stop(self, grace: float = 10.0) -> None:
        """Stop this job's agent and workers (see :func:`stop_jobs`)."""
        stop_jobs([self], grace)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)

    def wait_stopped(self, deadline: float) -> None:
        """Wait for the agent until ``deadline`` (monotonic), then SIGKILL its group."""
        assert self.proc is not None
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def result(self) -> Any:
        """Rank 0's return value; raises LaunchError if the job failed."""
        assert self.returncode is not None, "result() before the job ended"
        assert self.entry_dir is not None
        if self.returncode == 0:
            import cloudpickle

            result_file = self.entry_dir / RESULT_FILE
            if not result_file.is_file() and not self.launch.single_node:
                return None  # rank 0 ran on another node: its parent has the result
            if not result_file.is_file():
                raise LaunchError(
                    f"torchrun exited 0 but rank 0 left no result in {result_file}", exitcode=0
                )
            return cloudpickle.loads(result_file.read_bytes())
        raise self.error()

    def error(self) -> LaunchError:
        """The failure of this job as a LaunchError, from the agent's failure report."""
        assert self.entry_dir is not None
        report_file = self.entry_dir / FAILURE_FILE
        report = json.loads(report_file.read_text()) if report_file.is_file() else {}
        failures = report.get("failures", [])
        where = f"job dir {self.job_dir}"
        if self.timed_out:
            return LaunchTimeout(
                f"torchrun job timed out after {self.launch.timeout:g} s and was stopped "
                f"(raise hydra.launcher.timeout if it needs longer); {where}",
                exitcode=self.returncode,
                failures=failures,
                log_tail=_tail(self.job_dir / "torchrun.log"),
            )
        if not failures:
            tail = _tail(self.job_dir / "torchrun.log")
            detail = report.get("error") or "the agent failed before any worker reported"
            return LaunchError(
                f"torchrun exited with code {self.returncode}: {detail}; {where}"
                + (f"\n--- torchrun.log (last lines) ---\n{tail}" if tail else ""),
                exitcode=self.returncode,
                log_tail=tail,
            )
        first = failures[0]
        log_path = Path(first["log_file"]) if first.get("log_file") else None
        tail = _tail(log_path)
        how = (
            f"was killed by {first['signal']}"
            if first.get("signal")
            else f"exited with code {first['exitcode']}"
        )
        message = (
            f"rank {first['rank']} (local rank {first['local_rank']}) {how}: "
            f"{first.get('exception') or 'no exception recorded'}; {where}"
        )
        if tail:
            message += f"\n--- {log_path} (last lines) ---\n{tail}"
        return LaunchError(
            message,
            exitcode=first["exitcode"],
            rank=first["rank"],
            failures=failures,
            log_tail=tail,
        )

    def launch_record(self) -> dict:
        """What launch.json records: enough to see, and repeat, how the job ran."""
        return {
            "command": self.command,
            "cwd": self.cwd,
            "port": self.port,
            "nproc_per_node": self.launch.nproc_per_node,
            "nnodes": self.launch.nnodes,
            **(
                {}
                if self.launch.single_node
                else {
                    "node_rank": self.launch.node_rank,
                    "rdzv_backend": self.launch.rdzv_backend,
                    "rdzv_endpoint": self.launch.rdzv_endpoint,
                    "rdzv_id": self.launch.rdzv_id,
                    "rank0_here": self.rank0_here,
                }
            ),
            **run_times(self.started_at, self.ended_at),
            "exit_code": self.returncode,
            "timed_out": self.timed_out,
            "agent_pid": self.proc.pid if self.proc else None,
            "warm": self.warm is not None,
        }

    def cleanup(self) -> None:
        """Remove the entry dir and close our handle on the log (idempotent)."""
        if self.entry_dir is not None:
            shutil.rmtree(self.entry_dir, ignore_errors=True)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def stop_jobs(jobs: list, grace: float = 10.0) -> None:
    """Ask every running job to stop (a torchrun agent gets SIGTERM and stops its own
    workers; a Slurm job is cancelled), wait up to ``grace`` seconds in all, then force
    what is left (SIGKILL; ``scancel -s KILL``). Workers outliving their agent get
    SIGKILL from the kernel (they ask for it at start, see runner.worker)."""
    live = [job for job in jobs if job.running()]
    for job in live:
        job.terminate()
    deadline = time.monotonic() + grace
    for job in live:
        job.wait_stopped(deadline)


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) so ``finally`` clean-up runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def launch(
    config: DictConfig,
    task_function: Callable,
    launch_config: LaunchConfig,
    job_dir: str | Path,
    *,
    console: bool = True,
    warm: bool = False,
) -> Any:
    """Run ``task_function`` on ``config`` in every rank of one torchrun; return rank 0's
    return value or raise LaunchError. Clean-up happens whatever way this ends.
    ``warm``: fork the agent and its workers from a warm process (see runner.warm)."""
    remove_stale_entry_dirs()
    job = TorchrunJob(config, task_function, launch_config, job_dir, console=console)
    with sigterm_as_exit():
        server = start_warm_server(task_function, job.cwd) if warm else None
        job.warm = server
        try:
            job.start()
            job.wait()
            return job.result()
        finally:
            job.stop()
            job.cleanup()
            if server is not None:
                server.close()


def start_warm_server(task_function: Callable, cwd: str) -> Any:
    """A warm process for ``task_function``'s jobs, or None (with a one-line notice)
    when warm start cannot work here: no fork, or the task's module fails to import
    ahead. Then jobs run cold, as if warm were off."""
    import logging

    from runner.warm import WarmServer, WarmStartError, warm_available

    reason = warm_available()
    if reason is None:
        reference = task_reference(task_function)
        preload = [reference.partition(":")[0]] if reference else []
        sys_path = [os.path.abspath(p) if p else cwd for p in sys.path]
        try:
            return WarmServer(preload, cwd, list(dict.fromkeys(sys_path)))
        except WarmStartError as error:
            reason = str(error).splitlines()[0]
    logging.getLogger(__name__).warning("warm start unavailable (%s); running cold", reason)
    return None


def launch_current_job(task_function: Callable, task_cfg: DictConfig) -> Any:
    """From inside a Hydra task: run this same job through torchrun, launched as
    ``hydra.launcher`` says, and return rank 0's return value."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    launch_config = LaunchConfig.from_config(hydra_cfg.launcher)
    return launch(
        task_cfg,
        task_function,
        launch_config,
        hydra_cfg.runtime.output_dir,
        warm=bool(hydra_cfg.launcher.get("warm", False)),
    )


def wanted_world_size(default: int = 1) -> int:
    """Processes the current Hydra job asks for (``hydra.launcher``: nproc x nnodes)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    launcher = HydraConfig.get().launcher
    if "nproc_per_node" not in launcher:
        return default
    return int(launcher.nproc_per_node) * int(str(launcher.get("nnodes", 1)).split(":")[-1])


__all__ = [
    "LaunchConfig",
    "LaunchError",
    "LaunchTimeout",
    "TorchrunJob",
    "free_port",
    "launch",
    "launch_current_job",
    "release_port",
    "resolved_data",
    "torchrun_command",
    "write_entry",
]
