"""What tracking costs the trainer: samples per second of runner's trainer with
``logger=mlflow`` (one MLflow run, SQLite store, metrics logged every epoch by rank 0)
and ``logger=tensorboard`` against ``logger=none``, measured alternately in one run,
with 1 and 2 ranks. Target: ratio >= 0.98."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from _common import markdown_table, publish
from trainer_speed import BATCH, N, trainer

# Long enough that one epoch's logging is weighed against whole epochs, not noise.
EPOCHS = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    store = Path(tempfile.mkdtemp(prefix="runner-bench-mlflow-")) / "mlflow.db"
    loggers = {
        "none": ["logger=none"],
        "mlflow": ["logger=mlflow", f"logger.tracking_uri=sqlite:///{store}"],
        "tensorboard": ["logger=tensorboard"],
    }
    epochs = f"trainer.epochs={EPOCHS}"
    rows = []
    for world in (1, 2):
        speeds: dict[str, list[float]] = {name: [] for name in loggers}
        for _ in range(args.runs):  # alternate, so drift hits every logger alike
            for name, overrides in loggers.items():
                speeds[name].append(trainer(world, epochs, *overrides))
        base = statistics.median(speeds["none"])
        for name in ("mlflow", "tensorboard"):
            median = statistics.median(speeds[name])
            rows.append(
                [str(world), name, f"{base:,.0f}", f"{median:,.0f}", f"{median / base:.3f}"]
            )
            print(
                f"{world} rank(s): logger={name} {median:,.0f} samples/s, ratio {median / base:.3f}"
            )
    body = markdown_table(["ranks", "logger", "logger=none samples/s", "samples/s", "ratio"], rows)
    body += (
        f"\n\n{N} spirals samples, MLP 64x3, global batch {BATCH}, {EPOCHS} epochs, "
        f"OMP_NUM_THREADS=1; the epoch loop as metrics.jsonl times it (opening the run "
        f"and the store's first use come before it); medians of {args.runs} runs each."
    )
    publish("Tracking cost", body, f"python bench/logger_cost.py --runs {args.runs}")


if __name__ == "__main__":
    main()
