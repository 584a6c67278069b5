"""runner: Hydra-composed PyTorch experiments, sweeps and torchrun DDP that work together.

``@runner.main(...)`` is ``@hydra.main`` whose single runs take the launcher's ranks
(:mod:`runner.launch.app`); ``@runner.checked_by(check)`` gives a task the check the
launcher runs on each point's config before the point starts; ``runner.stop_requested()``
is the check a task calls between steps to stop for a requeue (:mod:`runner.stop`).
Importing this package must stay light: it never imports torch, and each is imported
when first used.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "main":
        from runner.launch.app import main

        return main
    if name == "checked_by":
        from runner.launch.app import checked_by

        return checked_by
    if name == "stop_requested":
        from runner.stop import stop_requested

        return stop_requested
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
