"""A model that takes raw images: uint8 (or [0, 1] float) in, per-channel standardised inside.

Keeping the standardisation in the network means batches travel to the GPU as uint8 (a quarter of the bytes),
and evaluation, `metapl predict` and exported models need no knowledge of the data set's statistics.
"""

from __future__ import annotations

import torch
from torch import nn


class Standardized(nn.Module):
    """`net` applied to (x / 255 − mean) / std for uint8 x, or (x − mean) / std for x already in [0, 1]."""

    net: nn.Module
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255.0
        return self.net((x - self.mean) / self.std)
