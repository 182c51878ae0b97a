"""Multi-layer perceptrons: the paper's TwoMoon network and a small classifier for flat or tiny inputs."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from metapl.parts.models.registry import ModelEntry
from metapl.parts.models.settings import MLPSettings

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
}


class MLP(nn.Module):
    """Flatten → [Linear → (BatchNorm) → activation] × len(hidden) → dropout → Linear(num_classes)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: tuple[int, ...] = (128, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        init_range: float | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; use one of {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size, eps=1e-3, momentum=0.01))
            layers.append(ACTIVATIONS[activation]())
            width = size
        layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        if init_range is not None:  # the paper's TwoMoon init: every weight and bias ~ U(−r, r)
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.uniform_(layer.weight, -init_range, init_range)
                    nn.init.uniform_(layer.bias, -init_range, init_range)
        else:
            for layer in self.net:
                if isinstance(layer, nn.Linear):
                    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5))

    def forward(self, x):
        return self.net(x)


def _create(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0, **options) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes, dropout=dropout, **options)


def _options(cfg) -> dict:
    own: MLPSettings = cfg.settings
    options = {"hidden": tuple(own.hidden), "activation": own.activation, "batch_norm": own.batch_norm}
    if own.init_range > 0:
        options["init_range"] = own.init_range
    return options


MODEL = ModelEntry(_create, _options, settings=MLPSettings)
