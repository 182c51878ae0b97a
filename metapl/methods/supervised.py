"""Supervised baseline: one model, label-smoothed CE on the labeled batch (also the finetuning phase)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from metapl.losses import smoothed_cross_entropy
from metapl.methods.base import Batch, SingleModelMethod
from metapl.optim import OptimSettings


class Supervised(SingleModelMethod):
    """Trains `model` on labeled data only."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optim: OptimSettings | None = None,
        label_smoothing: float = 0.0,
        ema_decay: float | None = None,
    ):
        super().__init__(model, num_classes, optim, ema_decay)
        self.label_smoothing = label_smoothing

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor | float]:
        lr = self.updater.set_step(step)
        self.model.train()
        logits = self.model(batch.x_l)
        loss = smoothed_cross_entropy(logits, batch.y_l, self.label_smoothing)
        grad_norm = self._finish_update(self.updater.gradients(loss), step)
        return {
            "loss": loss.detach(),
            "labeled_acc": (logits.detach().argmax(-1) == batch.y_l).float().mean(),
            "grad_norm": grad_norm,
            "lr": lr,
        }


def finetuner(
    model: nn.Module, num_classes: int, optim: OptimSettings | None = None, label_smoothing: float = 0.0
) -> Supervised:
    """The finetuning phase (spec §5): supervised training of a copy of `model` (default SGD, LR 1e-5, constant)."""
    settings = optim or OptimSettings(lr=1e-5, schedule="constant", total_steps=1000)
    return Supervised(copy.deepcopy(model).requires_grad_(True), num_classes, settings, label_smoothing)
