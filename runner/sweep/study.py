"""The search's study: its sampler and pruner, the database it lives in, and the
trials a dead sweep left running (:mod:`runner.sweep.search_run` runs the search)."""

from __future__ import annotations

import inspect
import json
import os
import random
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from runner.errors import SearchConfigError, first_line, invalid
from runner.launch.procs import atomic_file, pid_alive
from runner.launch.trust import check_store
from runner.record import Outcome
from runner.sweep.options import PRUNERS, SAMPLERS, SearchOptions
from runner.sweep.space import Param, space_record

if TYPE_CHECKING:
    from runner.sweep.rows import Row

# Trial user attributes: the sweep parent running it (host:pid, and its procs.started:
# the pid alone may be a later process's), how it ended as runner saw it (COMPLETED,
# FAILED, PRUNED, INTERRUPTED), its job dir (from its start), the trial it runs again
# (RERUN_OF). Study: the space.
OWNER = "runner_owner"
OWNER_STARTED = "runner_owner_started"
STATUS = "runner_status"
JOB_DIR = "runner_job_dir"
SPACE = "runner_space"
# In a search's sweep dir: its study's name and storage (what `python -m runner.report
# --study` opens).
STUDY_FILE = "study.json"
# A trial queued to run again the parameters of one its sweep stopped: that one's number.
RERUN_OF = "runner_rerun_of"


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


def open_study(
    options: SearchOptions, sweep_dir: Path, space: list[Param], default_name: str = "search"
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """The search's study: made, or loaded when it exists and asks for the same
    directions and space (else an error, and the study is left as it was); with its
    database (where a running trial's heartbeats go). Unnamed
    (``study_name: null``): in the sweep dir's own database, the study there whatever
    its name (continued, never a second study numbering its trials, and so its job
    dirs, from 0 again); else ``default_name``."""
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
    storage = _storage(url, options)
    if options.study_name is None:
        # The sweep dir's own database holds this sweep's study, whatever its name.
        names = optuna.study.get_all_study_names(storage) if options.storage is None else []
        options.study_name = names[0] if len(names) == 1 else default_name
    directions = options.directions()
    try:
        study = optuna.load_study(
            study_name=options.study_name, storage=storage, sampler=sampler, pruner=pruner
        )
        if options.seed is not None:
            # A continued search must not replay the seeded draws of its first run.
            study.sampler = make_sampler(options, offset=len(study.trials))
    except KeyError:
        try:
            study = optuna.create_study(
                storage=storage,
                sampler=sampler,
                pruner=pruner,
                study_name=options.study_name,
                directions=[optuna.study.StudyDirection[d.upper()] for d in directions],
            )
        except optuna.exceptions.DuplicatedStudyError:  # another parent made it first
            return open_study(options, sweep_dir, space)
        study.set_user_attr(SPACE, space_record(space))
        return study, storage
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
    return study, storage


# How often, and for how long, a parent retries opening a database whose tables
# another parent is making at that moment.
SCHEMA_RETRIES = 20
SCHEMA_RETRY_S = 0.25


def _storage(url: str, options: SearchOptions) -> optuna.storages.RDBStorage:
    """The study's database, its tables made if new. Parents that start at the same
    moment on a fresh database race to make them: the loser sees the winner's tables
    (a duplicate key or table) and tries again; any other error is the URL's."""
    from sqlalchemy.exc import SQLAlchemyError

    heartbeat: dict[str, Any] = {}
    if options.heartbeat_interval:
        heartbeat = {
            "heartbeat_interval": options.heartbeat_interval,
            "grace_period": options.grace_period,
        }
        # Optuna's callback that queues a stale trial's parameters again (renamed in 4.9).
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        with warnings.catch_warnings():  # "experimental" since 2.8, and kept
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if retry is not None:
                heartbeat["heartbeat_stale_trial_callback"] = retry(max_retry=1)
            else:
                heartbeat["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(1)
    for attempt in range(SCHEMA_RETRIES):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **heartbeat)
        except SQLAlchemyError as error:
            racing = any(
                words in str(error).lower()
                for words in ("already exists", "duplicate key", "unique constraint")
            )
            if not racing or attempt == SCHEMA_RETRIES - 1:
                raise _unopenable(url, error) from None
            time.sleep(SCHEMA_RETRY_S * (1 + random.random()))
        except Exception as error:
            raise _unopenable(url, error) from None
    raise AssertionError("unreachable")


def _unopenable(url: str, error: Exception) -> SearchConfigError:
    return SearchConfigError(
        invalid(
            "hydra.sweeper.storage",
            url,
            f"the study's database cannot be opened ({first_line(error)})",
            "a URL Optuna accepts, e.g. sqlite:///path/study.db or "
            "postgresql+psycopg://user:password@host/db (pip install 'runner[search]'), "
            "or storage=null for SQLite in the sweep dir",
        )
    )


def rerun_of(trial: FrozenTrial) -> int | None:
    """The trial whose parameters ``trial`` runs again: one its sweep stopped (queued
    by runner), or one whose parent's heartbeats stopped (queued by Optuna's retry
    callback, which copies the stale trial's user attributes: its history wins)."""
    history = trial.system_attrs.get("retry_history")
    if isinstance(history, list) and history:
        return int(history[-1])
    number = trial.user_attrs.get(RERUN_OF)
    return number if isinstance(number, int) else None


def continue_study(
    study: optuna.Study,
    stored: Callable[[str], tuple[TrialState, list[float] | None] | None],
    lost: Callable[[str], None],
) -> tuple[int, int]:
    """Trials of this host whose sweep parent is gone: told how their job ended where
    it ended (``stored`` of their job dir: COMPLETE with its values, or PRUNED; the
    parent died before telling the study), else failed, their job dir said ``lost``,
    and their parameters queued to run again. Returns (told, queued again)."""
    host = socket.gethostname()
    told = again = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who, _, pid = str(trial.user_attrs.get(OWNER, "")).rpartition(":")
        born = trial.user_attrs.get(OWNER_STARTED)
        born = born if type(born) is int else None  # else written before it was kept
        if who != host or not pid.isdigit() or pid_alive(int(pid), born):
            continue  # another machine's, or a live sweep's
        job_dir = trial.user_attrs.get(JOB_DIR)
        ended = stored(str(job_dir)) if job_dir else None
        if ended is not None:
            state, values = ended
            study.tell(trial.number, values, state=state)
            told += 1
            continue
        if job_dir:
            lost(str(job_dir))
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={RERUN_OF: trial.number})
        again += 1
    return told, again


