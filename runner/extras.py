"""Optional packages behind runner's extras: whether one is installed, and recent
enough, asked of the installed metadata (nothing is imported), so a feature whose
package is missing says which extra to install instead of raising an ImportError
from deep inside it."""

from __future__ import annotations

import re
from importlib import metadata

from hydra.errors import CompactHydraException


class MissingExtraError(CompactHydraException, ImportError):
    """A feature's package is missing or too old (Hydra prints the message alone)."""


def installed(dist: str) -> str | None:
    """The installed version of the distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def _pinned_by(dist: str) -> list[str]:
    """The installed distributions that require ``dist`` below some version."""
    found = set()
    for peer in metadata.distributions():
        for requirement in peer.requires or []:
            spec = requirement.split(";")[0]
            name = re.match(r"[A-Za-z0-9._-]+", spec)
            if name and name.group().lower() == dist and "<" in spec:
                found.add(f"{peer.metadata['Name']} {peer.version} ({spec.strip()})")
    return sorted(found)


def require(dist: str, extra: str, feature: str, major: int = 0) -> None:
    """Raise :class:`MissingExtraError` naming ``feature``, the extra and the fix if
    ``dist`` is not installed, or its major version is below ``major``."""
    version = installed(dist)
    fix = f"pip install 'runner[{extra}]'"
    if version is None:
        raise MissingExtraError(
            f"{feature} needs {dist}, which is not installed. Fix: {fix} (or pip install {dist})"
        )
    if _major(version) >= major:
        return
    pinned_by = _pinned_by(dist)
    held_back = f", as {', '.join(pinned_by)} wants" if pinned_by else ""
    raise MissingExtraError(
        f"{feature} needs {dist}>={major}, but {dist} {version} is installed{held_back}. "
        f"Fix: {fix} (pip install '{dist}>={major}') in a venv of its own, apart from "
        f"what needs the older {dist}"
    )
