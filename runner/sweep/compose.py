"""A sweep's points composed once per distinct defaults list.

Hydra composes every point from scratch: it reads the config files, builds the
defaults list and merges it (most of a point's cost in the sweep parent, ~60 ms), and
Hydra's basic sweeper composes the whole batch once more to check it before the
launcher composes it again. Yet the points of a sweep differ mostly in values
(``optim.lr=...``, ``seed=...``), which change no defaults list. :class:`ComposeOnce`
is the sweep's config loader (Hydra's ``ConfigLoader`` interface, put in
``HydraContext`` by runner's launcher, so the sweeper's check uses it too): for each
distinct set of config-group choices it composes with Hydra once, and each point is
a copy of that with the point's other overrides applied, the way Hydra applies them
after composing (its own function), and the override lists, ``override_dirname`` and
``env_set`` written as Hydra writes them.

It never changes a result, only what it costs: a point with a sweep override, one of
:data:`SLOW_KEYS`, or one the fast path cannot compose (a bad override:
Hydra's own error is the one to show), is composed by Hydra itself.
``tests/test_compose.py`` holds the configs equal to Hydra's for sweeps that mix group
choices, ``+key``, ``~key``, ``key@pkg``, interpolations and ``${now:}``.

Hydra's internals it uses (``ConfigLoaderImpl``'s repository and its function that
applies overrides) are checked once: where they are missing the sweep's loader is
left as it is.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from typing import Any

from hydra.core.config_loader import ConfigLoader
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

# Overrides whose effect depends on when Hydra applies them (the search path it
# composes from; env_set, which Hydra fills from env_copy after the overrides): a
# point that has one is composed by Hydra itself.
SLOW_KEYS = ("hydra.searchpath", "hydra.job.env_set", "hydra.job.env_copy")
# Composed bases kept (one per distinct set of group choices; least recently used
# dropped first).
BASES = 32


def _internals() -> tuple[type, Any, Any] | None:
    """Hydra's loader class, its override applier and its override_dirname, or None
    where this Hydra lacks them."""
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
    except ImportError:
        return None
    needed = ("_apply_overrides_to_config", "_parse_overrides_and_create_caching_repo")
    if not all(callable(getattr(ConfigLoaderImpl, name, None)) for name in needed):
        return None
    return ConfigLoaderImpl, ConfigLoaderImpl._apply_overrides_to_config, get_overrides_dirname


def install(hydra_context: Any) -> None:
    """Make ``hydra_context``'s config loader a :class:`ComposeOnce` (once)."""
    internals = _internals()
    loader = getattr(hydra_context, "config_loader", None)
    if internals is None or isinstance(loader, ComposeOnce):
        return
    if isinstance(loader, internals[0]):
        hydra_context.config_loader = ComposeOnce(loader)


class ComposeOnce(ConfigLoader):
    """Hydra's config loader, whose ``load_sweep_config`` composes once per distinct
    set of group choices (see the module docstring); everything else is Hydra's."""

    def __init__(self, loader: Any) -> None:
        internals = _internals()
        assert internals is not None
        _, self._apply, self._dirname = internals
        self.loader = loader
        self.parser = OverridesParser.create()
        self.bases: OrderedDict[tuple[str, ...], DictConfig] = OrderedDict()
        self.groups: dict[str, bool] = {}
        self.repo: Any = None
        self.repo_for: tuple[str | None, tuple[str, ...]] | None = None

    # -------------------------------------------------------------- Hydra's own

    def load_configuration(
        self,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        return self.loader.load_configuration(
            config_name, overrides, run_mode, from_shell, validate_sweep_overrides
        )

    def get_search_path(self) -> Any:
        return self.loader.get_search_path()

    def get_sources(self) -> Any:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(self, group_name: str, *args: Any, **kwargs: Any) -> list[str]:
        return self.loader.get_group_options(group_name, *args, **kwargs)

    def compute_defaults_list(
        self, config_name: str | None, overrides: list[str], run_mode: RunMode
    ) -> Any:
        return self.loader.compute_defaults_list(config_name, overrides, run_mode)

    def __getattr__(self, name: str) -> Any:  # the rest of ConfigLoaderImpl's surface
        return getattr(self.loader, name)

    # -------------------------------------------------------------- the sweep's

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        try:
            config = self._compose(master_config, list(sweep_overrides))
        except Exception:  # Hydra's own composition says what is wrong
            config = None
        if config is None:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        return config

    def _compose(self, master: DictConfig, point: list[str]) -> DictConfig | None:
        # As written: an interpolation in one (timeout=${value}) resolves per point.
        written = OmegaConf.to_container(master.hydra.overrides.hydra)
        assert isinstance(written, list)
        kept = [str(o) for o in written]
        name = master.hydra.job.config_name
        parsed = self.parser.parse_overrides(kept + point)
        own = parsed[len(kept) :]
        if any(o.is_sweep_override() or o.key_or_group.startswith(SLOW_KEYS) for o in own):
            return None
        repo = self._repo(name, kept)
        choices = [o for o in own if self._is_choice(repo, o)]
        values = [o for o in own if not self._is_choice(repo, o)]
        key = (str(name), *kept, "\0", *(str(o.input_line) for o in choices))
        base = self.bases.get(key)
        if base is None:
            base = self.loader.load_configuration(
                config_name=name,
                overrides=kept + [str(o.input_line) for o in choices],
                run_mode=RunMode.RUN,
            )
            self.bases[key] = base
            if len(self.bases) > BASES:
                self.bases.popitem(last=False)
        else:
            self.bases.move_to_end(key)
        config = copy.deepcopy(base)
        # What Hydra does after composing, for the overrides that are values.
        self._apply(values, config)
        app = [o for o in parsed if not o.is_hydra_override()]
        config.hydra.overrides.hydra = [o.input_line for o in parsed if o.is_hydra_override()]
        config.hydra.overrides.task = [o.input_line for o in app]
        with open_dict(config.hydra):
            for env in config.hydra.job.env_copy:
                config.hydra.job.env_set[env] = os.environ[env]
        dirname = config.hydra.job.config.override_dirname
        config.hydra.job.override_dirname = self._dirname(
            overrides=app,
            kv_sep=dirname.kv_sep,
            item_sep=dirname.item_sep,
            exclude_keys=dirname.exclude_keys,
        )
        OmegaConf.copy_cache(from_config=master, to_config=config)
        return config

    def _repo(self, name: str | None, kept: list[str]) -> Any:
        """The config repository Hydra composes the sweep's points from (its search
        path as the primary config and the sweep's Hydra overrides make it)."""
        wanted = (name, tuple(kept))
        if self.repo_for != wanted:
            _, self.repo = self.loader._parse_overrides_and_create_caching_repo(name, kept)
            self.repo_for, self.groups = wanted, {}
        return self.repo

    def _is_choice(self, repo: Any, override: Override) -> bool:
        """Whether Hydra takes ``override`` as a config-group choice (it changes the
        defaults list), as its defaults list does: a group, and not a dict value."""
        group = override.key_or_group
        if group not in self.groups:
            self.groups[group] = bool(repo.group_exists(group))
        return self.groups[group] and not isinstance(override.value(), dict)
