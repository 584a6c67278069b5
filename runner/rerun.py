"""Run one job again, alone, exactly as it ran: ``python -m runner.rerun JOB_DIR``.

Every job keeps a copy of what it ran in ``JOB_DIR/.runner/``: ``job.json`` (its
config, resolved once in its parent, ``hydra`` node included; its task by import
path; the import path) and, for a task with no import path (one defined in a
script), ``task.pkl``. A rerun launches exactly that config and task with the same
world size (the job's own dir, wherever the config names it, moved to the new one),
as one torchrun on this machine, into a dir of its own (by default
``SWEEP_DIR/reruns/N-<time>``, which the sweep's report leaves out; ``--into DIR``
to choose), on devices leased like any run's. To debug a failed point, or to check
that a completed one gives the same result. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from runner.errors import invalid
from runner.launch.app import launch, run_devices
from runner.launch.codec import load_task, restore_config, task_config
from runner.launch.entry import JOB_FILE, RERUN_DIR, RERUNS, TASK_FILE
from runner.launch.job import LaunchError
from runner.launch.options import LaunchConfig
from runner.launch.trust import UntrustedFileError, read_trusted


class RerunError(ValueError):
    """The job dir cannot be run again as asked."""


def default_dir(job_dir: Path, hydra: dict) -> Path:
    """``SWEEP_DIR/reruns/N-<time>`` for a sweep point; beside the run for a run."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = (hydra.get("sweep") or {}).get("dir")
    num = (hydra.get("job") or {}).get("num")
    if str(hydra.get("mode")) == "MULTIRUN" and sweep_dir and num is not None:
        return Path(sweep_dir) / RERUNS / f"{num}-{stamp}"
    return job_dir.parent / f"{job_dir.name}-rerun-{stamp}"


def moved(data: Any, old: str, new: str) -> Any:
    """The resolved config with the job's own dir moved: every value that is ``old`` or
    a path inside it (``paths.output_dir``, a log file) now says ``new``."""
    if isinstance(data, dict):
        return {k: moved(v, old, new) for k, v in data.items()}
    if isinstance(data, list):
        return [moved(v, old, new) for v in data]
    if isinstance(data, str) and (data == old or data.startswith(old.rstrip("/") + "/")):
        return new + data[len(old) :]
    return data


def rerun(job_dir: Path, into: Path | None = None) -> Any:
    """Run the job of ``job_dir`` again into ``into``; return rank 0's return value or
    raise LaunchError (the job failed) or RerunError (it cannot be run again)."""
    kept = job_dir / RERUN_DIR
    fix = f"rerun only job dirs you made, in a dir only you can write (remove {kept})"
    try:
        job = json.loads(read_trusted(kept / JOB_FILE, fix))
        # By value: the pickle is checked like the job, and what was checked is loaded.
        by_value = read_trusted(kept / TASK_FILE, fix) if job["task"] is None else None
    except UntrustedFileError as error:
        raise RerunError(str(error)) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise RerunError(
            invalid(
                "JOB_DIR",
                str(job_dir),
                "it keeps no copy of its job "
                f"({getattr(error, 'filename', None) or kept / JOB_FILE}: "
                f"{getattr(error, 'strerror', None) or error})",
                "pass the dir of a sweep point or run that runner launched with torchrun "
                "(its .runner/ holds the copy), e.g. SWEEP_DIR/0",
            )
        ) from None
    hydra = job["config"].get("hydra") or {}
    into = (into or default_dir(job_dir, hydra)).absolute()
    old = (hydra.get("runtime") or {}).get("output_dir")
    data = moved(job["config"], str(old), str(into)) if old else job["config"]
    hydra = data.get("hydra") or {}
    sys.path[:0] = [p for p in job["sys_path"] if p not in sys.path]
    task = load_task(job["task"], by_value)
    config = restore_config(data)
    params = OmegaConf.to_container(config.hydra.launcher, resolve=True) if hydra else {}
    assert isinstance(params, dict)
    launch_config = LaunchConfig.from_config(params)
    if not launch_config.single_node:
        raise RerunError(
            invalid(
                "hydra.launcher.nnodes",
                launch_config.nnodes,
                "a rerun runs on this machine only",
                "rerun the point on its cluster (the same sweep with "
                "hydra.launcher.resume=true reruns failed points)",
            )
        )
    into.mkdir(parents=True, exist_ok=True)
    if hydra:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)
        # Its .hydra/ as Hydra wrote the point's (config as composed, overrides), and
        # the hydra node that now names the rerun's dir.
        subdir = str(config.hydra.output_subdir or ".hydra")
        (into / subdir).mkdir(exist_ok=True)
        for name in ("config.yaml", "overrides.yaml"):
            if (job_dir / subdir / name).is_file():
                shutil.copyfile(job_dir / subdir / name, into / subdir / name)
            elif name == "config.yaml":
                OmegaConf.save(task_config(config), into / subdir / name)
        OmegaConf.save({"hydra": config.hydra}, into / subdir / "hydra.yaml")
    print(f"runner.rerun: running {job_dir} again in {into}", flush=True)
    with run_devices(launch_config.nproc_per_node) as env:
        return launch(
            None,
            task,
            launch_config,
            into,
            config_data=data,
            sys_path=job["sys_path"],
            extra_env=env,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m runner.rerun",
        description="Run one sweep point (or run) again, alone, with exactly its config "
        "and world size, into a dir of its own.",
    )
    parser.add_argument("job_dir", type=Path, help="the point's job dir, e.g. SWEEP_DIR/3")
    parser.add_argument("--into", type=Path, help="where (default: SWEEP_DIR/reruns/N-<time>)")
    args = parser.parse_args(argv)
    try:
        value = rerun(args.job_dir, args.into)
    except RerunError as error:
        print(f"runner.rerun: {error}", file=sys.stderr)
        return 2
    except LaunchError as error:
        print(f"runner.rerun: the job failed again: {error.details}", file=sys.stderr)
        return 1
    print(f"runner.rerun: {args.job_dir} ran again -> {value!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
