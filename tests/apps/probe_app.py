"""A Hydra app that is not runner's: every rank writes down what it sees.

Run as a script (``python tests/apps/probe_app.py``) its task lives in ``__main__``, so
the launcher must ship it by value. Config knobs make a rank fail, hang or sleep.
"""

import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import OmegaConf

if os.environ.get("PROBE_LOADS"):  # who loads this script, and under which name
    with open(os.environ["PROBE_LOADS"], "a") as loads:
        loads.write(f"{os.getpid()} {__name__}\n")


def wait_for(ready, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"probe waited {timeout:g} s for {what}")
        time.sleep(0.05)


def a_point_failed(sweep_dir: Path) -> bool:
    """Whether the sweep's parent has recorded a failed point (its launch.json)."""
    for record in sweep_dir.glob("*/launch.json"):
        try:
            if json.loads(record.read_text()).get("status") == "FAILED":
                return True
        except ValueError:  # being written
            pass
    return False


def pass_gate(cfg, rank: int, num, sweep_dir: Path) -> None:
    gate = Path(cfg.gate)
    if rank == 0:
        (gate / f"started_{num}").touch()
    wait_for(lambda: len(list(gate.glob("started_*"))) >= cfg.gate_points, "every point")
    if cfg.gate_failure and rank != cfg.fail_rank:
        wait_for(lambda: a_point_failed(sweep_dir), "the sweep to record a failed point")


def stoppable_steps(cfg, rank: int, out: Path) -> bool:
    """A task of its own that stops when asked: ``cfg.steps`` steps of ``cfg.step_s``
    seconds, checking ``runner.stop_requested()`` before each (every rank at the same
    steps). Asked, rank 0 saves where it is and the task returns; its next start goes
    on from there. Rank 0 logs every step it did, so a step done twice or never shows.
    Returns whether every step is done."""
    import torch.distributed as dist

    import runner

    saved = out / "steps_saved"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    start = int(saved.read_text()) if saved.is_file() else 0
    done = True
    steps: Iterable[int] = range(start, cfg.steps)
    if cfg.loader:  # each step's number from DataLoader workers of that start method
        from torch.utils.data import DataLoader

        steps = (
            int(batch)
            for batch in DataLoader(
                list(steps), batch_size=None, num_workers=2, multiprocessing_context=cfg.loader
            )
        )
    for step in steps:
        if runner.stop_requested():
            if rank == 0:
                saved.write_text(str(step))
            done = False
            break
        time.sleep(cfg.step_s)
        if rank == 0:
            with open(out / "steps.log", "a") as log:
                log.write(f"{step}\n")
    if dist.is_initialized():
        dist.destroy_process_group()
    return done


def probe(cfg) -> float:
    hc = HydraConfig.get()
    rank = int(os.environ.get("RANK", "0"))
    if cfg.deaf:  # a rank that ignores SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cfg.say:
        print(f"{cfg.say} from rank {rank}", flush=True)
        print(f"{cfg.say} on stderr from rank {rank}", file=sys.stderr, flush=True)
    started = time.time()
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    record = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "config": OmegaConf.to_container(cfg, resolve=True),
        "config_hash": hashlib.sha256(config_yaml.encode()).hexdigest(),
        "job_name": hc.job.name,
        "job_num": OmegaConf.select(hc, "job.num"),
        "job_id": OmegaConf.select(hc, "job.id"),
        "overrides": list(hc.overrides.task),
        "output_dir": hc.runtime.output_dir,
        "choices": dict(hc.runtime.choices),
        "cwd": os.getcwd(),
        "original_cwd": get_original_cwd(),
        "master_addr": os.environ.get("MASTER_ADDR"),
        "master_port": os.environ.get("MASTER_PORT"),
        "probe_env": os.environ.get("PROBE_ENV"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": started,
    }
    if cfg.mark:  # leave a mark in module state (torch's): the next point must not see it
        import torch

        record["mark_seen"] = getattr(torch, "_probe_mark", None)
        torch._probe_mark = cfg.value
    if cfg.allreduce:  # join the job's gloo group: every rank adds rank + 1
        import torch
        import torch.distributed as dist

        dist.init_process_group("gloo")
        total = torch.tensor([rank + 1.0])
        dist.all_reduce(total)
        record["allreduce"] = total.item()
        record["peer_hosts"] = [None] * dist.get_world_size()
        dist.all_gather_object(record["peer_hosts"], os.environ.get("PROBE_HOST"))
        dist.destroy_process_group()
    if cfg.ddp:  # a DDP step over the job's gloo group, which it leaves to runner to end
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group("gloo")
        model = DistributedDataParallel(torch.nn.Linear(4, 1))
        model(torch.ones(2, 4)).sum().backward()
        record["ddp_grad"] = model.module.bias.grad.item()
        peers: list = [None] * dist.get_world_size()
        dist.all_gather_object(peers, rank)  # as a checkpoint save gathers
        # no destroy_process_group, and the DDP model still alive: runner ends the rank
    if cfg.track:  # the documented call of any task under the launcher
        from runner.tracking import open_point_run

        run = open_point_run(cfg, tracking_uri=cfg.track)
        record["run_id"] = run.run_id if run is not None else None
        if run is not None:
            run.log_metrics({"value": float(cfg.value)}, step=0)
    if cfg.gate:
        pass_gate(cfg, rank, record["job_num"], Path(hc.sweep.dir))
        if rank == cfg.fail_rank:  # the others wait for this: fail now
            Path(hc.runtime.output_dir, f"probe_rank{rank}.json").write_text(json.dumps(record))
            raise ValueError(f"probe failure on rank {rank}")
    if cfg.steps and not stoppable_steps(cfg, rank, Path(hc.runtime.output_dir)):
        return float("nan")  # stopped: the next start goes on
    time.sleep(cfg.sleep)
    record["end"] = time.time()
    Path(hc.runtime.output_dir, f"probe_rank{rank}.json").write_text(json.dumps(record))
    if rank == cfg.fail_rank:
        raise ValueError(f"probe failure on rank {rank}")
    marker = Path(hc.runtime.output_dir, ".failed_once")
    if cfg.fail_once and rank == 0 and not marker.exists():
        marker.touch()
        raise RuntimeError("probe fails once")
    if rank == cfg.hang_rank:
        time.sleep(3600)
    return float(cfg.value)


@hydra.main(version_base="1.3", config_path="probe_conf", config_name="config")
def main(cfg) -> float:
    return probe(cfg)


if __name__ == "__main__":
    report = os.environ.get("PROBE_PARENT_MODULES")
    try:
        main()
    finally:
        if report:
            Path(report).write_text(json.dumps(sorted(sys.modules)))
