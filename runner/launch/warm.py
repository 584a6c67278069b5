"""Warm start: torchrun agents forked from a process that has already imported torch.

A cold point pays Python start-up and ``import torch`` in its torchrun agent and again
in every worker (seconds each). In warm mode (``hydra.launcher.warm=true``) the sweep
parent starts one *warm process* (``python -m runner.launch.warm``) that imports torch,
torchrun, Hydra, runner's worker and the task's module (or script, loaded as
``__mp_main__`` so that its ``__main__`` block does not run) once, and never
initialises CUDA. For every point the parent sends it a request and it forks a child from that
pristine state; the child is the point's torchrun agent, the same
``runner.launch.agent`` with the same arguments as a cold point, plus torchrun's own
``--start_method fork --run_path`` (:data:`WARM_AGENT_FLAGS`): its workers are forked
too, and run the same entry file with the same worker code path. So each point keeps
its own agent, free port, rendezvous, entry dir, logs, failure report, timeout and
elastic restarts, and module state one point changes is never seen by the next (each
starts from a fresh fork of the warm process, which runs no task itself).

The parent and the warm process talk over a Unix socket pair, one JSON line per
message; the parent's bound rendezvous socket travels with the request (SCM_RIGHTS),
so the port stays race-free as in cold mode. The warm process reaps its children and
reports their exit codes; the parent signals them directly (each leads its own
process group). When the parent dies (even by SIGKILL) the kernel sends the warm
process SIGTERM, and each agent SIGTERM when the warm process dies: every agent stops
its workers, as in cold mode.

The parent side (:class:`WarmServer`, the job's
:class:`~runner.launch.starters.AgentStarter` in warm mode, and :class:`WarmProcess`)
imports neither torch nor the task; only ``python -m runner.launch.warm`` does.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import NoReturn

from runner.launch.entry import AGENT_MODULE, agent_command
from runner.launch.procs import die_with_parent, exit_on_signal, parent_env

WARM_FD_ENV = "RUNNER_WARM_FD"
# torchrun's own options for an agent whose workers are forked, running the entry file
# in the same interpreter.
WARM_AGENT_FLAGS = ["--start_method", "fork", "--run_path"]
READY_TIMEOUT_S = 120.0
# A task module's list of the modules its ranks import when they start (the warm
# process imports them once, before any point forks).
RANK_IMPORTS = "RANK_IMPORTS"


class WarmStartError(RuntimeError):
    """The warm process cannot fork a point (CUDA initialised, or it is gone)."""


def warm_available() -> str | None:
    """None if warm start can work here, else the reason it cannot."""
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        return f"this platform ({sys.platform}) has no fork"
    return None


# --------------------------------------------------------------------------- parent side


class WarmProcess:
    """A forked agent, seen from the parent: the part of ``subprocess.Popen`` that
    :class:`~runner.launch.job.TorchrunJob` uses (pid, poll, wait, returncode)."""

    def __init__(self, server: WarmServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exit_code(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"warm agent {self.pid}", timeout or 0)
            self.server.wait_for_news(0.1)
        assert self.returncode is not None
        return self.returncode


class WarmServer:
    """The parent's handle on one warm process, and the
    :class:`~runner.launch.starters.AgentStarter` of warm jobs."""

    flags = WARM_AGENT_FLAGS

    def __init__(self, task: dict | None, cwd: str, sys_path: list[str]) -> None:
        """``task``: the task's reference (:func:`~runner.launch.entry.task_reference`),
        whose module or script the warm process imports ahead."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env[WARM_FD_ENV] = str(child_end.fileno())
        env.update(parent_env())  # what tests look for, as for agents
        env["PYTHONPATH"] = os.pathsep.join(
            [*sys_path, *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", __name__],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            pass_fds=[child_end.fileno()],
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        child_end.close()
        assert self.proc.stdin is not None
        with self.proc.stdin:  # the task's reference (a script's text may be long)
            self.proc.stdin.write(json.dumps(task).encode())
        self.sock = parent_end
        self._buffer = b""
        self._lock = threading.Lock()
        self._exits: dict[int, int] = {}
        self._replies: list[dict] = []
        self._ready = False

    def booted(self) -> bool:
        """Whether the warm process has said it is ready (or failed): never waits."""
        if not self._ready and not self._replies:
            try:
                with self._lock:
                    self._read(0)
            except WarmStartError:
                return True  # it ended: wait_ready says how
        return self._ready or bool(self._replies)

    def wait_ready(self) -> None:
        """Wait until the warm process has imported everything ahead (it boots while
        the caller does other work); WarmStartError, and the process ended, if it
        could not."""
        if self._ready:
            return
        ready = self._next_reply(READY_TIMEOUT_S)
        if "error" in ready:
            self.close()
            raise WarmStartError(ready["error"])
        self._ready = True

    def _read(self, timeout: float) -> None:
        """Read what the warm process sent within ``timeout``; file exits and replies."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return
        data = self.sock.recv(65536)
        if not data:
            raise WarmStartError(
                f"the warm process ended (exit code {self.proc.poll()}); see the log above"
            )
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            message = json.loads(line)
            if "exit" in message:
                self._exits[message["pid"]] = message["exit"]
            else:
                self._replies.append(message)

    def _next_reply(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._replies:
                remaining = deadline - time.monotonic()
                ended = self.proc.poll() is not None
                if ended:  # what it said before it ended (a booting one that failed)
                    with contextlib.suppress(WarmStartError):
                        self._read(0)
                if self._replies:
                    break
                if remaining <= 0 or ended:
                    raise WarmStartError(
                        "the warm process did not answer"
                        + (f" (it exited {self.proc.returncode})" if ended else "")
                    )
                self._read(min(remaining, 0.5))
            return self._replies.pop(0)

    def wait_for_news(self, timeout: float) -> None:
        """Sleep up to ``timeout``; a report of an ended agent ends it sooner. If the
        warm process itself has ended, just sleep: its agents' polls report them."""
        try:
            with self._lock:
                self._read(timeout)
        except WarmStartError:
            time.sleep(timeout)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_code(self, pid: int) -> int | None:
        with self._lock:
            with contextlib.suppress(WarmStartError):
                self._read(0)
            if pid not in self._exits and self.proc.poll() is not None:
                return -signal.SIGKILL  # the warm process died: its agents are gone too
            return self._exits.get(pid)

    def command(self, args: list[str]) -> list[str]:
        """What a forked agent runs, as a cold agent would run it (for launch.json)."""
        return agent_command(args)

    def start(
        self,
        args: list[str],
        env: dict[str, str],
        cwd: str,
        log: Path | None,
        listen: socket.socket | None,
    ) -> WarmProcess:
        """Fork an agent for one job: ``python -m runner.launch.agent ARGS``, warm; its
        output goes to ``log`` (else to the warm process's, the console)."""
        request = {"argv": args, "env": env, "cwd": cwd, "log": str(log) if log else None}
        data = (json.dumps(request) + "\n").encode()
        with self._lock:
            if listen is not None:
                socket.send_fds(self.sock, [data], [listen.fileno()])
            else:
                self.sock.sendall(data)
        reply = self._next_reply(60.0)
        if "error" in reply:
            raise WarmStartError(reply["error"])
        return WarmProcess(self, reply["pid"])

    def close(self) -> None:
        """End the warm process (it stops any agent still running)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------- warm side


def check_cuda_untouched() -> None:
    """Refuse to fork once CUDA is initialised: a forked child cannot use it."""
    import torch

    if torch.cuda.is_initialized():
        raise WarmStartError(
            "CUDA was initialised in the warm process (by the task's module at import?), "
            "and forked agents could not use it. Fix: do not touch CUDA at import time, "
            "or set hydra.launcher.warm=false"
        )


# What the warm process imports ahead, before the task's module (see _preload).
PRELOADED = [
    "torch",
    "torch.distributed",
    "torch.distributed.run",
    "torch.distributed.elastic.multiprocessing",
    "torch._dynamo",
    "cloudpickle",
    "omegaconf",
    "hydra.conf",
    "hydra.core.hydra_config",
    "hydra.core.utils",
    AGENT_MODULE,
    "runner.launch.worker",
]


def _preload(task: dict | None) -> None:
    """Import torch, torchrun and runner's agent and worker, ``torch._dynamo`` (which an
    optimizer's first construction imports: ~1 s in every rank otherwise), then the
    task's module or script (a script as ``__mp_main__``, so its ``__main__`` block
    does not run) and what that module names in ``RANK_IMPORTS`` (what its ranks import
    when they start: runner's trainer names its training module)."""
    import importlib

    for name in PRELOADED:
        importlib.import_module(name)
    from runner.launch.agent import install
    from runner.launch.codec import load_task

    install(quiet_release=True)  # its stderr is the sweep's console, which said it
    if task is not None:
        module = sys.modules.get(getattr(load_task(task), "__module__", "") or "")
        for name in getattr(module, RANK_IMPORTS, ()):
            importlib.import_module(name)


def _fork_agent(request: dict, fds: list[int], own: list[socket.socket]) -> int:
    """Fork an agent; ``own``: the warm process's sockets, which the agent lets go (its
    signals must not wake the warm process)."""
    check_cuda_untouched()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for end in own:
            end.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent(signal.SIGTERM)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ["RUNNER_WARM_AGENT"] = "1"
        if fds:
            os.environ["RUNNER_LISTEN_FD"] = str(fds[0])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        if request["log"]:
            out = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            os.dup2(out, 2)
        from runner.launch.agent import main as agent_main

        sys.argv = [AGENT_MODULE, *request["argv"]]
        code = agent_main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _receive(control: socket.socket, buffer: bytes) -> tuple[list[tuple[dict, list[int]]], bytes]:
    """Requests (each with the fds that came with it) read from the control socket."""
    fds = array.array("i")
    data, ancdata, _, _ = control.recvmsg(65536, socket.CMSG_SPACE(16 * fds.itemsize))
    if not data:
        raise EOFError
    received: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
            received += list(fds)
    buffer += data
    requests = []
    while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        requests.append((json.loads(line), received))
        received = []
    return requests, buffer


def _stop_all(children: set[int], grace: float = 10.0) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while children and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                children.discard(pid)
                continue
        time.sleep(0.05)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def serve(control: socket.socket, task: dict | None) -> int:
    """The warm process: import once, then fork an agent per request until the
    parent goes away; report every agent's exit code."""
    children: set[int] = set()
    # A pidfd per agent wakes the loop the moment one ends (Linux >= 5.3); else it
    # looks every 20 ms.
    pidfds: dict[int, int] = {}

    def send(message: dict) -> None:
        control.sendall((json.dumps(message) + "\n").encode())

    signal.signal(signal.SIGTERM, exit_on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # The kernel may hand SIGTERM to one of torch's threads, which leaves this thread
    # in select until its timeout: a byte on this socket wakes it at once, and the
    # handler then runs here.
    woken, wake = socket.socketpair()
    for end in (woken, wake):
        end.setblocking(False)
    signal.set_wakeup_fd(wake.fileno(), warn_on_full_buffer=False)
    try:
        try:
            _preload(task)
            check_cuda_untouched()
        except SystemExit:  # the parent let go while this one was still importing
            return 0
        except BaseException as error:
            with contextlib.suppress(OSError):  # and if the parent is gone, no one asks
                send({"error": f"{type(error).__name__}: {error}"})
            return 1
        send({"ready": True})
        buffer = b""
        while True:
            timeout = 0.02 if len(pidfds) < len(children) else 0.5
            waitables: list[socket.socket | int] = [control, woken, *pidfds.values()]
            readable, _, _ = select.select(waitables, [], [], timeout)
            if woken in readable:
                with contextlib.suppress(BlockingIOError):
                    woken.recv(64)
            if control in readable:
                try:
                    requests, buffer = _receive(control, buffer)
                except (EOFError, ConnectionResetError):
                    return 0  # the parent is gone
                for request, fds in requests:
                    try:
                        pid = _fork_agent(request, fds, [control, woken, wake])
                        children.add(pid)
                        with contextlib.suppress(AttributeError, OSError):
                            pidfds[pid] = os.pidfd_open(pid)
                        send({"pid": pid})
                    except Exception as error:
                        send({"error": f"{type(error).__name__}: {error}"})
                    finally:
                        for fd in fds:
                            os.close(fd)
            while children:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if not pid:
                    break
                children.discard(pid)
                if pid in pidfds:
                    os.close(pidfds.pop(pid))
                send({"pid": pid, "exit": os.waitstatus_to_exitcode(status)})
    finally:
        for fd in pidfds.values():
            os.close(fd)
        _stop_all(children)


def main() -> NoReturn:
    die_with_parent(signal.SIGTERM)
    control = socket.socket(fileno=int(os.environ.pop(WARM_FD_ENV)))
    code = 1
    try:
        task = json.loads(sys.stdin.read())
        sys.stdin.close()
        code = serve(control, task)
    except SystemExit as exit_:  # SIGTERM
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        # A SIGTERM that comes now (the parent closes the socket, then terminates)
        # must not raise past this: the interpreter would tear torch down.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Its agents are stopped and it ran no task: skip the interpreter's teardown of
        # torch, which takes ~0.5 s the sweep would wait for (and can abort, see
        # runner.launch.worker.exit_now).
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
