"""Math-correctness tests for MetaPseudoLabels (docs/method.md#hard-labels, docs/method.md#h-estimators, docs/method.md#soft-exact, docs/method.md#gradient-flow, docs/method.md#decisions).

Every expected value is computed here, independently of metapl's step code: from deep copies of the
models taken before the step, with `torch.func.functional_call` forwards (train mode, on copies of the
buffers), hand-built flattened gradients, and finite differences. All in float64 on tiny MLPs.

The teacher's gradient is recovered from one step as (θ_T_before − θ_T_after) / η_T: the teacher runs
plain SGD (no momentum, weight decay or clipping) and its auxiliary losses are off, so only the MPL
term moves it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metapl.core.losses import smoothed_cross_entropy, soft_cross_entropy
from metapl.core.optim import OptimSettings
from metapl.parts.methods import Batch, MetaPseudoLabels, MPLSettings
from metapl.parts.methods.settings import flat_keys, from_flat
from metapl.parts.models.mlp import MLP

IN, K, B, BU = 4, 3, 6, 5  # input width, classes, labeled batch, unlabeled batch (B ≠ BU on purpose)
NO_AUX = {"supervised_loss": False, "uda": False}  # isolate the MPL term


pytestmark = pytest.mark.usefixtures("float64")  # exact comparisons; conftest also sets one thread


# ---------------------------------------------------------------------------------------------- helpers
def plain(lr: float, **overrides) -> OptimSettings:
    """Plain SGD at a constant LR: θ ← θ − lr·g exactly."""
    settings: dict[str, Any] = dict(
        lr=lr, momentum=0.0, nesterov=False, weight_decay=0.0, grad_clip=0.0, schedule="constant", total_steps=10
    )
    settings.update(overrides)
    return OptimSettings(**settings)


def mlp(**options) -> MLP:
    return MLP(IN, K, hidden=(5,), activation="tanh", **options)


def make_models(seed: int, teacher: dict | None = None, student: dict | None = None) -> tuple[MLP, MLP]:
    torch.manual_seed(seed)
    return mlp(**(teacher or {})), mlp(**(student or {}))


def make_batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(
        x_l=torch.randn(B, IN, generator=g),
        y_l=torch.randint(0, K, (B,), generator=g),
        x_u_weak=torch.randn(BU, IN, generator=g),
        x_u_strong=torch.randn(BU, IN, generator=g),
    )


def make_mpl(teacher, student, feedback, h="dot", lr_t=1.0, lr_s=0.5, student_optim=None, teacher_optim=None, **kwargs):
    """An MPL step with plain SGD; `kwargs` are MPLSettings' flat keys (the teacher's auxiliary losses off unless given)
    or the constructor's other arguments (ema_decay)."""
    fields = set(flat_keys(MPLSettings))
    settings = {**NO_AUX, **{k: v for k, v in kwargs.items() if k in fields}}
    return MetaPseudoLabels(
        teacher,
        student,
        K,
        from_flat(MPLSettings, feedback=feedback, h=h, **settings),
        teacher_optim=teacher_optim or plain(lr_t),
        student_optim=student_optim or plain(lr_s),
        **{k: v for k, v in kwargs.items() if k not in fields},
    )


def params(model: nn.Module, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().requires_grad_(requires_grad) for n, p in model.named_parameters()}


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, p in like.items():
        out[name] = vector[i : i + p.numel()].view_as(p)
        i += p.numel()
    return out


def fwd(model: nn.Module, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Train-mode forward of `model` at `state`, on copies of its buffers (its own buffers stay untouched)."""
    full = {n: b.clone() for n, b in model.named_buffers()}
    full.update(state)
    return functional_call(model.train(), full, (x,))


def teacher_strong_logits(teacher: nn.Module, state: dict, batch: Batch) -> torch.Tensor:
    """T(x_u_strong), from the teacher's forward on [x_l; x_u_weak; x_u_strong] (BN statistics over all of it)."""
    return fwd(teacher, state, torch.cat([batch.x_l, *batch.unlabeled()]))[-BU:]


def grad(loss: torch.Tensor, state: dict[str, torch.Tensor], create_graph: bool = False) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, list(state.values()), create_graph=create_graph)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def step_and_teacher_grad(mpl: MetaPseudoLabels, batch: Batch, lr_t: float, step: int = 0):
    """Run one step; return (metrics, the teacher's gradient recovered from its plain-SGD update)."""
    before = flat(params(mpl.teacher).values())
    metrics = mpl.step(batch, step)
    after = flat(params(mpl.teacher).values())
    return metrics, (before - after) / lr_t


