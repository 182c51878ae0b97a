"""WRN-28-k, the official MPL variant (docs/method.md#wrn28-2): 32-channel stem, LeakyReLU(0.2), BN eps 1e-3 / momentum 0.01."""

from __future__ import annotations

import math

import torch
from torch import nn

from metapl.parts.models.registry import ModelEntry, image_channels


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TF decay 0.99


def _act() -> nn.LeakyReLU:
    # In place: every input is a fresh BN output that nothing else reads, and autograd then keeps one tensor
    # (the result) per activation instead of two: about a third less activation memory in MPL's step.
    return nn.LeakyReLU(0.2, inplace=True)


class PreActBlock(nn.Module):
    """BN → LeakyReLU → conv3×3(stride) → BN → LeakyReLU → conv3×3, plus the residual. When the width or the
    stride changes, the residual is a strided 1×1 conv of the activated, normalised input; else the input itself."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.act1 = _bn(c_in), _act()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.act2 = _bn(c_out), _act()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.project = None
        if stride != 1 or c_in != c_out:
            self.project = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.act1(self.bn1(x))
        residual = x if self.project is None else self.project(activated)
        out = self.conv1(activated)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv to 16k channels, 3 stages of (depth − 4)/6 blocks (widths 16k, 32k, 64k; strides
    1, 2, 2), then BN → LeakyReLU → global average pool → dropout → linear."""

    def __init__(self, num_classes: int, depth: int = 28, widen: int = 2, dropout: float = 0.0, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth {depth} must be 6n + 4 (e.g. 28)")
        blocks = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks):
                layers.append(PreActBlock(c_in, width, stride=2 if stage > 0 and i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.head_bn, self.head_act = _bn(c_in), _act()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)
        self._init(num_classes)

    def _init(self, num_classes: int) -> None:
        """The official initialisation: conv ~ N(0, sqrt(2 / (k·k·C_out))), dense ~ U(±1/sqrt(K)), biases 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (k * k * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        bound = 1.0 / math.sqrt(num_classes)
        nn.init.uniform_(self.fc.weight, -bound, bound)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head_act(self.head_bn(self.blocks(self.stem(x))))
        return self.fc(self.dropout(out.mean(dim=(2, 3))))


def _create(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
    return WideResNet(
        num_classes, depth=28, widen=2, dropout=dropout, in_channels=image_channels("wrn28_2", input_shape)
    )


MODEL = ModelEntry(_create)
