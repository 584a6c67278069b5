"""``python -m runner``: compose the experiment from conf/ and run it (``-m`` sweeps)."""

import sys

import hydra

import runner.trainer.config  # noqa: F401  (stores the schemas before Hydra composes)
from runner.trainer.cli import CONF_DIR, malformed_override
from runner.trainer.task import main

if __name__ == "__main__":
    if problem := malformed_override(sys.argv[1:]):
        sys.exit(problem)
    hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(main)()
