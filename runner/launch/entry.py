"""The config as data: what the parent writes for a job and what every rank reads.

The job's full config, ``hydra`` node included, is resolved once in the parent and
written as JSON into a private entry directory (0700, files 0600) beside a fixed entry
script. Every rank runs that script, which hands the data to
:mod:`runner.launch.worker`: no value is ever turned into code, and ``${now:...}``
and friends have the same value in every rank. The task travels by name when it has
one (its module's, or the path of the script being run, see :func:`task_reference`),
else by value (cloudpickle), so closures work too.

The names of the files parent, agent and ranks share (in the entry dir and in a job
dir) are defined here, once.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, ListConfig, Node
from omegaconf.errors import OmegaConfBaseException

from runner.launch.procs import import_path, pid_alive

# What every agent runs: ``python -m runner.launch.agent`` (torchrun, and runner's parts).
AGENT_MODULE = "runner.launch.agent"


def agent_command(args: list[str]) -> list[str]:
    """The agent's command line, however it is started (what launch.json records)."""
    return [sys.executable, "-m", AGENT_MODULE, *args]


# In the entry dir (private, removed when the job ends).
ENTRY_SCRIPT = "entry.py"
JOB_FILE = "job.json"
TASK_FILE = "task.pkl"
RESULT_FILE = "result.pkl"
# What rank 0 saw of its job beyond the return value (whether the ranks formed a group).
RANK0_FILE = "rank0.json"
FAILURE_FILE = "failure.json"
# In a job dir (kept).
AGENT_LOG = "torchrun.log"
# A copy of the job (job.json, task.pkl) to run it again: python -m runner.rerun JOB_DIR.
RERUN_DIR = ".runner"
# The name under which ranks (and warm processes) load a task's script: the name
# multiprocessing gives the main script in a "spawn" child, where its
# ``if __name__ == "__main__":`` block does not run.
SCRIPT_MODULE = "__mp_main__"
RETURN_VALUE = "return_value.pkl"

# The entry script is fixed text: the job is data in job.json beside it. Only as
# __main__ does it run the worker: a process the task starts with the "spawn" method
# re-imports this file as __mp_main__ and must not start the task again.
ENTRY_SOURCE = f"""\
# Written by runner for one torchrun job; removed when the job ends.
# Every rank runs this file. The job itself is data, in {JOB_FILE} beside it.
import json
import sys
from pathlib import Path

_job_dir = Path(__file__).resolve().parent
_job = json.loads((_job_dir / "{JOB_FILE}").read_text())
sys.path[:0] = [p for p in _job["sys_path"] if p not in sys.path]

if __name__ == "__main__":
    from runner.launch.worker import main

    main(_job, _job_dir)
"""


def _escape(value: str) -> str:
    """Escape ``${`` (and backslashes before it) so OmegaConf reads the literal string."""
    return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)


def resolved_data(node: DictConfig | ListConfig) -> Any:
    """The config as plain JSON-able data, every interpolation resolved here and now.

    Resolved strings are escaped so that a value which itself reads ``${...}`` stays
    that literal string when the rank rebuilds the config. An interpolation that cannot
    be resolved yet (``hydra.job.num`` in a single run) is kept as written, so it
    behaves in the rank exactly as it would have in the parent.
    """
    keys: Iterator[Any]
    out: Any
    if isinstance(node, DictConfig):
        keys = iter(node.keys())
        out = {}
    else:
        keys = iter(range(len(node)))
        out = []
    for key in keys:
        try:
            value = node[key]
        except OmegaConfBaseException:
            child = node._get_node(key)
            assert isinstance(child, Node)
            value = child._value()  # unresolvable: keep it as written
        else:
            if isinstance(value, (DictConfig, ListConfig)):
                value = None if value._is_none() else resolved_data(value)
            elif isinstance(value, Enum):
                value = value.name
            elif isinstance(value, str):
                value = _escape(value)
            elif isinstance(value, bytes | Path):
                value = str(value)
        if isinstance(out, dict):
            out[str(key.name if isinstance(key, Enum) else key)] = value
        else:
            out.append(value)
    return out


def job_config_data(config: DictConfig) -> dict:
    """The full job config (task config plus its ``hydra`` node) as resolved data."""
    from hydra.core.hydra_config import HydraConfig

    data = resolved_data(config)
    if "hydra" not in data and HydraConfig.initialized():
        hydra_cfg = HydraConfig.instance().cfg  # a DictConfig, whatever its annotation
        assert isinstance(hydra_cfg, DictConfig)
        data["hydra"] = resolved_data(hydra_cfg)["hydra"]
    return data


