"""A Hydra app that is not runner's, written with ``@runner.main`` in place of
``@hydra.main``: its single run (no ``-m``) takes ``hydra.launcher``'s ranks, and
calling it returns the run's value."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import runner  # noqa: E402
from tests.apps.probe_app import probe  # noqa: E402


@runner.main(version_base="1.3", config_path="probe_conf", config_name="config")
def main(cfg) -> float:
    return probe(cfg)


if __name__ == "__main__":
    print("returned", repr(main()))  # what calling the app gives: the run's value
