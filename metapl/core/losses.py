"""Loss functions shared by every method: pure functions of logits and targets (docs/method.md#aux-losses)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def smooth_targets(targets: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """(1 − ε)·target + ε/K; `targets` are class indices or a distribution over K classes."""
    if targets.dim() == 1:
        targets = F.one_hot(targets, num_classes).to(torch.get_default_dtype())
    if smoothing == 0.0:
        return targets
    return targets * (1.0 - smoothing) + smoothing / num_classes


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """CE(q, softmax(logits)) = −Σ_k q_k log p_k, averaged over the batch by default."""
    per_example = -(target.to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    return per_example.mean()


def smoothed_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Label-smoothed CE with hard labels, the batch mean; `mask` zeroes examples (TSA) but keeps the denominator."""
    per_example = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
    if mask is not None:
        per_example = per_example * mask
    return per_example.mean()


def uda_consistency(
    logits_weak: torch.Tensor, logits_strong: torch.Tensor, temperature: float, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """UDA loss (docs/method.md#aux-losses): masked CE(sharpen(weak), strong), divided by the full unlabeled count.

    Returns (loss, mask); the target and the mask carry no gradient.
    """
    with torch.no_grad():
        target = F.softmax(logits_weak.detach() / temperature, dim=-1)
        mask = (target.max(dim=-1).values >= threshold).to(logits_strong.dtype)
    loss = (soft_cross_entropy(logits_strong, target, reduction="none") * mask).mean()
    return loss, mask


def tsa_threshold(schedule: str, step: int, total_steps: int, num_classes: int) -> float:
    """Training-signal-annealing threshold η_t; labeled examples whose correct-class probability exceeds it are dropped."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "linear":
        alpha = progress
    elif schedule == "log":
        alpha = 1.0 - math.exp(-progress * 5.0)
    elif schedule == "exp":
        alpha = math.exp((progress - 1.0) * 5.0)
    else:
        raise ValueError(f"unknown TSA schedule {schedule!r}; use linear, log or exp")
    return alpha * (1.0 - 1.0 / num_classes) + 1.0 / num_classes


def tsa_mask(logits: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where the model's probability of the correct class is at most the threshold."""
    with torch.no_grad():
        correct = F.softmax(logits.detach(), dim=-1).gather(1, labels[:, None]).squeeze(1)
        return (correct <= threshold).to(logits.dtype)


def linear_ramp(step: int, ramp_steps: int) -> float:
    """min(1, t / ramp_steps): the UDA weight's warm-up factor (docs/method.md#aux-losses)."""
    if ramp_steps <= 0:
        return 1.0
    return min(1.0, step / ramp_steps)
