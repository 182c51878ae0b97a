"""UDA baseline, and the auxiliary losses (supervised + UDA) that MPL's teacher reuses (docs/method.md#aux-losses)."""

from __future__ import annotations

import torch
from torch import nn

from metapl.core.batch import Batch
from metapl.core.losses import linear_ramp, smoothed_cross_entropy, tsa_mask, tsa_threshold, uda_consistency
from metapl.core.optim import OptimSettings
from metapl.core.settings import check_settings
from metapl.parts.methods.base import BuildContext, MemoryShape, MethodEntry, Metrics, SingleModelMethod, top1
from metapl.parts.methods.settings import UDALosses, UDASettings


def auxiliary_losses(
    logits_l: torch.Tensor,
    labels: torch.Tensor,
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    step: int,
    settings: UDALosses,
    total_steps: int,
    *,
    supervised: bool = True,
    uda: bool = True,
) -> tuple[torch.Tensor, Metrics]:
    """L_sup + λ(t)·L_UDA on one network's logits; returns the loss and its parts as metrics. TSA's threshold
    reaches 1 at `total_steps`; `supervised` and `uda` switch either part off."""
    total = logits_l.new_zeros(())
    metrics: Metrics = {}
    if supervised:
        mask = None
        if settings.tsa != "none":
            threshold = tsa_threshold(settings.tsa, step, total_steps, logits_l.shape[-1])
            mask = tsa_mask(logits_l, labels, threshold)
            metrics["tsa_ratio"] = mask.mean()
        sup = smoothed_cross_entropy(logits_l, labels, settings.label_smoothing, mask)
        total = total + sup
        metrics["sup_loss"] = sup.detach()
    if uda:
        consistency, mask = uda_consistency(
            logits_weak, logits_strong, settings.uda_temperature, settings.uda_threshold
        )
        weight = settings.uda_weight * linear_ramp(step, settings.uda_ramp_steps)
        total = total + weight * consistency
        metrics["uda_loss"] = consistency.detach()
        metrics["uda_mask"] = mask.mean()
        metrics["uda_weight"] = weight
    return total, metrics


class UDA(SingleModelMethod):
    """Unsupervised Data Augmentation: one model trained with L_sup + λ(t)·L_UDA."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        settings: UDASettings | None = None,
        *,
        optim: OptimSettings | None = None,
        ema_decay: float | None = None,
    ):
        self.settings = settings or UDASettings()
        check_settings(self.settings, "method")
        super().__init__(model, num_classes, optim, ema_decay)

    def step(self, batch: Batch, step: int) -> Metrics:
        lr = self.updater.set_step(step)
        self.model.train()
        x_u_weak, x_u_strong = batch.unlabeled()
        b, bu = batch.x_l.shape[0], x_u_strong.shape[0]
        logits = self.model(torch.cat([batch.x_l, x_u_weak, x_u_strong]))
        logits_l, logits_w, logits_s = logits.split([b, bu, bu])
        total_steps = self.updater.settings.total_steps
        loss, metrics = auxiliary_losses(logits_l, batch.y_l, logits_w, logits_s, step, self.settings, total_steps)
        metrics["grad_norm"] = self._finish_update(self.updater.gradients(loss), step)
        metrics.update(loss=loss.detach(), lr=lr, labeled_acc=top1(logits_l, batch.y_l))
        if batch.y_u is not None:
            metrics["unlabeled_acc"] = top1(logits_w, batch.y_u)
        return metrics


def _build(settings: UDASettings, run: BuildContext) -> UDA:
    return UDA(
        run.new_network(),
        run.num_classes,
        settings,
        optim=run.optim("student", run.total_steps),
        ema_decay=run.ema_decay,
    )


# one forward of the labeled batch and both views
METHOD = MethodEntry(UDASettings, _build, memory=MemoryShape(networks=1, unlabeled_views=2, labeled=True))
