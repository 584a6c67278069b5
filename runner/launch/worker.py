"""What every rank of a torchrun job runs, called by the job's entry script.

It rebuilds the job exactly as the parent saw it: the resolved config (data, never
code), ``HydraConfig`` answering as it would in the parent, logging set up the way
Hydra's job logging is (rank 0 into the job's log file, rank N into
``<job name>_rankN.log`` beside it), ``hydra.job.chdir`` and ``hydra.job.env_set``
honoured. Then it calls the task with the task config (no ``hydra`` node) and, on
rank 0, stores the return value for the parent. An exception is recorded in the
rank's torchelastic error file (``@record``), which the agent reports to the parent.
A rank that succeeded ends without the interpreter's C++ teardown (see ``exit_now``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.launch import gates
from runner.launch.codec import SCRIPT_MODULE, load_task, restore_config, task_config
from runner.launch.entry import RANK0_FILE, RESULT_FILE, TASK_FILE
from runner.launch.procs import die_with_parent, write_atomic
from runner.stop import install as watch_for_stop
from runner.stop import terminated as stop_terminated
from runner.trace import mark

log = logging.getLogger(__name__)


def configure_rank_logging(config: DictConfig, rank: int) -> None:
    """Hydra's job logging, with every file handler of rank N renamed ``*_rankN``."""
    from hydra.core.utils import configure_log

    hydra_cfg = config.hydra
    job_logging = hydra_cfg.job_logging
    if job_logging is not None and rank > 0:
        spec = OmegaConf.to_container(job_logging, resolve=True)
        assert isinstance(spec, dict)
        for handler in (spec.get("handlers") or {}).values():
            if isinstance(handler, dict) and handler.get("filename"):
                path = Path(handler["filename"])
                handler["filename"] = str(path.with_name(f"{path.stem}_rank{rank}{path.suffix}"))
        job_logging = OmegaConf.create(spec)
    configure_log(job_logging, hydra_cfg.verbose)


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append(where)
            else:
                out += _differences(a[key], b[key], where)
        return out
    return [] if a == b else [path or "<root>"]


def check_same_config(config_data: dict, timeout: float = 300.0) -> None:
    """In a multi-node job every node composed its own config: make sure they agree.

    Rank 0 publishes its task config (the ``hydra`` node may differ per node, e.g. a
    ``${now:}`` run dir) in the job's rendezvous store; every rank compares its own
    with it and counts itself if it differs; after all ranks have checked, either all
    go on or all fail, the differing ones naming the keys (so no node is left waiting
    for a partner that stopped).
    """
    import hashlib
    import time

    import torch.distributed as dist

    mine = {k: v for k, v in config_data.items() if k != "hydra"}
    text = json.dumps(mine, sort_keys=True)
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout),
    )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    prefix = f"runner/config/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    if rank == 0:
        store.set(f"{prefix}/text", text)
        store.set(f"{prefix}/digest", hashlib.sha256(text.encode()).hexdigest())
    differing: list[str] = []
    if store.get(f"{prefix}/digest").decode() != hashlib.sha256(text.encode()).hexdigest():
        differing = _differences(json.loads(store.get(f"{prefix}/text")), mine) or ["<root>"]
        store.add(f"{prefix}/mismatched", 1)
    store.add(f"{prefix}/checked", 1)
    deadline = time.monotonic() + timeout
    while store.add(f"{prefix}/checked", 0) < world:
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every rank checked its config within {timeout:g} s")
        time.sleep(0.05)
    mismatched = store.add(f"{prefix}/mismatched", 0)
    if differing:
        raise ConfigMismatch(
            f"the node of rank {rank} composed a different config than the node of rank 0; "
            f"differing keys: {', '.join(differing[:10])}. Fix: run the same command on "
            "every node, and pin values that differ between machines or start times "
            "(e.g. ${now:...}, ${oc.env:...}, hydra.run.dir) with explicit overrides."
        )
    if mismatched:
        raise ConfigMismatch(
            f"{mismatched} rank(s) on other nodes composed a different config than the "
            "node of rank 0; their logs name the keys"
        )