def note_study(sweep_dir: Path, study_name: str, storage: str | None) -> None:
    """Name the sweep dir's study and its storage (:data:`STUDY_FILE`; only its
    owner may read it: a database URL may hold a password)."""
    data = json.dumps({"study_name": study_name, "storage": storage}).encode()
    with atomic_file(sweep_dir / STUDY_FILE) as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


_STATES = {
    TrialState.COMPLETE: Outcome.COMPLETED,
    TrialState.PRUNED: Outcome.PRUNED,
    TrialState.FAIL: Outcome.FAILED,
    TrialState.RUNNING: Outcome.RUNNING,
}


def other_rows(sweep_dir: Path, own: Sequence[Row]) -> list[Row]:
    """The trials of a search's study (:data:`STUDY_FILE`) that are not among ``own``
    (this sweep dir's rows): other parents' trials of a shared search. Read from the
    trial's job dir where this machine sees it (a shared filesystem), else from the
    study: its parameters, state and value."""
    from runner.record import read_record
    from runner.sweep.rows import Row, read_row

    try:
        noted = json.loads((sweep_dir / STUDY_FILE).read_text())
        name, storage = str(noted["study_name"]), noted.get("storage")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SearchConfigError(
            invalid(
                "SWEEP_DIR",
                str(sweep_dir),
                f"it holds no search's study ({first_line(error)})",
                "--study is for the sweep dir of a hydra/sweeper=search run",
            )
        ) from None
    url = str(storage or f"sqlite:///{sweep_dir.absolute() / 'study.db'}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except Exception as error:
        raise _unopenable(url, error) from None
    seen = {str(r.job_dir) for r in own}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        job_dir = trial.user_attrs.get(JOB_DIR)
        status = _STATES.get(trial.state)
        if str(job_dir) in seen or status is None:
            continue  # this sweep dir's, or waiting to run
        parent = str(trial.user_attrs.get(OWNER, ""))
        if job_dir and read_record(Path(job_dir)) is not None:
            row = read_row(Path(job_dir), trial.number)
        else:
            if trial.user_attrs.get(STATUS) == Outcome.INTERRUPTED.value:
                status = Outcome.STOPPED
            single = trial.values is not None and len(trial.values) == 1
            row = Row(
                job=trial.number,
                job_dir=Path(job_dir or "?"),
                params={k: str(v) for k, v in trial.params.items()},
                status=status,
                duration_s=trial.duration.total_seconds() if trial.duration else None,
                objective=trial.values[0] if single and trial.values else None,
                values=list(trial.values) if trial.values and not single else [],
            )
        row.parent = parent
        rows.append(row)
    return rows
