"""Reduced MPL (parts/methods/reduced_mpl.py): the reduced teacher's update is the exact meta-gradient (soft) or
(h − b)·∇CE(ŷ, R(p)) (hard), computed here independently in float64 as tests/test_mpl_math.py does for MPL; the
controls (shuffled h, no feedback) do what they say; a run killed with SIGKILL resumes bit for bit.

The reduced teacher R maps a stored distribution p to logits; the student sees the images. The teacher's gradient is
recovered from one plain-SGD step as (θ_R before − θ_R after) / η_R.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import kill_when, mid_train, saved_state
from test_mpl_math import BU, B, K, flat, fwd, grad, hand_h, make_batch, mlp, params, plain, rel_err, unflatten
from torch import nn

from metapl.core.errors import ConfigError
from metapl.core.losses import smoothed_cross_entropy
from metapl.parts.methods import METHODS, StoredBatch
from metapl.parts.methods.reduced_mpl import (
    ReducedMetaPseudoLabels,
    ReducedMPLSettings,
    ReducedTeacher,
    teacher_confusion,
)
from metapl.parts.methods.settings import FeedbackSettings, from_flat
from metapl.run.config import build_config

HIDDEN = 5


# ---------------------------------------------------------------------------------------------- helpers
def make_models(seed: int, student: dict | None = None) -> tuple[ReducedTeacher, nn.Module]:
    """A reduced teacher moved off its identity start (so that every weight has a gradient) and a student."""
    torch.manual_seed(seed)
    teacher = ReducedTeacher(K, HIDDEN)
    last = teacher.mlp[-1]
    assert isinstance(last, nn.Linear)
    nn.init.normal_(last.weight, std=0.5)
    nn.init.normal_(last.bias, std=0.5)
    return teacher, mlp(**(student or {}))


def stored_batch(seed: int) -> StoredBatch:
    """test_mpl_math's batch plus stored distributions of its labeled and unlabeled images."""
    batch = make_batch(seed)
    g = torch.Generator().manual_seed(seed + 1000)
    p_l = F.softmax(2 * torch.randn(B, K, generator=g), -1)
    p_u = F.softmax(2 * torch.randn(BU, K, generator=g), -1)
    return StoredBatch(batch.x_l, batch.y_l, batch.x_u_weak, batch.x_u_strong, p_l=p_l, p_u=p_u)


def make_method(teacher, student, lr_t=1.0, lr_s=0.5, teacher_optim=None, **settings) -> ReducedMetaPseudoLabels:
    return ReducedMetaPseudoLabels(
        teacher,
        student,
        K,
        from_flat(ReducedMPLSettings, **settings),
        teacher_optim=teacher_optim or plain(lr_t),
        student_optim=plain(lr_s),
    )


def step_and_teacher_grad(method, batch, lr_t: float, step: int = 0):
    before = flat(params(method.teacher).values())
    metrics = method.step(batch, step)
    return metrics, (before - flat(params(method.teacher).values())) / lr_t


def soft_objective(teacher, student, r_state, s_state, batch, lr_s, create_graph=False):
    """f(θ_R) = L_l(θ_S − η_S ∇_θS L_u(θ_R, θ_S)), L_u the soft CE of S(x_u_strong) against softmax(R(p_u))."""
    target = F.softmax(fwd(teacher, r_state, batch.p_u), dim=-1)
    loss_u = -(target * F.log_softmax(fwd(student, s_state, batch.x_u_strong), dim=-1)).sum(-1).mean()
    g_u = grad(loss_u, s_state, create_graph=create_graph)
    theta_new = {n: p - lr_s * g for (n, p), g in zip(s_state.items(), g_u)}
    return F.cross_entropy(fwd(student, theta_new, batch.x_l), batch.y_l)


def supervised_objective(teacher, r_state, batch, weight, smoothing=0.0):
    return weight * smoothed_cross_entropy(fwd(teacher, r_state, batch.p_l), batch.y_l, smoothing)


