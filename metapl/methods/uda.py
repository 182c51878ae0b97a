"""UDA baseline, and the teacher's auxiliary losses (supervised + UDA) that MPL reuses (spec §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from metapl.losses import linear_ramp, smoothed_cross_entropy, tsa_mask, tsa_threshold, uda_consistency
from metapl.methods.base import Batch, SingleModelMethod
from metapl.optim import OptimSettings


@dataclass
class AuxLossSettings:
    """The teacher's auxiliary losses: label-smoothed CE on labeled data and UDA consistency on unlabeled data."""

    supervised: bool = True
    label_smoothing: float = 0.0
    tsa: str | None = None  # None (off, as in the official code), "linear", "log" or "exp"
    tsa_steps: int = 1000  # the TSA threshold reaches 1 here
    uda: bool = True
    uda_weight: float = 8.0
    uda_temperature: float = 0.7
    uda_threshold: float = 0.6
    uda_ramp_steps: int = 5000  # λ(t) = uda_weight · min(1, t / uda_ramp_steps)


def auxiliary_losses(
    logits_l: torch.Tensor,
    labels: torch.Tensor,
    logits_weak: torch.Tensor,
    logits_strong: torch.Tensor,
    step: int,
    settings: AuxLossSettings,
) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """L_sup + λ(t)·L_UDA on one network's logits; returns the loss and its parts as metrics."""
    total = logits_l.new_zeros(())
    metrics: dict[str, torch.Tensor | float] = {}
    if settings.supervised:
        mask = None
        if settings.tsa:
            threshold = tsa_threshold(settings.tsa, step, settings.tsa_steps, logits_l.shape[-1])
            mask = tsa_mask(logits_l, labels, threshold)
            metrics["tsa_ratio"] = mask.mean()
        sup = smoothed_cross_entropy(logits_l, labels, settings.label_smoothing, mask)
        total = total + sup
        metrics["sup_loss"] = sup.detach()
    if settings.uda:
        uda, mask = uda_consistency(logits_weak, logits_strong, settings.uda_temperature, settings.uda_threshold)
        weight = settings.uda_weight * linear_ramp(step, settings.uda_ramp_steps)
        total = total + weight * uda
        metrics["uda_loss"] = uda.detach()
        metrics["uda_mask"] = mask.mean()
        metrics["uda_weight"] = weight
    return total, metrics


class UDA(SingleModelMethod):
    """Unsupervised Data Augmentation: one model trained with L_sup + λ(t)·L_UDA."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        optim: OptimSettings | None = None,
        losses: AuxLossSettings | None = None,
        ema_decay: float | None = None,
    ):
        super().__init__(model, num_classes, optim, ema_decay)
        self.losses = losses or AuxLossSettings()

    def step(self, batch: Batch, step: int) -> dict[str, torch.Tensor | float]:
        lr = self.updater.set_step(step)
        self.model.train()
        b, bu = batch.x_l.shape[0], batch.x_u_strong.shape[0]
        logits = self.model(torch.cat([batch.x_l, batch.x_u_weak, batch.x_u_strong]))
        logits_l, logits_w, logits_s = logits.split([b, bu, bu])
        loss, metrics = auxiliary_losses(logits_l, batch.y_l, logits_w, logits_s, step, self.losses)
        metrics["grad_norm"] = self._finish_update(self.updater.gradients(loss), step)
        metrics.update(
            loss=loss.detach(), lr=lr, labeled_acc=(logits_l.detach().argmax(-1) == batch.y_l).float().mean()
        )
        if batch.y_u is not None:
            metrics["unlabeled_acc"] = (logits_w.detach().argmax(-1) == batch.y_u).float().mean()
        return metrics
