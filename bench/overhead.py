"""Per-job overhead: a 2-rank job that inits gloo, all-reduces once and exits.

runner (a minimal Hydra app whose run goes through runner's launch core) against bare
``torchrun --standalone --nproc_per_node 2`` of the same plain script, medians of N
runs measured alternately in this one run. Target: ratio <= 1.05. Also runner with
every gate in front of torch's private names closed (``RUNNER_TORCH_GATES=off``,
runner.launch.gates): what a user of a torch release runner was not tested on gets.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

from _common import BENCH, PY, markdown_table, median_of, publish, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="runner-bench-")
    bare = [
        PY,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(BENCH / "workloads.py"),
        "allreduce",
    ]
    runner = [PY, str(BENCH / "runner_app.py"), f"hydra.run.dir={out}/run"]
    python = [PY, "-c", "pass"]
    gates_off = {"RUNNER_TORCH_GATES": "off"}
    # Alternate them, so drift on a shared machine hits all alike.
    timed(bare), timed(runner), timed(runner, env=gates_off)
    samples: dict[str, list[float]] = {"bare": [], "runner": [], "gates_off": []}
    for _ in range(args.runs):
        samples["bare"].append(timed(bare))
        samples["runner"].append(timed(runner))
        samples["gates_off"].append(timed(runner, env=gates_off))
    start, _ = median_of(python, args.runs)
    med = {k: statistics.median(v) for k, v in samples.items()}
    rows = [
        ["bare torchrun --standalone", f"{med['bare']:.2f}", "1.00"],
        [
            "runner launch core (Hydra app)",
            f"{med['runner']:.2f}",
            f"{med['runner'] / med['bare']:.3f}",
        ],
        [
            "runner, gates closed (another torch release)",
            f"{med['gates_off']:.2f}",
            f"{med['gates_off'] / med['bare']:.3f}",
        ],
        ["(python start-up alone)", f"{start:.3f}", ""],
    ]
    body = markdown_table(["2-rank gloo init + all_reduce", "median s", "ratio to bare"], rows)
    body += (
        f"\n\nRuns: {args.runs} each, alternating. Samples (s): bare "
        f"{[round(x, 2) for x in samples['bare']]}, runner "
        f"{[round(x, 2) for x in samples['runner']]}, gates closed "
        f"{[round(x, 2) for x in samples['gates_off']]}."
    )
    publish("Per-job overhead", body, f"python bench/overhead.py --runs {args.runs}")


if __name__ == "__main__":
    main()
