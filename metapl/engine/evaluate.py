"""Evaluation: top-1 / top-5 accuracy and loss of a model on a tensor dataset, in eval mode, without gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """{'top1', 'top5' (when there are more than 5 classes), 'loss'}; an empty set gives {}."""
    if len(y) == 0:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct1 = correct5 = 0
    loss_sum = 0.0
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += (top[:, 0] == yb).sum().item()
        correct5 += (top == yb[:, None]).any(dim=-1).sum().item()
    model.train(was_training)
    result = {"top1": correct1 / len(y), "loss": loss_sum / len(y)}
    if logits.shape[-1] > 5:
        result["top5"] = correct5 / len(y)
    return result


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Softmax probabilities of `model` on `x`, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts = [
        torch.softmax(model(x[i : i + batch_size].to(device)).float(), -1).cpu() for i in range(0, len(x), batch_size)
    ]
    model.train(was_training)
    return torch.cat(parts)
