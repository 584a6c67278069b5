"""What a sweep shows while it runs: one log line per point start and end, each with
a running count and the best objective so far; on a terminal, also a live status line
under them (``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3) 42s``). Off a
terminal (logs, CI) only the plain lines, free of control codes."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger(__name__)


class SweepConsole:
    def __init__(self, maximise: bool) -> None:
        self.maximise = maximise
        self.live = sys.stderr.isatty()
        self.started = time.monotonic()
        self.drawn_at = 0.0

    def progress(
        self,
        total: int,
        done: int,
        running: int,
        failed: int,
        results: Sequence[tuple[int, JobReturn | None]],
    ) -> str:
        """``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3)``: ``results``
        are (point number, result) pairs; the best numeric completed one is named."""
        text = f"[{done + failed}/{total} ended: {done} done, {running} running, {failed} failed]"
        scored = [
            (result._return_value, idx)
            for idx, result in results
            if result is not None
            and result.status == JobStatus.COMPLETED
            and isinstance(result._return_value, (int, float))
            and not isinstance(result._return_value, bool)
        ]
        if scored:
            value, idx = max(scored) if self.maximise else min(scored)
            text += f" best {value:.6g} (#{idx})"
        return text

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
