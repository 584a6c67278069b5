"""Start latency: from the moment a point starts to each rank's first training step.

runner's trainer (a small MLP, so the first step comes at once) is swept over a few
seeds, one point at a time, with 1 and 2 ranks, warm and cold; the parent records
when it starts each point's agent (``launch.json``'s ``start_time``; the point was
composed ahead) and every rank marks its stages (:mod:`runner.trace`): its worker
entered (the agent started, the rank forked or started, its imports done), its task
called (config and task loaded), its process group formed, its optimizer made, its
first step done. A Hydra app that is not runner's (bench/search_app.py) is timed to
its task's first line, warm and cold. The table gives the median over points of each
stage's end, in seconds from the point's start, the slowest rank's.

Reference, in the same run: bare ``torchrun --standalone`` running the same trainer
(each rank composes the config itself: ``torchrun -m runner``), from the moment the
command starts to the first step.

The warm process itself is timed too: from its start to its being ready, against a bare
python's start to the end of importing the same modules; and its end, closed as a sweep
closes it, and by a SIGTERM alone.

Targets (issue #33): a warm 2-rank trial of the trainer at its first step <= 0.4 s
from its start; cold no slower than bare torchrun to the same first step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH, PY, REPO, markdown_table, publish, timed

STAGES = ["worker", "task", "group", "optimizer", "first_step"]
TRAIN = [
    "data.n_samples=2000",
    "trainer.epochs=1",
    "trainer.progress=off",
    "trainer.checkpoint=false",
]


def stage_times(trace: Path, sweep_dir: Path) -> list[dict[str, float]]:
    """For each point of the sweep: each stage's time from its start (slowest rank)."""
    points = []
    for record_path in sorted(sweep_dir.glob("*/launch.json")):
        record = json.loads(record_path.read_text())
        if record["status"] != "COMPLETED":
            continue
        ranks = list((trace / str(record["agent_pid"])).glob("rank*.jsonl"))
        found: dict[str, float] = {}
        for rank in ranks:
            for line in rank.read_text().splitlines():
                mark = json.loads(line)
                at = mark["t"] - record["start_time"]
                found[mark["stage"]] = max(found.get(mark["stage"], 0.0), at)
        points.append(found)
    return points


def medians(points: list[dict[str, float]]) -> dict[str, float]:
    return {
        s: statistics.median(p[s] for p in points if s in p)
        for s in STAGES
        if any(s in p for p in points)
    }


def sweep(tmp: Path, name: str, app: list[str], points: int, *overrides: str) -> dict[str, float]:
    trace, sweep_dir = tmp / f"trace-{name}", tmp / name
    cmd = [*app, "-m", f"+point=range(0,{points})", "hydra.launcher.max_parallel=1"]
    cmd += [*overrides, f"hydra.sweep.dir={sweep_dir}"]
    timed(cmd, env={"RUNNER_START_TRACE": str(trace)}, limit=600)
    return medians(stage_times(trace, sweep_dir))


