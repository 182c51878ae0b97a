"""Evaluation: top-1 / top-5 accuracy and loss of a model on a tensor dataset, in eval mode, without gradients."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from metapl.parts.methods.base import Method


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
    for start, xb in _batches(x, batch_size):
        xb = xb.to(device, non_blocking=True)
        yb = y[start : start + len(xb)].to(device, non_blocking=True)
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
    parts = [torch.softmax(model(xb.to(device)).float(), -1).cpu() for _, xb in _batches(x, batch_size)]
    model.train(was_training)
    return torch.cat(parts)


def _batches(x, batch_size: int):
    """(start, batch) pairs: slices of a tensor, or decoded evaluation views of image files (loader workers)."""
    if isinstance(x, torch.Tensor):
        for start in range(0, len(x), batch_size):
            yield start, x[start : start + batch_size]
        return
    from metapl.parts.data.streaming import eval_batches

    start = 0
    for xb in eval_batches(x, batch_size):
        yield start, xb
        start += len(xb)


def make_evaluator(data, batch_size: int) -> Callable[[Method], dict[str, float]]:
    """Validation and test scores of the method's evaluated model (the EMA student), and of the networks it
    reports besides (the teacher's, as teacher_val_top1, ...)."""

    def score(model: nn.Module, prefix: str) -> dict[str, float]:
        scores = {}
        for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
            scores.update({f"{prefix}{split}_{k}": v for k, v in evaluate(model, x, y, batch_size).items()})
        return scores

    def run(method: Method) -> dict[str, float]:
        evaluated = method.eval_model()
        scores = score(evaluated, "")
        for name, network in method.reported_networks().items():
            if network is not evaluated:
                scores.update(score(network, f"{name}_"))
        return scores

    return run