def draw_pseudo_labels(teacher_copy: nn.Module, batch: Batch, seed: int) -> torch.Tensor:
    """ŷ ~ T(x_u_strong) as the step draws it: same seed, same teacher forward, multinomial on its softmax."""
    torch.manual_seed(seed)
    with torch.no_grad():
        logits = teacher_copy.train()(torch.cat([batch.x_l, *batch.unlabeled()]))[-BU:]
        return torch.multinomial(F.softmax(logits.float(), dim=-1), 1).squeeze(1)


def hand_h(student: nn.Module, batch: Batch, y_hat: torch.Tensor, lr_s: float, kind: str, theta_new=None):
    """h from flattened gradients: η_S·⟨∇L_l(θ'_S), g_u⟩ (dot), their cosine, or L_l(θ_S) − L_l(θ'_S) (taylor).

    θ'_S = θ_S − η_S·g_u unless `theta_new` (the student's real post-step parameters) is given.
    """
    theta = params(student, requires_grad=True)
    assert batch.x_u_strong is not None
    g_u = grad(F.cross_entropy(fwd(student, theta, batch.x_u_strong), y_hat), theta)
    if theta_new is None:
        theta_new = {n: p.detach() - lr_s * g for (n, p), g in zip(theta.items(), g_u)}
    theta_new = {n: p.detach().clone().requires_grad_() for n, p in theta_new.items()}
    loss_new = F.cross_entropy(fwd(student, theta_new, batch.x_l), batch.y_l)
    if kind == "taylor":
        loss_old = F.cross_entropy(fwd(student, theta, batch.x_l), batch.y_l)
        return (loss_old - loss_new).detach()
    v, g = flat(grad(loss_new, theta_new)), flat(g_u)
    if kind == "dot":
        return lr_s * (v @ g)
    return (v @ g) / (torch.linalg.vector_norm(v) * torch.linalg.vector_norm(g))


# ---------------------------------------------------------------------------------------------- soft feedback
class DropoutRecorder:
    """Records the dropout mask of the first forward for each batch size (x_u_strong: BU rows, x_l: B rows)."""

    def __init__(self, module: nn.Dropout):
        self.masks: dict[int, torch.Tensor] = {}
        module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        if output.shape[0] not in self.masks:
            self.masks[output.shape[0]] = (output != 0).to(output.dtype).detach()


def replay_dropout(model: nn.Module, masks: dict[int, torch.Tensor]) -> None:
    """Make `model`'s dropout apply the recorded masks (keyed by batch size) instead of drawing new ones."""
    module = next(m for m in model.modules() if isinstance(m, nn.Dropout))
    module.register_forward_hook(lambda m, inputs, out: inputs[0] * masks[inputs[0].shape[0]] / (1.0 - m.p))


def soft_objective(teacher, student, t_state, s_state, batch, lr_s, smoothing=0.0, create_graph=False):
    """f(θ_T) = L_l(θ_S − η_S ∇_θS L_u(θ_T, θ_S)), L_u the soft CE of S(x_u_strong) against T(x_u_strong)."""
    target = F.softmax(teacher_strong_logits(teacher, t_state, batch), dim=-1)
    target = (1.0 - smoothing) * target + smoothing / K
    loss_u = -(target * F.log_softmax(fwd(student, s_state, batch.x_u_strong), dim=-1)).sum(-1).mean()
    g_u = grad(loss_u, s_state, create_graph=create_graph)
    theta_new = {n: p - lr_s * g for (n, p), g in zip(s_state.items(), g_u)}
    return F.cross_entropy(fwd(student, theta_new, batch.x_l), batch.y_l)


SOFT_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": dict(),
    "label_smoothing": dict(smoothing=0.2),
    "student_batchnorm": dict(student=dict(batch_norm=True)),
    "teacher_and_student_batchnorm": dict(teacher=dict(batch_norm=True), student=dict(batch_norm=True)),
    "student_dropout": dict(student=dict(dropout=0.3)),
}


