"""The sweep scheduler behind ``hydra/launcher=torchrun``.

For every point of a batch it does what Hydra's basic launcher does (load the sweep
config, set the job's num and id, fix its output dir, write ``.hydra/``), resolves the
config once, and hands it to the launch core as one torchrun. Up to ``max_parallel``
points run at once, each on its own loopback port, with its own slice of the GPUs (or
its share of the CPU threads); their output goes to files in their job dirs. Results
come back as ``JobReturn``s in the order of the input, with rank 0's return value, so
optimising sweepers work over distributed trials. A failed point does not stop the
others; Ctrl-C or SIGTERM stops every running point and removes its entry files.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from runner.dist import (
    LaunchConfig,
    LaunchError,
    TorchrunJob,
    remove_stale_entry_dirs,
    sigterm_as_exit,
    start_warm_server,
    stop_jobs,
    write_atomic,
)
from runner.report import write_summary
from runner.slurm import SLURM_KEYS, SlurmJob, check_slurm_params
from runner.worker import task_config

log = logging.getLogger(__name__)

SCHEDULER_KEYS = ("max_parallel", "fail_fast", "devices", "stop_grace", "resume", "warm")
LAUNCH_RECORD = "launch.json"
RETURN_VALUE = "return_value.pkl"


class LauncherConfigError(ValueError):
    """A ``hydra.launcher`` value that cannot work."""


def _bad(key: str, value: Any, rule: str, fix: str) -> LauncherConfigError:
    return LauncherConfigError(f"hydra.launcher.{key}={value!r} is invalid: {rule}. Fix: {fix}")


def local_launch_params(params: Mapping[str, Any], slurm: bool) -> dict[str, Any]:
    """The torchrun options among the launcher's keys. In Slurm mode the node count is
    Slurm's to allocate and the rendezvous is set up on the nodes, so each node's
    agent is checked as a one-node launch here."""
    skip = SCHEDULER_KEYS + (SLURM_KEYS if slurm else ())
    local = {k: v for k, v in params.items() if k not in skip}
    if slurm:
        local["nnodes"] = "1"
    return local


def check_launcher_params(params: Mapping[str, Any], slurm: bool = False) -> None:
    """Validate the launcher's own keys and the torchrun options, before anything starts."""
    max_parallel = params.get("max_parallel")
    if max_parallel is not None and (not isinstance(max_parallel, int) or max_parallel < 1):
        raise _bad(
            "max_parallel",
            max_parallel,
            "must be an integer >= 1, or null for as many as fit",
            "hydra.launcher.max_parallel=2",
        )
    devices = str(params.get("devices", "auto"))
    if devices not in ("auto", "none") and not all(d.strip().isdigit() for d in devices.split(",")):
        raise _bad(
            "devices",
            devices,
            "must be auto, none, or GPU ids like 0,1,2,3",
            "hydra.launcher.devices=auto",
        )
    if params.get("stop_grace", 10.0) < 0:
        raise _bad(
            "stop_grace",
            params["stop_grace"],
            "must be >= 0 seconds",
            "hydra.launcher.stop_grace=10",
        )
    if slurm:
        problems = check_slurm_params(params)
        if problems:
            raise LauncherConfigError("\n".join(problems))
    try:
        LaunchConfig.from_config(local_launch_params(params, slurm))
    except ValueError as error:
        raise LauncherConfigError(str(error)) from None


def check_sweep_dir(sweep_dir: str) -> None:
    """Fail early, naming the key, if the sweep dir cannot be created and written."""
    try:
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        probe = Path(sweep_dir) / ".runner_write_test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise LauncherConfigError(
            f"hydra.sweep.dir={sweep_dir} cannot be created or written "
            f"({error.strerror or error}). Fix: pass hydra.sweep.dir=A_WRITABLE_DIR"
        ) from None


def visible_gpus(devices: str) -> list[str]:
    """GPU ids concurrent points may share out, found without importing torch."""
    if devices == "none":
        return []
    if devices != "auto":
        return [d.strip() for d in devices.split(",")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]


