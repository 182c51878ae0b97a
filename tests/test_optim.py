"""The optimiser's parts against hand values: the schedule, LR scaling, weight decay, clipping, fp16 loss scaling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from metapl.core.optim import OptimSettings, Updater, lr_at
from metapl.parts.data import build_data
from metapl.parts.methods.base import TwoModelMethod
from metapl.run.build import build_method
from metapl.run.config import build_config


def test_cosine_schedule_with_wait_and_warmup():
    s = OptimSettings(lr=0.4, wait_steps=10, warmup_steps=5, total_steps=115, schedule="cosine")
    assert [lr_at(s, t) for t in (0, 9)] == [0.0, 0.0]
    assert lr_at(s, 10) == pytest.approx(0.4 * 1 / 5) and lr_at(s, 14) == pytest.approx(0.4)
    assert lr_at(s, 15) == pytest.approx(0.4)  # cosine starts at the peak
    assert lr_at(s, 65) == pytest.approx(0.2)  # half way through the 100 cosine steps
    assert lr_at(s, 115) == pytest.approx(0.0, abs=1e-12) and lr_at(s, 500) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(OptimSettings(lr=0.3, schedule="constant", warmup_steps=2), 50) == 0.3


def test_peak_lr_scales_with_batch_over_256():
    cfg = build_config("digits", ["train.scale_lr=true", "data.batch_size=64", "teacher.lr=0.1"])
    method = build_method(cfg, build_data(cfg.data, 0), torch.device("cpu"))
    assert isinstance(method, TwoModelMethod)
    assert method.teacher_updater.settings.lr == pytest.approx(0.1 * 64 / 256)


def test_weight_decay_skips_batchnorm_and_clipping_bounds_the_norm():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    updater = Updater(model, OptimSettings(lr=1.0, momentum=0.0, weight_decay=0.5, grad_clip=0.0, schedule="constant"))
    updater.set_step(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    updater.apply([torch.zeros_like(p) for p in updater.params])
    for name, p in model.named_parameters():
        expected = before[name] if name.startswith("1.") else before[name] * 0.5  # θ − lr·wd·θ
        assert torch.allclose(p, expected), name
    clipped = Updater(model, OptimSettings(lr=1.0, momentum=0.0, grad_clip=1.0, schedule="constant"))
    clipped.set_step(0)
    start = [p.detach().clone() for p in clipped.params]
    norm = clipped.apply([torch.full_like(p, 10.0) for p in clipped.params])
    moved = torch.sqrt(
        sum((((p.detach() - s) ** 2).sum() for p, s in zip(clipped.params, start)), torch.zeros(()))
    ).item()
    assert norm > 1.0 and moved == pytest.approx(1.0, rel=1e-4)


def test_fp16_loss_scale_skips_an_overflowing_step_and_halves():
    model = nn.Linear(2, 1)
    updater = Updater(model, OptimSettings(lr=0.1, fp16_loss_scale=True, schedule="constant"))
    updater.set_step(0)
    before = [p.detach().clone() for p in model.parameters()]
    updater.apply([torch.full_like(p, math.inf) for p in updater.params])
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))
    assert updater.loss_scale == 2.0**15
    loss = model(torch.ones(1, 2)).sum()
    grads = updater.gradients(loss)  # unscaled again: the plain gradient
    assert torch.allclose(grads[0], torch.ones(1, 2))


def test_adam_update_equals_textbook_adam_after_decay_and_clipping():
    """optimizer=adam: g + wd·θ (not on norm layers) and the global-norm clip as for SGD, then Adam's bias-corrected
    step with β1 = momentum; the step's size does not follow the gradient's scale (why R's search tries it)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    settings = OptimSettings(
        optimizer="adam", lr=0.01, momentum=0.8, beta2=0.99, eps=1e-6, weight_decay=0.05, grad_clip=0.5
    )
    updater = Updater(model, settings)
    assert isinstance(updater.optimizer, torch.optim.Adam)
    updater.set_step(0)
    lr = updater.lr
    params = [p.detach().clone() for p in updater.params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t in range(1, 4):
        grads = [torch.randn_like(p) for p in params]
        updater.apply(grads)
        decayed = [g + 0.05 * p if i < updater._num_decay else g for i, (g, p) in enumerate(zip(grads, params))]
        norm = torch.sqrt(sum(((d**2).sum() for d in decayed), torch.zeros(())))
        clipped = [d * min(1.0, 0.5 / (float(norm) + 1e-6)) for d in decayed]
        for i, d in enumerate(clipped):
            m[i] = 0.8 * m[i] + 0.2 * d
            v[i] = 0.99 * v[i] + 0.01 * d * d
            step = lr * (m[i] / (1 - 0.8**t)) / ((v[i] / (1 - 0.99**t)).sqrt() + 1e-6)
            params[i] = params[i] - step
        for p, expected in zip(updater.params, params):
            assert torch.allclose(p.detach(), expected, rtol=1e-5, atol=1e-7)

    # Scale-free: gradients 1e-6 times as large move the weights as far (up to eps) at the first step.
    moved = []
    for scale in (1.0, 1e-6):
        torch.manual_seed(5)
        net = nn.Linear(3, 2)
        adam = Updater(net, OptimSettings(optimizer="adam", lr=0.01, eps=1e-12, schedule="constant"))
        adam.set_step(0)
        before = [p.detach().clone() for p in adam.params]
        adam.apply([torch.full_like(p, scale) for p in adam.params])
        moved.append(sum(float((p.detach() - b).abs().sum()) for p, b in zip(adam.params, before)))
    assert moved[1] == pytest.approx(moved[0], rel=1e-3) and moved[0] > 0