@pytest.mark.parametrize("variant", list(SOFT_VARIANTS))
def test_soft_teacher_gradient_is_exact_gradient_through_student_step(variant):
    """soft: the teacher's update equals ∇_θT L_l(θ_S − η_S∇L_u(θ_T, θ_S)) by autograd (create_graph) and by central FD."""
    spec = SOFT_VARIANTS[variant]
    smoothing = spec.get("smoothing", 0.0)
    lr_t, lr_s = 1.0, 0.7
    teacher, student = make_models(3, spec.get("teacher"), spec.get("student"))
    batch = make_batch(4)
    teacher0, student0 = copy.deepcopy(teacher), copy.deepcopy(student)
    if "dropout" in spec.get("student", {}):
        recorder = DropoutRecorder(next(m for m in student.modules() if isinstance(m, nn.Dropout)))
        replay_dropout(student0, recorder.masks)
    mpl = make_mpl(teacher, student, "soft", lr_t=lr_t, lr_s=lr_s, student_label_smoothing=smoothing)

    _, teacher_grad = step_and_teacher_grad(mpl, batch, lr_t)
    assert torch.linalg.vector_norm(teacher_grad) > 1e-4  # a real signal, not a vacuous 0 == 0

    # (a) autograd through the student's update, built with create_graph=True.
    t_state, s_state = params(teacher0, True), params(student0, True)
    f = soft_objective(teacher0, student0, t_state, s_state, batch, lr_s, smoothing, create_graph=True)
    autograd_grad = flat(grad(f, t_state))
    assert rel_err(teacher_grad, autograd_grad) < 1e-9

    # (b) central finite differences of f(θ_T).
    theta = flat(params(teacher0).values())

    def f_of(vector):
        s = params(student0, True)
        return float(soft_objective(teacher0, student0, unflatten(vector, t_state), s, batch, lr_s, smoothing).detach())

    eps = 1e-6
    basis = torch.eye(theta.numel())
    fd = torch.tensor([(f_of(theta + eps * e) - f_of(theta - eps * e)) / (2 * eps) for e in basis])
    assert rel_err(teacher_grad, fd) < 1e-5
    if "dropout" in spec.get("student", {}):
        assert recorder.masks[BU].min() == 0 and recorder.masks[B].min() == 0  # dropout really dropped units


# ---------------------------------------------------------------------------------------------- hard feedback: h
@pytest.mark.parametrize("kind", ["dot", "cosine", "taylor"])
def test_hard_h_matches_hand_built_flattened_gradients(kind):
    """hard: metric h = η_S·⟨∇L_l(θ'_S), g_u⟩ (dot), their cosine, or L_l(θ_S) − L_l(θ'_S) (taylor), η_S once."""
    lr_s = 0.3
    teacher, student = make_models(5)
    batch = make_batch(6)
    teacher0, student0 = copy.deepcopy(teacher), copy.deepcopy(student)
    mpl = make_mpl(teacher, student, "hard", h=kind, lr_s=lr_s, sampling="argmax")
    metrics = mpl.step(batch, 0)

    with torch.no_grad():
        y_hat = teacher_strong_logits(teacher0, params(teacher0), batch).argmax(-1)
    expected = hand_h(student0, batch, y_hat, lr_s, kind)
    assert abs(float(expected)) > 1e-4
    assert torch.allclose(metrics["h"], expected, rtol=1e-10, atol=0)


