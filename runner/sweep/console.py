"""What a sweep shows while it runs: one log line per point start and end, each with
a running count and the best objective so far; on a terminal, also a live status line
under them (``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3) 42s``). Off a
terminal (logs, CI) only the plain lines, free of control codes."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runner.record import JobRecord, Outcome

log = logging.getLogger(__name__)

# Console lines show at most this much of a point's overrides (launch.json and the
# summary keep them all).
LABEL_WIDTH = 60


def clip(text: str) -> str:
    """``text`` in at most LABEL_WIDTH characters."""
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 3] + "..."


def short_label(overrides: Sequence[str]) -> str:
    """A point's overrides in at most LABEL_WIDTH characters: whole ones while they
    fit, then how many more."""
    shown: list[str] = []
    for n, override in enumerate(overrides):
        rest = len(overrides) - n
        more = f" ...(+{rest})" if rest > 1 else ""
        if shown and len(" ".join([*shown, override]) + more) > LABEL_WIDTH:
            return " ".join(shown) + f" ...(+{rest})"
        shown.append(override)
    return clip(" ".join(shown))


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


class Best:
    """The best value so far in the sweep's direction, and the point that gave it."""

    def __init__(self, maximise: bool) -> None:
        self.maximise = maximise
        self.value: float | None = None
        self.idx: int | None = None

    def offer(self, idx: int, value: Any) -> None:
        """Point ``idx`` completed with ``value``: the best if it beats it (a value that
        is not one finite number is not ranked)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return
        if not math.isfinite(value):
            return
        if self.value is None or (value > self.value if self.maximise else value < self.value):
            self.value, self.idx = float(value), idx

    def text(self) -> str:
        """`` best 0.123 (#3)``, or "" before the first."""
        return "" if self.value is None else f" best {compact(self.value)} (#{self.idx})"


class SweepConsole:
    def __init__(self, maximise: bool) -> None:
        self.maximise = maximise
        self.live = sys.stderr.isatty()
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.best = Best(maximise)  # of the whole sweep (every batch)

    def scored(self, idx: int, value: Any) -> None:
        """Point ``idx`` completed with ``value``."""
        self.best.offer(idx, value)

    def progress(self, total: int, counts: Mapping[Outcome, int], running: int) -> str:
        """``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3)``: the counts of
        this batch by status, the best of the whole sweep (every batch of an optimising
        sweeper)."""
        words = f"{counts.get(Outcome.COMPLETED, 0)} done, {running} running"
        words += f", {counts.get(Outcome.FAILED, 0)} failed"
        for status in (Outcome.STOPPED, Outcome.PRUNED):
            if counts.get(status):
                words += f", {counts[status]} {status.word}"
        return f"[{sum(counts.values())}/{total} ended: {words}]{self.best.text()}"

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

    def ended(self, idx: int, label: str, record: JobRecord, value: Any, progress: str) -> None:
        """The line of a point that ended (``record``: its launch.json; ``value``: its
        return value or error), and a failed one's error, or what was wrong with a
        completed one."""
        status = record.status
        outcome = {
            Outcome.COMPLETED: f"-> {compact(value)}",
            Outcome.PRUNED: "",
            Outcome.STOPPED: f"(by {record.stopped_by})",
        }.get(status, str(Outcome.FAILED))
        self.log(
            logging.INFO,
            "#%d %-6s %s  in %.1fs %s  %s",
            idx,
            status.word,
            label,
            record.duration_s or 0.0,
            outcome,
            progress,
        )
        if status is Outcome.FAILED:
            self.log(logging.ERROR, "#%d %s", idx, value)
        if record.warning:
            self.log(logging.WARNING, "#%d %s", idx, record.warning)

    def point(self, level: int, idx: int, verb: str, label: str, text: str) -> None:
        """A point's line: ``#3 start  lr=0.1  (2 ranks per node, port 29512)``."""
        self.log(level, "#%d %-6s %s  %s", idx, verb, label, text)

    def log(self, level: int, message: str, *args: Any) -> None:
        self.clear()
        log.log(level, message, *args)
