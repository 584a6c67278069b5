"""See a sweep at a glance: ``python -m runner.report SWEEP_DIR``.

Rebuilds the sweep's summary from its job dirs (a finished, a running or an interrupted
sweep alike): ``summary.csv`` and ``summary.md``, one row per point, sorted by the
objective, with the swept overrides as columns; then draws PNG plots with matplotlib
(the ``plot`` extra): the objective against each swept numeric parameter, every
point's learning curve on one figure, and a heat map when two parameters are swept.

The launcher rewrites the summary after every batch, and
:class:`SummaryCallback` prints the table when a multirun ends. Nothing here imports
torch.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from runner.launch.entry import LAUNCH_RECORD, RETURN_VALUE
from runner.launch.procs import pid_alive, write_atomic
from runner.launch.rerun import RERUNS
from runner.metrics import METRICS_FILE

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
SKIP_METRICS = {"epoch", "step", "elapsed_s", "objective", "objective_value", "world_size"}


@dataclass
class Row:
    """One sweep point, as its job dir records it."""

    job: int
    job_dir: Path
    params: dict[str, str]
    status: str
    world_size: int | None = None
    duration_s: float | None = None
    objective: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    # A multi-objective trial's values, and whether it is on the search's Pareto front.
    values: list[float] = field(default_factory=list)
    pareto: bool = False
    # STOPPED: by what (Ctrl-C, SIGTERM, fail_fast, timeout).
    stopped_by: str = ""

    @property
    def shown_status(self) -> str:
        return f"{self.status} ({self.stopped_by})" if self.stopped_by else self.status


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _overrides(job_dir: Path) -> list[str]:
    try:
        return list(yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text()) or [])
    except (OSError, yaml.YAMLError):
        return []


def sweep_maximises(config: Any) -> bool:
    """Whether a sweep's best is its highest value: the sweeper's ``direction`` when it
    has one (Optuna's; the first of several), else runner's ``trainer.objective_mode``."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
    if OmegaConf.is_list(direction) and len(direction):
        direction = direction[0]
    if isinstance(direction, str):
        return direction == "maximize"
    return str(OmegaConf.select(config, "trainer.objective_mode", default="min")) == "max"


def _maximises(job_dir: Path) -> bool:
    """sweep_maximises for a job dir, from its ``.hydra/`` files."""
    try:
        config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        hydra = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml")
    except (OSError, yaml.YAMLError):
        return False
    return sweep_maximises(OmegaConf.merge(config, hydra))


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _return_value(job_dir: Path) -> Any:
    path = job_dir / RETURN_VALUE
    if not path.is_file():
        return None
    import cloudpickle

    try:
        return cloudpickle.loads(path.read_bytes())
    except Exception:
        return None


def _pareto_dirs(sweep_dir: Path) -> set[str]:
    """The job dirs of a multi-objective search's Pareto front (runner.sweep.search)."""
    try:
        results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return set()
    return {str(s.get("job_dir")) for s in results.get("solutions") or []}


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job dir of a sweep: the dirs below it that hold ``.hydra/overrides.yaml``
    (not the reruns of its points, in ``reruns/``)."""
    reruns = sweep_dir / RERUNS
    found = {
        p.parent.parent
        for p in sweep_dir.glob("**/.hydra/overrides.yaml")
        if not p.is_relative_to(reruns)
    }
    return sorted(found, key=lambda p: str(p))


def _agent_alive(launch: dict) -> bool:
    """Whether a point recorded as running still has its torchrun agent (a Slurm
    point's job is the cluster's to tell: taken as running)."""
    pid = launch.get("agent_pid")
    return not pid or pid_alive(int(pid))


def collect(sweep_dir: Path) -> list[Row]:
    """The rows of a sweep, read from its job dirs, in job order."""
    rows: list[Row] = []
    pareto = _pareto_dirs(sweep_dir)
    for job_dir in job_dirs(sweep_dir):
        hydra_cfg = {}
        try:
            hydra_cfg = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            pass
        num = (hydra_cfg.get("job") or {}).get("num")
        launch = _read_json(job_dir / LAUNCH_RECORD)
        final = _read_json(job_dir / "metrics.json")
        params = {}
        for override in _overrides(job_dir):
            key, _, value = override.partition("=")
            params[key.lstrip("+~")] = value
        if launch.get("status") == "RUNNING" and not _agent_alive(launch):
            status = "NOT FINISHED"  # its sweep was killed before it could say so
        elif launch.get("status"):
            status = launch["status"]
        elif (job_dir / "metrics.json").exists():
            status = "COMPLETED"
        else:
            status = "RUNNING" if (job_dir / METRICS_FILE).exists() else "NOT FINISHED"
        objective = _number(final.get("objective_value"))
        values: list[float] = []
        if objective is None and status == "COMPLETED":
            value = _return_value(job_dir)
            objective = _number(value)
            if isinstance(value, (list, tuple)):
                values = [v for v in map(_number, value) if v is not None]
        rows.append(
            Row(
                job=int(num) if isinstance(num, int) else len(rows),
                job_dir=job_dir,
                params=params,
                status=status,
                world_size=final.get("world_size") or launch.get("nproc_per_node"),
                duration_s=launch.get("duration_s"),
                objective=objective,
                metrics={
                    k: v
                    for k, v in final.items()
                    if k not in SKIP_METRICS and _number(v) is not None
                },
                error=str(launch.get("error", "")).splitlines()[0] if launch.get("error") else "",
                values=values,
                pareto=str(job_dir) in pareto,
                stopped_by=str(launch.get("stopped_by") or "") if status == "STOPPED" else "",
            )
        )
    return sorted(rows, key=lambda r: r.job)


def objective_name(rows: Sequence[Row]) -> str:
    for row in rows:
        final = _read_json(row.job_dir / "metrics.json")
        if final.get("objective"):
            return str(final["objective"])
    return "return_value"


def ranked(rows: Sequence[Row]) -> list[Row]:
    """Rows with an objective first, best first (direction from the config), then the rest."""
    sign = -1.0 if rows and _maximises(rows[0].job_dir) else 1.0
    scored = [(r.objective, r) for r in rows if r.objective is not None]
    front = [r for r in rows if r.pareto]
    return (
        front
        + [r for _, r in sorted(scored, key=lambda pair: sign * pair[0]) if not r.pareto]
        + [r for r in rows if r.objective is None and not r.pareto]
    )


def swept(rows: Sequence[Row]) -> list[str]:
    """Override keys whose value differs between points (all of them for one point)."""
    keys = list(dict.fromkeys(k for r in rows for k in r.params))
    varying = [k for k in keys if len({r.params.get(k) for r in rows}) > 1]
    return varying if len(rows) > 1 else keys


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary, best point first."""
    params = swept(rows)
    metrics = list(dict.fromkeys(k for r in rows for k in r.metrics))
    header = [
        "job",
        *params,
        "status",
        *(["pareto"] if any(r.pareto for r in rows) else []),
        "world_size",
        "duration_s",
        objective_name(rows),
        *[m for m in metrics if m != objective_name(rows)],
        "error",
    ]

    def fmt(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    cells = []
    for r in ranked(rows):
        cells.append(
            [
                fmt(r.job),
                *[r.params.get(p, "") for p in params],
                r.shown_status,
                *([("yes" if r.pareto else "")] if any(x.pareto for x in rows) else []),
                fmt(r.world_size),
                fmt(r.duration_s),
                fmt(r.objective) if not r.values else ", ".join(map(fmt, r.values)),
                *[fmt(r.metrics.get(m)) for m in metrics if m != objective_name(rows)],
                r.error,
            ]
        )
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| " + " | ".join(escape(h) for h in header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> list[Row]:
    """Write summary.csv and summary.md into the sweep dir; return the rows."""
    rows = collect(sweep_dir)
    if not rows:
        return rows
    header, cells = table(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(cells)
    write_atomic(sweep_dir / SUMMARY_CSV, buffer.getvalue().encode())
    write_atomic(sweep_dir / SUMMARY_MD, markdown(header, cells).encode())
    return rows


def console_table(rows: Sequence[Row]) -> str:
    """The summary as aligned plain text, for the end of a sweep."""
    header, cells = table(rows)
    widths = [
        max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- plots


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def plot(sweep_dir: Path, rows: Sequence[Row]) -> list[Path]:
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
    numeric = [
        p for p in swept(rows) if all(_as_float(r.params.get(p, "x")) is not None for r in rows)
    ]

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

    curves = [(r, _history(r.job_dir)) for r in rows]
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

    params = swept(rows)
    if len(params) == 2 and scored:
        written.append(_heatmap(plt, sweep_dir, scored, params, name))
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


def _history(job_dir: Path) -> list[dict]:
    try:
        lines = (job_dir / METRICS_FILE).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return []


# --------------------------------------------------------------------------- callback, CLI


class SummaryCallback(Callback):
    """Hydra callback: at the end of a multirun, write the summary and print the table.
    Stored in runner's conf as ``hydra.callbacks.summary``; any app can add it."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        rows = write_summary(sweep_dir)
        if rows:
            print(f"\nSweep summary ({sweep_dir / SUMMARY_MD}):\n{console_table(rows)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.report",
        description="Rebuild a sweep's summary from its job dirs and draw its plots.",
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep dir (hydra.sweep.dir)")
    parser.add_argument("--no-plots", action="store_true", help="write the summary only")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    rows = write_summary(args.sweep_dir)
    if not rows:
        print(f"no job dirs (with .hydra/overrides.yaml) under {args.sweep_dir}", file=sys.stderr)
        return 1
    print(console_table(rows))
    print(f"\nwrote {args.sweep_dir / SUMMARY_CSV} and {args.sweep_dir / SUMMARY_MD}")
    if not args.no_plots:
        for path in plot(args.sweep_dir, rows):
            print(f"wrote {path}")
    return 0