def test_taylor_approaches_dot_as_student_lr_shrinks():
    """hard: taylor h / dot h → 1 as η_S → 0 (error O(η_S)), so both measure the same first-order quantity."""
    teacher, student = make_models(7)
    batch = make_batch(8)
    errors = []
    for lr_s in (1e-1, 1e-2, 1e-3, 1e-4):
        h = {}
        for kind in ("dot", "taylor"):
            mpl = make_mpl(copy.deepcopy(teacher), copy.deepcopy(student), "hard", h=kind, lr_s=lr_s, sampling="argmax")
            h[kind] = float(mpl.step(batch, 0)["h"])
        assert h["dot"] != 0
        errors.append(abs(h["taylor"] / h["dot"] - 1.0))
    assert errors[-1] < 1e-3
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < 0.2 * coarse  # shrinks about linearly in η_S


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("kind", ["dot", "cosine"])
def test_h_uses_raw_student_gradient_under_real_optimiser(kind, foreach):
    """hard: with weight decay, clipping and Nesterov (foreach SGD too, the CUDA default), h uses the raw g_u."""
    lr_s = 0.3
    teacher, student = make_models(9, student=dict(batch_norm=True))
    batch = make_batch(10)
    teacher0, student0 = copy.deepcopy(teacher), copy.deepcopy(student)
    real = OptimSettings(lr=lr_s, momentum=0.9, nesterov=True, weight_decay=0.05, grad_clip=1e-3, schedule="constant")
    mpl = make_mpl(teacher, student, "hard", h=kind, student_optim=real, sampling="argmax")
    for group in mpl.student_updater.optimizer.param_groups:
        group["foreach"] = foreach
    metrics = mpl.step(batch, 0)

    with torch.no_grad():
        y_hat = teacher_strong_logits(teacher0, params(teacher0), batch).argmax(-1)
    expected = hand_h(student0, batch, y_hat, lr_s, kind, theta_new=params(mpl.student))
    assert torch.allclose(metrics["h"], expected, rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------------------------- hard feedback: teacher
@pytest.mark.parametrize("baseline", [False, True])
@pytest.mark.parametrize("kind", ["dot", "cosine", "taylor"])
def test_hard_teacher_gradient_is_h_times_ce_gradient_of_the_sampled_label(kind, baseline):
    """hard: the student learns the sampled ŷ, and the teacher's gradient is (h − b)·∇_θT CE(ŷ, T(x_u_strong)) for that ŷ."""
    lr_t, lr_s, seed = 1.0, 0.4, 123
    teacher, student = make_models(11)
    batch = make_batch(12)
    teacher0, student0 = copy.deepcopy(teacher), copy.deepcopy(student)
    y_hat = draw_pseudo_labels(copy.deepcopy(teacher), batch, seed)
    t_state = params(teacher0, True)
    argmax = teacher_strong_logits(teacher0, t_state, batch).argmax(-1)
    assert (y_hat != argmax).any()  # the test tells the sampled ŷ from argmax (docs/method.md#pitfalls)

    mpl = make_mpl(teacher, student, "hard", h=kind, lr_t=lr_t, lr_s=lr_s, baseline=baseline, sampling="sample")
    torch.manual_seed(seed)
    metrics, teacher_grad = step_and_teacher_grad(mpl, batch, lr_t)

    # The student took one plain SGD step on CE(ŷ, S(x_u_strong)) for exactly this ŷ.
    s_state = params(student0, True)
    assert batch.x_u_strong is not None
    student_grad = flat(grad(F.cross_entropy(fwd(student0, s_state, batch.x_u_strong), y_hat), s_state))
    student_step = (flat(s_state.values()) - flat(params(mpl.student).values())) / lr_s
    assert rel_err(student_step, student_grad.detach()) < 1e-10

    h = hand_h(student0, batch, y_hat, lr_s, kind)
    assert torch.allclose(metrics["h"], h, rtol=1e-10, atol=0)
    coefficient = 0.99 * h if baseline else h  # b = 0.99·0 + 0.01·h, updated before use
    expected = coefficient * flat(
        grad(F.cross_entropy(teacher_strong_logits(teacher0, t_state, batch), y_hat), t_state)
    )
    assert torch.linalg.vector_norm(expected) > 1e-6
    assert rel_err(teacher_grad, expected) < 1e-9
    if baseline:
        assert torch.allclose(metrics["baseline"], 0.01 * metrics["h"], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["dot", "cosine", "taylor"])
@pytest.mark.parametrize("helpful", [True, False])
def test_teacher_moves_toward_sampled_label_iff_it_helped_the_student(kind, helpful):
    """hard sign: h > 0 (labeled loss fell) → one teacher step raises mean log T(ŷ|x_u); h < 0 → lowers it."""
    lr_t, lr_s, seed = 0.5, 0.5, 7
    teacher, student = make_models(13)
    unlabeled = make_batch(14)
    y_hat = draw_pseudo_labels(copy.deepcopy(teacher), unlabeled, seed)  # ŷ does not depend on x_l (no teacher BN)
    # Labeled data = the unlabeled images, labelled ŷ (learning ŷ helps) or ŷ + 1 (learning ŷ hurts).
    y_l = y_hat if helpful else (y_hat + 1) % K
    assert unlabeled.x_u_strong is not None
    batch = Batch(unlabeled.x_u_strong.clone(), y_l, unlabeled.x_u_weak, unlabeled.x_u_strong)
    assert torch.equal(draw_pseudo_labels(copy.deepcopy(teacher), batch, seed), y_hat)

    def mean_log_prob(model):
        with torch.no_grad():
            return float(
                F.log_softmax(teacher_strong_logits(model, params(model), batch), -1)[torch.arange(BU), y_hat].mean()
            )

    before = mean_log_prob(teacher)
    mpl = make_mpl(teacher, student, "hard", h=kind, lr_t=lr_t, lr_s=lr_s, baseline=False, sampling="sample")
    torch.manual_seed(seed)
    h = float(mpl.step(batch, 0)["h"])
    after = mean_log_prob(mpl.teacher)
    assert (h > 0) if helpful else (h < 0)
    assert (after > before) if helpful else (after < before)


def test_baseline_is_ema_of_h_updated_before_use():
    """hard: b₁ = 0.01·h₀, b₂ = 0.99·b₁ + 0.01·h₁, and step 2's teacher coefficient is h₁ − b₂."""
    lr_t, lr_s = 1.0, 0.4
    teacher, student = make_models(15)
    batches = [make_batch(16), make_batch(17)]
    mpl = make_mpl(teacher, student, "hard", h="dot", lr_t=lr_t, lr_s=lr_s, baseline=True, sampling="argmax")
    h0 = float(mpl.step(batches[0], 0)["h"])
    assert float(mpl.baseline) == pytest.approx(0.01 * h0, rel=1e-12)

    teacher1, student1 = copy.deepcopy(mpl.teacher), copy.deepcopy(mpl.student)
    metrics, teacher_grad = step_and_teacher_grad(mpl, batches[1], lr_t, step=1)
    h1 = float(metrics["h"])
    b2 = 0.99 * 0.01 * h0 + 0.01 * h1
    assert float(metrics["baseline"]) == pytest.approx(b2, rel=1e-12)
    assert abs(h1 - b2) > 1e-3 * abs(h1)  # the baseline visibly changes the coefficient

    t_state = params(teacher1, True)
    logits = teacher_strong_logits(teacher1, t_state, batches[1])
    y_hat = logits.argmax(-1)
    assert h1 == pytest.approx(float(hand_h(student1, batches[1], y_hat, lr_s, "dot")), rel=1e-10)
    expected = (h1 - b2) * flat(grad(F.cross_entropy(logits, y_hat), t_state))
    assert rel_err(teacher_grad, expected) < 1e-9


@pytest.mark.parametrize("kind", ["dot", "cosine", "taylor"])
def test_wait_period_gives_zero_h_and_no_teacher_mpl_gradient(kind):
    """hard, student LR 0 (wait): h = 0 exactly (taylor with the same dropout mask, cosine zeroed) and θ_T is unchanged."""
    teacher, student = make_models(17, student=dict(dropout=0.5))
    batch = make_batch(18)
    mpl = make_mpl(teacher, student, "hard", h=kind, student_optim=plain(0.5, wait_steps=3), baseline=True)
    t_before, s_before = flat(params(teacher).values()), flat(params(student).values())
    metrics = mpl.step(batch, 0)
    assert metrics["lr_student"] == 0.0
    assert float(metrics["h"]) == 0.0
    assert torch.equal(flat(params(mpl.student).values()), s_before)
    assert torch.equal(flat(params(mpl.teacher).values()), t_before)


# ---------------------------------------------------------------------------------------------- official feedback
def test_official_mpl_term_has_zero_gradient():
    """official: CE(stop_grad(p), p) has zero gradient (FD, vs the entropy's nonzero one), so θ_T does not move."""
    teacher, student = make_models(19)
    batch = make_batch(20)
    teacher0, student0 = copy.deepcopy(teacher), copy.deepcopy(student)
    t_state = params(teacher0)
    theta = flat(t_state.values())
    with torch.no_grad():
        p_fixed = F.softmax(teacher_strong_logits(teacher0, t_state, batch), -1)

    def mpl_term(vector, stop_grad=True):
        logits = teacher_strong_logits(teacher0, unflatten(vector, t_state), batch)
        target = p_fixed if stop_grad else F.softmax(logits, -1)
        return float(soft_cross_entropy(logits, target))

    eps = 1e-5
    basis = torch.eye(theta.numel())
    fd = torch.tensor([(mpl_term(theta + eps * e) - mpl_term(theta - eps * e)) / (2 * eps) for e in basis])
    fd_entropy = torch.tensor(
        [(mpl_term(theta + eps * e, False) - mpl_term(theta - eps * e, False)) / (2 * eps) for e in basis]
    )
    assert torch.linalg.vector_norm(fd) < 1e-9
    assert torch.linalg.vector_norm(fd_entropy) > 1e-3  # without the stop-gradient it would not vanish

    lr_s = 0.5
    mpl = make_mpl(teacher, student, "official", lr_s=lr_s)
    metrics, teacher_grad = step_and_teacher_grad(mpl, batch, 1.0)
    assert torch.linalg.vector_norm(teacher_grad) < 1e-12
    # The student did learn (soft targets), and d = L_new − L_old is the code's sign (docs/method.md#official-code).
    s_old, s_new = params(student0), params(mpl.student)
    assert not torch.equal(flat(s_old.values()), flat(s_new.values()))
    assert batch.x_u_strong is not None
    with torch.no_grad():
        loss_old = F.cross_entropy(fwd(student0, s_old, torch.cat([batch.x_u_strong, batch.x_l]))[BU:], batch.y_l)
        loss_new = F.cross_entropy(fwd(student0, s_new, batch.x_l), batch.y_l)
    assert float(metrics["h"]) == pytest.approx(float(loss_new - loss_old), rel=1e-10)


# ---------------------------------------------------------------------------------------------- BatchNorm statistics
@pytest.mark.parametrize(
    "feedback,kind", [("hard", "dot"), ("hard", "cosine"), ("hard", "taylor"), ("soft", "dot"), ("official", "dot")]
)
def test_student_bn_running_stats_come_only_from_its_training_forward(feedback, kind):
    """BN: after one step the student's running stats equal one train-mode forward on x_u_strong ([x_u_strong; x_l] for official)."""
    teacher, student = make_models(21, student=dict(batch_norm=True))
    batch = make_batch(22)
    expected_model = copy.deepcopy(student).train()
    assert batch.x_u_strong is not None
    with torch.no_grad():
        x = batch.x_u_strong if feedback != "official" else torch.cat([batch.x_u_strong, batch.x_l])
        expected_model(x)
    mpl = make_mpl(teacher, student, feedback, h=kind, lr_s=0.5)
    mpl.step(batch, 0)

    expected = dict(expected_model.named_buffers())
    actual = dict(mpl.student.named_buffers())
    assert set(actual) == set(expected) and any(n.endswith("running_mean") for n in actual)
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


# ---------------------------------------------------------------------------------------------- the controls
def test_shuffled_h_is_an_earlier_steps_h():
    """teacher_signal=shuffled, as for Reduced MPL (tests/test_reduced_mpl.py): step 0 gets h = 0 (no earlier step), so
    the teacher does not move; step 1 gets step 0's h, and the teacher's gradient is (h₀ − b₁)·∇CE(ŷ₁, T(x_u_strong)),
    b₁ the baseline over the drawn h's."""
    lr_t, lr_s = 1.0, 0.4
    teacher, student = make_models(21)
    mpl = make_mpl(teacher, student, "hard", "dot", lr_t, lr_s, sampling="argmax", teacher_signal="shuffled")
    batches = [make_batch(22), make_batch(23)]
    metrics0, grad0 = step_and_teacher_grad(mpl, batches[0], lr_t)
    assert float(metrics0["h_shuffled"]) == 0.0 and abs(float(metrics0["h"])) > 1e-6
    assert torch.equal(grad0, torch.zeros_like(grad0))

    teacher1 = copy.deepcopy(mpl.teacher)
    metrics1, grad1 = step_and_teacher_grad(mpl, batches[1], lr_t, step=1)
    h0 = metrics0["h"]
    assert torch.equal(metrics1["h_shuffled"], h0)
    assert not torch.equal(metrics1["h"], h0)  # the step's own h was measured, and not used
    b1 = 0.01 * h0  # b₀ = 0.01·0; b₁ = 0.99·b₀ + 0.01·h₀
    t_state = params(teacher1, True)
    logits = teacher_strong_logits(teacher1, t_state, batches[1])
    expected = (h0 - b1) * flat(grad(F.cross_entropy(logits, logits.argmax(-1)), t_state))
    assert torch.linalg.vector_norm(expected) > 1e-8
    assert rel_err(grad1, expected) < 1e-9


def test_shuffled_h_draws_only_from_the_latest_buffer_of_earlier_steps():
    """Each drawn h is one of the latest shuffle_buffer earlier steps' h (never this step's), and the buffer holds
    those h in the order of a ring."""
    teacher, student = make_models(31)
    mpl = make_mpl(teacher, student, "official", shuffle_buffer=3, teacher_signal="shuffled", lr_t=0.1, lr_s=0.1)
    seen: list[float] = []
    for step in range(8):
        metrics = mpl.step(make_batch(40 + step), step)
        drawn = float(metrics["h_shuffled"])
        assert (drawn == 0.0) if step == 0 else drawn in seen[-3:]
        seen.append(float(metrics["h"]))
    assert mpl.h_seen == 8
    assert sorted(mpl.h_buffer.tolist()) == sorted(seen[-3:])


def test_no_signal_trains_the_teacher_on_its_own_losses_only():
    """teacher_signal=none: the teacher's update is that of its auxiliary losses alone (MPL term 0); without them
    it does not move at all. The feedback is still measured (h)."""
    teacher, student = make_models(33)
    batch = make_batch(34)
    teacher0 = copy.deepcopy(teacher)
    aux = {"supervised_loss": True, "uda": False, "label_smoothing": 0.1}
    mpl = make_mpl(teacher, student, "hard", "dot", teacher_signal="none", **aux)
    metrics, teacher_grad = step_and_teacher_grad(mpl, batch, 1.0)
    t_state = params(teacher0, True)
    logits_l = fwd(teacher0, t_state, torch.cat([batch.x_l, *batch.unlabeled()]))[:B]
    expected = flat(grad(smoothed_cross_entropy(logits_l, batch.y_l, 0.1), t_state))
    assert rel_err(teacher_grad, expected) < 1e-10
    assert float(metrics["teacher_mpl_loss"]) == 0.0 and abs(float(metrics["h"])) > 1e-6

    frozen_teacher, frozen_student = make_models(35)
    before = flat(params(frozen_teacher).values())
    frozen = make_mpl(frozen_teacher, frozen_student, "soft", teacher_signal="none")
    metrics = frozen.step(make_batch(36), 0)
    assert torch.equal(flat(params(frozen.teacher).values()), before) and "teacher_grad_norm" not in metrics


def test_shuffled_control_is_checked_and_labelled():
    from metapl.core.errors import ConfigError
    from metapl.parts.methods import METHODS
    from metapl.run.config import build_config

    with pytest.raises(ConfigError, match="teacher_signal=shuffled needs a scalar h"):
        make_mpl(*make_models(1), "soft", teacher_signal="shuffled")
    with pytest.raises(ConfigError, match="teacher_signal=shuffled needs a scalar h"):
        build_config("digits", ["method.feedback.mode=soft", "method.feedback.teacher_signal=shuffled"])
    cfg = build_config("digits", ["method.feedback.teacher_signal=shuffled", "method.teacher_losses.uda=false"])
    assert METHODS.get("mpl").label(cfg.method.settings) == "hard/dot, shuffled h, no teacher UDA"


@pytest.mark.parametrize("method", ["mpl", "reduced_mpl"])
def test_the_feedback_refuses_a_student_that_does_not_step_by_sgd(method):
    """h differentiates the student's SGD step: an Adam student is refused while the feedback is on (config and
    API alike), and allowed without feedback; an Adam teacher is always allowed."""
    from metapl.core.errors import ConfigError
    from metapl.run.config import build_config

    label_dir = ["data.label_dir=labels"] if method == "reduced_mpl" else []
    with pytest.raises(ConfigError, match=r"^student.optimizer=adam is not the step MPL's feedback differentiates"):
        build_config("digits", [*label_dir, "student.optimizer=adam"], method)
    build_config("digits", [*label_dir, "student.optimizer=adam", "method.feedback.teacher_signal=none"], method)
    build_config("digits", [*label_dir, "teacher.optimizer=adam"], method)
    with pytest.raises(ConfigError, match="student.optimizer=adam"):
        MetaPseudoLabels(*make_models(2), K, student_optim=OptimSettings(optimizer="adam"))
