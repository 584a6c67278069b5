"""How a job's torchrun agent starts: an :class:`AgentStarter` the job is given.

Cold start (:class:`SubprocessStarter`): the agent is a fresh
``python -m runner.launch.agent`` in its own session, told to die with its parent; it
imports torch itself. Warm start (:class:`runner.launch.warm.WarmServer`, made by
:func:`warm_starter`): the agent is forked from a process that has imported torch and
the task already. Either way the agent gets the same arguments, port, entry dir and
environment; only the starter differs, and the job never asks which it has.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from runner.launch.codec import task_reference
from runner.launch.entry import agent_command
from runner.launch.procs import die_with_parent, import_path


class AgentProcess(Protocol):
    """A started agent, as the job sees it (what ``subprocess.Popen`` offers)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


class AgentStarter(Protocol):
    """How an agent starts: ``flags`` are torchrun options it needs (before the entry
    file); ``command`` is what launch.json records; ``start`` runs it;
    ``wait_for_news`` sleeps until an agent may have ended; ``alive`` says whether it
    can still start agents; ``close`` ends what the starter itself keeps running."""

    flags: list[str]

    def command(self, args: list[str]) -> list[str]: ...

    def start(
        self,
        args: list[str],
        env: dict[str, str],
        cwd: str,
        log: Path | None,
        listen: socket.socket | None,
    ) -> AgentProcess: ...

    def wait_for_news(self, timeout: float) -> None: ...

    def alive(self) -> bool: ...

    def close(self) -> None: ...


class SubprocessStarter:
    """Cold start: the agent is a fresh ``python -m runner.launch.agent``, in its own
    session, told to die with its parent; it imports torch itself."""

    flags: list[str] = []

    def command(self, args: list[str]) -> list[str]:
        return agent_command(args)

    def start(
        self,
        args: list[str],
        env: dict[str, str],
        cwd: str,
        log: Path | None,
        listen: socket.socket | None,
    ) -> AgentProcess:
        out: IO[bytes] | None = open(log, "ab") if log is not None else None
        try:
            return subprocess.Popen(
                self.command(args),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                start_new_session=True,
                pass_fds=[listen.fileno()] if listen else (),
                preexec_fn=die_with_parent,
            )
        finally:
            if out is not None:
                out.close()  # the agent has its own copy

    def wait_for_news(self, timeout: float) -> None:
        time.sleep(timeout)

    def alive(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to end: each agent is its own process."""


def _cold(reason: str) -> None:
    logging.getLogger(__name__).warning("warm start unavailable (%s); running cold", reason)


def warm_starter(task_function: Callable, cwd: str, *, wait: bool = True) -> AgentStarter | None:
    """A warm process for ``task_function``'s jobs, or None (with a one-line notice)
    when warm start cannot work here: no fork, or the task's module or script fails
    to load ahead. Then jobs run cold, as if warm were off. ``wait=False``: return
    while it boots, so the caller's own work overlaps it; :func:`booted_or_cold`
    before its first job."""
    from runner.launch.warm import WarmServer, WarmStartError, warm_available

    reason = warm_available()
    if reason is None:
        try:
            server = WarmServer(task_reference(task_function), cwd, import_path(cwd))
            if wait:
                server.wait_ready()
            return server
        except WarmStartError as error:
            reason = str(error).splitlines()[0]
    _cold(reason)
    return None


def booted_or_cold(starter: AgentStarter) -> AgentStarter:
    """``starter``, once ready: a warm process left booting is waited for; one that
    could not load the task gives way to cold start (with the one-line notice)."""
    from runner.launch.warm import WarmServer, WarmStartError

    if isinstance(starter, WarmServer):
        try:
            starter.wait_ready()
        except WarmStartError as error:
            _cold(str(error).splitlines()[0])
            return SubprocessStarter()
    return starter


def booting(starter: AgentStarter) -> bool:
    """Whether ``starter`` is a warm process still importing ahead."""
    from runner.launch.warm import WarmServer

    return isinstance(starter, WarmServer) and not starter.booted()
