"""runner: Hydra-composed PyTorch experiments, sweeps and torchrun DDP that work together.

``@runner.main(...)`` is ``@hydra.main`` whose single runs take the launcher's ranks
(:mod:`runner.launch.app`); ``runner.stop_requested()`` is the check a task calls
between steps to stop for a requeue (:mod:`runner.stop`). Importing this package must
stay light: it never imports torch, and both are imported when first used.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "main":
        from runner.launch.app import main

        return main
    if name == "stop_requested":
        from runner.stop import stop_requested

        return stop_requested
    raise AttributeError(f"module 'runner' has no attribute {name!r}")
