"""runner's search sweeper (``hydra/sweeper=search``), measured side by side in one run.

Slot use: 24 trials of a task that sleeps a sampled time (log-uniform 0.5 to 5 s, a
tenfold spread), 4 and then 2 at a time, through ``hydra/launcher=torchrun`` (warm):
the asynchronous search against the same search in Hydra's batch protocol
(``hydra.sweeper.asynchronous=false``: ask for max_parallel trials, launch them, wait
for all, as hydra-optuna-sweeper does; that sweeper pins optuna < 3 and cannot share
a venv with optuna >= 4, so its protocol is measured, not its package). Slot use is
the trials' run time over (span x slots), the span from the first trial's start to
the last one's end. Targets: >= 95% asynchronous; wall <= 0.8x batched at 4 at a time.

Pruning: 24 trials of runner's training task (20 epochs; lr searched on a log scale),
2 at a time, with MedianPruner against no pruner: the best objective of each, and the
total trial time. Both arms draw their trials with the seeded random sampler, so they
train the same 24 learning rates and differ only in what the pruner stops (with TPE,
each arm's draws follow its own results, and the pruned arm ends up training other
settings). Measured at two trial lengths: 20000 samples (a trial of ~6 s, a quarter
of it start-up, which a pruned trial pays in full) and 80000 (~20 s, start-up under a
tenth, nearer the GPU trials of minutes that pruning is for). Target, judged at the
longer: the same best within noise, >= 40% less trial time.

Parents: one search of 24 trials that each sleep 4 s (no CPU between parents to
contend for), on a PostgreSQL study (Debian's server, started here), by one parent
with 2 slots and by two parents with 2 slots each started at once on one study.
Targets: the two parents' wall <= 0.55x the one parent's; each parent's slot use (its
trials' time over its span x 2) >= 90%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import BENCH, PY, REPO, failed_runs_note, markdown_table, publish, timed

TRIALS = 24
# Samples per trial in the pruning part: short trials, then the length the target is
# judged at (epochs most of a trial).
PRUNING_SAMPLES = (20000, 80000)
# The slots part's trial: seconds asleep, searched log-uniform over a tenfold spread.
SLOTS_SLEEP = "tag(log, interval(0.5, 5))"


def records(sweep_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/launch.json"))]


def slot_use(sweep_dir: Path, slots: int) -> tuple[float, float, float]:
    """(slot use over the search's span, total trial seconds, mean seconds from a
    trial's end to the next start once every slot has had its first trial)."""
    found = sorted(records(sweep_dir), key=lambda r: r["start_time"])
    busy = sum(r["end_time"] - r["start_time"] for r in found)
    span = max(r["end_time"] for r in found) - found[0]["start_time"]
    ends = sorted(r["end_time"] for r in found)
    gaps = [
        r["start_time"] - max(e for e in ends if e <= r["start_time"])
        for r in found[slots:]
        if any(e <= r["start_time"] for e in ends)
    ]
    return busy / (span * slots), busy, sum(gaps) / max(1, len(gaps))


def search_command(sweep_dir: Path, *overrides: str, sleep: str = SLOTS_SLEEP) -> list[str]:
    """A warm search of ``TRIALS`` trials of the sleeping task (``sleep``: its seconds,
    searched or fixed) into ``sweep_dir``."""
    return [
        PY,
        str(BENCH / "search_app.py"),
        "-m",
        "hydra/launcher=torchrun",
        "hydra/sweeper=search",
        "hydra.launcher.warm=true",
        f"hydra.sweeper.n_trials={TRIALS}",
        f"+sleep_s={sleep}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def slots_table(tmp: Path) -> tuple[list[list[str]], list[str]]:
    rows, notes = [], []
    for slots in (4, 2):
        walls = {}
        for mode in ("asynchronous", "batched"):
            sweep_dir = tmp / f"slots{slots}-{mode}"
            wall = timed(
                search_command(
                    sweep_dir,
                    f"hydra.launcher.max_parallel={slots}",
                    f"hydra.sweeper.asynchronous={str(mode == 'asynchronous').lower()}",
                ),
                limit=600,
            )
            use, busy, gap = slot_use(sweep_dir, slots)
            walls[mode] = wall
            rows.append(
                [
                    str(slots),
                    mode,
                    f"{wall:.1f}",
                    f"{busy:.1f}",
                    f"{use:.1%}",
                    f"{gap:.3f}",
                    f"{wall / walls['asynchronous']:.2f}x" if mode == "batched" else "1.00x",
                ]
            )
        ratio = walls["asynchronous"] / walls["batched"]
        use = float(rows[-2][4].rstrip("%")) / 100
        notes.append(
            f"{slots} at a time: asynchronous slot use {use:.1%} (target >= 95%: "
            f"{'met' if use >= 0.95 else 'not met'}), wall {ratio:.2f}x batched"
            + (f" (target <= 0.8: {'met' if ratio <= 0.8 else 'not met'})" if slots == 4 else "")
        )
    return rows, notes


def pruning_table(tmp: Path, samples: int) -> list[list[str]]:
    rows = []
    for pruner in ("none", "median"):
        sweep_dir = tmp / f"prune-{samples}-{pruner}"
        cmd = [
            PY,
            "-m",
            "runner",
            "-m",
            "hydra/sweeper=search",
            f"hydra.sweeper.n_trials={TRIALS}",
            f"hydra.sweeper.pruner={pruner}",
            "hydra.sweeper.sampler=random",
            "optim.lr=tag(log, interval(1e-5, 1e-1))",
            f"data.n_samples={samples}",
            "trainer.progress=off",
            "hydra.launcher.warm=true",
            "hydra.launcher.max_parallel=2",
            f"hydra.sweep.dir={sweep_dir}",
        ]
        wall = timed(cmd, limit=1200)
        found = records(sweep_dir)
        busy = sum(r["end_time"] - r["start_time"] for r in found)
        pruned = sum(r["status"] == "PRUNED" for r in found)
        best = min(
            json.loads((p.parent / "metrics.json").read_text())["objective_value"]
            for p in sweep_dir.glob("*/launch.json")
            if (p.parent / "metrics.json").is_file()
        )
        rows.append(
            [str(samples), pruner, f"{wall:.1f}", f"{busy:.1f}", str(pruned), f"{best:.4f}"]
        )
    base = float(rows[0][3])
    for row in rows:
        row.append(f"{float(row[3]) / base:.2f}x")
    return rows


def pruning_note(rows: list[list[str]], judged: bool) -> str:
    """One line per trial length: the time saved, and the target where it is judged."""
    saved = 1 - float(rows[1][3]) / float(rows[0][3])
    target = f" (target >= 40%: {'met' if saved >= 0.40 else 'not met'})" if judged else ""
    return (
        f"{rows[0][0]} samples: MedianPruner {saved:.0%} less trial time{target}, "
        f"best {rows[1][5]} against {rows[0][5]}."
    )


# The parents part's trial: seconds asleep (a searched key the task never reads).
PARENT_TRIAL_S = 4.0


def parents_table(tmp: Path, runs: int) -> tuple[list[list[str]], list[str]]:
    """One parent against two on one PostgreSQL study, each with 2 slots, ``runs``
    times each (which parent takes the odd trial varies: the median is judged)."""
    sys.path.insert(0, str(REPO))
    from tests.postgres import serving

    rows = []
    walls: dict[int, list[float]] = {1: [], 2: []}
    with serving("127.0.0.1") as server:
        for run in range(runs):
            for parents in (1, 2):
                study = f"parents{parents}-{run}"
                commands = [
                    search_command(
                        tmp / study / str(k),
                        "hydra.launcher.max_parallel=2",
                        f"hydra.sweeper.storage={server}/postgres",
                        f"hydra.sweeper.study_name={study}",
                        "+x=interval(0, 1)",  # searched; the task never reads it
                        sleep=str(PARENT_TRIAL_S),
                    )
                    for k in range(parents)
                ]
                started = time.perf_counter()
                procs = [
                    subprocess.Popen(
                        c, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                    )
                    for c in commands
                ]
                errors = [p.communicate(timeout=600)[1] for p in procs]
                wall = time.perf_counter() - started
                walls[parents].append(wall)
                for proc, error in zip(procs, errors, strict=True):
                    if proc.returncode:
                        raise SystemExit(f"a parent failed ({proc.returncode}):\n{error[-3000:]}")
                for k in range(parents):
                    use, busy, gap = slot_use(tmp / study / str(k), 2)
                    rows.append(
                        [
                            str(run + 1),
                            f"{parents} (#{k})",
                            str(len(records(tmp / study / str(k)))),
                            f"{wall:.1f}",
                            f"{busy:.1f}",
                            f"{use:.1%}",
                            f"{gap:.3f}",
                            f"{wall / walls[1][-1]:.2f}x",
                        ]
                    )
    ratio = statistics.median(walls[2]) / statistics.median(walls[1])
    lowest = min(float(r[5].rstrip("%")) / 100 for r in rows)
    notes = [
        f"median wall of two parents {ratio:.2f}x one parent's (target <= 0.55: "
        f"{'met' if ratio <= 0.55 else 'not met'})",
        f"lowest slot use {lowest:.1%} (target >= 90%: {'met' if lowest >= 0.90 else 'not met'})",
    ]
    return rows, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["slots", "pruning", "parents", "all"], default="all")
    parser.add_argument("--runs", type=int, default=3, help="runs of the parents part")
    args = parser.parse_args()
    started = time.time()
    sections: dict[str, str] = {}  # each part its own section: a run of one keeps the others
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("slots", "all"):
            rows, notes = slots_table(Path(tmp))
            table = markdown_table(
                ["slots", "search", "wall s", "trial s", "slot use", "gap s", "wall vs async"], rows
            )
            sections["Search: slot use"] = (
                f"24 trials sleeping log-uniform 0.5-5 s, warm, runner's launcher.\n\n{table}"
                f"\n\n{'; '.join(notes)}."
            )
        if args.part in ("pruning", "all"):
            rows, notes = [], []
            for samples in PRUNING_SAMPLES:
                these = pruning_table(Path(tmp), samples)
                notes.append(pruning_note(these, judged=samples == PRUNING_SAMPLES[-1]))
                rows += these
            table = markdown_table(
                [
                    "samples",
                    "pruner",
                    "wall s",
                    "trial s",
                    "pruned",
                    "best val_loss",
                    "trial s vs none",
                ],
                rows,
            )
            sections["Search: pruning"] = (
                "24 trials of the training task (20 epochs), 2 at a time; the same 24 "
                "learning rates in both arms (seeded random sampler)."
                f"\n\n{table}\n\n{' '.join(notes)}"
            )
        if args.part in ("parents", "all"):
            rows, notes = parents_table(Path(tmp), args.runs)
            table = markdown_table(
                ["run", "parents", "trials", "wall s", "trial s", "slot use", "gap s", "vs one"],
                rows,
            )
            sections["Search: several parents on one study"] = (
                f"{TRIALS} trials sleeping {PARENT_TRIAL_S:g} s, warm, 2 slots a parent, one "
                f"PostgreSQL study.\n\n{table}\n\n{'; '.join(notes)}."
            )
    command = f"bench/search.py --part {args.part}, {time.time() - started:.0f} s"
    for title, body in sections.items():
        publish(title, body + failed_runs_note(), command)


if __name__ == "__main__":
    main()
