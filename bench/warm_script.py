"""Warm start for a task defined in a script that imports a framework: Lightning.

The task is ``tests/apps/lightning_app.py`` (a LightningModule and
``Trainer(strategy="ddp")`` in the script that ``@hydra.main`` runs, 2 ranks per point,
two short epochs). Warm start loads the script once, in the warm process, so its
imports (Lightning, about two thirds of a cold rank's start) are done before any point
forks; cold, every rank imports them again. Marginal seconds per point =
(T(5 points) - T(1 point)) / 4, one point at a time, warm against cold measured in the
same run.

Target (issue #18): warm start saves most of a point's start for a script task, as it
does for a task in a module: warm's marginal cost at most a quarter of cold's."""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import PY, REPO, failed_runs_note, markdown_table, publish, timed

APP = REPO / "tests" / "apps" / "lightning_app.py"
SMALL, LARGE = 1, 5
MODES = {"runner, warm": "true", "runner, cold": "false"}


def sweep(points: int, warm: str, out: str) -> list[str]:
    return [
        PY,
        str(APP),
        "-m",
        f"+p=range(0,{points})",
        f"hydra.launcher.warm={warm}",
        "hydra.launcher.max_parallel=1",
        f"hydra.sweep.dir={out}/{warm}-{points}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="runner-bench-warm-script-")
    env = {"PYTHONPATH": str(REPO)}
    samples: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.runs):  # round-robin, so drift hits both modes alike
        for name, warm in MODES.items():
            for points in (SMALL, LARGE):
                samples.setdefault((name, points), []).append(
                    timed(sweep(points, warm, out), env=env)
                )
    med = {key: statistics.median(values) for key, values in samples.items()}
    marginal = {name: (med[(name, LARGE)] - med[(name, SMALL)]) / (LARGE - SMALL) for name in MODES}
    warm, cold = marginal["runner, warm"], marginal["runner, cold"]
    rows = [
        [
            name,
            f"{med[(name, SMALL)]:.2f}",
            f"{med[(name, LARGE)]:.2f}",
            f"{marginal[name]:.2f}",
            f"{marginal[name] / cold:.2f}",
        ]
        for name in MODES
    ]
    body = markdown_table(
        [
            "launcher",
            f"{SMALL}-point sweep s",
            f"{LARGE}-point sweep s",
            "marginal s / point",
            "vs cold",
        ],
        rows,
    )
    met = "met" if warm <= cold / 4 else "NOT met"
    body += (
        f"\n\n- Lightning script task, 2 ranks per point: warm {warm:.2f} s per point, "
        f"cold {cold:.2f} s: warm costs {warm / cold:.2f} of cold "
        f"(target <= 0.25: {met})."
        f"\n\nMedians of {args.runs} runs, round-robin; marginal = "
        f"(T({LARGE}) - T({SMALL})) / {LARGE - SMALL}, one point at a time."
    )
    body += failed_runs_note()
    publish(
        "Warm start, a script task (Lightning)",
        body,
        f"python bench/warm_script.py --runs {args.runs}",
    )


if __name__ == "__main__":
    main()
