"""runner: Hydra-composed PyTorch experiments, sweeps and torchrun DDP that work together.

Importing this package must stay light: it never imports torch.
"""

__version__ = "0.1.0"
