"""What a sweep shows while it runs: one log line per point start and end, each with
a running count and the best objective so far; on a terminal, also a live status line
under them (``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3) 42s``). Off a
terminal (logs, CI) only the plain lines, free of control codes."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from runner.sweep.points import clip

if TYPE_CHECKING:
    from runner.sweep.points import Point

log = logging.getLogger(__name__)


def compact(value: Any) -> str:
    """A value as console lines show it: numbers like the best (6 significant
    digits), several numbers each so, anything else as its repr, shortened."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.6g}"
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        return "(" + ", ".join(f"{v:.6g}" for v in value) + ")"
    return clip(repr(value))


class SweepConsole:
    def __init__(self, maximise: bool) -> None:
        self.maximise = maximise
        self.live = sys.stderr.isatty()
        self.started = time.monotonic()
        self.drawn_at = 0.0
        # (value, point number) of the sweep's best completed point so far.
        self.best: tuple[float, int] | None = None

    def scored(self, idx: int, value: Any) -> None:
        """Point ``idx`` completed with ``value``: the sweep's best if it beats it (a
        value that is not one number is not ranked)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            return
        if self.best is None or (value > self.best[0] if self.maximise else value < self.best[0]):
            self.best = (float(value), idx)

    def best_text(self) -> str:
        return f" best {compact(self.best[0])} (#{self.best[1]})" if self.best else ""

    def progress(self, total: int, counts: Mapping[str, int], running: int) -> str:
        """``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3)``: the counts of
        this batch by status, the best of the whole sweep (every batch of an optimising
        sweeper)."""
        words = f"{counts.get('COMPLETED', 0)} done, {running} running"
        words += f", {counts.get('FAILED', 0)} failed"
        for status in ("STOPPED", "PRUNED"):
            if counts.get(status):
                words += f", {counts[status]} {status.lower()}"
        return f"[{sum(counts.values())}/{total} ended: {words}]{self.best_text()}"

    def status(self, progress: Callable[[], str]) -> None:
        """On a terminal, redraw the live status line (at most twice a second)."""
        now = time.monotonic()
        if self.live and now - self.drawn_at >= 0.5:
            self.drawn_at = now
            sys.stderr.write(f"\r\x1b[K{progress()} {now - self.started:.0f}s")
            sys.stderr.flush()

    def clear(self) -> None:
        """Remove the live status line (a log line replaces it, or the sweep ended)."""
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.drawn_at = 0.0

    def ended(self, point: Point, record: dict, progress: str) -> None:
        """The line of a point that ended (``record``: its launch.json), and a failed
        one's error, or what was wrong with a completed one."""
        assert point.result is not None and point.status is not None
        value = point.result._return_value
        outcome = {
            "COMPLETED": f"-> {compact(value)}",
            "PRUNED": "",
            "STOPPED": f"(by {point.stopped_by})",
        }.get(point.status, "FAILED")
        self.log(
            logging.INFO,
            "#%d %-6s %s  in %.1fs %s  %s",
            point.idx,
            {"COMPLETED": "done"}.get(point.status, point.status.lower()),
            point.short_label,
            record.get("duration_s") or 0.0,
            outcome,
            progress,
        )
        if point.status == "FAILED":
            self.log(logging.ERROR, "#%d %s", point.idx, value)
        if record.get("warning"):
            self.log(logging.WARNING, "#%d %s", point.idx, record["warning"])

    def log(self, level: int, message: str, *args: Any) -> None:
        self.clear()
        log.log(level, message, *args)
