"""Supervised baseline: one model, label-smoothed CE on the labeled batch (also the finetuning phase)."""

from __future__ import annotations

import copy
from typing import ClassVar

from torch import nn

from metapl.core.batch import Batch
from metapl.core.losses import smoothed_cross_entropy
from metapl.core.optim import OptimSettings
from metapl.core.settings import check_settings
from metapl.parts.methods.base import BuildContext, MemoryShape, MethodEntry, Metrics, SingleModelMethod, top1
from metapl.parts.methods.settings import SupervisedSettings


class Supervised(SingleModelMethod):
    """Trains `model` on labeled data only."""

    uses_unlabeled: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        settings: SupervisedSettings | None = None,
        *,
        optim: OptimSettings | None = None,
        ema_decay: float | None = None,
    ):
        self.settings = settings or SupervisedSettings()
        check_settings(self.settings, "method")
        super().__init__(model, num_classes, optim, ema_decay)

    def step(self, batch: Batch, step: int) -> Metrics:
        lr = self.updater.set_step(step)
        self.model.train()
        logits = self.model(batch.x_l)
        loss = smoothed_cross_entropy(logits, batch.y_l, self.settings.label_smoothing)
        grad_norm = self._finish_update(self.updater.gradients(loss), step)
        return {
            "loss": loss.detach(),
            "labeled_acc": top1(logits, batch.y_l),
            "grad_norm": grad_norm,
            "lr": lr,
        }


def finetuner(
    model: nn.Module, num_classes: int, optim: OptimSettings | None = None, label_smoothing: float = 0.0
) -> Supervised:
    """The finetuning phase (docs/method.md#finetuning): supervised training of a copy of `model` (default SGD,
    LR 1e-5, constant)."""
    settings = optim or OptimSettings(lr=1e-5, schedule="constant", total_steps=1000)
    return Supervised(
        copy.deepcopy(model).requires_grad_(True), num_classes, SupervisedSettings(label_smoothing), optim=settings
    )


def _build(settings: SupervisedSettings, run: BuildContext) -> Supervised:
    return Supervised(
        run.new_network(),
        run.num_classes,
        settings,
        optim=run.optim("student", run.total_steps),
        ema_decay=run.ema_decay,
    )


METHOD = MethodEntry(SupervisedSettings, _build, memory=MemoryShape(networks=1, unlabeled_views=0, labeled=True))
