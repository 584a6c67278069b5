"""Trainer speed: samples per second of runner's built-in trainer against a minimal
hand-written loop (bench/hand_loop.py) on the same model, data and global batch, with
1 and 2 ranks. The trainer's figure is its whole epoch loop as metrics.jsonl times it
(evaluation and the per-epoch checkpoint included). Target: ratio >= 0.95."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from _common import BENCH, PY, REPO, markdown_table, publish

N, EPOCHS, BATCH = 20000, 3, 64


def hand(world: int) -> float:
    cmd = [
        str(BENCH / "hand_loop.py"),
        "--n-samples",
        str(N),
        "--epochs",
        str(EPOCHS),
        "--batch-size",
        str(BATCH),
    ]
    if world > 1:
        cmd = [
            PY,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(world),
            *cmd,
        ]
    else:
        cmd = [PY, *cmd]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().split("samples_per_s=")[-1].split()[0])


def trainer(world: int, *overrides: str) -> float:
    """Samples per second of runner's trainer's epoch loop (``overrides`` added)."""
    run_dir = Path(tempfile.mkdtemp(prefix="runner-bench-")) / "run"
    subprocess.run(
        [
            PY,
            "-m",
            "runner",
            f"data.n_samples={N}",
            f"trainer.epochs={EPOCHS}",
            f"trainer.batch_size={BATCH}",
            f"trainer.nproc_per_node={world}",
            "trainer.progress=off",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=REPO,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        check=True,
    )
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    samples = history[-1]["step"] * BATCH
    return samples / history[-1]["elapsed_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for world in (1, 2):
        h, t = [], []
        for _ in range(args.runs):  # alternate, so drift hits both alike
            h.append(hand(world))
            t.append(trainer(world))
        mh, mt = statistics.median(h), statistics.median(t)
        rows.append([str(world), f"{mh:,.0f}", f"{mt:,.0f}", f"{mt / mh:.3f}"])
    body = markdown_table(
        ["ranks", "hand loop samples/s", "runner trainer samples/s", "ratio"], rows
    )
    body += (
        f"\n\n{N} spirals samples (80% train), MLP 64x3, AdamW, global batch {BATCH}, "
        f"{EPOCHS} epochs, OMP_NUM_THREADS=1; medians of {args.runs} runs each."
    )
    publish("Trainer speed", body, f"python bench/trainer_speed.py --runs {args.runs}")


if __name__ == "__main__":
    main()