@dataclass
class Point:
    """One sweep point: its overrides, its config, and its torchrun while it runs."""

    idx: int
    overrides: list[str]
    config: DictConfig | None = None
    job: TorchrunJob | None = None
    gpus: list[str] = field(default_factory=list)
    result: JobReturn | None = None

    @property
    def label(self) -> str:
        return " ".join(filter_overrides(self.overrides)) or "(no overrides)"


class SweepScheduler:
    """Runs the points of one batch, ``max_parallel`` at a time."""

    def __init__(
        self, launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> None:
        self.launcher = launcher
        self.config: DictConfig = launcher.config
        self.params = dict(launcher.params)
        self.points = [Point(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        self.gpus_free = visible_gpus(str(self.params.get("devices", "auto")))
        self.has_gpus = bool(self.gpus_free)
        self.nproc = int(self.params.get("nproc_per_node", 1))
        # Slurm mode: the cluster allocates nodes, CPUs and GPUs; every point is queued
        # at once unless max_parallel says otherwise.
        self.slurm = bool(getattr(launcher, "slurm", False))
        if self.slurm:
            self.gpus_free, self.has_gpus = [], False
        self.max_parallel = self.params.get("max_parallel") or (
            len(self.points) if self.slurm else self._what_fits(self.nproc)
        )
        self.fail_fast = bool(self.params.get("fail_fast", False))
        self.grace = float(self.params.get("stop_grace", 10.0))
        self.resume = bool(self.params.get("resume", False))
        self.running: list[Point] = []
        self.done = self.failed = 0
        self.live = sys.stderr.isatty()
        self.started = time.monotonic()
        self.drawn_at = 0.0
        self.maximise = str(OmegaConf.select(self.config, "trainer.objective_mode")) == "max"
        self.warm = self._warm_server() if self.params.get("warm") and not self.slurm else None

    def _warm_server(self) -> Any:
        """The sweep's warm process: started for the first batch and kept for the next
        ones (optimising sweepers launch many); ends with the parent."""
        server = getattr(self.launcher, "warm_server", None)
        if server is not None and server.proc.poll() is None:
            return server
        if getattr(self.launcher, "warm_unavailable", False):
            return None
        cwd = str(self.config.hydra.runtime.cwd)
        server = start_warm_server(self.launcher.task_function, cwd)
        self.launcher.warm_server = server
        self.launcher.warm_unavailable = server is None
        if server is not None:
            # Ends with the launcher (Hydra drops it after the sweep), or at exit.
            weakref.finalize(self.launcher, server.close)
        return server

    def _what_fits(self, nproc: int) -> int:
        """GPUs: as many disjoint slices as exist. CPU: a core per rank, but at least two
        points, so one point's start-up (importing torch, rendezvous) overlaps another's
        work; OMP_NUM_THREADS is split so the ranks don't oversubscribe the cores."""
        if self.gpus_free:
            return max(1, len(self.gpus_free) // nproc)
        return max(2, (os.cpu_count() or 1) // nproc)

    # ------------------------------------------------------------------ per point

    def _compose(self, point: Point) -> None:
        """Compose the point's config and fix its job num, id and output dir."""
        hydra_context = self.launcher.hydra_context
        sweep_config = hydra_context.config_loader.load_sweep_config(self.config, point.overrides)
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = point.idx
            sweep_config.hydra.job.num = point.idx
        HydraConfig.instance().set_config(sweep_config)
        output_dir = Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = str(output_dir.absolute())
        HydraConfig.instance().set_config(sweep_config)
        point.config = sweep_config

    def _compose_ahead(self, point: Point) -> None:
        """Compose a pending point early; an error is left for ``_start`` to raise when
        the point's turn comes, so it does not interrupt the points running now."""
        try:
            self._compose(point)
        except Exception:
            point.config = None
        finally:
            HydraConfig.instance().set_config(self.config)

    def _write_hydra_dir(self, point: Point) -> None:
        """The job dir and its .hydra/ (config, hydra config, overrides), once per job."""
        config = point.config
        assert config is not None
        output_dir = Path(config.hydra.runtime.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        if config.hydra.output_subdir is not None:
            hydra_dir = output_dir / str(config.hydra.output_subdir)
            hydra_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task_config(config), hydra_dir / "config.yaml")
            OmegaConf.save(HydraConfig.instance().cfg, hydra_dir / "hydra.yaml")
            OmegaConf.save(config.hydra.overrides.task, hydra_dir / "overrides.yaml")

    def _job_return(self, point: Point, status: JobStatus, value: Any) -> JobReturn:
        config = point.config
        assert config is not None
        ret = JobReturn()
        ret.overrides = list(point.overrides)
        ret.cfg = task_config(config)
        ret.hydra_cfg = OmegaConf.create({"hydra": copy.deepcopy(config.hydra)})
        ret.working_dir = str(config.hydra.runtime.output_dir)
        ret.task_name = str(config.hydra.job.name)
        ret.status = status
        ret.return_value = value
        return ret

    def _completed_earlier(self, point: Point) -> JobReturn | None:
        """With ``resume``, the stored result of a point that completed in an earlier run
        of this sweep dir (same number, same overrides), else None."""
        if not self.resume:
            return None
        assert point.config is not None
        job_dir = Path(point.config.hydra.runtime.output_dir)
        try:
            record = json.loads((job_dir / LAUNCH_RECORD).read_text())
            stored = (job_dir / RETURN_VALUE).read_bytes()
        except (OSError, ValueError):
            return None
        if record.get("status") != "COMPLETED" or record.get("overrides") != point.overrides:
            return None
        import cloudpickle

        return self._job_return(point, JobStatus.COMPLETED, cloudpickle.loads(stored))

    def _launch_config(self, point: Point) -> LaunchConfig:
        assert point.config is not None
        params = OmegaConf.to_container(point.config.hydra.launcher, resolve=True)
        assert isinstance(params, dict)
        try:
            return LaunchConfig.from_config(local_launch_params(params, self.slurm)).for_point(
                point.idx
            )
        except ValueError as error:
            raise LauncherConfigError(
                f"sweep point #{point.idx} ({point.label}): {error}"
            ) from None

    def _start(self, point: Point) -> None:
        if point.config is None:
            self._compose(point)
        else:  # composed ahead, while other points ran: make it Hydra's current job again
            HydraConfig.instance().set_config(point.config)
        assert point.config is not None
        earlier = self._completed_earlier(point)
        if earlier is not None:
            self.launcher.hydra_context.callbacks.on_job_start(
                config=point.config, task_function=self.launcher.task_function
            )
            point.result = earlier
            self.done += 1
            self.launcher.hydra_context.callbacks.on_job_end(
                config=point.config, job_return=earlier
            )
            self._log(
                logging.INFO,
                "#%d kept   %s  completed in an earlier run -> %r  %s",
                point.idx,
                point.label,
                earlier._return_value,
                self.progress(),
            )
            return
        self._write_hydra_dir(point)
        launch_config = self._launch_config(point)
        extra_env: dict[str, str] = {}
        if self.slurm:
            pass  # Slurm allocates CPUs and GPUs to the job
        elif self.has_gpus:
            point.gpus = self.gpus_free[: launch_config.nproc_per_node]
            del self.gpus_free[: len(point.gpus)]
            extra_env["CUDA_VISIBLE_DEVICES"] = ",".join(point.gpus)
        elif "OMP_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in launch_config.env:
            share = (os.cpu_count() or 1) // (self.max_parallel * launch_config.nproc_per_node)
            extra_env["OMP_NUM_THREADS"] = str(max(1, share))
        self.launcher.hydra_context.callbacks.on_job_start(
            config=point.config, task_function=self.launcher.task_function
        )
        job_dir = point.config.hydra.runtime.output_dir
        if self.slurm:
            point_params = OmegaConf.to_container(point.config.hydra.launcher, resolve=True)
            assert isinstance(point_params, dict)
            point.job = SlurmJob(
                point.config, self.launcher.task_function, launch_config, job_dir, point_params
            )
        else:
            point.job = TorchrunJob(
                point.config,
                self.launcher.task_function,
                launch_config,
                job_dir,
                console=False,
                warm=self.warm,
            )
        point.job.start(extra_env=extra_env)
        self.running.append(point)
        # Recorded at once, so a running (or orphaned) point can be found: its Slurm job
        # id, or its agent's pid and port.
        self._write_record(point, "RUNNING")
        nproc = launch_config.nproc_per_node
        where = (
            f"Slurm job {point.job.job_id}, {point_params['nnodes']} node(s)"
            if isinstance(point.job, SlurmJob)
            else f"port {point.job.port}"
        )
        self._log(
            logging.INFO,
            "#%d start  %s  (%d rank%s per node, %s%s)",
            point.idx,
            point.label,
            nproc,
            "s" if nproc > 1 else "",
            where,
            f", GPUs {','.join(point.gpus)}" if point.gpus else "",
        )

    def _write_record(self, point: Point, status: str, error: Any = None) -> dict:
        """launch.json of the point: how it ran, and its status."""
        assert point.job is not None and point.config is not None
        record = {**point.job.launch_record(), "overrides": point.overrides, "status": status}
        if error is not None:
            record["error"] = str(error)
        job_dir = Path(point.config.hydra.runtime.output_dir)
        write_atomic(job_dir / LAUNCH_RECORD, (json.dumps(record, indent=2) + "\n").encode())
        return record

    def _finish(self, point: Point, error: BaseException | None = None) -> None:
        """Turn an ended torchrun into the point's JobReturn; record how it ran."""
        job, config = point.job, point.config
        assert job is not None and config is not None
        try:
            if error is not None:
                raise error
            ret = self._job_return(point, JobStatus.COMPLETED, job.result())
            self.done += 1
        except LaunchError as failure:
            ret = self._job_return(point, JobStatus.FAILED, failure)
            self.failed += 1
        finally:
            job.cleanup()
            self.gpus_free.extend(point.gpus)
            if point in self.running:
                self.running.remove(point)
        job_dir = Path(ret.working_dir)
        if ret.status == JobStatus.COMPLETED:
            import cloudpickle

            # The result is stored before launch.json marks the point done (resume reads both).
            write_atomic(job_dir / RETURN_VALUE, cloudpickle.dumps(ret._return_value))
        record = self._write_record(
            point,
            ret.status.name,
            ret._return_value if ret.status != JobStatus.COMPLETED else None,
        )
        point.result = ret
        self.launcher.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        outcome = f"-> {ret._return_value!r}" if ret.status == JobStatus.COMPLETED else "FAILED"
        self._log(
            logging.INFO,
            "#%d %s  %s  in %.1fs %s  %s",
            point.idx,
            "done  " if ret.status == JobStatus.COMPLETED else "failed",
            point.label,
            record["duration_s"] or 0.0,
            outcome,
            self.progress(),
        )
        if ret.status != JobStatus.COMPLETED:
            self._log(logging.ERROR, "#%d %s", point.idx, ret._return_value)

    def progress(self) -> str:
        """``[5/12 ended: 4 done, 2 running, 1 failed] best 0.123 (#3)``."""
        text = (
            f"[{self.done + self.failed}/{len(self.points)} ended: {self.done} done, "
            f"{len(self.running)} running, {self.failed} failed]"
        )
        scored = [
            (p.result._return_value, p.idx)
            for p in self.points
            if p.result is not None
            and p.result.status == JobStatus.COMPLETED
            and isinstance(p.result._return_value, (int, float))
            and not isinstance(p.result._return_value, bool)
        ]
        if scored:
            value, idx = max(scored) if self.maximise else min(scored)
            text += f" best {value:.6g} (#{idx})"
        return text

    def _status_line(self) -> None:
        """On a terminal, keep a live one-line status under the log; elsewhere nothing
        (the start and end lines carry the counts, free of control codes)."""
        now = time.monotonic()
        if self.live and now - self.drawn_at >= 0.5:
            self.drawn_at = now
            sys.stderr.write(f"\r\x1b[K{self.progress()} {now - self.started:.0f}s")
            sys.stderr.flush()

    def _log(self, level: int, message: str, *args: Any) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[K")  # the log line replaces the status line
            sys.stderr.flush()
            self.drawn_at = 0.0
        log.log(level, message, *args)

    def _cancelled(self, point: Point, reason: str) -> JobReturn:
        ret = JobReturn()
        ret.overrides = list(point.overrides)
        ret.status = JobStatus.FAILED
        ret.return_value = LaunchError(f"sweep point #{point.idx} ({point.label}) {reason}")
        ret.task_name = str(self.config.hydra.job.name)
        ret.working_dir = ""
        return ret

    # ------------------------------------------------------------------ the loop

    def run(self) -> list[JobReturn]:
        pending = deque(self.points)
        stopping = False
        with sigterm_as_exit():
            try:
                while pending or self.running:
                    while (
                        pending
                        and not stopping
                        and len(self.running) < self.max_parallel
                        and (not self.has_gpus or len(self.gpus_free) >= self.nproc)
                    ):
                        self._start(pending.popleft())
                    if pending and not stopping and pending[0].config is None:
                        # Compose the next point while the running ones work, so it
                        # starts the moment a slot frees (composing takes ~0.25 s).
                        self._compose_ahead(pending[0])
                    ended = False
                    for point in list(self.running):
                        assert point.job is not None
                        if point in self.running and point.job.poll() is not None:
                            ended = True
                            self._finish(point)
                            if (
                                self.fail_fast
                                and point.result is not None
                                and point.result.status == JobStatus.FAILED
                                and not stopping
                            ):
                                stopping = True
                                self._stop_running("stopped: fail_fast after a failed point")
                    if stopping:
                        pending.clear()
                    self._status_line()
                    if not ended:  # else a slot is free now: start the next point at once
                        self._wait_for_news(0.02)
            finally:
                if self.live:
                    sys.stderr.write("\r\x1b[K")
                if self.running:
                    self._log(logging.WARNING, "stopping %d running point(s)", len(self.running))
                    self._stop_running(None)
                HydraConfig.instance().set_config(self.config)
        for point in self.points:
            if point.result is None:
                point.result = self._cancelled(point, "was not started: fail_fast")
        return [point.result for point in self.points if point.result is not None]

    def _wait_for_news(self, timeout: float) -> None:
        """Sleep up to ``timeout``; a warm process's report of an ended agent ends it."""
        from runner.warm import WarmStartError

        try:
            if self.warm is not None:
                self.warm.wait_for_news(timeout)
                return
        except WarmStartError:
            pass  # it ended: its points' polls report them killed
        time.sleep(timeout)

    def _stop_running(self, reason: str | None) -> None:
        points = list(self.running)
        stop_jobs([p.job for p in points if p.job is not None], self.grace)
        for point in points:
            assert point.job is not None
            point.job.poll()
            self._finish(
                point,
                LaunchError(
                    f"sweep point #{point.idx} ({point.label}) {reason or 'was interrupted'}"
                ),
            )


def launch_sweep(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    """What ``TorchrunLauncher.launch`` does: run one batch of points, return JobReturns."""
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    remove_stale_entry_dirs()
    scheduler = SweepScheduler(launcher, job_overrides, initial_job_idx)
    log.info(
        "Launching %d job(s) with torchrun%s, %d at a time",
        len(scheduler.points),
        " as Slurm jobs" if scheduler.slurm else "",
        scheduler.max_parallel,
    )
    try:
        return scheduler.run()
    finally:
        # After every batch, so an interrupted sweep and every optimising sweeper's
        # batches leave an up-to-date summary too.
        with contextlib.suppress(OSError):
            write_summary(Path(str(config.hydra.sweep.dir)))
