"""A small CNN for tiny grey images (8×8 digits, 28×28 Fashion-MNIST) that trains in minutes on a CPU."""

from __future__ import annotations

from torch import nn

from metapl.parts.models.registry import ModelEntry, image_channels
from metapl.parts.models.settings import SmallCNNSettings


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01),
        nn.LeakyReLU(0.2, inplace=True),  # on a fresh BN output: autograd keeps the result alone
    ]


class SmallCNN(nn.Module):
    """conv-conv-pool → conv-conv-pool → global average pool → dropout → linear (BN eps 1e-3, momentum 0.01)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, width),
            *_conv_block(width, width),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width),
            *_conv_block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * width, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.2)

    def forward(self, x):
        return self.head(self.features(x))


def _create(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0, **options) -> nn.Module:
    return SmallCNN(image_channels("small_cnn", input_shape), num_classes, dropout=dropout, **options)


MODEL = ModelEntry(_create, settings=SmallCNNSettings)  # its options: the settings' width
