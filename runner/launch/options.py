"""How one job is launched: :class:`LaunchConfig`, every torchrun option under
torchrun's own name, checked once.

The same dataclass is the torchrun part of the launcher plugin's config
(``hydra.launcher.*``), so each option, its type and its default are written here
and nowhere else.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from runner.errors import LauncherConfigError, Problems
from runner.launch.procs import LOOPBACK


def option_names(schema: type) -> set[str]:
    """The keys an options dataclass defines (never a hand-written list)."""
    return {f.name for f in dataclasses.fields(schema)}


@dataclass
class LaunchConfig:
    """Every option of one torchrun launch, under torchrun's own names, plus ``env``
    (extra environment for the agent and its workers) and ``timeout`` (seconds)."""

    # Ranks per node; runner's app feeds it from trainer.nproc_per_node.
    nproc_per_node: int = 1
    # Nodes: N, or MIN:MAX with an elastic (c10d) rendezvous.
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_backend: str = "static"
    rdzv_endpoint: str = ""
    rdzv_id: str = "none"
    rdzv_conf: str = ""
    master_addr: str = LOOPBACK
    master_port: int | None = None
    max_restarts: int = 0
    # The agent looks at its ranks at most this often (and at once when one ends).
    monitor_interval: float = 0.1
    # Rank output goes to files under log_dir (default: <job dir>/torchrun);
    # tee "0:3" also copies rank 0's to the agent's output (console or torchrun.log).
    redirects: str = "3"
    tee: str = "0:3"
    log_dir: str | None = None
    # Extra environment for every point's agent and workers.
    env: dict[str, str] = field(default_factory=dict)
    # Seconds a job may run before it is stopped; null for no limit.
    timeout: float | None = None

    @classmethod
    def from_config(cls, node: Any, **overrides: Any) -> LaunchConfig:
        """Take the fields this class knows from a config node (e.g. ``hydra.launcher``),
        ignoring the rest (the scheduler's and Slurm's keys), and check them."""
        values = {k: node[k] for k in option_names(cls) if k in node}
        if values.get("env") is not None:
            values["env"] = {str(k): str(v) for k, v in dict(values["env"]).items()}
        values["nnodes"] = str(values.get("nnodes", "1"))
        values.update(overrides)
        launch = cls(**values)
        launch.check()
        return launch

    @property
    def max_nodes(self) -> int:
        return int(self.nnodes.split(":")[-1])

    @property
    def single_node(self) -> bool:
        return self.max_nodes == 1

    @property
    def world_size(self) -> int:
        """Ranks of the job at most: ``nproc_per_node`` on each of the most nodes."""
        return self.nproc_per_node * self.max_nodes

    def check(self) -> None:
        """Raise LauncherConfigError, naming the key, the value and the fix, for values
        that cannot work."""
        found = Problems(LauncherConfigError, "hydra.launcher.")
        found.check(
            isinstance(self.nproc_per_node, int) and self.nproc_per_node >= 1,
            "nproc_per_node",
            self.nproc_per_node,
            "must be an integer >= 1",
            "nproc_per_node=1 (or trainer.nproc_per_node=N for runner's app)",
        )
        found.require(
            bool(re.fullmatch(r"\d+(:\d+)?", self.nnodes))
            and min(int(n) for n in self.nnodes.split(":")) >= 1,
            "nnodes",
            self.nnodes,
            "must be N or MIN:MAX with N >= 1",
            "nnodes=1",
        )
        found.check(
            self.timeout is None or self.timeout > 0,
            "timeout",
            self.timeout,
            "must be > 0 seconds, or null for none",
            "timeout=3600",
        )
        found.check(
            self.max_restarts >= 0,
            "max_restarts",
            self.max_restarts,
            "must be >= 0",
            "max_restarts=0",
        )
        found.check(
            self.monitor_interval > 0,
            "monitor_interval",
            self.monitor_interval,
            "must be > 0",
            "monitor_interval=0.1",
        )
        if not self.single_node:
            found.check(
                bool(self.rdzv_endpoint or self.master_port),
                "rdzv_endpoint",
                self.rdzv_endpoint,
                f"a {self.nnodes}-node job needs a rendezvous address every node reaches",
                "rdzv_endpoint=HOST:PORT of the first node, the same on every node",
            )
            found.check(
                not self.rdzv_endpoint
                or bool(re.fullmatch(r"\[?[\w.:-]+\]?:\d+", self.rdzv_endpoint)),
                "rdzv_endpoint",
                self.rdzv_endpoint,
                "must be HOST:PORT (sweep point N uses PORT + N)",
                "rdzv_endpoint=node001:29400",
            )
            found.check(
                not (self.rdzv_backend == "static" and ":" in self.nnodes),
                "nnodes",
                self.nnodes,
                "MIN:MAX needs an elastic rendezvous (static waits for a fixed count)",
                "rdzv_backend=c10d",
            )
        found.raise_any()

    def for_point(self, num: int) -> LaunchConfig:
        """This launch for sweep point ``num``: a multi-node point gets its own rendezvous
        id (``<rdzv_id>-<num>``) and port (``PORT + num``), so the agents of two points
        can never join each other's group, and every node computes the same values
        from the same command. Single-node points need neither (each binds its own
        free loopback port)."""
        if self.single_node:
            return self

        def shifted(endpoint: str) -> str:
            host, _, port = endpoint.rpartition(":")
            return f"{host}:{int(port) + num}"

        return dataclasses.replace(
            self,
            rdzv_id=f"{self.rdzv_id}-{num}",
            rdzv_endpoint=shifted(self.rdzv_endpoint) if self.rdzv_endpoint else "",
            master_port=self.master_port + num if self.master_port else self.master_port,
        )

    def agent_args(self, entry_file: str, port: int | None, flags: list[str]) -> list[str]:
        """The agent's arguments: torchrun's own options, in torchrun's own spelling,
        then ``flags`` (how the agent starts its workers) and the entry file."""
        args = [
            "--nproc_per_node",
            str(self.nproc_per_node),
            "--nnodes",
            self.nnodes,
            "--max_restarts",
            str(self.max_restarts),
            "--monitor_interval",
            str(self.monitor_interval),
        ]
        if self.single_node:
            # torchrun's static rendezvous on 127.0.0.1, with a fresh worker store per
            # restart (see runner.launch.agent).
            args += ["--rdzv_backend", "runner-static", "--rdzv_endpoint", f"{LOOPBACK}:{port}"]
        else:
            # Multi-node: torchrun's own rendezvous (c10d, or static with node ranks);
            # the same command runs on every node.
            args += ["--node_rank", str(self.node_rank), "--rdzv_backend", self.rdzv_backend]
            args += ["--rdzv_id", self.rdzv_id]
            if self.rdzv_endpoint:
                args += ["--rdzv_endpoint", self.rdzv_endpoint]
            if self.rdzv_conf:
                args += ["--rdzv_conf", self.rdzv_conf]
            args += ["--master_addr", self.master_addr]
            if self.master_port:
                args += ["--master_port", str(self.master_port)]
        if self.log_dir:
            args += ["--log_dir", self.log_dir]
            if self.redirects:
                args += ["--redirects", self.redirects]
            if self.tee:
                args += ["--tee", self.tee]
        return [*args, *flags, entry_file]
