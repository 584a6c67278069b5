"""The plots of ``python -m runner.report SWEEP_DIR``, drawn with matplotlib (the
``plot`` extra, imported only here and only when plots are drawn): the objective
against each swept numeric parameter, every point's learning curve, a heat map when
two parameters are swept, and, when the sweep varies a seed, each setting's objective
with error bars and its learning curve as the mean with a band. Nothing here imports
torch.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from runner.metrics import read_metrics
from runner.record import Outcome
from runner.sweep.summary import SEED_KEY, SKIP_METRICS, Group, Row, grouped, objective_name, swept


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def plot(sweep_dir: Path, rows: Sequence[Row], seed_key: str = SEED_KEY) -> list[Path]:
    """Draw the sweep's PNGs into the sweep dir; return their paths."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit(
            "runner.report: plots need matplotlib. Install it with "
            "`pip install 'runner[plot]'` (or `pip install matplotlib`); summary.csv and "
            "summary.md were written without it."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    name = objective_name(rows)
    scored = [r for r in rows if r.objective is not None]
    groups = grouped(rows, seed_key)
    # With seeds, the settings are what is swept (the seed has its own plots).
    params = [p for p in swept(rows) if not (groups and p == seed_key)]
    numeric = [p for p in params if all(_as_float(r.params.get(p, "x")) is not None for r in rows)]

    for param in numeric:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        xs = [_as_float(r.params[param]) or 0.0 for r in scored]  # numeric: checked above
        ax.scatter(xs, [r.objective or 0.0 for r in scored], color="tab:blue")
        positive = [x for x in xs if x > 0]
        if len(positive) == len(xs) and positive and max(positive) / min(positive) >= 100:
            ax.set_xscale("log")
        ax.set_xlabel(param)
        ax.set_ylabel(name)
        ax.set_title(f"{name} against {param}")
        ax.grid(alpha=0.3)
        written.append(_save(fig, sweep_dir / f"objective_vs_{_slug(param)}.png"))
        plt.close(fig)

    curves = [(r, read_metrics(r.job_dir)) for r in rows]
    curves = [(r, h) for r, h in curves if h]
    if curves:
        metric = "val_loss" if any("val_loss" in e for _, h in curves for e in h) else None
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for r, history in curves:
            key = metric or next(k for k in history[0] if k not in SKIP_METRICS)
            label = f"#{r.job} " + " ".join(f"{k}={r.params.get(k)}" for k in swept(rows))
            ax.plot([e["epoch"] for e in history], [e[key] for e in history], label=label[:60])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric or "metric")
        ax.set_title("learning curves")
        ax.grid(alpha=0.3)
        if len(curves) <= 12:
            ax.legend(fontsize=7)
        written.append(_save(fig, sweep_dir / "learning_curves.png"))
        plt.close(fig)

    if len(params) == 2 and scored and not groups:
        written.append(_heatmap(plt, sweep_dir, scored, params, name))
    if groups:
        written += _over_seeds(plt, sweep_dir, groups, name, seed_key)
    return written


def _label(group: Group) -> str:
    return " ".join(f"{k}={v}" for k, v in group.params.items()) or "all"


def _over_seeds(plt, sweep_dir: Path, groups: list[Group], name: str, seed_key: str) -> list[Path]:
    """Each setting's objective over seeds (mean, standard deviation as error bars, and
    every seed's value), and its learning curve as the mean with a band of one
    standard deviation."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups)), 4.5), dpi=100)
    for i, group in enumerate(groups):
        values = group.values(None)
        mean, std = group.stats(None)
        if mean is None:
            continue
        ax.scatter([i] * len(values), values, color="tab:gray", alpha=0.5, s=12, zorder=2)
        ax.errorbar(i, mean, yerr=std or 0.0, fmt="o", color="tab:blue", capsize=5, zorder=3)
    ax.set_xticks(range(len(groups)), [_label(g) for g in groups], rotation=20, ha="right")
    ax.set_xlim(-0.5, len(groups) - 0.5)
    ax.set_ylabel(name)
    ax.set_title(f"{name} over {seed_key}: mean ± std, best first")
    ax.grid(alpha=0.3)
    written = [_save(fig, sweep_dir / "objective_by_setting.png")]
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    drawn = False
    for group in groups:
        histories = [read_metrics(r.job_dir) for r in group.rows if r.status is Outcome.COMPLETED]
        histories = [h for h in histories if h]
        if not histories:
            continue
        metric = "val_loss" if all("val_loss" in h[0] for h in histories) else None
        key = metric or next(k for k in histories[0][0] if k not in SKIP_METRICS)
        by_epoch: dict[int, list[float]] = {}
        for history in histories:
            for entry in history:
                if isinstance(entry.get(key), (int, float)):
                    by_epoch.setdefault(int(entry["epoch"]), []).append(float(entry[key]))
        epochs = sorted(by_epoch)
        means = [statistics.fmean(by_epoch[e]) for e in epochs]
        stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
        (line,) = ax.plot(epochs, means, label=f"{_label(group)} (n={len(histories)})"[:60])
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2)
        ax.set_ylabel(key)
        drawn = True
    if drawn:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title(f"learning curves over {seed_key}: mean ± std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(fig, sweep_dir / "learning_curves_by_setting.png"))
    plt.close(fig)
    return written


def _heatmap(plt, sweep_dir: Path, rows: Sequence[Row], params: list[str], name: str) -> Path:
    xs = sorted({r.params[params[0]] for r in rows}, key=_sort_key)
    ys = sorted({r.params[params[1]] for r in rows}, key=_sort_key)
    grid = [[float("nan")] * len(xs) for _ in ys]
    for r in rows:
        if r.objective is not None:
            grid[ys.index(r.params[params[1]])][xs.index(r.params[params[0]])] = r.objective
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(xs)), xs)
    ax.set_yticks(range(len(ys)), ys)
    ax.set_xlabel(params[0])
    ax.set_ylabel(params[1])
    for j, row in enumerate(grid):
        for i, value in enumerate(row):
            if value == value:
                ax.text(i, j, f"{value:.3g}", ha="center", va="center", color="white", fontsize=8)
    fig.colorbar(image, ax=ax, label=name)
    ax.set_title(f"{name}: {params[0]} x {params[1]}")
    path = _save(fig, sweep_dir / "heatmap.png")
    plt.close(fig)
    return path


def _sort_key(text: str):
    value = _as_float(text)
    return (0, value, "") if value is not None else (1, 0.0, text)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    return path
