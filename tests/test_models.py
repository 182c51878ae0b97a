"""Models: WRN-28-2 is the official variant of docs/method.md#wrn28-2; ResNet-50 and the small networks build and run."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metapl.core.optim import split_decay_parameters
from metapl.parts.models import create_model
from metapl.parts.models.wrn import WideResNet


def test_wrn28_2_matches_the_official_variant():
    torch.manual_seed(0)
    model = create_model("wrn28_2", num_classes=10, input_shape=(3, 32, 32), dropout=0.2)
    assert isinstance(model, WideResNet)
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(1.45e6, rel=0.02)  # the paper's "1.45M"; this variant has 1,472,170
    assert model.stem.out_channels == 32  # 16k with k = 2, not the usual 16
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    assert len([m for m in model.modules() if isinstance(m, nn.LeakyReLU)]) == 2 * 12 + 1
    assert all(m.negative_slope == 0.2 for m in model.modules() if isinstance(m, nn.LeakyReLU))
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert sum(m.project is not None for m in model.blocks) == 2  # only where width and stride change
    big = max(convs, key=lambda m: m.weight.numel())
    assert big.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * big.out_channels)), rel=0.05)
    assert model.fc.weight.abs().max() <= 1 / math.sqrt(10) and torch.all(model.fc.bias == 0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    decay, no_decay = split_decay_parameters(model)
    assert len(no_decay) == 2 * len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert any(p is model.fc.bias for p in decay)  # the dense bias is decayed, as in the official code


def test_resnet50_has_dropout_before_its_head():
    model = create_model("resnet50", num_classes=100, input_shape=(3, 64, 64), dropout=0.1)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(23.7e6, rel=0.01)  # 25.5M at 1,000 classes
    head = model.fc
    assert isinstance(head, nn.Sequential) and isinstance(head[0], nn.Dropout) and head[0].p == 0.1
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 100)


def test_image_models_refuse_flat_inputs():
    for name in ("wrn28_2", "resnet50", "small_cnn"):
        with pytest.raises(ValueError, match="needs images"):
            create_model(name, num_classes=2, input_shape=(2,))


@pytest.mark.parametrize("feedback", ["hard", "soft", "official"])
def test_one_mpl_step_on_wrn28_2(feedback):
    from metapl import Batch, FeedbackSettings, MetaPseudoLabels, MPLSettings

    torch.manual_seed(0)
    teacher, student = (create_model("wrn28_2", 10, (3, 32, 32), dropout=0.2) for _ in range(2))
    mpl = MetaPseudoLabels(teacher, student, 10, MPLSettings(FeedbackSettings(mode=feedback)), ema_decay=0.995)
    x = torch.randn(6, 3, 32, 32)
    metrics = mpl.step(Batch(x[:2], torch.tensor([0, 1]), x[2:], x[2:].flip(-1)), 0)
    assert all(torch.isfinite(torch.as_tensor(float(v))) for v in metrics.values())
