"""The networks metapl builds, by name (model.name): each one's module defines a ModelEntry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metapl.registry import Registry

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """What a network's pretrained weights expect of its inputs: the image side, channel mean and std ([0, 1] units)."""

    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class ModelEntry:
    """create(num_classes, input_shape, dropout, **options) -> a fresh network; options(model config) -> the
    options the config gives this network (mlp: hidden sizes, activation, ...). With `pretrained`, create also
    takes pretrained= (model.pretrained: a file, or "cache") and pretrained_key= (the config key, for errors),
    and preprocessing(model config) says what those weights expect (None: the data's own normalisation)."""

    create: Callable[..., nn.Module]
    options: Callable[[Any], dict[str, Any]] = lambda cfg: {}
    preprocessing: Callable[[Any], Preprocessing | None] = lambda cfg: None
    pretrained: bool = False


# model.activation's allowed values (mlp): models/mlp.py maps each to its module.
ACTIVATION_NAMES = ("relu", "sigmoid", "tanh", "leaky_relu")

MODELS: Registry[ModelEntry] = Registry(
    "model",
    "model.name",
    {
        "mlp": "metapl.models.mlp:MODEL",
        "small_cnn": "metapl.models.cnn:MODEL",
        "wrn28_2": "metapl.models.wrn:MODEL",
        "resnet50": "metapl.models.resnet:MODEL",
    },
    families={"timm/": "metapl.models.timm_models:MODEL"},  # any timm architecture (docs/scale.md#models)
)


def image_channels(name: str, input_shape: tuple[int, ...]) -> int:
    """The channel count of (C, H, W) inputs; a ValueError for inputs that are not images."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs images (C, H, W); got input shape {input_shape}: use model.name=mlp")
    return input_shape[0]
