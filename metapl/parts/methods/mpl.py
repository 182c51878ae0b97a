"""Meta Pseudo Labels (Pham et al., CVPR 2021): one step, in the order of the paper (docs/method.md#step-order).

Symbols: θ_T teacher, θ_S student, θ'_S the student after its update, η_S the student's LR,
g_u = ∇_θS CE(ŷ, S(x_u; θ_S)) the student's raw pseudo-label gradient, h the teacher's feedback,
b its moving-average baseline, c = stop_grad(h − b) the MPL term's coefficient.

    1. teacher forward at θ_T on [x_l; x_u_weak; x_u_strong]          (train mode)
    2. pseudo labels from T(x_u_strong), the view the student sees
    3. student update θ'_S = θ_S − η_S·g_u (+ weight decay, clipping, Nesterov), then its EMA
    4. the student's labeled loss at θ'_S → the teacher's feedback (hard: h, soft: exact gradient)
    5. teacher update θ'_T from L_sup + λ·L_UDA + the MPL term, all taken at the old θ_T

Steps 1 and 5 belong to the teacher, a part (parts/methods/teachers.py): an image network (ImageTeacher, as listed; its
graph kept or recomputed) or Reduced MPL's R over stored distributions (StoredTeacher; parts/methods/reduced_mpl.py).
Steps 2–4 are this module's, the same for either. `method.feedback.teacher_signal` chooses the MPL term for the
controls: mpl (the feedback's), shuffled (c from the h of a random earlier step, hard and official feedback) or none
(no MPL term; docs/method.md#controls).

Feedback modes (docs/method.md#feedback-modes):
    hard      ŷ ~ T(x_u_strong); the student learns that ŷ; MPL term = stop_grad(h − b)·CE(ŷ, T(x_u_strong))
              with h = η_S·⟨∇L_l(θ'_S), g_u⟩ (dot), cos(∇L_l(θ'_S), g_u) (cosine) or L_l(θ_S) − L_l(θ'_S) (taylor)
    soft      the student learns T(x_u_strong); the MPL term is the exact ∇_θT L_l(θ_S − η_S∇L_u(θ_T, θ_S))
              through one SGD step, via a forward-mode JVP of the student (docs/method.md#soft-exact)
    official  the released code: soft smoothed targets, d = L_new − L_old, and an MPL term whose gradient is 0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from metapl.core import distributed
from metapl.core.batch import Batch
from metapl.core.errors import TrainingError
from metapl.core.losses import smooth_targets, smoothed_cross_entropy, soft_cross_entropy
from metapl.core.optim import OptimSettings, global_norm
from metapl.core.settings import check_settings
from metapl.parts.methods.base import (
    BuildContext,
    MemoryShape,
    MethodEntry,
    Metrics,
    TwoModelMethod,
    frozen_bn_stats,
    module_device,
    replayed_randomness,
    rng_state,
    top1,
)
from metapl.parts.methods.settings import FeedbackSettings, MPLSettings, ReducedMPLSettings
from metapl.parts.methods.teachers import ImageTeacher, MplTerm, Teacher


class MetaPseudoLabels(TwoModelMethod):
    """A teacher that learns from how much its pseudo labels help the student on labeled data. The teacher is a part
    (parts/methods/teachers.py): an image network with this constructor, R over stored distributions with
    ReducedMetaPseudoLabels's; the step is the same."""

    finetunes: ClassVar[bool] = True

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        num_classes: int,
        settings: MPLSettings | None = None,
        *,
        teacher_optim: OptimSettings | None = None,
        student_optim: OptimSettings | None = None,
        ema_decay: float | None = None,
    ):
        settings = settings or MPLSettings()
        check_settings(settings, "method")
        total_steps = (teacher_optim or OptimSettings()).total_steps
        part = ImageTeacher(teacher, settings.teacher_losses, settings.teacher_graph, total_steps)
        self._assemble(part, student, num_classes, settings.feedback, teacher_optim, student_optim, ema_decay)

    def _assemble(
        self,
        teacher: Teacher,
        student: nn.Module,
        num_classes: int,
        feedback: FeedbackSettings,
        teacher_optim: OptimSettings | None,
        student_optim: OptimSettings | None,
        ema_decay: float | None,
    ) -> None:
        """MPL with the teacher part `teacher` and the feedback settings `feedback` (whose fields the caller checked)."""
        feedback.check()
        feedback.check_student_optimizer((student_optim or OptimSettings()).optimizer)
        self.feedback, self.teacher_part = feedback, teacher
        self._init_models(teacher.network, student, teacher_optim, student_optim, ema_decay)
        self.num_classes = num_classes
        names = {id(p): name for name, p in student.named_parameters()}
        self._student_param_names = [names[id(p)] for p in self.student_updater.params]
        device = module_device(student)
        self.baseline = torch.zeros((), device=device)  # b, starting at 0 (docs/method.md#baseline-choice)
        self.h_buffer = torch.zeros(feedback.shuffle_buffer, device=device)  # teacher_signal=shuffled: earlier h
        self.h_seen = 0
        self._h_drawn: torch.Tensor | None = None

    # ------------------------------------------------------------------ the step
    def step(self, batch: Batch, step: int) -> Metrics:
        """One MPL step: student update on the teacher's pseudo labels, then the teacher update.

        Steps 1 and 5 (the teacher's forward and its loss) are the teacher part's (parts/methods/teachers.py); steps 2–4,
        the feedback modes, are this class's, the same for every part."""
        lr_teacher = self.teacher_updater.set_step(step)
        lr_student = self.student_updater.set_step(step)  # η_S in force now (0 during the wait, §14c)
        self.teacher.train()
        self.student.train()
        with_term = self.feedback.teacher_signal != "none"
        learns = self.teacher_part.learns(with_term)

        # 1. Teacher forward at θ_T: T(x_u_strong)'s logits (values), and how step 5 gets the logits with a graph.
        forward = self.teacher_part.forward(batch, learns)

        # 2–4. Pseudo labels, the student's update, and the teacher's feedback: the MPL term as a function of z_strong.
        feedback_step = {"hard": self._hard_feedback, "soft": self._soft_feedback, "official": self._official_feedback}
        mpl_term, metrics = feedback_step[self.feedback.mode](batch, forward.strong, step, lr_student)
        if not with_term:  # teacher_signal=none: the feedback is measured (h, b), and not given to the teacher
            mpl_term = _no_term

        # 5. Teacher update from its own losses + the MPL term, every gradient taken at the old θ_T.
        loss = self.teacher_part.loss(batch, step, forward.with_graph(), mpl_term)
        metrics.update(loss.own)
        if learns:
            metrics["teacher_grad_norm"] = self.teacher_updater.apply(self.teacher_updater.gradients(loss.total))
        metrics.update(
            teacher_loss=loss.total.detach(),
            teacher_mpl_loss=loss.mpl.detach(),
            teacher_labeled_acc=top1(loss.logits_l, batch.y_l),
        )
        if self._h_drawn is not None:
            metrics["h_shuffled"] = self._h_drawn
            self._h_drawn = None
        if batch.y_u is not None:
            metrics["teacher_unlabeled_acc"] = top1(loss.logits_u, batch.y_u)
        metrics.update(lr_teacher=lr_teacher, lr_student=lr_student)
        return metrics

    # ------------------------------------------------------------------ hard labels (paper, App. A)
    def _hard_feedback(
        self, batch: Batch, logits_strong: torch.Tensor, step: int, lr_student: float
    ) -> tuple[MplTerm, dict]:
        """Student learns a sampled ŷ; teacher term stop_grad(h − b)·CE(ŷ, T(x_u_strong)) for that same ŷ."""
        with torch.no_grad():
            teacher_probs = F.softmax(logits_strong.float(), dim=-1)
            if self.feedback.sampling == "sample":
                try:
                    pseudo = torch.multinomial(teacher_probs, 1).squeeze(1)  # ŷ ~ T(x_u_strong; θ_T)
                except RuntimeError:  # NaN or infinite probabilities: the teacher diverged
                    raise TrainingError(
                        f"the teacher's predictions became NaN or infinite at step {step}; lower teacher.lr"
                    ) from None
            else:
                pseudo = teacher_probs.argmax(dim=-1)

        # taylor: L_l(θ_S) and L_l(θ'_S) on one labeled batch, same BN mode and dropout mask, so h = 0 iff θ'_S = θ_S.
        if self.feedback.h == "taylor":
            dropout_rng = rng_state(batch.x_l.device)
            loss_before = self._labeled_loss_no_grad(batch)

        # Student step on (x_u_strong, ŷ): θ'_S = θ_S − η_S·g_u.
        student_logits = self.student(_strong(batch))
        student_loss = smoothed_cross_entropy(student_logits, pseudo, self.feedback.student_label_smoothing)
        g_u = self.student_updater.gradients(student_loss)
        student_grad_norm = self._update_student(g_u, step)

        # h: how much the step on ŷ helped the student on labeled data.
        if self.feedback.h == "taylor":
            with replayed_randomness(dropout_rng):
                loss_after = self._labeled_loss_no_grad(batch)
            h = distributed.mean(loss_before - loss_after)  # the global batch's losses, as dot and cosine use
        else:
            with frozen_bn_stats(self.student):
                loss_after = F.cross_entropy(self.student(batch.x_l), batch.y_l)
            v = self.student_updater.gradients(loss_after)  # ∇L_l(θ'_S); not into .grad
            dot = _flat_dot(v, g_u)
            if self.feedback.h == "dot":
                h = lr_student * dot
            else:  # cosine has no η_S factor: zero it while the student waits (docs/method.md#lookahead-lr)
                h = dot / (global_norm(v) * global_norm(g_u) + 1e-12) if lr_student > 0 else torch.zeros_like(dot)
            loss_after = loss_after.detach()
        h = self.feedback.h_sign * torch.nan_to_num(
            h.detach(), nan=0.0, posinf=0.0, neginf=0.0
        )  # fp16 overflow: no feedback
        if self.student_updater.skipped:  # the student did not move (fp16 overflow): θ'_S = θ_S, nothing to credit
            h = torch.zeros_like(h)

        coefficient = self._baseline_coefficient(h)  # c = stop_grad(h − b)

        def mpl_term(z_strong: torch.Tensor) -> torch.Tensor:
            # c·CE(ŷ, T(x_u_strong; θ_T)): the batch mean (the code's scale) or the sum over the B_u labels, the
            # unbiased REINFORCE estimate for the batch as one compound action (docs/method.md#hard-labels), matching `soft` to first order.
            return coefficient * F.cross_entropy(z_strong, pseudo, reduction=self.feedback.reinforce_reduction)

        metrics = self._student_metrics(batch, student_logits, logits_strong, pseudo, student_loss, student_grad_norm)
        metrics.update(h=h, baseline=self.baseline.clone(), student_labeled_loss=loss_after)
        return mpl_term, metrics

    # ------------------------------------------------------------------ soft labels: exact gradient (docs/method.md#soft-exact)
    def _soft_feedback(
        self, batch: Batch, logits_strong: torch.Tensor, step: int, lr_student: float
    ) -> tuple[MplTerm, dict]:
        """Exact ∇_θT L_l(θ'_S) through one SGD step: (η_S/B_u)·∇_θT Σ_ik T_ik·J_ik, J = JVP of log S at θ_S along v."""
        x_u_strong = _strong(batch)
        target = smooth_targets(
            F.softmax(logits_strong, dim=-1), self.num_classes, self.feedback.student_label_smoothing
        )
        theta_old = [p.detach().clone() for p in self.student_updater.params]  # θ_S, kept until v is known
        buffers_old = {name: buf.detach().clone() for name, buf in self.student.named_buffers()}
        dropout_rng = rng_state(x_u_strong.device)

        student_logits = self.student(x_u_strong)
        student_loss = soft_cross_entropy(student_logits, target)
        g_u = self.student_updater.gradients(student_loss)
        student_grad_norm = self._update_student(g_u, step)

        with frozen_bn_stats(self.student):
            loss_after = F.cross_entropy(self.student(batch.x_l), batch.y_l)
        v = self.student_updater.gradients(loss_after)  # ∇L_l(θ'_S)

        def student_log_probs(*params: torch.Tensor) -> torch.Tensor:
            # The same function the student's loss used: batch, BN batch statistics, dropout mask, old θ_S.
            state = dict(zip(self._student_param_names, params))
            state.update({name: buf.clone() for name, buf in buffers_old.items()})
            with replayed_randomness(dropout_rng):
                return F.log_softmax(functional_call(self.student, state, (x_u_strong,)), dim=-1)

        jacobian_v = jvp(student_log_probs, tuple(theta_old), tuple(v))[1]  # J_ik = ⟨∇_θS log S_ik, v⟩
        jacobian_v = jacobian_v.detach()
        bu = x_u_strong.shape[0]
        scale = lr_student * (1.0 - self.feedback.student_label_smoothing) / bu
        if self.student_updater.skipped:  # fp16 overflow: the student did not take the step being differentiated
            scale = 0.0

        def mpl_term(z_strong: torch.Tensor) -> torch.Tensor:
            teacher_probs = F.softmax(z_strong, dim=-1)  # T(x_u_strong; θ_T), with gradient
            return scale * (teacher_probs * jacobian_v.to(teacher_probs.dtype)).sum()

        metrics = self._student_metrics(batch, student_logits, logits_strong, None, student_loss, student_grad_norm)
        metrics.update(student_labeled_loss=loss_after.detach())
        return mpl_term, metrics

    # ------------------------------------------------------------------ the released code, for comparison (docs/method.md#official-code)
    def _official_feedback(
        self, batch: Batch, logits_strong: torch.Tensor, step: int, lr_student: float
    ) -> tuple[MplTerm, dict]:
        """The released code: soft smoothed targets, d = L_new − L_old, MPL term CE(stop_grad(p), p) (zero gradient)."""
        x_l, y_l, u_strong = batch.x_l, batch.y_l, _strong(batch)
        # The released code smooths the student's soft target with the teacher's label_smoothing (its supervised CE's).
        target = smooth_targets(F.softmax(logits_strong, dim=-1), self.num_classes, self.teacher_part.label_smoothing)
        student_logits, logits_l_old = self.student(torch.cat([u_strong, x_l])).split([u_strong.shape[0], x_l.shape[0]])
        student_loss = soft_cross_entropy(student_logits, target)
        loss_before = F.cross_entropy(logits_l_old.detach(), y_l)
        student_grad_norm = self._update_student(self.student_updater.gradients(student_loss), step)
        loss_after = self._labeled_loss_no_grad(batch)
        d = self.feedback.h_sign * distributed.mean(loss_after - loss_before)  # the code's sign: new − old
        coefficient = self._baseline_coefficient(d)

        def mpl_term(z_strong: torch.Tensor) -> torch.Tensor:
            return coefficient * soft_cross_entropy(z_strong, F.softmax(z_strong, dim=-1).detach())

        metrics = self._student_metrics(batch, student_logits, logits_strong, None, student_loss, student_grad_norm)
        metrics.update(h=d, baseline=self.baseline.clone(), student_labeled_loss=loss_after)
        return mpl_term, metrics

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _labeled_loss_no_grad(self, batch: Batch) -> torch.Tensor:
        with frozen_bn_stats(self.student):
            return F.cross_entropy(self.student(batch.x_l), batch.y_l)

    def _baseline_coefficient(self, h: torch.Tensor) -> torch.Tensor:
        """b ← decay·b + (1 − decay)·h, updated before use; returns stop_grad(h − b), or h without a baseline.
        teacher_signal=shuffled: h is first swapped for an earlier step's."""
        if self.feedback.teacher_signal == "shuffled":
            h = self._shuffled(h)
        if not self.feedback.baseline:
            return h.detach()
        self.baseline = self.feedback.baseline_decay * self.baseline + (1.0 - self.feedback.baseline_decay) * h.detach()
        return (h - self.baseline).detach()

    def _shuffled(self, h: torch.Tensor) -> torch.Tensor:
        """A uniform draw from the h of the latest `shuffle_buffer` earlier steps (0 at the first step); this step's h
        joins the buffer afterwards."""
        filled = min(self.h_seen, len(self.h_buffer))
        if filled == 0:
            drawn = torch.zeros_like(h)
        else:
            drawn = self.h_buffer[int(torch.randint(filled, ()))].clone().to(h.dtype)
        self.h_buffer[self.h_seen % len(self.h_buffer)] = h.detach()
        self.h_seen += 1
        self._h_drawn = drawn
        return drawn

    def _student_metrics(
        self,
        batch: Batch,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        pseudo_labels: torch.Tensor | None,
        student_loss: torch.Tensor,
        grad_norm: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Teacher–student agreement (argmax vs argmax) and, when the true labels are known, the accuracy of the
        pseudo labels (the sampled ŷ in hard mode, the teacher's argmax otherwise) and of the student."""
        student_pred, teacher_pred = student_logits.detach().argmax(-1), teacher_logits.detach().argmax(-1)
        pseudo_labels = teacher_pred if pseudo_labels is None else pseudo_labels
        metrics = {
            "student_loss": student_loss.detach(),
            "student_grad_norm": grad_norm,
            "agreement": (student_pred == teacher_pred).float().mean(),
        }
        if batch.y_u is not None:
            metrics["pseudo_label_acc"] = (pseudo_labels == batch.y_u).float().mean()
            metrics["student_unlabeled_acc"] = (student_pred == batch.y_u).float().mean()
        return metrics

    # ------------------------------------------------------------------ interface

    def reported_networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher} if self.teacher_part.takes_images else {}

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "baseline": self.baseline.detach().clone(),
            "h_buffer": self.h_buffer.clone(),
            "h_seen": self.h_seen,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.baseline = state["baseline"].to(self.baseline.device)
        if "h_buffer" in state:  # MPL's checkpoints before the shuffled control (always teacher_signal=mpl) lack it
            self.h_buffer = state["h_buffer"].to(self.h_buffer.device).clone()
            self.h_seen = int(state["h_seen"])


def _no_term(z_strong: torch.Tensor) -> torch.Tensor:
    """teacher_signal=none: the teacher gets no MPL term."""
    return z_strong.new_zeros(())


def _flat_dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([(x * y).sum() for x, y in zip(a, b)]).sum()


def _build(settings: MPLSettings, run: BuildContext) -> MetaPseudoLabels:
    return MetaPseudoLabels(
        run.new_network(role="teacher"),
        run.new_network(),
        run.num_classes,
        settings,
        teacher_optim=run.optim("teacher", run.total_steps),
        student_optim=run.optim("student", run.total_steps),
        ema_decay=run.ema_decay,
    )


def _label(settings: MPLSettings) -> str:
    """'hard/dot', 'soft', 'official', with the control and what is switched off."""
    losses = settings.teacher_losses
    parts = [settings.feedback.label()]
    parts += [f"no teacher {name}" for name, on in (("UDA", losses.uda), ("CE", losses.supervised_loss)) if not on]
    return ", ".join(parts)


def feedback_memory(
    settings: MPLSettings | ReducedMPLSettings, num_classes: int, examples: int
) -> list[tuple[str, int]]:
    """What the feedback allocates besides the networks (mpl's and reduced_mpl's alike): the shuffled control's buffer
    of earlier steps' h."""
    return [("method.feedback.shuffle_buffer", 4 * settings.feedback.shuffle_buffer)]


# the teacher's forward as UDA's, the student's besides
METHOD = MethodEntry(
    MPLSettings, _build, _label, MemoryShape(networks=2, unlabeled_views=2, labeled=True, own=feedback_memory)
)


def _strong(batch: Batch) -> torch.Tensor:
    """The unlabeled batch's strong view (the feedback modes' student input)."""
    return batch.unlabeled()[1]
