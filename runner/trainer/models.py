"""Built-in models. The trainer builds them as ``instantiate(cfg.model, in_features=...,
out_features=...)``, so a user's own ``model._target_`` takes those two keywords."""

from __future__ import annotations

from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"model.activation={name!r} is not known; use one of {sorted(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """``depth`` linear layers with an activation (and optional dropout) between them."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        depth: int = 3,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"model.depth={depth} must be >= 1")
        widths = [in_features] + [hidden] * (depth - 1) + [out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < depth - 1:
                layers.append(_activation(activation))
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ResidualBlock(nn.Module):
    """Pre-norm residual block: x + W2 act(W1 norm(x))."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return x + self.drop(self.fc2(self.act(self.fc1(self.norm(x)))))


class ResidualMLP(nn.Module):
    """Embed, ``blocks`` residual blocks, then a normalised linear head."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        blocks: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(in_features, hidden)
        self.blocks = nn.Sequential(*[ResidualBlock(hidden, dropout) for _ in range(blocks)])
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, out_features))

    def forward(self, x):
        return self.head(self.blocks(self.embed(x)))
