"""Pseudo Labels baseline (paper Eq. 1): a teacher trained on labeled data, then frozen; the student learns its labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metapl.core.batch import Batch
from metapl.core.losses import smooth_targets, smoothed_cross_entropy, soft_cross_entropy
from metapl.core.optim import OptimSettings
from metapl.core.settings import check_settings
from metapl.parts.methods.base import BuildContext, MemoryShape, MethodEntry, Metrics, TwoModelMethod, top1
from metapl.parts.methods.settings import PseudoLabelSettings


class PseudoLabel(TwoModelMethod):
    """Steps [0, teacher_steps): the teacher learns the labeled batch. Then the teacher is frozen and the student
    learns the teacher's pseudo labels on the unlabeled batch (hard argmax by default, or the soft distribution)."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        num_classes: int,
        settings: PseudoLabelSettings | None = None,
        *,
        teacher_steps: int,
        teacher_optim: OptimSettings | None = None,
        student_optim: OptimSettings | None = None,
        ema_decay: float | None = None,
    ):
        self.settings = settings or PseudoLabelSettings()
        check_settings(self.settings, "method")
        self._init_models(teacher, student, teacher_optim, student_optim, ema_decay)
        self.num_classes, self.teacher_steps = num_classes, teacher_steps

    def step(self, batch: Batch, step: int) -> Metrics:
        if step < self.teacher_steps:
            return self._teacher_step(batch, step)
        return self._student_step(batch, step - self.teacher_steps)

    def _teacher_step(self, batch: Batch, step: int) -> Metrics:
        lr = self.teacher_updater.set_step(step)
        self.teacher.train()
        logits = self.teacher(batch.x_l)
        loss = smoothed_cross_entropy(logits, batch.y_l, self.settings.label_smoothing)
        grad_norm = self.teacher_updater.apply(self.teacher_updater.gradients(loss))
        return {
            "teacher_loss": loss.detach(),
            "teacher_labeled_acc": top1(logits, batch.y_l),
            "teacher_grad_norm": grad_norm,
            "lr_teacher": lr,
        }

    def _student_step(self, batch: Batch, step: int) -> Metrics:
        lr = self.student_updater.set_step(step)
        x_u_weak, x_u_strong = batch.unlabeled()
        self.teacher.eval()  # frozen: its predictions no longer change, so dropout and batch statistics are off
        with torch.no_grad():
            teacher_probs = F.softmax(self.teacher(x_u_weak), dim=-1)
        self.student.train()
        logits = self.student(x_u_strong)
        smoothing = self.settings.student_label_smoothing
        if self.settings.soft:
            loss = soft_cross_entropy(logits, smooth_targets(teacher_probs, self.num_classes, smoothing))
        else:
            loss = smoothed_cross_entropy(logits, teacher_probs.argmax(-1), smoothing)
        grad_norm = self._update_student(self.student_updater.gradients(loss), step)
        metrics: Metrics = {
            "student_loss": loss.detach(),
            "student_grad_norm": grad_norm,
            "agreement": top1(logits, teacher_probs.argmax(-1)),
            "lr_student": lr,
        }
        if batch.y_u is not None:
            metrics["pseudo_label_acc"] = top1(teacher_probs, batch.y_u)
        return metrics


def _build(settings: PseudoLabelSettings, run: BuildContext) -> PseudoLabel:
    teacher_steps = max(1, int(round(run.total_steps * settings.teacher_fraction)))
    return PseudoLabel(
        run.new_network(role="teacher"),
        run.new_network(),
        run.num_classes,
        settings,
        teacher_steps=teacher_steps,
        teacher_optim=run.optim("teacher", teacher_steps),
        student_optim=run.optim("student", run.total_steps - teacher_steps),
        ema_decay=run.ema_decay,
    )


# the teacher's phase: B labeled images; the student's: μB strong views (the larger)
METHOD = MethodEntry(
    PseudoLabelSettings, _build, lambda s: "soft" if s.soft else "", MemoryShape(networks=2, unlabeled_views=1)
)
