"""How runner says a value cannot work, in one place: the error types and the message.

Every such message names the key, the value, the rule it breaks and the fix
(:func:`invalid`). Checks collect them in :class:`Problems`: ``require`` raises the
first problem where later checks depend on earlier ones (the trainer's), ``check``
collects every problem and ``raise_any`` shows them at once (option dataclasses).
Hydra prints these errors' messages alone, not a traceback. Light: no torch.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException, ValueError):
    """A config value that cannot work; the message names the key, the value and the
    fix."""


class LauncherConfigError(ConfigError):
    """A ``hydra.launcher`` value (or the sweep dir) that cannot work."""


class SearchConfigError(ConfigError):
    """A ``hydra.sweeper`` value of runner's search that cannot work."""


def invalid(key: str, value: Any, rule: str, fix: str) -> str:
    """The message for a config value that cannot work, for the person at the terminal:
    ``KEY=VALUE is invalid: RULE. Fix: FIX``."""
    return f"{key}={value!r} is invalid: {rule}. Fix: {fix}"


def invalid_override(override: str, rule: str, fix: str) -> str:
    """The same for a whole override as written (``optim.lr=interval(1,0)``)."""
    return f"{override} is invalid: {rule}. Fix: {fix}"


def first_line(error: BaseException | str, more_in: str = "") -> str:
    """The first line of an error's message (its type when it has none); with
    ``more_in``, also how many lines more it has there (``(+3 more lines in its log)``)."""
    text = str(error).strip()
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    lines = text.splitlines()
    more = len(lines) - 1
    if not more_in or not more:
        return lines[0]
    return f"{lines[0]} (+{more} more line{'s' if more > 1 else ''} in {more_in})"


class Problems:
    """What is wrong with a set of values, raised as ``error``. ``prefix`` goes before
    every key and fix (``hydra.launcher.``)."""

    def __init__(self, error: type[Exception] = ConfigError, prefix: str = "") -> None:
        self.error = error
        self.prefix = prefix
        self.found: list[str] = []

    def check(self, ok: bool, key: str, value: Any, rule: str, fix: str) -> bool:
        """Record a problem unless ``ok``; returns ``ok``."""
        if not ok:
            self.add(invalid(self.prefix + key, value, rule, self.prefix + fix))
        return ok

    def require(self, ok: bool, key: str, value: Any, rule: str, fix: str) -> None:
        """Raise at once unless ``ok`` (with any problem found before)."""
        if not self.check(ok, key, value, rule, fix):
            self.raise_any()

    def add(self, message: str) -> None:
        """Record a problem written in full (see :func:`invalid`)."""
        self.found.append(message)

    def extend(self, other: Problems) -> Problems:
        self.found += other.found
        return self

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_any(self) -> None:
        """Raise ``error`` with every problem found, one per line; nothing if none."""
        if self.found:
            raise self.error("\n".join(self.found))
