"""Model registry: create_model(name, num_classes, ...) builds the networks the presets name."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from metapl.models.cnn import SmallCNN
from metapl.models.mlp import MLP
from metapl.models.wrn import WideResNet


def _mlp(num_classes: int, input_shape: tuple[int, ...], dropout: float, **options) -> nn.Module:
    return MLP(math.prod(input_shape), num_classes, dropout=dropout, **options)


def _small_cnn(num_classes: int, input_shape: tuple[int, ...], dropout: float, **options) -> nn.Module:
    return SmallCNN(_images("small_cnn", input_shape), num_classes, dropout=dropout, **options)


def _images(name: str, input_shape: tuple[int, ...]) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs images (C, H, W); got input shape {input_shape}: use model.name=mlp")
    return input_shape[0]


def _wrn28_2(num_classes: int, input_shape: tuple[int, ...], dropout: float, **options) -> nn.Module:
    return WideResNet(num_classes, depth=28, widen=2, dropout=dropout, in_channels=_images("wrn28_2", input_shape))


def _resnet50(num_classes: int, input_shape: tuple[int, ...], dropout: float, **options) -> nn.Module:
    """torchvision's ResNet-50 (spec §6.2), randomly initialised, with dropout before the final dense layer."""
    from torchvision.models import resnet50

    _images("resnet50", input_shape)
    model = resnet50(weights=None, num_classes=num_classes)
    model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "small_cnn": _small_cnn,
    "wrn28_2": _wrn28_2,
    "resnet50": _resnet50,
}


def create_model(
    name: str, num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0, **options
) -> nn.Module:
    """A fresh network `name` for inputs of `input_shape` (without the batch dimension) and `num_classes` outputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes, tuple(input_shape), dropout, **options)


def compile_network(net: nn.Module) -> None:
    """torch.compile in place, one static graph per input shape. A student sees μB-image and B-image batches
    every step; by default the second shape would recompile the network into one dynamic-shape graph, whose
    kernels cannot specialise on the batch size. A run has only a few shapes, so each gets its own graph."""
    net.compile(dynamic=False)


__all__ = ["MLP", "MODELS", "SmallCNN", "WideResNet", "compile_network", "create_model"]
