"""The search's study: its sampler and pruner, the database it lives in, and the
trials a dead sweep left running (:mod:`runner.sweep.search` runs the search)."""

from __future__ import annotations

import inspect
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from runner.errors import SearchConfigError, first_line, invalid
from runner.launch.procs import pid_alive
from runner.launch.trust import check_store
from runner.record import Outcome
from runner.sweep.options import PRUNERS, SAMPLERS, SearchOptions
from runner.sweep.space import Param, space_record

# Trial user attributes: the sweep parent running it (host:pid), how it ended as runner
# saw it (COMPLETED, FAILED, PRUNED, INTERRUPTED), its job dir. Study: the space.
OWNER = "runner_owner"
STATUS = "runner_status"
JOB_DIR = "runner_job_dir"
SPACE = "runner_space"


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counts(trial: FrozenTrial) -> bool:
    """Whether a finished trial counts towards ``n_trials`` (an interrupted one runs
    again instead)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(STATUS) == Outcome.FAILED.value


def _build(key: str, value: Any, names: dict[str, str], seed: int | None, defaults: dict) -> Any:
    """A sampler or pruner from a short name or a ``{_target_: ...}`` mapping."""
    from hydra.utils import get_class

    if isinstance(value, str):
        spec: dict[str, Any] = {"_target_": names[value], **defaults.get(value, {})}
    elif isinstance(value, dict):
        spec = dict(value)
    else:
        return value  # made by Hydra from a {_target_: ...} mapping
    target = str(spec.pop("_target_"))
    try:
        cls = get_class(target)
        if seed is not None and "seed" in inspect.signature(cls).parameters:
            spec.setdefault("seed", seed)
        return cls(**spec)
    except Exception as error:
        raise SearchConfigError(
            invalid(
                f"hydra.sweeper.{key}",
                value,
                f"{target}({spec}) cannot be made ({first_line(error)})",
                f"one of {', '.join(names)}, or a _target_ of an Optuna {key} class with "
                "its arguments (a missing package: pip install it)",
            )
        ) from None


def make_sampler(options: SearchOptions, offset: int = 0) -> optuna.samplers.BaseSampler:
    """TPE with a constant liar by default: trials asked while others run do not all
    land together. ``offset`` moves the seed (a continued study)."""
    seed = None if options.seed is None else options.seed + offset
    return _build("sampler", options.sampler, SAMPLERS, seed, {"tpe": {"constant_liar": True}})


def make_pruner(options: SearchOptions) -> optuna.pruners.BasePruner:
    return _build("pruner", options.pruner or "none", PRUNERS, None, {})


def open_study(options: SearchOptions, sweep_dir: Path, space: list[Param]) -> optuna.Study:
    """The search's study: made, or loaded when it exists and asks for the same
    directions and space (else an error, and the study is left as it was)."""
    url = options.storage or f"sqlite:///{sweep_dir.absolute() / 'study.db'}"
    if url.startswith("sqlite:///"):
        check_store(
            Path(url[len("sqlite:///") :]),
            "hydra.sweeper.storage: the study's SQLite database",
            "remove the link, or a path of your own, or a database server's URL "
            "(PostgreSQL) for a study that several users share",
        )
    sampler, pruner = make_sampler(options), make_pruner(options)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = optuna.storages.RDBStorage(url)
    except Exception as error:
        raise SearchConfigError(
            invalid(
                "hydra.sweeper.storage",
                url,
                f"the study's database cannot be opened ({first_line(error)})",
                "a URL Optuna accepts, e.g. sqlite:///path/study.db or "
                "postgresql://user:password@host/db (its driver installed), or storage=null "
                "for SQLite in the sweep dir",
            )
        ) from None
    directions = options.directions()
    try:
        study = optuna.load_study(
            study_name=options.study_name, storage=storage, sampler=sampler, pruner=pruner
        )
        if options.seed is not None:
            # A continued search must not replay the seeded draws of its first run.
            study.sampler = make_sampler(options, offset=len(study.trials))
    except KeyError:
        study = optuna.create_study(
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            study_name=options.study_name,
            directions=[optuna.study.StudyDirection[d.upper()] for d in directions],
        )
        study.set_user_attr(SPACE, space_record(space))
        return study
    where = f"study {options.study_name!r} in {url}"
    fix = (
        "run the same search again, or start a new one with another hydra.sweep.dir "
        "(or hydra.sweeper.study_name)"
    )
    had = [d.name.lower() for d in study.directions]
    if had != directions:
        raise SearchConfigError(
            invalid(
                "hydra.sweeper.direction",
                options.direction,
                f"{where} was made with direction {had}",
                fix,
            )
        )
    kept = study.user_attrs.get(SPACE)
    if kept is not None and kept != space_record(space):
        ours = space_record(space)
        differ = sorted(k for k in set(kept) | set(ours) if kept.get(k) != ours.get(k))
        raise SearchConfigError(
            f"the search space is invalid for {where}: it searched other parameters or "
            f"ranges ({', '.join(differ)} differ). Fix: {fix}"
        )
    return study


def continue_study(
    study: optuna.Study, stored_values: Callable[[str], list[float] | None]
) -> tuple[int, int]:
    """Trials of this host whose sweep parent is gone: told their values where their
    job completed (``stored_values`` of their job dir: the parent died before telling
    the study), else marked failed and their parameters queued to run again. Returns
    (told, queued again)."""
    host = socket.gethostname()
    told = again = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who, _, pid = str(trial.user_attrs.get(OWNER, "")).rpartition(":")
        if who != host or not pid.isdigit() or pid_alive(int(pid)):
            continue  # another machine's, or a live sweep's
        job_dir = trial.user_attrs.get(JOB_DIR)
        values = stored_values(str(job_dir)) if job_dir else None
        if values is not None:
            study.tell(trial.number, values)
            told += 1
            continue
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"runner_rerun_of": trial.number})
        again += 1
    return told, again
