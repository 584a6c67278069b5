"""One ``launch`` of the torchrun launcher: logging and the sweep dir set up, the
sweep's console made (at its first batch, kept for the next ones, as its jobs are from
the launcher's set-up), its points scheduled, its summary written. Nothing here imports
torch."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, setup_globals
from omegaconf import DictConfig

from runner.launch import gates
from runner.launch.entry import remove_stale_entry_dirs
from runner.launch.procs import interruption
from runner.sweep.console import SweepConsole
from runner.sweep.points import JobFactory, PointSource, SweepLauncher
from runner.sweep.rows import sweep_maximises
from runner.sweep.scheduler import SweepScheduler
from runner.sweep.summary import seed_key_of, write_summary
from runner.tracking import swept_keys

log = logging.getLogger(__name__)


def launch_sweep(launcher: SweepLauncher, source: PointSource) -> list[JobReturn]:
    """What the launcher plugin's ``launch`` does: run the points of ``source`` on the
    launcher's jobs, return their JobReturns in the order they were taken."""
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    remove_stale_entry_dirs()
    jobs = sweep_jobs(launcher)
    if launcher.console is None:
        try:
            varying = swept_keys(config)
        except Exception:  # a sweeper's params runner cannot read: every override shown
            varying = []
        launcher.console = SweepConsole(sweep_maximises(config), varying)
    scheduler = SweepScheduler(launcher, source, jobs, launcher.console)
    fixed = launcher.console.fixed(list(config.hydra.overrides.task))
    log.info(
        "Launching %s with torchrun%s, up to %d at a time%s%s",
        source.what,
        jobs.where,
        scheduler.max_parallel,
        jobs.pool.describe(),
        f"; every point with {fixed}" if fixed else "",
    )
    try:
        return scheduler.run()
    except (KeyboardInterrupt, SystemExit) as stop:
        by = interruption()
        if by is None:
            raise
        # Its running points were stopped and recorded: no traceback, the command that
        # goes on instead.
        again = resume_command(config)
        print(
            f"The sweep was stopped by {by}. To go on where it stopped:\n  {again}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(130 if isinstance(stop, KeyboardInterrupt) else stop.code) from None
    finally:
        # After every batch, so an interrupted sweep and every optimising sweeper's
        # batches leave an up-to-date summary too.
        with contextlib.suppress(OSError):
            write_summary(Path(str(config.hydra.sweep.dir)), seed_key_of(config))


def sweep_jobs(launcher: SweepLauncher) -> JobFactory:
    """The launcher's job factory, made once a sweep and kept for every batch. The
    launcher makes it as it is set up, so a warm process boots (imports torch and the
    task) while the sweeper checks its input and opens its study."""
    if launcher.jobs is None:  # logging is set up by now: a warm start says if it cannot
        if note := gates.release_note():  # once a sweep, cold or warm
            log.warning(note)
        launcher.jobs = launcher.job_factory()(launcher)
    return launcher.jobs


def resume_command(config: DictConfig) -> str:
    """The command line that continues this sweep: the one that started it, with its
    sweep dir fixed and ``hydra.launcher.resume=true`` (completed points are kept)."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    argv[0] = Path(argv[0]).name if Path(argv[0]).name.startswith("python") else argv[0]
    keys = ("hydra.sweep.dir=", "hydra.launcher.resume=")
    argv = [a for a in argv if not a.startswith(keys)]
    argv += [f"hydra.sweep.dir={config.hydra.sweep.dir}", "hydra.launcher.resume=true"]
    return shlex.join(argv)
