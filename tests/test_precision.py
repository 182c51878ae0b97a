"""bf16 autocast on the CPU (train.precision=bf16, the fast setting on CPUs with bf16 instructions): one MPL step's
update stays within a stated tolerance of the exact fp32 update. The fp32 update itself is proven exact in
tests/test_mpl_math.py; this bounds what bf16 changes."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from metapl.core.optim import OptimSettings
from metapl.parts.methods import Batch, FeedbackSettings, MetaPseudoLabels, MPLSettings, TeacherLosses
from metapl.parts.models import create_model
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

# bf16's stated tolerance (docs/performance.md): the relative error ‖Δθ_bf16 − Δθ_fp32‖ / ‖Δθ_fp32‖ of one step's
# update, for either network, and the relative error of the feedback h.
BF16_UPDATE_TOLERANCE = 0.1
BF16_H_TOLERANCE = 0.05


def _step(mpl: MetaPseudoLabels, batch: Batch, bf16: bool) -> dict:
    torch.manual_seed(7)  # the same sampled pseudo labels and dropout masks in both precisions
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return mpl.step(batch, 0)


def _update(before: torch.nn.Module, after: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(a - b).detach().flatten() for a, b in zip(after.parameters(), before.parameters())])


@pytest.mark.parametrize("h", ["dot", "taylor"])
def test_bf16_step_is_within_tolerance_of_fp32(h):
    torch.manual_seed(0)
    teacher, student = (create_model("small_cnn", 10, (1, 28, 28), dropout=0.0, width=8) for _ in range(2))
    g = torch.Generator().manual_seed(1)
    batch = Batch(
        torch.rand(8, 1, 28, 28, generator=g),
        torch.randint(0, 10, (8,), generator=g),
        torch.rand(24, 1, 28, 28, generator=g),
        torch.rand(24, 1, 28, 28, generator=g),
    )
    optim = OptimSettings(lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="constant")
    settings = MPLSettings(FeedbackSettings(h=h, sampling="argmax"), TeacherLosses(uda_ramp_steps=0, uda_threshold=0.0))
    runs = {}
    for bf16 in (False, True):
        mpl = MetaPseudoLabels(
            copy.deepcopy(teacher), copy.deepcopy(student), 10, settings, teacher_optim=optim, student_optim=optim
        )
        metrics = _step(mpl, batch, bf16)
        runs[bf16] = (mpl, metrics)
    (exact, m32), (fast, m16) = runs[False], runs[True]
    for name, initial in (("teacher", teacher), ("student", student)):
        d32, d16 = _update(initial, getattr(exact, name)), _update(initial, getattr(fast, name))
        assert d32.norm() > 0
        error = float((d16 - d32).norm() / d32.norm())
        assert error < BF16_UPDATE_TOLERANCE, (name, error)
    # h is measured after the student's update, in the same autocast region: it must see θ'_S, not the
    # low-precision copies autocast made of θ_S (which gave taylor's h = 0 and flipped dot's sign).
    assert float(m32["h"]) != 0.0
    assert float(m16["h"]) == pytest.approx(float(m32["h"]), rel=BF16_H_TOLERANCE)
    assert float(m16["teacher_loss"]) == pytest.approx(float(m32["teacher_loss"]), rel=2e-2)


# ---------------------------------------------------- whole runs in other layouts and precisions
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
