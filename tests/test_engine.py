"""Schedules, the student's wait period, EMA, loss scaling and the speed switches, each against a hand value."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from metapl import Batch, MetaPseudoLabels, MPLSettings
from metapl.build import build_method
from metapl.config import build_config
from metapl.data import build_data
from metapl.ema import ModelEMA
from metapl.errors import ConfigError
from metapl.experiment import run_experiment
from metapl.optim import OptimSettings, Updater, lr_at


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
    moved = torch.sqrt(sum(((p.detach() - s) ** 2).sum() for p, s in zip(clipped.params, start))).item()
    assert norm > 1.0 and moved == pytest.approx(1.0, rel=1e-4)


def test_student_wait_period_moves_momentum_bn_and_ema_but_not_weights():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3))
    student = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    mpl = MetaPseudoLabels(
        teacher,
        student,
        3,
        MPLSettings(uda=False),
        teacher_optim=OptimSettings(lr=0.1, total_steps=10),
        student_optim=OptimSettings(lr=0.1, wait_steps=5, total_steps=10),
        ema_decay=0.9,
    )
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
    assert not torch.equal(student[1].running_mean, torch.zeros(8))
    assert not torch.equal(mpl.ema.state_dict()["1.running_mean"], ema_before["1.running_mean"])


def test_ema_warm_start_and_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.999)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.fill_(4.0)
        model[1].num_batches_tracked.fill_(7)
    old = {k: v.clone() for k, v in ema.state_dict().items()}
    ema.update(model, step=0)  # δ = min(0.999, 1/10) = 0.1
    new = {k: v.clone() for k, v in ema.state_dict().items()}
    assert torch.allclose(new["0.weight"], 0.1 * old["0.weight"] + 0.9 * model[0].weight)
    assert torch.allclose(new["1.running_mean"], torch.full((2,), 0.9 * 4.0))
    assert new["1.num_batches_tracked"].item() == 7
    ema.update(model, step=10_000)  # δ = 0.999
    assert torch.allclose(ema.state_dict()["1.running_mean"], 0.999 * new["1.running_mean"] + 0.001 * 4.0)


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


def _losses(tmp_path, name, *overrides):
    cfg = build_config(
        "digits",
        [
            "train.steps=6",
            "train.log_every=1",
            "train.eval_every=0",
            "model.name=small_cnn",
            "model.width=8",
            *overrides,
        ],
        "uda",
    )
    run_experiment(cfg, tmp_path / name, progress=False, tensorboard=False)
    records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["phase"] == "train"]


def test_channels_last_and_bf16_train_like_fp32(tmp_path):
    reference = _losses(tmp_path, "fp32")
    assert _losses(tmp_path, "nhwc", "train.channels_last=true") == pytest.approx(reference, rel=1e-4)
    bf16 = _losses(tmp_path, "bf16", "train.precision=bf16")
    assert bf16 != reference and bf16 == pytest.approx(reference, rel=0.1)


@pytest.mark.slow
def test_compile_trains_like_eager(tmp_path):
    cfg = ["train.steps=4", "train.log_every=1", "train.eval_every=0"]
    runs = {}
    for name, extra in (("eager", []), ("compiled", ["train.compile=true"])):
        run_experiment(
            build_config("twomoon", cfg + extra, "supervised"), tmp_path / name, progress=False, tensorboard=False
        )
        runs[name] = [
            json.loads(x)["loss"]
            for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
            if json.loads(x)["phase"] == "train"
        ]
    assert runs["compiled"] == pytest.approx(runs["eager"], rel=1e-5)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.precision=fp16", "needs a CUDA GPU"),
        ("train.sync_bn=true", "needs torchrun with several CUDA processes"),
    ],
)
def test_switches_that_need_a_gpu_are_refused_on_cpu(tmp_path, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        run_experiment(
            build_config("twomoon", ["train.steps=2", override]), tmp_path, progress=False, tensorboard=False
        )


@pytest.mark.slow
def test_torchrun_two_processes_only_rank0_writes(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "metapl",
            "train",
            "--preset",
            "twomoon",
            "--set",
            "train.steps=12",
            "--set",
            "train.eval_every=6",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("run directory:") == 1
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "train_eval"] == [6, 12]  # one writer, no duplicates
    assert json.loads((out / "summary.json").read_text())["train_steps"] == 12
