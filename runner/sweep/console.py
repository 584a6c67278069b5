"""What a sweep shows while it runs: one log line per point start and end, each with
a running count and the best objective so far; on a terminal, also a live status line
under them (``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3) 42s``). Off a
terminal (logs, CI) only the plain lines, free of control codes."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


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
        return f" best {self.best[0]:.6g} (#{self.best[1]})" if self.best else ""

    def progress(self, total: int, done: int, running: int, failed: int, pruned: int = 0) -> str:
        """``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3)``: the counts of
        this batch, the best of the whole sweep (every batch of an optimising sweeper)."""
        ended = done + failed + pruned
        counts = f"{done} done, {running} running, {failed} failed"
        if pruned:
            counts += f", {pruned} pruned"
        return f"[{ended}/{total} ended: {counts}]{self.best_text()}"

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

    def log(self, level: int, message: str, *args: Any) -> None:
        self.clear()
        log.log(level, message, *args)
