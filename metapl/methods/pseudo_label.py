"""Pseudo Labels baseline (paper Eq. 1): a teacher trained on labeled data, then frozen; the student learns its labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metapl.losses import smooth_targets, smoothed_cross_entropy, soft_cross_entropy
from metapl.methods.base import Batch, TwoModelMethod
from metapl.optim import OptimSettings


class PseudoLabel(TwoModelMethod):
    """Steps [0, teacher_steps): the teacher learns the labeled batch. Then the teacher is frozen and the student
    learns the teacher's pseudo labels on the unlabeled batch (hard argmax by default, or the soft distribution)."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        num_classes: int,
        teacher_steps: int,
        *,
        teacher_optim: OptimSettings | None = None,
        student_optim: OptimSettings | None = None,
        label_smoothing: float = 0.0,
        student_label_smoothing: float = 0.0,
        soft: bool = False,
        ema_decay: float | None = None,
    ):
        self._init_models(teacher, student, teacher_optim, student_optim, ema_decay)
        self.num_classes, self.teacher_steps = num_classes, teacher_steps
        self.label_smoothing, self.student_label_smoothing, self.soft = label_smoothing, student_label_smoothing, soft

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor | float]:
        if step < self.teacher_steps:
            return self._teacher_step(batch, step)
        return self._student_step(batch, step - self.teacher_steps)

    def _teacher_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor | float]:
        lr = self.teacher_updater.set_step(step)
        self.teacher.train()
        logits = self.teacher(batch.x_l)
        loss = smoothed_cross_entropy(logits, batch.y_l, self.label_smoothing)
        grad_norm = self.teacher_updater.apply(self.teacher_updater.gradients(loss))
        return {
            "teacher_loss": loss.detach(),
            "teacher_labeled_acc": (logits.detach().argmax(-1) == batch.y_l).float().mean(),
            "teacher_grad_norm": grad_norm,
            "lr_teacher": lr,
        }

    def _student_step(self, batch: Batch, step: int) -> dict[str, torch.Tensor | float]:
        lr = self.student_updater.set_step(step)
        self.teacher.eval()  # frozen: its predictions no longer change, so dropout and batch statistics are off
        with torch.no_grad():
            teacher_probs = F.softmax(self.teacher(batch.x_u_weak), dim=-1)
        self.student.train()
        logits = self.student(batch.x_u_strong)
        if self.soft:
            loss = soft_cross_entropy(
                logits, smooth_targets(teacher_probs, self.num_classes, self.student_label_smoothing)
            )
        else:
            loss = smoothed_cross_entropy(logits, teacher_probs.argmax(-1), self.student_label_smoothing)
        grad_norm = self._update_student(self.student_updater.gradients(loss), step)
        metrics = {
            "student_loss": loss.detach(),
            "student_grad_norm": grad_norm,
            "agreement": (logits.detach().argmax(-1) == teacher_probs.argmax(-1)).float().mean(),
            "lr_student": lr,
        }
        if batch.y_u is not None:
            metrics["pseudo_label_acc"] = (teacher_probs.argmax(-1) == batch.y_u).float().mean()
        return metrics

    def eval_model(self) -> nn.Module:
        """The (EMA) student, also while the teacher trains: selection must never pick the teacher."""
        return self._student_eval_model()
