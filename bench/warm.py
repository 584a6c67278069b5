"""Warm start: marginal seconds per point, and a 20-point sweep end to end.

Marginal cost of a point = (time of a 5-point sweep - time of a 1-point sweep) / 4,
one point at a time, for the trivial task (``allreduce``: gloo init + one all_reduce,
2 ranks) and the training task (``train``: about 2 s of 2-rank DDP work), for runner
warm (``hydra.launcher.warm=true``) and cold, and the peers measured in this same run:
a shell loop of ``torchrun --standalone``, hydra-joblib-launcher (n_jobs=1, a task
that runs torchrun) and hydra-submitit-launcher's local executor (tasks_per_node=2;
it starts every point at once, so runner warm is also timed with every point at once,
``max_parallel=5``, for a comparison at equal concurrency). Then a 20-point sweep of
the trivial task, warm against cold, at runner's default parallelism.

Targets: warm <= 0.5 s marginal on the trivial task, >= 10x faster per point than
every peer, and the 20-point sweep in under a third of the cold time."""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import BENCH, PY, failed_runs_note, markdown_table, publish, timed

SMALL, LARGE = 1, 5
SWEEP_POINTS = 20
WARM = "runner, warm"
WARM_ALL = "runner, warm, all at once"
COLD = "runner, cold"
ALL_AT_ONCE = "hydra-submitit-launcher (local)"


def contenders(workload: str, points: int, out: str) -> dict[str, list[str]]:
    out = f"{out}/{workload}"  # a sweep dir per workload: runner refuses another's job dir
    sweep = [f"+p=range(0,{points})", f"+workload={workload}"]
    torchrun = (
        f"{PY} -m torch.distributed.run --standalone --nproc_per_node 2 "
        f"{BENCH / 'workloads.py'} {workload}"
    )
    runner = [PY, str(BENCH / "runner_app.py"), "-m", *sweep, "hydra/launcher=torchrun"]
    runner += ["hydra.launcher.nproc_per_node=2"]
    warm = ["hydra.launcher.warm=true"]
    return {
        WARM: runner + warm + ["hydra.launcher.max_parallel=1", f"hydra.sweep.dir={out}/warm"],
        WARM_ALL: runner
        + warm
        + [f"hydra.launcher.max_parallel={points}", f"hydra.sweep.dir={out}/warm_all"],
        COLD: runner + ["hydra.launcher.max_parallel=1", f"hydra.sweep.dir={out}/cold"],
        "shell loop (torchrun)": [
            "bash",
            "-c",
            f"seq {points} | xargs -P 1 -I{{}} {torchrun} > /dev/null 2>&1",
        ],
        "hydra-joblib-launcher": [
            PY,
            str(BENCH / "joblib_app.py"),
            "-m",
            *sweep,
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=1",
            f"hydra.sweep.dir={out}/joblib",
        ],
        ALL_AT_ONCE: [
            PY,
            str(BENCH / "submitit_app.py"),
            "-m",
            *sweep,
            "hydra/launcher=submitit_local",
            "hydra.launcher.tasks_per_node=2",
            f"hydra.sweep.dir={out}/submitit",
        ],
    }


def marginal_rows(workload: str, runs: int, out: str) -> tuple[list[list[str]], dict[str, float]]:
    small, large = contenders(workload, SMALL, out), contenders(workload, LARGE, out)
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(runs):  # round-robin, so drift hits every contender alike
        for name in small:
            samples.setdefault((name, SMALL), []).append(timed(small[name]))
            samples.setdefault((name, LARGE), []).append(timed(large[name]))
    med = {key: statistics.median(values) for key, values in samples.items()}
    marginal = {name: (med[(name, LARGE)] - med[(name, SMALL)]) / (LARGE - SMALL) for name in small}
    rows = [
        [
            workload,
            name,
            f"{med[(name, SMALL)]:.2f}",
            f"{med[(name, LARGE)]:.2f}",
            f"{marginal[name]:.2f}",
            f"{marginal[name] / marginal[WARM]:.1f}x",
            f"{marginal[name] / marginal[WARM_ALL]:.1f}x",
        ]
        for name in small
    ]
    return rows, marginal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="runner-bench-warm-")
    rows, verdicts = [], []
    for workload in ("allreduce", "train"):
        workload_rows, marginal = marginal_rows(workload, args.runs, out)
        rows += workload_rows
        peers = {k: v for k, v in marginal.items() if k not in (WARM, WARM_ALL, COLD)}
        one_at_a_time = {k: v for k, v in peers.items() if k != ALL_AT_ONCE}
        verdicts.append(
            f"{workload}: warm {marginal[WARM]:.2f} s per point one at a time; cold runner "
            f"{marginal[COLD] / marginal[WARM]:.1f}x that; fastest peer one at a time "
            f"({min(one_at_a_time, key=one_at_a_time.get)}) "
            f"{min(one_at_a_time.values()) / marginal[WARM]:.1f}x. All points at once: "
            f"warm {marginal[WARM_ALL]:.2f} s per point, {ALL_AT_ONCE} "
            f"{marginal[ALL_AT_ONCE] / marginal[WARM_ALL]:.1f}x that "
            f"({marginal[ALL_AT_ONCE] / marginal[WARM]:.1f}x warm one at a time)."
        )
    sweep = [
        PY,
        str(BENCH / "runner_app.py"),
        "-m",
        f"+p=range(0,{SWEEP_POINTS})",
        "hydra/launcher=torchrun",
        "hydra.launcher.nproc_per_node=2",
    ]
    whole: dict[str, list[float]] = {WARM: [], COLD: []}
    for _ in range(args.runs):
        whole[WARM].append(
            timed(sweep + ["hydra.launcher.warm=true", f"hydra.sweep.dir={out}/w20"])
        )
        whole[COLD].append(timed(sweep + [f"hydra.sweep.dir={out}/c20"]))
    warm20, cold20 = (statistics.median(whole[k]) for k in (WARM, COLD))
    body = markdown_table(
        [
            "task",
            "launcher",
            f"{SMALL}-point sweep s",
            f"{LARGE}-point sweep s",
            "marginal s / point",
            "per point vs warm",
            "vs warm, all at once",
        ],
        rows,
    )
    body += "\n\n" + "\n".join(f"- {v}" for v in verdicts)
    body += (
        f"\n- {SWEEP_POINTS}-point sweep of the trivial task, end to end (default "
        f"max_parallel): warm {warm20:.1f} s, cold {cold20:.1f} s: warm takes "
        f"{warm20 / cold20:.2f} of the cold time."
        f"\n\nMedians of {args.runs} runs, round-robin; marginal = "
        f"(T({LARGE}) - T({SMALL})) / {LARGE - SMALL}, one point at a time, except "
        f"'{WARM_ALL}' (max_parallel={LARGE}) and submitit's local executor (no "
        "parallelism knob: it starts every point at once)."
    )
    body += failed_runs_note()
    publish("Warm start", body, f"python bench/warm.py --runs {args.runs}")


if __name__ == "__main__":
    main()
