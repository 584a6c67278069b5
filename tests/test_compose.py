"""A sweep's points composed once per distinct defaults list (runner.sweep.compose):
every point's config, Hydra's flags on it and any error are what Hydra's own
``load_sweep_config`` gives, for sweeps that mix group choices, ``+key``, ``~key``,
``key@pkg``, dict values, Hydra's own groups and keys, and interpolations."""

from __future__ import annotations

import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from runner.sweep.compose import SLOW_KEYS, ComposeOnce, install
from tests.conftest import APPS

CONF = APPS / "compose_conf"

POINTS = [
    [],
    ["port=1"],
    ["db=postgres", "port=2"],
    ["port=3", "db=postgres"],
    ["db=postgres", "db.host=elsewhere"],
    ["+new=1", "db=mysql"],
    ["++port=4", "++fresh.key=5"],
    ["~gone"],
    ["~gone=1", "nested.a=7"],
    ["web=nginx"],
    ["server@web=nginx", "web.workers=2"],
    ["extra=small"],
    ["~extra"],
    ["db={host: inline, user: me}"],
    ["hydra/job_logging=disabled", "port=5"],
    ["+hydra.job.env_set.RUNNER_TEST_VAR=x", "hydra.job.name=renamed"],
    ["hydra.job.config.override_dirname.exclude_keys=[port]", "port=6", "db=postgres"],
    ["nested={a: 9}"],
    ["url=${db.user}@${db.host}", "port=7"],
    ["hydra.job.env_copy=[PATH]", "port=8"],  # Hydra composes it itself
]

BAD = [
    ["nokey=1"],
    ["db=nonexistent"],
    ["+port=1"],
    ["~missing"],
    ["web@pkg=nginx"],
]


@pytest.fixture(scope="module")
def loaders():
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.utils import setup_globals
    from hydra.types import RunMode

    setup_globals()  # ${now:} and ${hydra:}, as an app has them
    hydra_own = ConfigLoaderImpl(config_search_path=create_config_search_path(str(CONF)))
    master = hydra_own.load_configuration(
        "config",
        [
            "hydra.sweep.dir=/tmp/runner-compose-test",
            "hydra.job.env_copy=[HOME]",
            "hydra.run.dir=out/${port}",  # resolved per point, as each point's port
        ],
        RunMode.MULTIRUN,
    )
    assert master.started  # resolved once in the sweep: every point has that value
    return hydra_own, ComposeOnce(hydra_own), master


def resolved(config) -> dict:
    """The config with every interpolation resolved as its own job (${hydra:...}), its
    job number given as the launcher gives it."""
    with open_dict(config):
        config.hydra.job.num = config.hydra.job.id = 3
        config.hydra.runtime.output_dir = "/tmp/runner-compose-test/3"
    HydraConfig.instance().set_config(config)
    return OmegaConf.to_container(config, resolve=True)


@pytest.mark.parametrize("point", POINTS, ids=lambda p: " ".join(p) or "none")
def test_a_point_is_composed_as_hydra_composes_it(loaders, point):
    hydra_own, once, master = loaders
    theirs = hydra_own.load_sweep_config(master, point)
    ours = once.load_sweep_config(master, point)
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(theirs)
    assert OmegaConf.is_struct(ours) == OmegaConf.is_struct(theirs)
    assert OmegaConf.is_readonly(ours.hydra) == OmegaConf.is_readonly(theirs.hydra)
    assert resolved(ours) == resolved(theirs)
    if not any(key in " ".join(point) for key in SLOW_KEYS):  # the fast path took it
        assert once._compose(master, point) is not None


def test_points_that_only_change_values_share_one_composition(loaders):
    hydra_own, _, master = loaders
    once = ComposeOnce(hydra_own)
    for port in range(20):
        once.load_sweep_config(master, [f"port={port}", f"nested.a={port}"])
    for db in ("mysql", "postgres", "mysql"):
        once.load_sweep_config(master, [f"db={db}", "port=1"])
    # One for the values alone, one per group choice given.
    assert len(once.bases) == 3
    # Copies, not shared: a point's config changed leaves the next one as composed.
    first = once.load_sweep_config(master, ["port=1"])
    first.nested.a = 100
    assert once.load_sweep_config(master, ["port=1"]).nested.a == 1


@pytest.mark.parametrize("point", BAD, ids=" ".join)
def test_a_bad_override_fails_with_hydras_own_error(loaders, point):
    hydra_own, once, master = loaders
    with pytest.raises((HydraException, OmegaConfBaseException, ValueError)) as theirs:
        hydra_own.load_sweep_config(master, point)
    with pytest.raises(type(theirs.value)) as ours:
        once.load_sweep_config(master, point)
    assert str(ours.value) == str(theirs.value)


def test_the_launcher_puts_it_in_the_sweeps_hydra_context_once(loaders):
    from hydra.types import HydraContext

    hydra_own, _, _ = loaders
    context = HydraContext(config_loader=hydra_own, callbacks=None)
    install(context)
    assert isinstance(context.config_loader, ComposeOnce)
    wrapped = context.config_loader
    install(context)
    assert context.config_loader is wrapped and wrapped.loader is hydra_own