# ---------------------------------------------------------------------------------------------- exactness
SOFT_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": dict(),
    "student_batchnorm": dict(student=dict(batch_norm=True)),
    "with_supervised_loss": dict(weight=0.7),
}


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("variant", list(SOFT_VARIANTS))
def test_soft_reduced_teacher_gradient_is_exact_meta_gradient(variant):
    """soft: R's update is ∇_θR [L_l(θ_S − η_S∇L_u(θ_R, θ_S)) + w·CE(R(p_l), y_l)], by autograd through the student's
    step (create_graph) and by central finite differences, in float64."""
    spec = SOFT_VARIANTS[variant]
    weight = spec.get("weight", 0.0)
    lr_t, lr_s = 1.0, 0.7
    teacher, student = make_models(3, spec.get("student"))
    batch = stored_batch(4)
    teacher0, student0 = copy.deepcopy(teacher), copy.deepcopy(student)
    method = make_method(teacher, student, lr_t, lr_s, feedback="soft", supervised_weight=weight)

    _, teacher_grad = step_and_teacher_grad(method, batch, lr_t)
    assert torch.linalg.vector_norm(teacher_grad) > 1e-4

    r_state, s_state = params(teacher0, True), params(student0, True)
    f = soft_objective(teacher0, student0, r_state, s_state, batch, lr_s, create_graph=True)
    f = f + supervised_objective(teacher0, r_state, batch, weight)
    autograd_grad = flat(grad(f, r_state))
    assert rel_err(teacher_grad, autograd_grad) < 1e-9

    theta = flat(params(teacher0).values())

    def f_of(vector):
        state = unflatten(vector, r_state)
        value = soft_objective(teacher0, student0, state, params(student0, True), batch, lr_s)
        return float((value + supervised_objective(teacher0, state, batch, weight)).detach())

    eps = 1e-6
    fd = torch.tensor([(f_of(theta + eps * e) - f_of(theta - eps * e)) / (2 * eps) for e in torch.eye(theta.numel())])
    assert rel_err(teacher_grad, fd) < 1e-5
    # every layer of the MLP took part (the first one too, through the moved last layer)
    assert all(g.abs().max() > 0 for g in unflatten(teacher_grad, r_state).values())


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("baseline", [False, True])
@pytest.mark.parametrize("kind", ["dot", "cosine", "taylor"])
def test_hard_reduced_teacher_gradient_is_h_times_ce_gradient(kind, baseline):
    """hard: the student learns ŷ ~ softmax(R(p_u)) and R's gradient is (h − b)·∇_θR CE(ŷ, R(p_u)) for that ŷ, with h
    from hand-built flattened gradients."""
    lr_t, lr_s, seed = 1.0, 0.4, 122
    teacher, student = make_models(11)
    batch = stored_batch(12)
    assert batch.p_u is not None
    teacher0, student0 = copy.deepcopy(teacher), copy.deepcopy(student)
    r_state = params(teacher0, True)
    torch.manual_seed(seed)
    with torch.no_grad():
        logits = fwd(teacher0, params(teacher0), batch.p_u)
        y_hat = torch.multinomial(F.softmax(logits.float(), dim=-1), 1).squeeze(1)
    assert (y_hat != logits.argmax(-1)).any()  # a sample, not the argmax

    method = make_method(teacher, student, lr_t, lr_s, feedback="hard", h=kind, baseline=baseline)
    torch.manual_seed(seed)
    metrics, teacher_grad = step_and_teacher_grad(method, batch, lr_t)

    h = hand_h(student0, batch, y_hat, lr_s, kind)
    assert abs(float(h)) > 1e-6
    assert torch.allclose(metrics["h"], h, rtol=1e-10, atol=0)
    coefficient = 0.99 * h if baseline else h
    expected = coefficient * flat(grad(F.cross_entropy(fwd(teacher0, r_state, batch.p_u), y_hat), r_state))
    assert torch.linalg.vector_norm(expected) > 1e-8
    assert rel_err(teacher_grad, expected) < 1e-9


@pytest.mark.usefixtures("float64")
def test_official_feedback_leaves_the_reduced_teacher_alone():
    """official: MPL's released term has zero gradient, here as in MPL (the shared code)."""
    teacher, student = make_models(19)
    method = make_method(teacher, student, feedback="official")
    _, teacher_grad = step_and_teacher_grad(method, stored_batch(20), 1.0)
    assert torch.linalg.vector_norm(teacher_grad) < 1e-12


