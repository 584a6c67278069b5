"""``python -m runner`` (or the ``runner`` command): compose the experiment from the
configs shipped in ``runner/conf/`` and run it (``-m`` sweeps)."""

import sys
from importlib import metadata

import hydra

import runner.trainer.config  # noqa: F401  (stores the schemas before Hydra composes)
from runner.trainer.cli import CONF_DIR, did_you_mean, malformed_override
from runner.trainer.task import main


def version() -> str:
    """``runner 0.1.0 (hydra-core 1.3.2, torch 2.13.0)``, read without importing torch."""
    found = []
    for name in ("runner", "hydra-core", "torch"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} (not installed)")
    return f"{found[0]} ({', '.join(found[1:])})"


def cli() -> None:
    """The ``runner`` command, as ``python -m runner``; ``--version`` says runner's
    version with Hydra's and torch's (Hydra's own flag would say Hydra's alone)."""
    if "--version" in sys.argv[1:]:
        print(version())
        return
    if problem := malformed_override(sys.argv[1:]):
        sys.exit(problem)
    try:
        hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")(main)()
    except SystemExit as refused:
        if refused.code not in (0, None) and (hint := did_you_mean(sys.argv[1:])):
            print(hint, file=sys.stderr)
        raise


if __name__ == "__main__":
    cli()
