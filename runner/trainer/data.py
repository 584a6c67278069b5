"""Built-in datasets, generated deterministically from a seed: nothing is downloaded.

Each builder returns a :class:`SplitData` (train and validation tensors plus what the
model needs to know), so a user's own ``data._target_`` only has to return the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SplitData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    in_features: int
    out_features: int
    # "classification" (integer labels, cross-entropy) or "regression" (MSE).
    task: str


def _split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, generator, **info) -> SplitData:
    """Shuffle with ``generator`` and cut off the last ``val_fraction`` as validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction={val_fraction} must be between 0 and 1, e.g. 0.2")
    order = torch.randperm(len(x), generator=generator)
    x, y = x[order], y[order]
    n_val = max(1, int(round(len(x) * val_fraction)))
    return SplitData(x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], **info)


def spirals(
    n_samples: int = 2000,
    n_classes: int = 2,
    turns: float = 1.5,
    noise: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SplitData:
    """Interleaved 2-D spiral arms, one per class: needs a non-linear decision boundary."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_samples) % n_classes
    t = torch.rand(n_samples, generator=g)
    radius = 0.1 + t * 2.0
    angle = t * turns * 2 * math.pi + labels * (2 * math.pi / n_classes)
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    x = x + noise * torch.randn(n_samples, 2, generator=g) * 0.25
    return _split(
        x, labels, val_fraction, g, in_features=2, out_features=n_classes, task="classification"
    )


def blobs(
    n_samples: int = 4000,
    n_features: int = 16,
    n_classes: int = 4,
    spread: float = 2.0,
    noise: float = 1.0,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SplitData:
    """Gaussian clusters, one centre per class, in ``n_features`` dimensions."""
    g = torch.Generator().manual_seed(seed)
    centres = spread * torch.randn(n_classes, n_features, generator=g)
    labels = torch.arange(n_samples) % n_classes
    x = centres[labels] + noise * torch.randn(n_samples, n_features, generator=g)
    return _split(
        x,
        labels,
        val_fraction,
        g,
        in_features=n_features,
        out_features=n_classes,
        task="classification",
    )


def regression(
    n_samples: int = 4000,
    n_features: int = 8,
    noise: float = 0.1,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> SplitData:
    """A smooth non-linear target, y = sin(x.w1) + 0.5 (x.w2)^2 / d + noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, n_features, generator=g)
    w1 = torch.randn(n_features, generator=g) / math.sqrt(n_features)
    w2 = torch.randn(n_features, generator=g) / math.sqrt(n_features)
    y = torch.sin(x @ w1) + 0.5 * (x @ w2) ** 2
    y = (y + noise * torch.randn(n_samples, generator=g)).unsqueeze(1)
    return _split(x, y, val_fraction, g, in_features=n_features, out_features=1, task="regression")
