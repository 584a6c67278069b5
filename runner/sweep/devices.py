"""The device pool: which accelerators each running point holds.

Each point gets exactly one device per local rank, sized by its own world size
(``hydra.launcher.nproc_per_node`` as that point resolves it), as a
``CUDA_VISIBLE_DEVICES`` slice; points that run at once never share a device, and a
point's devices go back to the pool the moment it ends, fails or is stopped.

Policy: first in, first out, with backfill. The first pending point (the head) starts
as soon as its slice is free. While it waits, a later point that fits in the devices
free at that moment may start ahead of it (they would idle otherwise); devices freed
after the head began to wait are held for the head, so it waits at most for the
points running when it began to wait and for one backfilled point per device:
neither large points (which would wait forever behind a stream of small ones) nor
small points (which keep their turn in the queue) starve.

Without devices (a CPU machine, ``devices=none``, or Slurm, where the cluster
allocates), every point fits, and on this machine ``OMP_NUM_THREADS`` is split
between the ranks that run at once unless the user set it.

Nothing here imports torch: devices are found from ``CUDA_VISIBLE_DEVICES`` or
``nvidia-smi``.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from runner.launch.options import invalid


def visible_devices(option: str) -> list[str]:
    """The device ids ``hydra.launcher.devices`` names: ``none``; ids like ``0,1,2,3``;
    or ``auto``: what ``CUDA_VISIBLE_DEVICES`` allows, else the GPUs ``nvidia-smi`` lists."""
    if option == "none":
        return []
    if option != "auto":
        return [d.strip() for d in option.split(",")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


class DevicePool:
    """Devices shared out to the points of one sweep (see the module docstring)."""

    def __init__(self, ids: list[str], *, split_threads: bool = True) -> None:
        self.ids = list(ids)
        self.split_threads = split_threads
        self._free = list(ids)
        self._held: list[str] = []  # freed while the head waits: the head's alone
        self._head_waiting = False

    def __bool__(self) -> bool:
        return bool(self.ids)

    @property
    def free(self) -> list[str]:
        """Devices no point holds (held-for-the-head ones included)."""
        return sorted(self._free + self._held, key=self.ids.index)

    def too_small_for(self, nproc: int, who: str) -> str | None:
        """The error for ``who`` (a point, every point) whose ``nproc`` local ranks
        outnumber the pool's devices, naming the key, the value and the fix; else None."""
        if not self.ids or nproc <= len(self.ids):
            return None
        return invalid(
            "hydra.launcher.nproc_per_node",
            nproc,
            f"{who} needs {nproc} devices, one per local rank, and hydra.launcher.devices "
            f"has {len(self.ids)} ({','.join(self.ids)})",
            f"nproc_per_node={len(self.ids)} or fewer, or name more devices "
            "(hydra.launcher.devices='0,1,...')",
        )

    @property
    def backfillable(self) -> bool:
        """Whether any device is free for a point behind the waiting head."""
        return bool(self._free)

    def needed(self, nproc: int) -> int:
        """Devices a point with ``nproc`` local ranks takes: one per rank (none on CPU)."""
        return nproc if self.ids else 0

    def take(self, count: int, *, head: bool) -> list[str] | None:
        """``count`` devices for a point, or None if they are not free for it now. The
        ``head`` point may take devices held for it; a backfilled one may not."""
        if not self.ids:
            return []
        usable = self._free + self._held if head else self._free
        if count > len(usable):
            if head:
                self._head_waiting = True
            return None
        taken = sorted(usable, key=self.ids.index)[:count]
        self._free = [d for d in self._free if d not in taken]
        self._held = [d for d in self._held if d not in taken]
        if head:
            self.new_head()
        return taken

    def new_head(self) -> None:
        """The head point left the queue (started, or will not run): what was held for
        it is free for anyone."""
        self._free += self._held
        self._held = []
        self._head_waiting = False

    def give_back(self, devices: list[str]) -> None:
        """A point ended: its devices go back (held for the head, if it waits)."""
        (self._held if self._head_waiting else self._free).extend(devices)

    def environment(
        self, devices: list[str], nproc: int, slots: int, env: dict[str, str]
    ) -> dict[str, str]:
        """What a point's agent and ranks get: its ``CUDA_VISIBLE_DEVICES`` slice, or on
        CPU its share of the cores as ``OMP_NUM_THREADS`` (unless ``env`` or this
        process already sets it)."""
        if devices:
            return {"CUDA_VISIBLE_DEVICES": ",".join(devices)}
        if (
            self.split_threads
            and "OMP_NUM_THREADS" not in os.environ
            and "OMP_NUM_THREADS" not in env
        ):
            share = (os.cpu_count() or 1) // (slots * nproc)
            return {"OMP_NUM_THREADS": str(max(1, share))}
        return {}
