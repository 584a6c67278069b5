"""What ``hydra/sweeper=search`` does when Hydra calls its ``sweep``: every check
first (the options, the space, ``enqueue``, the space against the config), then the
study opened or continued (a trial its dead parent never told is told from its job
dir), then the trials run as a :class:`~runner.sweep.search.Search` (through the
launcher's ``launch_points``, or in Hydra's batches under any other launcher), then
``optimization_results.yaml`` and the summary.

Optuna is imported here, only when a search runs; never torch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from runner.errors import SearchConfigError, invalid
from runner.record import Outcome, read_record, record_lost
from runner.sweep.hydra_job import value_of
from runner.sweep.options import SearchOptions, check_search_options
from runner.sweep.points import stored_result
from runner.sweep.search import Search, trial_values, within
from runner.sweep.space import Param, parse_space
from runner.sweep.study import JOB_DIR, continue_study, note_study, open_study
from runner.sweep.summary import write_summary

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"


class SearchSweeperLike(Protocol):
    """What :func:`run_search` needs of the Hydra sweeper plugin."""

    params: dict[str, Any]
    config: DictConfig
    hydra_context: Any
    launcher: Any


def stored_end(job_dir: str, n: int) -> tuple[TrialState, list[float] | None] | None:
    """How a trial ended whose parent died before telling the study, as its job dir
    says: COMPLETE with the values its job stored, or PRUNED; else None (it runs
    again)."""
    record = read_record(Path(job_dir))
    if record is not None and record.status is Outcome.PRUNED:
        return TrialState.PRUNED, None
    found, value = stored_result(Path(job_dir))
    values = trial_values(value, n) if found else None
    return (TrialState.COMPLETE, values) if values is not None else None


def check_space_applies(sweeper: SearchSweeperLike, space: list[Param], fixed: list[str]) -> None:
    """Compose the config once with every searched key set: a key that is not in the
    config fails here, before any trial starts."""
    overrides = fixed + [p.override(p.example) for p in space]
    try:
        sweeper.hydra_context.config_loader.load_sweep_config(sweeper.config, overrides)
    except Exception as error:
        names = ", ".join(p.prefix + p.name for p in space)
        raise SearchConfigError(
            f"the search space ({names}) is invalid for this config: {error}. Fix: search "
            "keys the config has (see them with --cfg job), or add a new key with +key=..."
        ) from None


def check_enqueue(options: SearchOptions, space: list[Param]) -> None:
    names = {p.name for p in space}
    for point in options.enqueue:
        unknown = sorted(set(point) - names)
        if unknown:
            raise SearchConfigError(
                invalid(
                    "hydra.sweeper.enqueue",
                    options.enqueue,
                    f"{unknown} {'is' if len(unknown) == 1 else 'are'} not searched (the "
                    f"search space is {sorted(names)})",
                    "enqueue values of searched keys only",
                )
            )


def run_batches(launcher: Any, search: Search, size: int, why: str) -> None:
    """Hydra's way: ask for ``size`` trials, launch them, wait for all, tell, repeat."""
    log.warning("%s: trials run in batches of %d, each waiting for the slowest", why, size)
    while not search.exhausted():
        taken = search.take(size)
        if not taken:
            break
        try:
            returns: Sequence[JobReturn] = launcher.launch(
                [overrides for _, overrides in taken], initial_job_idx=taken[0][0]
            )
        except BaseException:
            search.interrupt_all()
            raise
        for (number, _), ret in zip(taken, returns, strict=False):
            completed = ret.status == JobStatus.COMPLETED
            # The job's output dir (its working dir only where Hydra changed into it).
            job_dir = (
                OmegaConf.select(ret.hydra_cfg, "hydra.runtime.output_dir", default=None)
                if ret.hydra_cfg is not None
                else None
            )
            search.tell(
                number,
                Outcome.COMPLETED if completed else Outcome.FAILED,
                value_of(ret) if completed else None,
                str(job_dir or ret.working_dir or "") or None,
            )


def write_results(search: Search, sweep_dir: Path) -> dict:
    """optimization_results.yaml, as Hydra's Optuna sweeper writes it, plus the best
    trial's number and job dir (every Pareto-optimal trial's with several directions)."""
    study = search.study
    results: dict[str, Any] = {"name": "optuna", "study_name": study.study_name}
    if len(search.directions) == 1:
        try:
            best = study.best_trial
        except ValueError:
            best = None
        if best is not None:
            results.update(
                best_params=dict(best.params),
                best_value=best.value,
                best_trial=best.number,
                best_job_dir=best.user_attrs.get(JOB_DIR),
            )
    else:
        results["solutions"] = [
            {
                "params": dict(t.params),
                "values": list(t.values),
                "trial": t.number,
                "job_dir": t.user_attrs.get(JOB_DIR),
            }
            for t in sorted(study.best_trials, key=lambda t: t.number)
        ]
    OmegaConf.save(OmegaConf.create(results), sweep_dir / RESULTS_FILE)
    return results


