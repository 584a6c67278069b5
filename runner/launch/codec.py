"""The parent/rank format: how a job's config and task travel from the parent to every
rank, both ways in one place.

The config is resolved once in the parent into plain JSON data (:func:`job_config_data`)
and rebuilt in each rank (:func:`restore_config`): no value is ever turned into code,
and ``${now:...}`` and friends have the same value in every rank. The task travels by
name when it has one (its module's, or the path and text of the script being run, see
:func:`task_reference`), else by value (cloudpickle), so closures work too; the rank
finds it again with :func:`load_task`. Light on the parent side: no torch.
"""

from __future__ import annotations

import ast
import copy
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

from omegaconf import DictConfig, ListConfig, Node, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

# The name under which ranks (and warm processes) load a task's script: the name
# multiprocessing gives the main script in a "spawn" child, where its
# ``if __name__ == "__main__":`` block does not run.
SCRIPT_MODULE = "__mp_main__"


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


def restore_config(data: dict) -> DictConfig:
    """The job config from its resolved data, with the ``hydra`` node typed HydraConf
    (HydraConfig requires it; the composed node has keys the dataclass lacks)."""
    from hydra.conf import HydraConf

    data = dict(data)
    hydra_data = data.pop("hydra", None)
    config = OmegaConf.create(data)
    if hydra_data is not None:
        hydra_node = OmegaConf.structured(HydraConf)
        with open_dict(hydra_node):
            hydra_node.merge_with(hydra_data)
        with open_dict(config):
            config.hydra = hydra_node
    OmegaConf.set_struct(config, True)
    return config


def task_config(config: DictConfig) -> DictConfig:
    """The config the task sees: everything but the ``hydra`` node."""
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        task_cfg.pop("hydra", None)
    return task_cfg


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
    line = frame.f_lineno or 0
    return any(start <= line <= end for start, end in _main_guards(path))


@functools.cache
def _main_guards(path: str) -> list[tuple[int, int]]:
    """The lines of the script's ``if __name__ == "__main__":`` blocks (read once: a
    sweep asks for every point)."""
    try:
        tree = ast.parse(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):
        return []
    return [
        (node.lineno, node.end_lineno or node.lineno) for node in tree.body if _is_main_guard(node)
    ]


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


def load_script(path: str, source: str | None = None) -> ModuleType:
    """The script at ``path`` (its text ``source``, else the file's) as the module
    ``__mp_main__``, loaded once per process: what multiprocessing's "spawn" children
    do with the main script, so its ``if __name__ == "__main__":`` block does not run.
    Its classes and functions are pickled by value for the parent (which has no such
    module)."""
    loaded = sys.modules.get(SCRIPT_MODULE)
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    import cloudpickle

    module = ModuleType(SCRIPT_MODULE)
    module.__file__ = path
    sys.modules[SCRIPT_MODULE] = module
    try:
        code = compile(script_source(path, source), path, "exec")
        exec(code, vars(module))
    except BaseException:
        del sys.modules[SCRIPT_MODULE]
        raise
    cloudpickle.register_pickle_by_value(module)
    return module


def load_task(reference: dict | None, pickled: bytes | None = None) -> Callable:
    """The task function: found by name (:func:`task_reference`), or, when it has none,
    unpickled by value from ``pickled``."""
    if reference is None:
        import cloudpickle

        assert pickled is not None, "a task without a reference travels pickled"
        return cloudpickle.loads(pickled)
    if "script" in reference:
        obj: Any = load_script(reference["script"], reference.get("source"))
    else:
        import importlib

        obj = importlib.import_module(reference["module"])
    for part in reference["qualname"].split("."):
        obj = getattr(obj, part)
    for _ in range(reference["unwrap"]):
        obj = obj.__wrapped__
    return obj