# ---------------------------------------------------------------------------------------------- the controls
@pytest.mark.usefixtures("float64")
def test_shuffled_h_is_an_earlier_steps_h():
    """shuffled: step 0 gets h = 0 (no earlier step), so R does not move; step 1 gets step 0's h, and R's gradient is
    (h₀ − b₁)·∇CE(ŷ₁, R(p_u)), b₁ the baseline over the drawn h's."""
    lr_t, lr_s = 1.0, 0.4
    teacher, student = make_models(21)
    method = make_method(
        teacher, student, lr_t, lr_s, feedback="hard", h="dot", sampling="argmax", teacher_signal="shuffled"
    )
    batches = [stored_batch(22), stored_batch(23)]
    metrics0, grad0 = step_and_teacher_grad(method, batches[0], lr_t)
    assert float(metrics0["h_shuffled"]) == 0.0 and abs(float(metrics0["h"])) > 1e-6
    assert torch.equal(grad0, torch.zeros_like(grad0))

    teacher1 = copy.deepcopy(method.teacher)
    metrics1, grad1 = step_and_teacher_grad(method, batches[1], lr_t, step=1)
    h0 = metrics0["h"]
    assert torch.equal(metrics1["h_shuffled"], h0)
    assert not torch.equal(metrics1["h"], h0)  # the step's own h was measured, and not used
    b1 = 0.01 * h0  # b₀ = 0.01·0; b₁ = 0.99·b₀ + 0.01·h₀
    r_state = params(teacher1, True)
    assert batches[1].p_u is not None
    logits = fwd(teacher1, r_state, batches[1].p_u)
    expected = (h0 - b1) * flat(grad(F.cross_entropy(logits, logits.argmax(-1)), r_state))
    assert rel_err(grad1, expected) < 1e-9


@pytest.mark.usefixtures("float64")
def test_no_signal_without_supervised_loss_is_plain_pseudo_labels():
    """teacher_signal=none, supervised_weight 0: R never changes (even with weight decay and momentum), and the student
    learns the stored distributions' pseudo labels."""
    teacher, student = make_models(25)
    teacher_optim = plain(0.5, momentum=0.9, weight_decay=0.1)
    method = make_method(
        teacher, student, teacher_optim=teacher_optim, lr_s=0.3, sampling="argmax", teacher_signal="none"
    )
    r_before = flat(params(teacher).values())
    batch = stored_batch(26)
    assert batch.p_u is not None and batch.x_u_strong is not None
    student0 = copy.deepcopy(student)
    method.step(batch, 0)
    for seed in (27, 28):
        method.step(stored_batch(seed), 1)
    assert torch.equal(flat(params(method.teacher).values()), r_before)

    # the first step's student update was plain SGD on CE(argmax R(p_u), S(x_u_strong))
    fresh_teacher, fresh_student = copy.deepcopy(teacher), copy.deepcopy(student0)
    one = make_method(fresh_teacher, fresh_student, lr_s=0.3, sampling="argmax", teacher_signal="none")
    one.step(batch, 0)
    s_state = params(student0, True)
    with torch.no_grad():
        y_hat = fwd(teacher, params(teacher), batch.p_u).argmax(-1)
    g = flat(grad(F.cross_entropy(fwd(student0, s_state, batch.x_u_strong), y_hat), s_state))
    assert rel_err((flat(s_state.values()) - flat(params(fresh_student).values())) / 0.3, g) < 1e-10


@pytest.mark.usefixtures("float64")
def test_no_signal_with_supervised_loss_is_calibration_only():
    teacher, student = make_models(29)
    teacher0 = copy.deepcopy(teacher)
    batch = stored_batch(30)
    method = make_method(
        teacher, student, feedback="hard", teacher_signal="none", supervised_weight=2.0, label_smoothing=0.1
    )
    metrics, teacher_grad = step_and_teacher_grad(method, batch, 1.0)
    r_state = params(teacher0, True)
    expected = flat(grad(supervised_objective(teacher0, r_state, batch, 2.0, 0.1), r_state))
    assert rel_err(teacher_grad, expected) < 1e-10
    assert float(metrics["teacher_mpl_loss"]) == 0.0


