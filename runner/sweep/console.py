"""What a sweep shows while it runs: one log line per point start and end, each with
a running count and the best objective so far; on a terminal, also a live status line
under them (``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3) 42s``). Off a
terminal (logs, CI) only the plain lines, free of control codes."""

from __future__ import annotations

import logging
import math
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hydra.core.utils import filter_overrides

from runner.errors import first_line
from runner.record import JobRecord, Outcome

log = logging.getLogger(__name__)

# Console lines show at most this much of a point's overrides (launch.json and the
# summary keep them all).
LABEL_WIDTH = 60


def clip(text: str) -> str:
    """``text`` in at most LABEL_WIDTH characters."""
    return text if len(text) <= LABEL_WIDTH else text[: LABEL_WIDTH - 3] + "..."


def compact_number(text: str) -> str:
    """A value as written on the command line, a fraction in 6 significant digits
    (``0.0018662266976517971`` -> ``0.00186623``); anything else as it is."""
    try:
        number = float(text)
    except ValueError:
        return text
    if text.strip().lstrip("+-").isdigit() or not math.isfinite(number):
        return text
    return f"{number:.6g}"


def compact_override(override: str) -> str:
    """``key=value`` with its value in :func:`compact_number`'s form."""
    key, sep, value = override.partition("=")
    return f"{key}{sep}{compact_number(value)}" if sep else override


def short_label(overrides: Sequence[str]) -> str:
    """A point's overrides in at most LABEL_WIDTH characters, numbers compact: whole
    ones while they fit, then how many more."""
    overrides = [compact_override(o) for o in overrides]
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
    """The sweep's lines. ``varying``: the keys its points differ in (the command
    line's sweeps, the search's space), which lead each point's label; the overrides
    every point shares are said once, in the sweep's first line (:meth:`fixed`)."""

    def __init__(self, maximise: bool, varying: Sequence[str] = ()) -> None:
        self.maximise = maximise
        self.varying = list(varying)
        # A terminal: the live line (stderr) and short, width-cut lines (stdout); a pipe
        # or a file on either gets whole lines through logging.
        self.live = sys.stderr.isatty() and sys.stdout.isatty()
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
            line = f"{progress()} {now - self.started:.0f}s"
            width = shutil.get_terminal_size().columns - 1  # never wrap: \r redraws one row
            sys.stderr.write(f"\r\x1b[K{line[:width]}")
            sys.stderr.flush()

    def finished(self, progress: str) -> None:
        """On a terminal, the sweep's last count as a line of its own (its points' lines
        leave the count to the live line, which is gone now)."""
        if self.live:
            self.log(logging.INFO, "%s", progress)

    def clear(self) -> None:
        """Remove the live status line (a log line replaces it, or the sweep ended)."""
        if self.live:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.drawn_at = 0.0

    def ended(
        self, idx: int, overrides: Sequence[str], record: JobRecord, value: Any, progress: str
    ) -> None:
        """The one line of a point that ended (``record``: its launch.json; ``value``: its
        return value or error): a failed one's error in one line, whose full text stays
        in its log and launch.json; then what was wrong with a completed one."""
        status = record.status
        outcome = {
            Outcome.COMPLETED: f"-> {compact(value)}",
            Outcome.PRUNED: "",
            Outcome.STOPPED: f"(by {record.stopped_by})",
        }.get(status, first_line(value))
        level = logging.ERROR if status is Outcome.FAILED else logging.INFO
        duration = f"in {record.duration_s or 0.0:.1f}s"
        self.point(level, idx, status.word, overrides, f"{duration} {outcome}", progress)
        if record.warning:
            self.log(logging.WARNING, "#%d %s", idx, record.warning)

    def _varies(self, override: str) -> bool:
        return override.partition("=")[0].lstrip("+~") in self.varying

    def label(self, overrides: Sequence[str]) -> str:
        """A point as its lines name it: what varies first, numbers compact, in at most
        LABEL_WIDTH characters; the fixed overrides only where nothing is known to vary."""
        shown = [o for o in filter_overrides(overrides) if self._varies(o)] or list(
            filter_overrides(overrides)
        )
        return short_label(shown) or "(no overrides)"

    def fixed(self, overrides: Sequence[str]) -> str:
        """The overrides every point shares (said once, in the sweep's first line)."""
        if not self.varying:
            return ""
        return " ".join(o for o in filter_overrides(overrides) if not self._varies(o))

    def point(
        self,
        level: int,
        idx: int,
        verb: str,
        overrides: Sequence[str],
        text: str,
        progress: str = "",
    ) -> None:
        """A point's line: ``#3 start  lr=0.1  (2 ranks per node, port 29512)``, then the
        sweep's ``progress`` (off a terminal: there the live line shows it)."""
        line = f"#{idx} {verb:<6} {self.label(overrides)}  {text}"
        if progress and not self.live:
            line += f"  {progress}"
        self.log(level, "%s", line)

    def log(self, level: int, message: str, *args: Any) -> None:
        """A line of the sweep: through logging (Hydra's format, whole lines) off a
        terminal; on one, printed with a short time prefix and cut to its width, so no
        line wraps (launch.json and the summary keep everything)."""
        self.clear()
        if not self.live:
            log.log(level, message, *args)
            return
        width = shutil.get_terminal_size().columns
        for line in (message % args if args else message).splitlines():
            text = f"{time.strftime('%H:%M:%S')} {line}"
            print(text if len(text) <= width else text[: width - 3] + "...", flush=True)
