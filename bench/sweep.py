"""Sweep throughput: 8 points x 2 ranks of the trivial task (gloo init + one
all_reduce), runner at max_parallel 1, 2 and 4 against the peers a user would pick
instead, at the same parallelism, measured in this one run: a shell loop of
``torchrun --standalone`` (xargs -P N) and hydra-joblib-launcher (n_jobs=N) with a
task that runs torchrun in a subprocess. Reports seconds per point, the ratio to the
best peer, and the ratio to the ideal (points x single-point time / parallelism).
Targets: no slower than the best peer at equal parallelism; within 10% of ideal where
the CPU is not the limit."""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import BENCH, PY, markdown_table, publish, timed

POINTS = 8


def commands(parallel: int, out: str) -> dict[str, list[str]]:
    torchrun = (
        f"{PY} -m torch.distributed.run --standalone --nproc_per_node 2 {BENCH / 'allreduce.py'}"
    )
    return {
        "runner": [
            PY,
            str(BENCH / "allreduce_app.py"),
            "-m",
            f"+p=range(0,{POINTS})",
            "hydra/launcher=torchrun",
            "hydra.launcher.nproc_per_node=2",
            f"hydra.launcher.max_parallel={parallel}",
            f"hydra.sweep.dir={out}/runner{parallel}",
        ],
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
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={parallel}",
            f"hydra.sweep.dir={out}/joblib{parallel}",
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="runner-bench-")
    single, _ = (lambda s: (statistics.median(s), s))(
        [
            timed([PY, str(BENCH / "allreduce_app.py"), f"hydra.run.dir={out}/single"])
            for _ in range(args.runs)
        ]
    )
    rows = []
    for parallel in args.parallel:
        cmds = commands(parallel, out)
        samples: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.runs):  # round-robin, so drift hits every contender alike
            for name, cmd in cmds.items():
                samples[name].append(timed(cmd))
        medians = {name: statistics.median(s) for name, s in samples.items()}
        best_peer = min(v for k, v in medians.items() if k != "runner")
        ideal = POINTS * single / parallel
        for name, value in medians.items():
            rows.append(
                [
                    str(parallel),
                    name,
                    f"{value:.1f}",
                    f"{value / POINTS:.2f}",
                    f"{value / best_peer:.2f}",
                    f"{value / ideal:.2f}",
                ]
            )
    body = markdown_table(
        ["parallel", "launcher", "sweep s", "s / point", "ratio to best peer", "ratio to ideal"],
        rows,
    )
    body += (
        f"\n\nSingle 2-rank point through runner: {single:.2f} s (median of {args.runs}); "
        f"ideal = {POINTS} x that / parallel. This machine has 2 cores, so from "
        f"parallel 2 on (4+ ranks) the CPU is the limit. Medians of {args.runs} runs, "
        "round-robin."
    )
    publish(
        "Sweep throughput",
        body,
        f"python bench/sweep.py --runs {args.runs} --parallel " + " ".join(map(str, args.parallel)),
    )


if __name__ == "__main__":
    main()