def bare(tmp: Path, ranks: int, runs: int) -> dict[str, float]:
    """torchrun --standalone running the trainer in each rank: command start to stages."""
    found = []
    for run in range(runs):
        trace = tmp / f"trace-bare{ranks}-{run}"
        env = dict(os.environ, RUNNER_START_TRACE=str(trace))
        cmd = [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        cmd += ["-m", "runner", f"trainer.nproc_per_node={ranks}", *TRAIN]
        cmd += [f"hydra.run.dir={tmp / f'bare{ranks}-{run}'}"]
        started = time.time()
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        point: dict[str, float] = {}
        for rank in trace.glob("*/rank*.jsonl"):
            for line in rank.read_text().splitlines():
                mark = json.loads(line)
                point[mark["stage"]] = max(point.get(mark["stage"], 0.0), mark["t"] - started)
        found.append(point)
    return medians(found)


def warm_process(runs: int) -> dict[str, float]:
    """Medians over ``runs`` of a warm process (no task), in seconds: from its start to
    its being ready; closed as a sweep closes it (socket, then SIGTERM); ended by a
    SIGTERM alone (which the kernel may hand to one of torch's threads); and, the
    reference, a bare python's start to the end of importing the same modules."""
    sys.path.insert(0, str(REPO))
    from runner.launch.warm import PRELOADED, WarmServer

    found: dict[str, list[float]] = {"ready": [], "closed": [], "sigterm": [], "bare": []}
    for _ in range(runs):
        for how in ("closed", "sigterm"):
            started = time.perf_counter()
            server = WarmServer(None, str(REPO), sys.path)
            server.wait_ready()
            found["ready"].append(time.perf_counter() - started)
            started = time.perf_counter()
            if how == "closed":
                server.close()
            else:
                server.proc.terminate()
                server.proc.wait()
                server.close()
            found[how].append(time.perf_counter() - started)
        started = time.time()
        done = subprocess.run(
            [PY, "-c", f"import time, {', '.join(PRELOADED)}; print(time.time())"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        found["bare"].append(float(done.stdout) - started)  # to its imports' end, not its exit
    return {k: statistics.median(v) for k, v in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--points", type=int, default=5, help="points a sweep (warm)")
    args = parser.parse_args()
    begun = time.time()
    trainer = [PY, "-m", "runner"]
    foreign = [PY, str(BENCH / "search_app.py")]
    cold_points = max(3, args.points // 2)
    arms: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for ranks in (2, 1):
            for mode, points in (("warm", args.points), ("cold", cold_points)):
                arms[f"trainer, {ranks} rank{'s' * (ranks > 1)}, {mode}"] = sweep(
                    work,
                    f"trainer{ranks}{mode}",
                    trainer,
                    points,
                    f"trainer.nproc_per_node={ranks}",
                    *TRAIN,
                    f"hydra.launcher.warm={str(mode == 'warm').lower()}",
                )
            arms[f"bare torchrun, {ranks} rank{'s' * (ranks > 1)}"] = bare(work, ranks, cold_points)
        for mode in ("warm", "cold"):
            arms[f"foreign app, 1 rank, {mode}"] = sweep(
                work,
                f"foreign{mode}",
                foreign,
                args.points,
                "hydra/launcher=torchrun",
                "+sleep_s=0",
                "+steps=0",
                f"hydra.launcher.warm={str(mode == 'warm').lower()}",
            )
        warm = warm_process(args.points)
    rows = [
        [name, *(f"{found[s]:.3f}" if s in found else "" for s in STAGES)]
        for name, found in arms.items()
    ]
    table = markdown_table(["from the point's start, s", *STAGES], rows)
    warm2 = arms["trainer, 2 ranks, warm"]["first_step"]
    cold2 = arms["trainer, 2 ranks, cold"]["first_step"]
    bare2 = arms["bare torchrun, 2 ranks"]["first_step"]
    note = (
        f"Warm 2-rank trial of the trainer at its first step {warm2:.3f} s after its start "
        f"(target <= 0.4: {'met' if warm2 <= 0.4 else 'not met'}); cold {cold2:.3f} s, "
        f"{cold2 / bare2:.2f}x bare torchrun's {bare2:.3f} s (target <= 1: "
        f"{'met' if cold2 <= bare2 else 'not met'}).\n\nThe warm process itself (medians "
        f"of {args.points * 2} starts, {args.points} of each end and of the bare imports): "
        f"ready {warm['ready']:.2f} s after it starts "
        f"({warm['ready'] / warm['bare']:.2f}x a bare python's start to the end of "
        f"importing the same modules, {warm['bare']:.2f} s); closed as a sweep closes it "
        f"in {warm['closed']:.3f} s; ended by a SIGTERM alone in {warm['sigterm']:.3f} s."
    )
    publish(
        "Start latency",
        "Medians over points (one at a time); each stage's end, the slowest rank's, in "
        "seconds from the point's start (bare torchrun: from its command's start). "
        "worker: the rank's worker code entered; task: the task called.\n\n"
        f"{table}\n\n{note}",
        f"bench/start.py --points {args.points}, {time.time() - begun:.0f} s",
    )


if __name__ == "__main__":
    main()
