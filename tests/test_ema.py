"""The EMA student and the student's wait period, against hand values."""

from __future__ import annotations

import torch
from torch import nn

from metapl import Batch, MetaPseudoLabels, MPLSettings, TeacherLosses
from metapl.core.ema import ModelEMA
from metapl.core.optim import OptimSettings


def test_ema_warm_start_and_buffers():
    linear, bn = nn.Linear(2, 2), nn.BatchNorm1d(2)
    model = nn.Sequential(linear, bn)
    ema = ModelEMA(model, decay=0.999)
    assert bn.running_mean is not None and bn.num_batches_tracked is not None  # BatchNorm tracks running stats
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        bn.running_mean.fill_(4.0)
        bn.num_batches_tracked.fill_(7)
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    ema.update(model, step=0)  # δ = min(0.999, 1/10) = 0.1
    new = {k: v.clone() for k, v in ema.state_dict().items()}
    assert torch.allclose(new["0.weight"], 0.1 * old["0.weight"] + 0.9 * linear.weight)
    assert torch.allclose(new["1.running_mean"], torch.full((2,), 0.9 * 4.0))
    assert new["1.num_batches_tracked"].item() == 7
    ema.update(model, step=10_000)  # δ = 0.999
    assert torch.allclose(ema.state_dict()["1.running_mean"], 0.999 * new["1.running_mean"] + 0.001 * 4.0)


def test_student_wait_period_moves_momentum_bn_and_ema_but_not_weights():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))
    student_bn = nn.BatchNorm1d(8)
    student = nn.Sequential(nn.Linear(3, 8), student_bn, nn.Tanh(), nn.Linear(8, 3))
    mpl = MetaPseudoLabels(
        teacher,
        student,
        3,
        MPLSettings(teacher_losses=TeacherLosses(uda=False)),
        teacher_optim=OptimSettings(lr=0.1, total_steps=10),
        student_optim=OptimSettings(lr=0.1, wait_steps=5, total_steps=10),
        ema_decay=0.9,
    )
    assert mpl.ema is not None and student_bn.running_mean is not None
    params = [p.detach().clone() for p in student.parameters()]
    teacher_params = [p.detach().clone() for p in teacher.parameters()]
    ema_before = {k: v.clone() for k, v in mpl.ema.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batch = Batch(
        torch.randn(6, 3, generator=g),
        torch.randint(0, 3, (6,), generator=g),
        torch.randn(12, 3, generator=g),
        torch.randn(12, 3, generator=g),
    )
    metrics = mpl.step(batch, 0)
    assert metrics["lr_student"] == 0.0 and float(metrics["h"]) == 0.0
    assert all(torch.equal(p, q) for p, q in zip(params, student.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(teacher_params, teacher.parameters()))  # the teacher trains
    state = mpl.student_updater.optimizer.state
    assert all(state[p]["momentum_buffer"].abs().sum() > 0 for p in mpl.student_updater.params)
    assert not torch.equal(student_bn.running_mean, torch.zeros(8))
    assert not torch.equal(mpl.ema.state_dict()["1.running_mean"], ema_before["1.running_mean"])