def report_results(results: dict, directions: list[str]) -> None:
    if "best_trial" in results:
        log.info(
            "Best trial #%d: %.6g (%s)  %s",
            results["best_trial"],
            results["best_value"],
            " ".join(f"{k}={v}" for k, v in results["best_params"].items()),
            results["best_job_dir"],
        )
    for solution in results.get("solutions", []):
        log.info(
            "Pareto front: trial #%d %s (%s)  %s",
            solution["trial"],
            ", ".join(f"{d} {v:.6g}" for d, v in zip(directions, solution["values"], strict=True)),
            " ".join(f"{k}={v}" for k, v in solution["params"].items()),
            solution["job_dir"],
        )


def run_search(sweeper: SearchSweeperLike, arguments: list[str]) -> None:
    """What the sweeper plugin's ``sweep`` does: every check first, then the search."""
    options = check_search_options(sweeper.params)
    space, fixed = parse_space(arguments, options.params)
    # Unnamed, a study says which search it is, in optuna-dashboard too.
    searched = ", ".join(sorted(p.name for p in space)) or "nothing"
    default_name = f"{sweeper.config.hydra.job.name} over {searched}"
    if not space:
        raise SearchConfigError(
            "hydra/sweeper=search has no search space: no override on the command line "
            "is a sweep, and hydra.sweeper.params is empty. Fix: pass e.g. "
            "'optim.lr=tag(log, interval(1e-4, 1e-1))' or 'model=choice(mlp,resmlp)'"
        )
    check_enqueue(options, space)
    check_space_applies(sweeper, space, fixed)
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    study, storage = open_study(options, sweep_dir, space, default_name)
    note_study(sweep_dir, study.study_name, options.storage)
    n_values = len(options.directions())

    def lost(job_dir: str) -> None:
        if (own := within(job_dir, sweep_dir)) is not None:
            record_lost(own)

    told, again = continue_study(study, lambda job_dir: stored_end(job_dir, n_values), lost)
    if not study.trials:
        for point in options.enqueue:
            study.enqueue_trial(dict(point))
    search = Search(study, space, fixed, options, sweep_dir, storage)
    if search.counted or again:
        log.info(
            "Continuing study %r: %d trial(s) of %d done earlier%s%s",
            options.study_name,
            search.counted,
            options.n_trials,
            f" ({told} whose job had completed as its sweep died)" if told else "",
            f", {again} interrupted one(s) run again" if again else "",
        )
        if search.counted >= options.n_trials:
            log.warning(
                "The study has all its %d trial(s): none will run. To search further, "
                "raise hydra.sweeper.n_trials (it counts every run's trials)",
                options.n_trials,
            )
    launcher = sweeper.launcher
    if options.n_jobs is not None:
        slots = getattr(launcher, "params", None)
        if isinstance(slots, dict) and not slots.get("max_parallel"):
            slots["max_parallel"] = options.n_jobs
            log.info(
                "hydra.sweeper.n_jobs=%d (hydra-optuna-sweeper's key): trials at once, "
                "taken as hydra.launcher.max_parallel",
                options.n_jobs,
            )
    if options.asynchronous and callable(getattr(launcher, "launch_points", None)):
        launcher.launch_points(search)
    else:
        params = sweeper.config.hydra.launcher
        n_jobs = params.get("n_jobs")  # joblib's; -1 is every core
        size = int(
            params.get("max_parallel") or options.n_jobs or (n_jobs if n_jobs and n_jobs > 0 else 1)
        )
        why = (
            "hydra.sweeper.asynchronous=false"
            if callable(getattr(launcher, "launch_points", None))
            else f"{type(launcher).__name__} cannot start a trial as a slot frees "
            "(hydra/launcher=torchrun can); pruning is off"
        )
        run_batches(launcher, search, size, why)
    results = write_results(search, sweep_dir)
    report_results(results, search.directions)
    write_summary(sweep_dir)  # again, now that the Pareto front is known
    if search.tally["failed"] and not search.tally["done"] and not search.tally["pruned"]:
        raise RuntimeError(
            f"every trial of this search failed ({search.tally['failed']}); each one's "
            f"error is in its launch.json and in {sweep_dir / 'summary.md'}"
        )
