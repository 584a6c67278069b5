"""The plugin shell: discovery stays light, and its config is the option dataclasses."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from hydra_plugins.torchrun_launcher.torchrun_launcher import TorchrunLauncherConf
from runner.launch.options import option_names
from tests.conftest import APPS


def test_plugin_discovery_does_not_import_torch_or_optuna():
    code = (
        "import sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.launcher import Launcher\n"
        "from hydra.plugins.sweeper import Sweeper\n"
        "names = [p.__name__ for p in Plugins.instance().discover(Launcher)]\n"
        "assert 'TorchrunLauncher' in names, names\n"
        "names = [p.__name__ for p in Plugins.instance().discover(Sweeper)]\n"
        "assert 'SearchSweeper' in names, names\n"
        "heavy = {'torch', 'optuna', 'sqlalchemy'}\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in heavy]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_launcher_keys_are_typed_and_checked_when_hydra_composes():
    """The plugin's config is the option dataclasses themselves (written once), so a
    value of the wrong type fails at composition, naming the key."""
    with initialize_config_dir(config_dir=str(APPS / "probe_conf"), version_base="1.3"):
        config = compose("config", return_hydra_config=True)
        assert set(config.hydra.launcher) == option_names(TorchrunLauncherConf)
        for override in ("hydra.launcher.timeout=soon", "hydra.launcher.max_parallel=many"):
            with pytest.raises(ConfigCompositionException) as err:
                compose("config", overrides=[override], return_hydra_config=True)
            key = override.split("=")[0].removeprefix("hydra.")
            assert key in str(err.value.__cause__ or err.value)