def test_reduced_teacher_starts_as_the_big_teacher():
    p = F.softmax(3 * torch.randn(50, 7), -1)
    teacher = ReducedTeacher(7, 16)
    assert torch.allclose(F.softmax(teacher(p), -1), p, atol=1e-5)
    y = p.argmax(-1)
    confusion = teacher_confusion(teacher, p, y, 7)
    assert torch.equal(confusion, teacher_confusion(None, p, y, 7))
    assert int(confusion.trace()) == 50


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="method.name=reduced_mpl needs data.label_dir.*run metapl label SOURCE"):
        build_config("digits", [], "reduced_mpl")
    with pytest.raises(ConfigError, match="teacher_signal=shuffled needs a scalar h"):
        build_config(
            "digits", ["data.label_dir=x", "method.feedback=soft", "method.teacher_signal=shuffled"], "reduced_mpl"
        )
    with pytest.raises(ConfigError, match="teacher_signal=shuffled needs a scalar h"):
        settings = ReducedMPLSettings(FeedbackSettings(mode="soft", teacher_signal="shuffled"))
        ReducedMetaPseudoLabels(*make_models(1), K, settings)
    with pytest.raises(ConfigError, match="method.teacher_signal='x' is not allowed"):
        build_config("digits", ["data.label_dir=x", "method.teacher_signal=x"], "reduced_mpl")
    cfg = build_config("digits", ["data.label_dir=x", "method.supervised_weight=0.5"], "reduced_mpl")
    assert METHODS.get("reduced_mpl").label(cfg.method.settings) == "hard/dot, +CE×0.5"
    none = ReducedMPLSettings(FeedbackSettings(teacher_signal="none"))
    assert METHODS.get("reduced_mpl").label(none) == "no feedback, frozen"


# ---------------------------------------------------------------------------------------------- SIGKILL resume
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 300


def _args(labels: Path) -> list[str]:
    return [
        "train",
        "--preset",
        "digits",
        "--method",
        "reduced_mpl",
        "--no-progress",
        "--no-tensorboard",
        "--set",
        f"data.label_dir={labels}",
        "--set",
        f"train.steps={STEPS}",
        "--set",
        "train.checkpoint_every=10",
        "--set",
        "train.eval_every=50",
        "--set",
        "method.teacher_signal=shuffled",  # the most state: baseline, h buffer, the draws' RNG
        "--set",
        "method.supervised_weight=0.5",
        "--set",
        "model.batch_norm=true",
        "--set",
        "finetune.steps=30",
        "--set",
        "finetune.batch_size=32",
    ]


def _command(labels: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "metapl", *_args(labels), "--out", str(out)]


def _tensors(tree, prefix=""):
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}/{i}")


@pytest.mark.slow  # subprocesses
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    from test_labeling import make_labels

    labels = make_labels(tmp_path / "labels")
    done = tmp_path / "uninterrupted"
    result = subprocess.run(_command(labels, done), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr

    killed = tmp_path / "killed"
    state = kill_when(_command(labels, killed), lambda: mid_train(saved_state(killed), 40, None), ENV, poll=0.01)
    saved = state["step"] if state else None
    assert saved is not None and saved < STEPS, "the run ended before it could be killed mid-run"
    result = subprocess.run(_command(labels, killed), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads((killed / "summary.json").read_text())["resumed_from_step"] == saved

    final_a, final_b = saved_state(done), saved_state(killed)
    assert final_a is not None and final_b is not None  # both runs finished and saved
    tensors_a = {**dict(_tensors(final_a["method"])), **dict(_tensors(final_a["finetune"], "ft"))}
    tensors_b = {**dict(_tensors(final_b["method"])), **dict(_tensors(final_b["finetune"], "ft"))}
    assert tensors_a.keys() == tensors_b.keys() and "/h_buffer" in tensors_a
    assert final_a["method"]["h_seen"] == final_b["method"]["h_seen"] == STEPS
    different = [k for k in tensors_a if not torch.equal(tensors_a[k], tensors_b[k])]
    assert not different, different[:5]
    model_a, model_b = (torch.load(d / "model.pt", weights_only=True) for d in (done, killed))
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
