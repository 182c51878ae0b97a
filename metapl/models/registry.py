"""The networks metapl builds, by name (model.name): each one's module defines a ModelEntry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metapl.registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """create(num_classes, input_shape, dropout, **options) -> a fresh network; options(model config) -> the
    options the config gives this network (mlp: hidden sizes, activation, ...)."""

    create: Callable[..., nn.Module]
    options: Callable[[Any], dict[str, Any]] = lambda cfg: {}


MODELS: Registry[ModelEntry] = Registry(
    "model",
    "model.name",
    {
        "mlp": "metapl.models.mlp:MODEL",
        "small_cnn": "metapl.models.cnn:MODEL",
        "wrn28_2": "metapl.models.wrn:MODEL",
        "resnet50": "metapl.models.resnet:MODEL",
    },
)


def image_channels(name: str, input_shape: tuple[int, ...]) -> int:
    """The channel count of (C, H, W) inputs; a ValueError for inputs that are not images."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs images (C, H, W); got input shape {input_shape}: use model.name=mlp")
    return input_shape[0]
