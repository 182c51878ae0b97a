"""Networks, by name: create_model(name, num_classes, input_shape) builds any registered one.

The names below load on first use, so that the config (which reads models.registry) does not import PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.core.registry import lazy_exports
from metapl.parts.models.registry import MODELS, ModelEntry

if TYPE_CHECKING:
    from metapl.parts.models.cnn import SmallCNN as SmallCNN
    from metapl.parts.models.create import compile_network as compile_network
    from metapl.parts.models.create import create_model as create_model
    from metapl.parts.models.mlp import MLP as MLP
    from metapl.parts.models.wrn import WideResNet as WideResNet

_EXPORTS = {
    "MLP": "metapl.parts.models.mlp",
    "SmallCNN": "metapl.parts.models.cnn",
    "WideResNet": "metapl.parts.models.wrn",
    "compile_network": "metapl.parts.models.create",
    "create_model": "metapl.parts.models.create",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["MODELS", "ModelEntry", *_EXPORTS]
