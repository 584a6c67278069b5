"""The device pool: which accelerators each running job holds.

Each job (a sweep point, or a single multi-process run) gets exactly one device per
local rank, sized by its own world size, as a ``CUDA_VISIBLE_DEVICES`` slice. A
device holds at most ``points_per_device`` jobs at once (default 1: its own), and a
job's devices go back the moment it ends, fails or is stopped.

Across processes: every device a job holds is also a lease
(:mod:`runner.launch.leases`, an OS file lock) that every runner process on the
machine respects, so two sweeps, or a sweep and a single run, never stack on one
device; a job whose devices another run holds waits, and the pool says who holds
them (``blocked_by``). ``leases=false`` or ``devices=none`` leave devices to the user.
A single run takes its devices the same way, waiting if it must (:func:`run_devices`).

Policy: first in, first out, with backfill. The first pending job (the head) starts
as soon as its slice is free. While it waits, a later job that fits in the devices
free at that moment may start ahead of it (they would idle otherwise); devices freed
after the head began to wait are held for the head, so it waits at most for the
jobs running when it began to wait and for one backfilled job per device: neither
large jobs (which would wait forever behind a stream of small ones) nor small jobs
(which keep their turn in the queue) starve. Across runs, waiting heads queue in
the lease dir first come first served: the first in line keeps the leases of devices
as they free and no other run takes them; heads further back take theirs all at once.

Without devices (a CPU machine, ``devices=none``, or Slurm, where the cluster
allocates), every job fits, and on this machine ``OMP_NUM_THREADS`` is split
between the ranks that run at once unless the user set it.

Nothing here imports torch: devices are found from ``CUDA_VISIBLE_DEVICES`` or
``nvidia-smi``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner.errors import LauncherConfigError, Problems, invalid
from runner.launch.leases import Holder, Lease, LeaseDir

log = logging.getLogger(__name__)

# How often a single run that waits for devices other runs hold tries again.
DEVICE_POLL_S = 0.2
# How long a job that other runs' leases kept out waits before asking them again
# (unless a device of this pool frees sooner): each ask costs a few file locks.
LEASE_RETRY_S = 0.1


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


@dataclass
class DeviceOptions:
    """How jobs share this machine's devices (``hydra.launcher.*``, for sweeps and
    single runs alike)."""

    # Devices jobs share out, one per local rank: "auto" (the GPUs
    # CUDA_VISIBLE_DEVICES or nvidia-smi shows), "none", or ids like "0,1,2,3".
    devices: str = "auto"
    # Jobs that may share one device at once (small models); each sees only its slice.
    points_per_device: int = 1
    # Hold every device as a lease all runner processes on the machine respect (two
    # sweeps never stack on one device); false: devices are managed by hand.
    leases: bool = True
    # Where the leases live; null: $RUNNER_LEASE_DIR, else /tmp/runner-device-leases.
    lease_dir: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DeviceOptions:
        """The device keys of a ``hydra.launcher`` node (any launcher's: absent keys
        take their defaults)."""
        return cls(**{k: params[k] for k in cls.__dataclass_fields__ if k in params})

    def device_problems(self) -> Problems:
        """What cannot work, each naming the key, the value and the fix."""
        found = Problems(LauncherConfigError, "hydra.launcher.")
        found.check(
            self.devices in ("auto", "none")
            or all(d.strip().isdigit() for d in self.devices.split(",")),
            "devices",
            self.devices,
            "must be auto, none, or GPU ids like 0,1,2,3",
            "devices=auto",
        )
        found.check(
            self.points_per_device >= 1,
            "points_per_device",
            self.points_per_device,
            "must be an integer >= 1 (jobs on one device at once)",
            "points_per_device=1",
        )
        return found

    def pool(self, *, split_threads: bool = True) -> DevicePool:
        ids = visible_devices(self.devices)
        leases = LeaseDir(self.lease_dir, self.points_per_device) if ids and self.leases else None
        return DevicePool(
            ids, per_device=self.points_per_device, leases=leases, split_threads=split_threads
        )


class DevicePool:
    """Devices shared out to the jobs of one process (see the module docstring)."""

    def __init__(
        self,
        ids: list[str],
        *,
        per_device: int = 1,
        leases: LeaseDir | None = None,
        split_threads: bool = True,
    ) -> None:
        self.ids = list(ids)
        self.per_device = per_device
        self.split_threads = split_threads
        self.leases = leases
        # One entry per job a device can still take here (a device repeats with
        # points_per_device > 1).
        self._free = [d for d in ids for _ in range(per_device)]
        self._held: list[str] = []  # freed while the head waits: the head's alone
        self._head_waiting = False
        self._active: dict[str, list[Lease]] = {}  # leases of running jobs' devices
        self._kept: dict[str, Lease] = {}  # leases held for the head first in line
        # Devices the last head could not take because other runs hold them, and who.
        self.blocked_by: dict[str, list[Holder]] = {}
        self._said: str | None = None  # what waiting_news said last
        # When a head (True) or backfilled job (False) that other runs' leases kept
        # out may ask them again.
        self._retry_at: dict[bool, float] = {}

    def __bool__(self) -> bool:
        return bool(self.ids)

    def describe(self) -> str:
        """``, on devices 0,1`` (and how many jobs share one), or "" without devices."""
        if not self.ids:
            return ""
        shared = f", up to {self.per_device} points on each" if self.per_device > 1 else ""
        leases = "" if self.leases else " (leases=false: other runs are not told)"
        return f", on devices {','.join(self.ids)}{shared}{leases}"

    @property
    def capacity(self) -> int:
        """Jobs of one rank each that fit at once."""
        return len(self.ids) * self.per_device

    @property
    def free(self) -> list[str]:
        """Devices with room for a job here (held-for-the-head ones included)."""
        return sorted(set(self._free + self._held), key=self.ids.index)

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
            f"hydra.launcher.nproc_per_node={len(self.ids)} or fewer, or name more devices "
            "(hydra.launcher.devices='0,1,...')",
        )

    @property
    def backfillable(self) -> bool:
        """Whether any device is free for a job behind the waiting head."""
        return bool(self._free)

    def _load(self, device: str) -> int:
        """Jobs of this pool on ``device`` now."""
        return self.per_device - self._free.count(device) - self._held.count(device)

    def take(self, count: int, *, head: bool, what: str = "a runner job") -> list[str] | None:
        """``count`` distinct devices (one per local rank; none on CPU) for a job, the
        least loaded first, or None if they are not free for it now. The ``head`` job
        may take devices held for it; a backfilled one may not. ``what`` is who holds
        the leases, said to other runs that wait for them."""
        if not self.ids:
            return []
        if time.monotonic() < self._retry_at.get(head, 0.0):
            return None  # other runs' leases were asked a moment ago; nothing freed here
        usable = self._free + self._held if head else self._free
        order = sorted(
            set(usable), key=lambda d: (d not in self._kept, self._load(d), self.ids.index(d))
        )
        got: dict[str, Lease | None] = {}
        blocked: dict[str, list[Holder]] = {}
        for device in order:
            if len(got) == count or len(order) < count:
                break
            lease = self._kept.pop(device, None) if head else None
            if lease is None and self.leases is not None:
                lease = self.leases.try_take(device, what)
                if lease is None:
                    blocked[device] = [h for h in self.leases.refused_by if h.pid != os.getpid()]
                    continue
            got[device] = lease
        if head:
            self.blocked_by = {d: h for d, h in blocked.items() if h}
        if len(got) < count:
            if blocked:
                self._retry_at[head] = time.monotonic() + LEASE_RETRY_S
            if head:
                self._wait(got, what)
            else:
                for lease in got.values():
                    if lease is not None:
                        lease.release()
            return None
        for device, lease in got.items():
            (self._held if device in self._held else self._free).remove(device)
            if lease is not None:
                self._active.setdefault(device, []).append(lease)
        if head:
            self.new_head()
        return sorted(got, key=self.ids.index)

    def _wait(self, got: dict[str, Lease | None], what: str) -> None:
        """The head cannot start: first in line, it keeps the leases it got (and
        reserves their devices from backfill here); without, it lets them go."""
        self._head_waiting = True
        keep = self.leases is None or self.leases.wait_in_line(what, self.ids)
        for device, lease in got.items():
            if lease is None:
                continue
            if keep:
                self._kept[device] = lease
                if device not in self._held:
                    self._free.remove(device)
                    self._held.append(device)
            else:
                lease.release()

    def waiting_news(self) -> str | None:
        """In words, the devices the waiting head cannot take because other runs hold
        them, and who holds them; None if that has not changed since last asked (or
        nothing of another run is in its way)."""
        words = None
        if self.blocked_by:
            holders = sorted({h.describe() for hs in self.blocked_by.values() for h in hs})
            many = "s" if len(self.blocked_by) > 1 else ""
            devices = ",".join(self.blocked_by)
            words = f"device{many} {devices}, which other runs hold: {'; '.join(holders)}"
        if words == self._said:
            return None
        self._said = words
        return words

    def _first_in_line(self) -> bool:
        """Whether this pool's waiting head is first in the line of runs that wait."""
        return (
            self.leases is not None and self.leases.in_line and self.leases.first_in_line() is None
        )

    def new_head(self) -> None:
        """The head job left the queue (started, or will not run): what was held for
        it is free for anyone, here and in other runs."""
        self._free += self._held
        self._held = []
        self._head_waiting = False
        for lease in self._kept.values():
            lease.release()
        self._kept = {}
        self._retry_at = {}
        self.blocked_by = {}
        self._said = None
        if self.leases is not None:
            self.leases.leave_line()

    def give_back(self, devices: list[str]) -> None:
        """A job ended: its devices go back (held for the head, if it waits; their
        leases kept for it if it is first in line)."""
        self._retry_at = {}
        for device in devices:
            lease = self._active[device].pop() if self._active.get(device) else None
            if self._head_waiting and device not in self._held:
                self._held.append(device)
                if lease is not None and self._first_in_line():
                    self._kept[device] = lease
                    continue
            else:
                self._free.append(device)
            if lease is not None:
                lease.release()

    def environment(
        self, devices: list[str], nproc: int, slots: int, env: dict[str, str]
    ) -> dict[str, str]:
        """What a job's agent and ranks get: its ``CUDA_VISIBLE_DEVICES`` slice, or on
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
