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
from runner.sweep.console import compact_number, compact_override, short_label
from runner.sweep.rows import SKIP_METRICS, Row, better, objective_name, rows_maximise, swept
from runner.sweep.summary import SEED_KEY, Group, grouped


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def curve_key(history: list[dict]) -> str:
    """The metric a learning curve draws: the first line's first that is a result
    (runner's trainer: val_loss), else the objective ``runner.metrics.report`` wrote."""
    return next((k for k in history[0] if k not in SKIP_METRICS), "objective")


def curve(history: list[dict], key: str | None) -> list[tuple[int, float]]:
    """(epoch, value of ``key``) of every line that has it: a line's epoch is its
    ``epoch``, else its ``step`` (``runner.metrics.report``), else its line number."""
    key = key or curve_key(history)
    return [
        (int(e.get("epoch", e.get("step", n))), float(e[key]))
        for n, e in enumerate(history)
        if isinstance(e.get(key), (int, float)) and not isinstance(e.get(key), bool)
    ]


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
    from matplotlib.ticker import MaxNLocator, NullFormatter

    written = []
    name = objective_name(rows)
    maximises = rows_maximise(rows)
    scored = [r for r in rows if r.objective is not None]
    groups = grouped(rows, seed_key)
    # With seeds, the settings are what is swept (the seed has its own plots).
    params = [p for p in swept(rows) if not (groups and p == seed_key)]
    numeric = [p for p in params if all(_as_float(r.params.get(p, "x")) is not None for r in rows)]

    log_keys = searched_on_log_scale(sweep_dir)
    for param in numeric:
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        xs = [_as_float(r.params[param]) or 0.0 for r in scored]  # numeric: checked above
        ys = [r.objective or 0.0 for r in scored]
        # A second swept key with few values: one colour (and legend entry) per value.
        by = next((p for p in params if p != param and len(_values(scored, p)) <= 10), None)
        if by is None:
            ax.scatter(xs, ys, color="tab:blue")
        else:
            for value in _values(scored, by):
                picked = [i for i, r in enumerate(scored) if r.params.get(by) == value]
                label = compact_override(f"{by}={value}")
                ax.scatter([xs[i] for i in picked], [ys[i] for i in picked], label=label)
            ax.legend(fontsize=7, title=None)
        if log_axis(xs, param in log_keys):
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # no crowded 3x10^-3 labels
            ticks = sorted(set(xs))
            if len(ticks) <= 8:  # the swept values themselves, as the summary writes them
                ax.set_xticks(ticks, [f"{x:.6g}" for x in ticks])
        ax.set_xlabel(param)
        ax.set_ylabel(name)
        ax.set_title(f"{name} against {param} ({better(maximises)})")
        ax.grid(alpha=0.3)
        written.append(_save(fig, sweep_dir / f"objective_vs_{_slug(param)}.png"))
        plt.close(fig)

    histories = [(r, h) for r in rows if (h := read_metrics(r.job_dir))]
    metric = "val_loss" if any("val_loss" in e for _, h in histories for e in h) else None
    curves = [(r, c) for r, h in histories if (c := curve(h, metric))]
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        for r, points in curves:
            label = f"#{r.job} " + short_label([f"{k}={r.params.get(k)}" for k in swept(rows)])
            ax.plot([x for x, _ in points], [y for _, y in points], label=label)
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
        written.append(_heatmap(plt, sweep_dir, scored, params, name, maximises))
    if groups:
        written += _over_seeds(plt, sweep_dir, groups, name, seed_key)
    return written


def log_axis(values: Sequence[float], searched_on_log: bool = False) -> bool:
    """A log axis for positive values searched on a log scale or spanning a decade."""
    positive = [v for v in values if v > 0]
    if not positive or len(positive) < len(values):
        return False
    return searched_on_log or max(positive) / min(positive) >= 10


def searched_on_log_scale(sweep_dir: Path) -> set[str]:
    """The keys the sweep searched with ``tag(log, ...)`` (its multirun.yaml: the
    command line and ``hydra.sweeper.params``)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        config = OmegaConf.load(sweep_dir / "multirun.yaml")
    except (OSError, ValueError):
        return set()
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    texts = [f"{k}={v}" for k, v in params.items()]
    texts += list(OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
    found = set()
    for text in texts:
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except Exception:
            continue
        if "log" in (getattr(override.value(), "tags", None) or set()):
            found.add(override.get_key_element().lstrip("+~"))
    return found


def _values(rows: Sequence[Row], key: str) -> list[str]:
    return sorted({r.params.get(key, "") for r in rows}, key=_sort_key)


def _label(group: Group) -> str:
    """A setting in a legend or tick: whole overrides, numbers compact, never cut mid-word."""
    return short_label([f"{k}={v}" for k, v in group.params.items()]) or "all"


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
        key = metric or curve_key(histories[0])
        by_epoch: dict[int, list[float]] = {}
        for history in histories:
            for epoch, value in curve(history, key):
                by_epoch.setdefault(epoch, []).append(value)
        epochs = sorted(by_epoch)
        means = [statistics.fmean(by_epoch[e]) for e in epochs]
        stds = [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
        (line,) = ax.plot(epochs, means, label=f"{_label(group)} (n={len(histories)})")
        low = [m - s for m, s in zip(means, stds, strict=True)]
        high = [m + s for m, s in zip(means, stds, strict=True)]
        # A light band edged in its line's colour: bands that overlap stay apart.
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.1, linewidth=0)
        ax.plot(epochs, low, color=line.get_color(), linewidth=0.6, linestyle="--", alpha=0.7)
        ax.plot(epochs, high, color=line.get_color(), linewidth=0.6, linestyle="--", alpha=0.7)
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


def _heatmap(
    plt, sweep_dir: Path, rows: Sequence[Row], params: list[str], name: str, maximises: bool
) -> Path:
    xs = sorted({r.params[params[0]] for r in rows}, key=_sort_key)
    ys = sorted({r.params[params[1]] for r in rows}, key=_sort_key)
    grid = [[float("nan")] * len(xs) for _ in ys]
    for r in rows:
        if r.objective is not None:
            grid[ys.index(r.params[params[1]])][xs.index(r.params[params[0]])] = r.objective
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(xs)), [compact_number(x) for x in xs])
    ax.set_yticks(range(len(ys)), [compact_number(y) for y in ys])
    ax.set_xlabel(params[0])
    ax.set_ylabel(params[1])
    for j, row in enumerate(grid):
        for i, value in enumerate(row):
            if value == value:
                # Dark text on the map's light end, white on its dark end.
                light = float(image.norm(value)) > 0.55
                color = "black" if light else "white"
                ax.text(i, j, f"{value:.3g}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, label=f"{name} ({better(maximises)})")
    ax.set_title(f"{name}: {params[0]} x {params[1]} ({better(maximises)})")
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
