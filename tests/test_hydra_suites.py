"""Hydra's own launcher test suites, run against ``hydra/launcher=torchrun``.

The way Hydra's official launcher plugins test themselves (hydra_joblib_launcher,
hydra_submitit_launcher, hydra_ray_launcher: ``plugins/*/tests/test_*_launcher.py`` in
facebookresearch/hydra): :class:`LauncherTestSuite` sweeps in this process through
Hydra's ``hydra_sweep_runner`` fixture, and :class:`IntegrationTestSuite` writes a
``@hydra.main`` task script into its tmpdir and runs it with ``-m`` in a subprocess.

Everything they need ships in the installed hydra-core: the fixtures come from its
pytest plugin (``hydra.extra.pytest_plugin``, registered as ``hydra_pytest``), the
app module and configs of the in-process suite from ``hydra.test_utils``
(``a_module.py`` and ``configs/``), and the integration suite writes its own task
files. Nothing of Hydra's is vendored here.

Every point is its own torchrun (seconds each), so the whole module is slow.
"""

from __future__ import annotations

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite, LauncherTestSuite

from hydra_plugins.torchrun_launcher.torchrun_launcher import TorchrunLauncher

pytestmark = pytest.mark.slow

# Two points at a time whatever the machine's core count, so the suites' two-point
# sweeps run both at once (and the same way on every machine). Leases need nothing
# here: conftest gives every test its own lease dir, and these points name no devices.
LAUNCHER_OVERRIDES = ["hydra.launcher.max_parallel=2"]
# Cold: every point's agent is a fresh ``python -m runner.launch.agent``. Warm: every
# agent is a fork of one warm process that loaded the task ahead (its own code path).
COLD = LAUNCHER_OVERRIDES
WARM = [*LAUNCHER_OVERRIDES, "hydra.launcher.warm=true"]


def test_discovery() -> None:
    # As Hydra's plugins do: the plugin is found among the Launchers.
    assert TorchrunLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [
        pytest.param("torchrun", COLD, id="cold"),
        pytest.param("torchrun", WARM, id="warm"),
    ],
)
class TestTorchrunLauncher(LauncherTestSuite):
    """Hydra's launcher suite, in this process; the task (Hydra's closure in its
    SweepTaskFunction) travels to every torchrun by value."""


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [
        # The launcher picked on the command line (as hydra_submitit_launcher's tests do).
        pytest.param({}, ["-m", "hydra/launcher=torchrun", *COLD], id="cli-cold"),
        pytest.param({}, ["-m", "hydra/launcher=torchrun", *WARM], id="cli-warm"),
        # Picked by the task's own primary config (as hydra_joblib_launcher's tests do).
        pytest.param(
            {"defaults": [{"override hydra/launcher": "torchrun"}]},
            ["-m", *COLD],
            id="config-cold",
        ),
    ],
)
class TestTorchrunLauncherIntegration(IntegrationTestSuite):
    """Hydra's integration suite: a task script of its own, run as ``python task.py -m``
    from its tmpdir; the ranks load that script by path."""
