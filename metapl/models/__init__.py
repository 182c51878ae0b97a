"""Networks, by name: create_model(name, num_classes, input_shape) builds any registered one.

The names below load on first use, so that the config (which reads models.registry) does not import PyTorch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metapl.models.registry import MODELS, ModelEntry

if TYPE_CHECKING:
    from metapl.models.cnn import SmallCNN as SmallCNN
    from metapl.models.create import compile_network as compile_network
    from metapl.models.create import create_model as create_model
    from metapl.models.mlp import MLP as MLP
    from metapl.models.wrn import WideResNet as WideResNet

_EXPORTS = {
    "MLP": "metapl.models.mlp",
    "SmallCNN": "metapl.models.cnn",
    "WideResNet": "metapl.models.wrn",
    "compile_network": "metapl.models.create",
    "create_model": "metapl.models.create",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MODELS", "ModelEntry", *_EXPORTS]
