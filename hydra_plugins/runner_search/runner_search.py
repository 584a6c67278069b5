"""Hydra sweeper plugin ``hydra/sweeper=search``: runner's Optuna search, which starts
a trial the moment a slot frees, prunes distributed trials on their metrics.jsonl, and
keeps its study in a database (see :mod:`runner.sweep.search`).

Thin and light, as Hydra imports it at every start: the config (runner's
:class:`~runner.sweep.options.SearchOptions`) and a Sweeper shell; Optuna is imported
only when a search runs. (No ``from __future__ import annotations``: Hydra executes
plugin modules outside ``sys.modules``.)
"""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from runner.extras import require
from runner.sweep.options import SEARCH_SWEEPER, SearchOptions, check_search_options


@dataclass
class SearchSweeperConf(SearchOptions):
    _target_: str = SEARCH_SWEEPER
    # sampler/pruner mappings reach the sweeper as data: it makes them (seeded), and
    # names the key and the fix when it cannot.
    _recursive_: bool = False


# The sweeper, and a callback that refuses another sweeper's class in its place (a
# `_target_:` line left in a config written for hydra-optuna-sweeper would win).
ConfigStore.instance().store(
    group="hydra/sweeper",
    name="search",
    node={
        "sweeper": SearchSweeperConf,
        "callbacks": {"runner_search": {"_target_": "runner.sweep.options.SweeperClassCheck"}},
    },
    package="hydra",
    provider="runner",
)


class SearchSweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        self.params = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in params.items()
        }
        self.config: DictConfig
        self.hydra_context: HydraContext
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # Checked here, not in __init__: Hydra wraps what instantiation raises (its repr
        # and the config key), while it prints a setup error's message alone.
        require("optuna", "search", "hydra/sweeper=search", major=4)
        check_search_options(self.params)
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from runner.sweep.search_run import run_search

        run_search(self, arguments)
