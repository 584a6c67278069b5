"""One ``launch`` of the torchrun launcher: logging and the sweep dir set up, the
sweep's jobs and console made (at its first batch, kept for the next ones), its points
scheduled, its summary written. Nothing here imports torch."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, setup_globals

from runner.launch import gates
from runner.launch.entry import remove_stale_entry_dirs
from runner.sweep.console import SweepConsole
from runner.sweep.points import PointSource, SweepLauncher
from runner.sweep.scheduler import SweepScheduler
from runner.sweep.summary import seed_key_of, sweep_maximises, write_summary

log = logging.getLogger(__name__)


def launch_sweep(launcher: SweepLauncher, source: PointSource) -> list[JobReturn]:
    """What the launcher plugin's ``launch`` does: run the points of ``source`` on the
    launcher's jobs, return their JobReturns in the order they were taken."""
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    remove_stale_entry_dirs()
    if launcher.jobs is None:  # after logging is set up: a warm start says if it cannot
        if note := gates.release_note():  # once a sweep, cold or warm
            log.warning(note)
        launcher.jobs = launcher.job_factory()(launcher)
    if launcher.console is None:
        launcher.console = SweepConsole(sweep_maximises(config))
    jobs = launcher.jobs
    scheduler = SweepScheduler(launcher, source, jobs, launcher.console)
    log.info(
        "Launching %s with torchrun%s, up to %d at a time%s",
        source.what,
        jobs.where,
        scheduler.max_parallel,
        jobs.pool.describe(),
    )
    try:
        return scheduler.run()
    finally:
        # After every batch, so an interrupted sweep and every optimising sweeper's
        # batches leave an up-to-date summary too.
        with contextlib.suppress(OSError):
            write_summary(Path(str(config.hydra.sweep.dir)), seed_key_of(config))
