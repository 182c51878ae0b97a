"""torchvision's ResNet-50 (docs/method.md#architectures), randomly initialised, with dropout before the last layer."""

from __future__ import annotations

from torch import nn

from metapl.parts.models.registry import ModelEntry, image_channels


def resnet50(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
    from torchvision.models import resnet50 as torchvision_resnet50

    image_channels("resnet50", input_shape)
    model = torchvision_resnet50(weights=None, num_classes=num_classes)
    model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


MODEL = ModelEntry(resnet50)
