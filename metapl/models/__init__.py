"""Networks, by name: create_model(name, num_classes, input_shape) builds any registered one.

The names below load on first use, so that the config (which reads models.registry) does not import PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.models.registry import MODELS, ModelEntry
from metapl.registry import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["MODELS", "ModelEntry", *_EXPORTS]
