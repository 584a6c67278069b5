"""A Hydra app whose task lives in an importable module (tests.apps.guarded_task)."""

import sys
from pathlib import Path

import hydra

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.apps.guarded_task import task  # noqa: E402

if __name__ == "__main__":
    conf = str(Path(__file__).resolve().parent / "probe_conf")
    hydra.main(version_base="1.3", config_path=conf, config_name="config")(task)()