class ConfigMismatch(RuntimeError):
    """The nodes of one multi-node job composed different configs."""


def run(job: dict, entry_dir: Path) -> Any:
    """Rebuild the job's Hydra state in this rank and call its task."""
    mark("worker")
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import env_override

    die_with_parent(signal.SIGKILL)  # an agent killed outright takes its workers along
    if os.getppid() == 1:
        raise SystemExit("runner worker: the torchrun agent is already gone")
    rank = int(os.environ.get("RANK", "0"))
    if "torch" in sys.modules and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        # A worker forked from a warm process inherits torch's thread count from
        # before this rank's environment existed: apply OMP_NUM_THREADS now.
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if int(os.environ.get("WORLD_SIZE", "1")) > int(os.environ.get("LOCAL_WORLD_SIZE", "1")):
        check_same_config(job["config"])
    config = restore_config(job["config"])
    watch_for_stop(entry_dir)
    by_value = (entry_dir / TASK_FILE).read_bytes() if job["task"] is None else None
    task = load_task(job["task"], by_value)
    if job["task"] and "script" in job["task"]:
        # The script is this rank's main module, as it is under ``python train.py``:
        # its "spawn" children load it (not the entry script) and find its classes.
        sys.modules["__main__"] = sys.modules[SCRIPT_MODULE]
    many = int(os.environ.get("WORLD_SIZE", "1")) > 1
    mark("task")
    with gates.watch_process_group() if many else contextlib.nullcontext() as joined:
        if "hydra" not in config:  # launched from plain Python: no Hydra state to rebuild
            os.chdir(job["cwd"])
            value = task(config)
        else:
            HydraConfig.instance().set_config(config)
            hydra_cfg = HydraConfig.get()
            output_dir = hydra_cfg.runtime.output_dir
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            os.chdir(output_dir if hydra_cfg.job.chdir else job["cwd"])
            configure_rank_logging(config, rank)
            with env_override(hydra_cfg.job.env_set):
                value = task(task_config(config))
        if rank == 0:
            import cloudpickle

            facts = {"process_group": joined() if joined else None}
            write_atomic(entry_dir / RANK0_FILE, json.dumps(facts).encode())
            write_atomic(entry_dir / RESULT_FILE, cloudpickle.dumps(value))
    return value


def main(job: dict, entry_dir: Path) -> None:
    """Entry point of every rank; failures go to torchelastic's error file."""
    from torch.distributed.elastic.multiprocessing.errors import record

    record(run)(job, entry_dir)
    if multiprocessing.parent_process() is None:  # a process of its own (cold start)
        exit_now()
    if stop_terminated():
        # A forked worker (warm start) whose task returned after the SIGTERM of its
        # agent's shutdown: torch's wrapper would wait for the agent to collect the
        # value, which a shutting-down agent never does (it waits for the exit, then
        # SIGKILLs). Leave now, as multiprocessing's own exit would: no atexit
        # handlers (a fork inherits its warm parent's).
        exit_now(forked=True)


def exit_now(*, forked: bool = False) -> None:
    """End a rank whose task succeeded the way Python would, less the C++ teardown.

    torch's static destructors can abort a finished gloo rank (``terminate called
    without an active exception``, SIGABRT, no Python frame): 1 in 29 runs of a
    2-rank DDP job on a 2-core machine, after its result was written, failing a
    point that had succeeded. So: shut down the task's thread pools, join its
    non-daemon threads and run every atexit handler (logging's, the task's), as
    interpreter exit does, flush, then ``os._exit(0)``. Forked workers (warm start)
    already end this way: multiprocessing calls ``os._exit`` after the function
    returns; ``forked`` ends one of those early the way multiprocessing would (its
    atexit handlers are its parent's, not run)."""
    if not forked:
        # What interpreter exit does first (and multiprocessing after a forked
        # process's target): shut down thread pools (their idle workers would wait
        # forever to be joined), then join every non-daemon thread.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)
