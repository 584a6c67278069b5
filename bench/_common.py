"""Shared by the benchmarks: timing commands, medians, and BENCHMARKS.md sections.

Benchmarks print ratios against a reference measured in the same run; nothing here
asserts on time (tests never do)."""

from __future__ import annotations

import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PY = sys.executable
RESULTS = REPO / "BENCHMARKS.md"


# Runs that failed and were timed again, by command: reported with the results.
FAILED_RUNS: list[str] = []


def timed(
    cmd: list[str], *, env: dict | None = None, cwd: Path = REPO, limit: float = 300.0
) -> float:
    """Wall seconds of one successful run of ``cmd``. A failed run (a peer's flaky
    start-up, say) or one still running after ``limit`` seconds (a peer's rank that
    never joined its group: the process group is killed) is noted in FAILED_RUNS and
    run again, five times at most; a sixth failure stops the benchmark loudly. (Bare
    torch aborts about 1 in 30 finished 2-rank gloo jobs during interpreter teardown,
    so an 8-point peer sweep fails about 1 run in 4; runner's ranks skip that teardown.)"""
    full_env = dict(os.environ, **(env or {}))
    for attempt in range(6):
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            _, stderr = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
            stderr = f"(killed after {limit:.0f} s)\n{stderr}"
        elapsed = time.perf_counter() - started
        if proc.returncode == 0:
            return elapsed
        FAILED_RUNS.append(" ".join(cmd)[-120:])
        print(
            f"run failed ({proc.returncode}), attempt {attempt + 1}: {cmd}\n{stderr[-1500:]}",
            file=sys.stderr,
        )
    raise SystemExit(f"{cmd} failed 6 times:\n{stderr[-3000:]}")


def failed_runs_note() -> str:
    """A line for the results: runs that failed and were repeated (none: empty)."""
    if not FAILED_RUNS:
        return ""
    return f"\n\n{len(FAILED_RUNS)} run(s) failed and were timed again: " + "; ".join(
        f"`...{c}`" for c in FAILED_RUNS
    )


def median_of(cmd: list[str], runs: int, **kwargs) -> tuple[float, list[float]]:
    """Median and all samples, after one untimed warm-up run (page cache, .pyc)."""
    timed(cmd, **kwargs)
    samples = [timed(cmd, **kwargs) for _ in range(runs)]
    return statistics.median(samples), samples


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def publish(section: str, body: str, command: str) -> None:
    """Print ``body`` and put it into BENCHMARKS.md under ``## section`` (replacing the
    previous run's), with the machine, the date and the command."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    block = f"## {section}\n\n_{stamp}; {machine()}; `{command}`_\n\n{body}\n"
    print(block)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(block.replace("\\", "\\\\") + "\n", text)
        if pattern.search(text)
        else text.rstrip("\n") + "\n\n" + block
    )
    RESULTS.write_text(text)
