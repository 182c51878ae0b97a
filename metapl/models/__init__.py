"""Model registry: create_model(name, num_classes, ...) builds the networks the presets name."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from metapl.models.cnn import SmallCNN
from metapl.models.mlp import MLP


def _mlp(num_classes: int, input_shape: tuple[int, ...], dropout: float, **options) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes, dropout=dropout, **options)


def _small_cnn(num_classes: int, input_shape: tuple[int, ...], dropout: float, **options) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"small_cnn needs images (C, H, W); got input shape {input_shape}: use model.name=mlp")
    return SmallCNN(input_shape[0], num_classes, dropout=dropout, **options)


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": _mlp, "small_cnn": _small_cnn}


def create_model(
    name: str, num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0, **options
) -> nn.Module:
    """A fresh network `name` for inputs of `input_shape` (without the batch dimension) and `num_classes` outputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, tuple(input_shape), dropout, **options)


__all__ = ["MLP", "MODELS", "SmallCNN", "create_model"]
