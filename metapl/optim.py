"""Optimiser settings, the step-based LR schedule, and one SGD update with coupled weight decay and clipping (spec §7)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class OptimSettings:
    """One network's optimiser: Nesterov SGD, coupled L2 (norm layers skipped), global-norm clip, LR schedule."""

    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # global-norm bound; 0 turns clipping off
    schedule: str = "cosine"  # "cosine" (to 0 at total_steps) or "constant"
    warmup_steps: int = 0
    wait_steps: int = 0  # LR 0 for this many steps (the student's wait period, spec §7)
    total_steps: int = 1000


def lr_at(settings: OptimSettings, step: int) -> float:
    """LR at `step` (spec §7): 0 during the wait, linear warm-up, then cosine to 0 at total_steps or constant."""
    t = step - settings.wait_steps
    if t < 0:
        return 0.0
    if t < settings.warmup_steps:
        return settings.lr * (t + 1) / settings.warmup_steps
    if settings.schedule == "constant":
        return settings.lr
    span = max(settings.total_steps - settings.warmup_steps - settings.wait_steps, 1)
    progress = min(t - settings.warmup_steps, span) / span
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def split_decay_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): parameters of normalisation layers are not decayed, as in the official code."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) not in no_decay_ids], [p for p in params if id(p) in no_decay_ids]


class Updater:
    """Applies one optimiser step to a model from a list of gradients, in the official order:
    g + wd·θ (non-norm parameters), then global-norm clipping, then Nesterov SGD at the scheduled LR."""

    def __init__(self, model: nn.Module, settings: OptimSettings):
        self.settings = settings
        decay, no_decay = split_decay_parameters(model)
        self.params = decay + no_decay
        self._num_decay = len(decay)
        momentum = settings.momentum
        self.optimizer = torch.optim.SGD(
            self.params, lr=settings.lr, momentum=momentum, nesterov=settings.nesterov and momentum > 0
        )
        self.lr = 0.0

    def set_step(self, step: int) -> float:
        """Set the scheduled LR for `step` and return it."""
        self.lr = lr_at(self.settings, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return self.lr

    def apply(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Update the parameters from `grads` (aligned with self.params; left unmodified); returns the pre-clip norm."""
        wd, clip = self.settings.weight_decay, self.settings.grad_clip
        # Own copies: clipping below and the foreach (Nesterov) SGD step modify p.grad in place.
        grads = [g.clone() for g in grads]
        if wd > 0 and self._num_decay:
            n = self._num_decay
            torch._foreach_add_(grads[:n], self.params[:n], alpha=wd)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if clip > 0:
            torch._foreach_mul_(grads, torch.clamp(clip / (norm + 1e-6), max=1.0))
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        for p in self.params:
            p.grad = None
        return norm

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
