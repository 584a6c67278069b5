"""Sweep throughput: 8 points x 2 ranks of one workload of workloads.py (the trivial
task, ``allreduce``, or the ~5 s training task, ``train``) at max_parallel 1, 2 and 4:
runner cold and warm (``hydra.launcher.warm=true``) against the peers a user would
pick instead, measured in this one run: a shell loop of ``torchrun --standalone``
(xargs -P N), hydra-joblib-launcher (n_jobs=N) with a task that runs torchrun in a
subprocess, and hydra-submitit-launcher's local executor with ``tasks_per_node=2``
(it has no parallelism knob: it starts every point at once, so it gets one row).
Reports seconds per point, the ratio to the best peer at equal parallelism, and the
ratio to the ideal (points x single-point time / parallelism). Targets: no slower
than the best peer at equal parallelism; within 10% of ideal where the CPU is not
the limit."""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import BENCH, PY, failed_runs_note, markdown_table, publish, timed

POINTS = 8


SUBMITIT = "hydra-submitit-launcher (local)"
TITLES = {"allreduce": "trivial task", "train": "training task"}


def commands(parallel: int, out: str, workload: str) -> dict[str, list[str]]:
    torchrun = (
        f"{PY} -m torch.distributed.run --standalone --nproc_per_node 2 "
        f"{BENCH / 'workloads.py'} {workload}"
    )
    runner = [
        PY,
        str(BENCH / "runner_app.py"),
        "-m",
        f"+p=range(0,{POINTS})",
        f"+workload={workload}",
        "hydra/launcher=torchrun",
        "hydra.launcher.nproc_per_node=2",
        f"hydra.launcher.max_parallel={parallel}",
    ]
    return {
        "runner, cold": runner + [f"hydra.sweep.dir={out}/runner{parallel}"],
        "runner, warm": runner
        + ["hydra.launcher.warm=true", f"hydra.sweep.dir={out}/warm{parallel}"],
        "shell loop (xargs -P)": [
            "bash",
            "-c",
            f"seq {POINTS} | xargs -P {parallel} -I{{}} {torchrun} > /dev/null 2>&1",
        ],
        "hydra-joblib-launcher": [
            PY,
            str(BENCH / "joblib_app.py"),
            "-m",
            f"+p=range(0,{POINTS})",
            f"+workload={workload}",
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={parallel}",
            f"hydra.sweep.dir={out}/joblib{parallel}",
        ],
    }


def submitit_command(out: str, workload: str) -> list[str]:
    return [
        PY,
        str(BENCH / "submitit_app.py"),
        "-m",
        f"+p=range(0,{POINTS})",
        f"+workload={workload}",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={out}/submitit",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workload", choices=sorted(TITLES), default="allreduce")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="runner-bench-")
    single_cmd = [PY, str(BENCH / "runner_app.py"), f"+workload={args.workload}"]
    single = statistics.median(
        [timed(single_cmd + [f"hydra.run.dir={out}/single"]) for _ in range(args.runs)]
    )
    # Round-robin over every contender, parallelism included, so drift on a shared
    # machine hits all of them alike.
    cmds = {
        (p, name): cmd
        for p in args.parallel
        for name, cmd in commands(p, out, args.workload).items()
    }
    cmds[(POINTS, SUBMITIT)] = submitit_command(out, args.workload)
    samples: dict[tuple[int, str], list[float]] = {key: [] for key in cmds}
    for _ in range(args.runs):
        for key, cmd in cmds.items():
            samples[key].append(timed(cmd))
    medians = {key: statistics.median(s) for key, s in samples.items()}
    rows = []
    for (parallel, name), value in medians.items():
        peers = [v for (p, n), v in medians.items() if p == parallel and not n.startswith("runner")]
        ideal = POINTS * single / min(parallel, POINTS)
        rows.append(
            [
                str(parallel) + (" (all at once)" if name == SUBMITIT else ""),
                name,
                f"{value:.1f}",
                f"{value / POINTS:.2f}",
                f"{value / min(peers):.2f}" if name != SUBMITIT else "-",
                f"{value / ideal:.2f}",
            ]
        )
    body = markdown_table(
        [
            "parallel",
            "launcher",
            "sweep s",
            "s / point",
            "ratio to best peer at equal parallel",
            "ratio to ideal",
        ],
        rows,
    )
    body += (
        f"\n\nSingle 2-rank point of the {TITLES[args.workload]} through runner: {single:.2f} s "
        f"(median of {args.runs}); "
        f"ideal = {POINTS} x that / parallel. This machine has 2 cores, so from "
        f"parallel 2 on (4+ ranks) the CPU is the limit. Medians of {args.runs} runs, "
        "round-robin."
    )
    body += failed_runs_note()
    publish(
        f"Sweep throughput, {TITLES[args.workload]}",
        body,
        f"python bench/sweep.py --workload {args.workload} --runs {args.runs} --parallel "
        + " ".join(map(str, args.parallel)),
    )


if __name__ == "__main__":
    main()
