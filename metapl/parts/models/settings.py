"""The models' own settings: each network's keys of the config's `model` section beside the shared ones
(config.ModelConfig), as dataclasses that declare their defaults, allowed values and size keys (metapl/core/settings.py).
Torch-free, so that the config (and `metapl config`) is built without importing PyTorch; each model's module puts
its class on its ModelEntry, and parts/models/registry.py names it in MODELS' settings table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from metapl.core.settings import at_least, choice, ranged

# model.activation's allowed values (mlp): parts/models/mlp.py maps each to its module.
ACTIVATION_NAMES = ("relu", "sigmoid", "tanh", "leaky_relu")


@dataclass
class MLPSettings:
    """model.name=mlp."""

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("hidden",)

    hidden: list[int] = ranged(
        rule=lambda v: len(v) >= 1 and all(h >= 1 for h in v),
        allowed="a list of positive sizes",
        default_factory=lambda: [128, 128],
    )
    activation: str = choice("relu", ACTIVATION_NAMES)
    batch_norm: bool = False
    init_range: float = at_least(0, 0.0, " (0: default init)")  # > 0 draws every weight and bias from U(−r, r)


@dataclass
class SmallCNNSettings:
    """model.name=small_cnn."""

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("width",)

    width: int = at_least(1, 32)  # channels of the first block (the second has twice as many)
