"""The teacher's auxiliary losses against hand computations (docs/method.md#aux-losses), and the teacher's whole update with them on."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metapl import Batch, FeedbackSettings, MetaPseudoLabels, MPLSettings, OptimSettings, TeacherLosses
from metapl.core.losses import linear_ramp, smoothed_cross_entropy, tsa_mask, tsa_threshold, uda_consistency
from metapl.parts.methods.uda import UDASettings, auxiliary_losses


def test_uda_masks_on_the_sharpened_target_and_divides_by_all():
    weak = torch.tensor([[2.0, 0.0, 0.0], [0.3, 0.0, 0.0]])
    strong = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    loss, mask = uda_consistency(weak, strong, temperature=0.5, threshold=0.6)
    sharp = F.softmax(weak / 0.5, dim=-1)
    assert sharp[0].max() > 0.6 and F.softmax(weak, -1)[1].max() < 0.6 and sharp[1].max() < 0.6
    assert mask.tolist() == [1.0, 0.0]
    expected = -(sharp[0] * F.log_softmax(strong[0], -1)).sum() / 2  # the denominator counts the masked example too
    assert loss == pytest.approx(expected.item())


def test_uda_target_carries_no_gradient():
    weak = torch.randn(4, 3, requires_grad=True)
    strong = torch.randn(4, 3, requires_grad=True)
    loss, _ = uda_consistency(weak, strong, temperature=0.7, threshold=0.0)
    loss.backward()
    assert weak.grad is None and strong.grad is not None and strong.grad.abs().sum() > 0


def test_tsa_threshold_and_mask():
    assert tsa_threshold("linear", 0, 100, 10) == pytest.approx(0.1)
    assert tsa_threshold("linear", 50, 100, 10) == pytest.approx(0.55)
    assert tsa_threshold("exp", 100, 100, 10) == pytest.approx(1.0)
    assert tsa_threshold("log", 0, 100, 4) == pytest.approx(0.25)
    logits = torch.tensor([[5.0, 0.0], [0.0, 0.0]])
    assert tsa_mask(logits, torch.tensor([0, 0]), 0.6).tolist() == [0.0, 1.0]  # confident example dropped
    masked = smoothed_cross_entropy(logits, torch.tensor([0, 0]), 0.0, torch.tensor([0.0, 1.0]))
    assert masked == pytest.approx(math.log(2) / 2)


def test_uda_weight_ramps_linearly():
    assert [linear_ramp(t, 100) for t in (0, 50, 100, 400)] == [0.0, 0.5, 1.0, 1.0]
    settings = UDASettings(uda_weight=8.0, uda_ramp_steps=100, uda_threshold=0.0)
    z = torch.randn(4, 3)
    _, metrics = auxiliary_losses(z, torch.tensor([0, 1, 2, 0]), z, z + 1, 25, settings, total_steps=1000)
    assert metrics["uda_weight"] == pytest.approx(2.0)


def test_teacher_update_is_aux_gradient_plus_feedback_term():
    """With L_sup and L_UDA on, θ_T moves by −η_T·∇(L_sup + λ·L_UDA + (h − b)·CE(ŷ, T(x_u_strong)))."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    student = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    plain = OptimSettings(lr=0.5, momentum=0.0, schedule="constant", total_steps=10)
    settings = MPLSettings(
        FeedbackSettings(sampling="argmax"),
        TeacherLosses(label_smoothing=0.1, uda_weight=3.0, uda_ramp_steps=0, uda_threshold=0.0, uda_temperature=0.8),
    )
    mpl = MetaPseudoLabels(teacher, student, 3, settings, teacher_optim=plain, student_optim=plain)
    g = torch.Generator().manual_seed(3)
    x_l = torch.randn(4, 3, generator=g, dtype=torch.float64)
    y_l = torch.randint(0, 3, (4,), generator=g)
    x_u = torch.randn(8, 3, generator=g, dtype=torch.float64)
    batch = Batch(x_l, y_l, x_u, x_u + 0.1 * torch.randn(8, 3, generator=g, dtype=torch.float64))
    reference = copy.deepcopy(teacher)
    metrics = mpl.step(batch, 0)
    h, b = float(metrics["h"]), float(metrics["baseline"])
    assert h != 0.0

    z_l, z_w, z_s = reference(torch.cat([batch.x_l, *batch.unlabeled()])).split([4, 8, 8])
    sup = F.cross_entropy(z_l, batch.y_l, label_smoothing=0.1)
    uda, _ = uda_consistency(z_w, z_s, 0.8, 0.0)
    pseudo = z_s.detach().argmax(-1)
    total = sup + 3.0 * uda + (h - b) * F.cross_entropy(z_s, pseudo)
    grads = torch.autograd.grad(total, list(reference.parameters()))
    for p_new, p_old, grad in zip(teacher.parameters(), reference.parameters(), grads):
        torch.testing.assert_close(p_new, p_old - 0.5 * grad, rtol=1e-10, atol=1e-12)
