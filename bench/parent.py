"""The sweep parent's own cost per point: CPU and memory over a long warm sweep.

A sweep of ``--points`` points (1,000 by default) of a trivial task (a Hydra app that
is not runner's, bench/search_app.py with nothing to sleep: each point returns at
once), 1 rank each, warm, runner's default parallelism. The parent's own CPU (its
utime + stime, not its children's) and resident memory are read from /proc while it
runs, against the number of job dirs it has made: the CPU per point is measured from
point 100 to the end (start-up excluded), the RSS at point 100 and at the end.

Reference, in the same run: the same sweep through Hydra's basic launcher, which runs
each point in the parent itself, one after another (no torchrun): its parent's cost is
Hydra's own (compose, job dir, callbacks, logging) plus the trivial task.

Targets (issue #33): parent CPU <= 50 ms a point; RSS flat from point 100 to the end
(a growth of at most 0.01 MB a point: 10 MB over 1,000 points).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from _common import BENCH, PY, REPO, markdown_table, publish

TICK = os.sysconf("SC_CLK_TCK")
FROM_POINT = 100


def sample(pid: int) -> tuple[float, float]:
    """(CPU seconds of the process itself, its RSS in MB)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return cpu, rss


def measure(cmd: list[str], sweep_dir: Path, points: int) -> dict[str, float]:
    """Run one sweep; its parent's CPU per point (from FROM_POINT on), RSS at
    FROM_POINT and at the end, and wall."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    at_from: tuple[float, float] | None = None
    last = (0.0, 0.0)
    made = 0
    while proc.poll() is None:
        try:
            last = sample(proc.pid)
            made = sum(1 for e in os.scandir(sweep_dir) if e.name.isdigit())
        except (OSError, ValueError):
            pass
        if at_from is None and made >= FROM_POINT:
            at_from = last
        time.sleep(0.1)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]!r}")
    assert at_from is not None, "the sweep never reached its 100th point"
    return {
        "wall": wall,
        "cpu_ms": 1000 * last[0] / max(1, made),
        "cpu_ms_from": 1000 * (last[0] - at_from[0]) / max(1, made - FROM_POINT),
        "rss_from": at_from[1],
        "rss_end": last[1],
        "points": made,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=1000)
    args = parser.parse_args()
    begun = time.time()
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, launcher in (("runner, warm", "torchrun"), ("Hydra's basic launcher", "basic")):
            sweep_dir = Path(tmp) / launcher
            cmd = [
                PY,
                str(BENCH / "search_app.py"),
                "-m",
                f"hydra/launcher={launcher}",
                "+sleep_s=0",
                "+steps=0",
                f"+p=range(0,{args.points})",
                f"hydra.sweep.dir={sweep_dir}",
            ]
            if launcher == "torchrun":
                cmd.append("hydra.launcher.warm=true")
            found = results[name] = measure(cmd, sweep_dir, args.points)
            growth = (found["rss_end"] - found["rss_from"]) / max(1, found["points"] - FROM_POINT)
            rows.append(
                [
                    name,
                    str(int(found["points"])),
                    f"{found['wall']:.1f}",
                    f"{found['cpu_ms']:.1f}",
                    f"{found['cpu_ms_from']:.1f}",
                    f"{found['rss_from']:.1f}",
                    f"{found['rss_end']:.1f}",
                    f"{growth * 1000:.1f}",
                ]
            )
    ours, ref = results["runner, warm"], results["Hydra's basic launcher"]
    growth = (ours["rss_end"] - ours["rss_from"]) / max(1, ours["points"] - FROM_POINT)
    table = markdown_table(
        [
            "launcher",
            "points",
            "wall s",
            "parent CPU ms/point",
            f"from point {FROM_POINT}",
            f"RSS MB at {FROM_POINT}",
            "RSS MB at end",
            "KB/point",
        ],
        rows,
    )
    notes = (
        f"runner's parent: {ours['cpu_ms']:.1f} ms of CPU a point, "
        f"{ours['cpu_ms'] / ref['cpu_ms']:.2f}x Hydra's basic launcher's parent "
        f"(target <= 50 ms: {'met' if ours['cpu_ms'] <= 50 else 'not met'}); RSS "
        f"{growth * 1000:.1f} KB a point from point {FROM_POINT} (target flat, <= 10 KB: "
        f"{'met' if growth <= 0.01 else 'not met'})."
    )
    publish(
        "Sweep parent's cost per point",
        f"A {args.points}-point sweep of a trivial task (1 rank, returns at once).\n\n"
        f"{table}\n\n{notes}",
        f"bench/parent.py --points {args.points}, {time.time() - begun:.0f} s",
    )


if __name__ == "__main__":
    main()
