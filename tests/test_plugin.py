"""The plugin shell: discovery stays light, and its config mirrors the launch core's."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from hydra_plugins.torchrun_launcher.torchrun_launcher import TorchrunLauncherConf
from runner.launch.options import LaunchConfig


def test_plugin_discovery_does_not_import_torch():
    code = (
        "import sys\n"
        "from hydra.core.plugins import Plugins\n"
        "from hydra.plugins.launcher import Launcher\n"
        "names = [p.__name__ for p in Plugins.instance().discover(Launcher)]\n"
        "assert 'TorchrunLauncher' in names, names\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plugin_config_carries_every_launch_option_with_the_same_default():
    plugin = {f.name: f for f in dataclasses.fields(TorchrunLauncherConf)}
    for option in dataclasses.fields(LaunchConfig):
        assert option.name in plugin, option.name
        ours, theirs = plugin[option.name], option
        if option.default_factory is not dataclasses.MISSING:
            assert ours.default_factory() == theirs.default_factory()
        else:
            assert ours.default == theirs.default, option.name
