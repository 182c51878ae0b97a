"""create_model(name, num_classes, input_shape) builds any registered network; compile_network compiles one."""

from __future__ import annotations

from torch import nn

from metapl.parts.models.registry import MODELS


def create_model(
    name: str, num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0, **options
) -> nn.Module:
    """A fresh network `name` for inputs of `input_shape` (without the batch dimension) and `num_classes` outputs."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS.names())}")
    return MODELS.get(name).create(num_classes, tuple(input_shape), dropout, **options)


def compile_network(net: nn.Module) -> None:
    """torch.compile in place, one static graph per input shape. A student sees μB-image and B-image batches
    every step; by default the second shape would recompile the network into one dynamic-shape graph, whose
    kernels cannot specialise on the batch size. A run has only a few shapes, so each gets its own graph."""
    net.compile(dynamic=False)
