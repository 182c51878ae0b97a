"""The networks metapl builds, by name (model.name): each one's module defines a ModelEntry, whose settings
dataclass (parts/models/settings.py for metapl's own, torch-free) holds the network's own keys of the `model` section.

Adding a model: its module (a network and `MODEL = ModelEntry(create, settings=MySettings)`: create receives the
settings' keys as keyword options) and one line in the table below; metapl's own models also name their settings
class in the torch-free settings table, so that the config is built without importing PyTorch."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metapl.core.registry import Registry
from metapl.parts.models.settings import ACTIVATION_NAMES as ACTIVATION_NAMES

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
    options the config gives this network (default: its own settings' keys, model config's `settings`). With
    `pretrained`, create also takes pretrained= (model.pretrained: a file, or "cache") and pretrained_key= (the
    config key, for errors), and preprocessing(model config) says what those weights expect (None: the data's own
    normalisation). `settings`: the dataclass of the network's own keys (model.hidden); None: it has none."""

    create: Callable[..., nn.Module]
    options: Callable[[Any], dict[str, Any]] = lambda cfg: own_options(cfg)
    preprocessing: Callable[[Any], Preprocessing | None] = lambda cfg: None
    pretrained: bool = False
    settings: type | None = None


def own_options(model_cfg: Any) -> dict[str, Any]:
    """The network's own settings as create's keyword options."""
    return dataclasses.asdict(model_cfg.settings)


MODELS: Registry[ModelEntry] = Registry(
    "model",
    "model.name",
    {
        "mlp": "metapl.parts.models.mlp:MODEL",
        "small_cnn": "metapl.parts.models.cnn:MODEL",
        "wrn28_2": "metapl.parts.models.wrn:MODEL",
        "resnet50": "metapl.parts.models.resnet:MODEL",
    },
    families={"timm/": "metapl.parts.models.timm_models:MODEL"},  # any timm architecture (docs/scale.md#models)
    settings={  # each one's settings, torch-free (the same classes as their entries': tests check it)
        "mlp": "metapl.parts.models.settings:MLPSettings",
        "small_cnn": "metapl.parts.models.settings:SmallCNNSettings",
        "wrn28_2": "metapl.core.settings:NoSettings",
        "resnet50": "metapl.core.settings:NoSettings",
    },
)


def image_channels(name: str, input_shape: tuple[int, ...]) -> int:
    """The channel count of (C, H, W) inputs; a ValueError for inputs that are not images."""
    if len(input_shape) != 3:
        raise ValueError(f"{name} needs images (C, H, W); got input shape {input_shape}: use model.name=mlp")
    return input_shape[0]