def entry_base() -> Path:
    """Where entry dirs are made: ``$RUNNER_TMPDIR`` or the system temp dir."""
    base = Path(os.environ.get("RUNNER_TMPDIR") or tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    return base


def remove_stale_entry_dirs() -> list[Path]:
    """Remove entry dirs left by runner parents that no longer exist (killed with -9
    together with their agents); returns what was removed. Only this user's own real
    dirs: the temp dir is shared, so a link or another user's dir is left alone."""
    removed = []
    for path in entry_base().glob("runner-*-*"):
        match = re.fullmatch(r"runner-(\d+)-.*", path.name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        mine = stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
        if match and mine and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _unwrap_depth(obj: Any, target: Callable) -> int | None:
    """How many ``__wrapped__`` steps (decorators such as ``@hydra.main``) lead from
    ``obj`` to ``target``; None if none do."""
    for depth in range(8):
        if obj is target:
            return depth
        obj = getattr(obj, "__wrapped__", None)
        if obj is None:
            return None
    return None


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]


def started_under_main_guard(main: ModuleType) -> bool:
    """Whether the ``__main__`` module ``main`` is, right now, running the statement
    that started this app from inside its ``if __name__ == "__main__":`` block: then
    loading it again under another name defines its task and starts nothing."""
    frame = sys._getframe(1)
    while frame.f_back is not None and not (
        frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back
    path = getattr(main, "__file__", None)
    if frame.f_globals is not vars(main) or not path:
        return False
    try:
        tree = ast.parse(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):
        return False
    line = frame.f_lineno or 0
    return any(
        _is_main_guard(node) and node.lineno <= line <= (node.end_lineno or node.lineno)
        for node in tree.body
    )


_script_sources: dict[str, str] = {}


def script_source(path: str, source: str | None = None) -> str:
    """The text of the script at ``path`` as this process first read it (``source``:
    the text it ran instead), so every job of a sweep runs the script as it was when
    the sweep began, whatever is edited on disk meanwhile."""
    if path not in _script_sources:
        _script_sources[path] = source if source is not None else Path(path).read_text()
    return _script_sources[path]


def task_reference(task_function: Callable) -> dict | None:
    """Where another process finds the task by name, or None: it then travels by value.

    ``{"module": name}``: the task of an importable module, or of the module run with
    ``python -m``; ``{"script": path, "source": text}``: the task of the script this
    process runs (``python train.py``), which the ranks run (its text as the sweep
    began) under the name ``__mp_main__``, as multiprocessing's "spawn" children do.
    Each with ``qualname``, and ``unwrap``: the decorators (``@hydra.main``) to look
    through from that name to the task. A task of the running ``__main__`` goes by
    name only when the app started from inside its ``if __name__ == "__main__":``
    block, so loading it starts nothing.
    """
    module_name = getattr(task_function, "__module__", None)
    qualname = getattr(task_function, "__qualname__", "")
    if not module_name or "<" in qualname:
        return None
    module = sys.modules.get(module_name)
    reference: dict[str, Any]
    if module_name == "__main__":
        if module is None or not started_under_main_guard(module):
            return None
        spec = getattr(module, "__spec__", None)
        path = getattr(module, "__file__", None)
        if spec is not None:
            reference = {"module": spec.name}
        elif path:
            path = os.path.abspath(path)
            reference = {"script": path, "source": script_source(path)}
        else:
            return None
    elif module_name == SCRIPT_MODULE:  # a script loaded by load_script (a rerun)
        path = getattr(module, "__file__", None)
        if not path:
            return None
        reference = {"script": path, "source": script_source(path)}
    else:
        try:
            import importlib

            module = importlib.import_module(module_name)
        except ImportError:
            return None
        reference = {"module": module_name}
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    depth = _unwrap_depth(obj, task_function)
    return None if depth is None else {**reference, "qualname": qualname, "unwrap": depth}


def write_entry(
    config_data: dict,
    task_function: Callable,
    cwd: str,
    sys_path: list[str] | None = None,
    keep_in: Path | None = None,
) -> Path:
    """Create the private entry dir (0700) with the entry script, job.json and, for a
    task with no import path, task.pkl (all 0600). Returns the entry script's path.
    ``sys_path``: the import path the ranks get (default: this process's); ``keep_in``:
    a dir that keeps a copy of job.json and task.pkl (the job dir's RERUN_DIR)."""
    entry_dir = Path(tempfile.mkdtemp(prefix=f"runner-{os.getpid()}-", dir=entry_base()))
    try:
        reference = task_reference(task_function)
        if reference is None:
            import cloudpickle

            _write_private(entry_dir / TASK_FILE, cloudpickle.dumps(task_function))
        job = {
            "config": config_data,
            "task": reference,
            "sys_path": list(dict.fromkeys(sys_path or import_path(cwd))),
            "cwd": cwd,
        }
        _write_private(entry_dir / JOB_FILE, json.dumps(job).encode())
        _write_private(entry_dir / ENTRY_SCRIPT, ENTRY_SOURCE.encode())
        if keep_in is not None:
            keep_in.mkdir(parents=True, exist_ok=True)
            for name in (JOB_FILE, TASK_FILE):
                if (entry_dir / name).is_file():
                    shutil.copyfile(entry_dir / name, keep_in / name)
    except BaseException:
        shutil.rmtree(entry_dir, ignore_errors=True)
        raise
    return entry_dir / ENTRY_SCRIPT
