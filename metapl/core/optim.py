"""Optimiser settings, the step-based LR schedule, and one SGD (or Adam) update with coupled weight decay and clipping (docs/method.md#optimisation)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from metapl.core.distributed import averaged
from metapl.core.optim_config import OptimSettings

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def lr_at(settings: OptimSettings, step: int) -> float:
    """LR at `step` (docs/method.md#optimisation): 0 during the wait, linear warm-up, then cosine to 0 at total_steps or constant."""
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


def global_norm(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """‖(t_1, …, t_n)‖₂ over all elements of all tensors, as one 0-dim tensor (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def split_decay_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, not decayed): parameters of normalisation layers are not decayed, as in the official code."""
    no_decay_ids = {id(p) for m in model.modules() if isinstance(m, _NORM_TYPES) for p in m.parameters(recurse=False)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) not in no_decay_ids], [p for p in params if id(p) in no_decay_ids]


def _optimizer(params: list[torch.Tensor], settings: OptimSettings) -> torch.optim.Optimizer:
    """torch's SGD or Adam with its fused kernel where this torch and device have one (one kernel for all tensors),
    else its foreach path; the per-tensor loop costs ~8× more on a CPU. Weight decay and clipping are applied to
    the gradients before (Updater.apply), so the optimiser itself never decays."""
    momentum = settings.momentum
    kind: type[torch.optim.Optimizer]
    options: dict[str, Any]
    if settings.optimizer == "adam":
        kind, options = torch.optim.Adam, dict(lr=settings.lr, betas=(momentum, settings.beta2), eps=settings.eps)
    else:
        kind, options = (
            torch.optim.SGD,
            dict(lr=settings.lr, momentum=momentum, nesterov=settings.nesterov and momentum > 0),
        )
    try:
        return kind(params, **options, fused=True)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this torch version, device or dtype
        return kind(params, **options, foreach=True)


class Updater:
    """Applies one optimiser step to a model from a list of gradients, in the official order:
    g + wd·θ (non-norm parameters), then global-norm clipping, then Nesterov SGD (or Adam) at the scheduled LR."""

    def __init__(self, model: nn.Module, settings: OptimSettings):
        self.settings = settings
        decay, no_decay = split_decay_parameters(model)
        self.params: list[torch.Tensor] = [*decay, *no_decay]
        self._num_decay = len(decay)
        self.optimizer = _optimizer(self.params, settings)
        self.lr = 0.0
        self.loss_scale: float | None = 2.0**16 if settings.fp16_loss_scale else None
        self._good_steps = 0
        self.skipped = False  # whether the last apply() dropped its update (float16 overflow)

    def gradients(self, loss: torch.Tensor) -> list[torch.Tensor]:
        """∇loss for self.params (not accumulated into .grad), unscaled, averaged over data-parallel ranks."""
        if self.loss_scale is None:
            return averaged(list(torch.autograd.grad(loss, self.params)))
        grads = torch.autograd.grad(loss * self.loss_scale, self.params)
        return averaged([g / self.loss_scale for g in grads])

    def set_step(self, step: int) -> float:
        """Set the scheduled LR for `step` and return it."""
        self.lr = lr_at(self.settings, step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        return self.lr

    def apply(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Update the parameters from `grads` (aligned with self.params; left unmodified); returns the pre-clip norm."""
        wd, clip = self.settings.weight_decay, self.settings.grad_clip
        # Own copies: clipping below and the foreach (Nesterov) SGD step modify p.grad in place. Each in its
        # parameter's memory layout: autograd may return another (a 2×2 stride-2 conv's weight gradient comes
        # channels-last), and torch's fused SGD pairs grad and parameter elements by memory order, not by index.
        grads = [torch.empty_like(p).copy_(g) for p, g in zip(self.params, grads)]
        if wd > 0 and self._num_decay:
            n = self._num_decay
            torch._foreach_add_(grads[:n], self.params[:n], alpha=wd)
        norm = global_norm(grads)
        self.skipped = self.loss_scale is not None and not self._scaled_step_ok(norm)
        if self.skipped:
            return norm  # float16 overflow: skip this update, as torch.amp.GradScaler does
        if clip > 0:
            torch._foreach_mul_(grads, torch.clamp(clip / (norm + 1e-6), max=1.0))
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        for p in self.params:
            p.grad = None
        return norm

    def _scaled_step_ok(self, norm: torch.Tensor) -> bool:
        """Dynamic loss scale: halve it after an overflow, double it after 2,000 finite steps in a row."""
        assert self.loss_scale is not None
        if not torch.isfinite(norm):  # a host sync, paid only under float16
            self.loss_scale /= 2.0
            self._good_steps = 0
            return False
        self._good_steps += 1
        if self._good_steps % 2000 == 0:
            self.loss_scale *= 2.0
        return True

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "loss_scale": self.loss_scale, "good_steps": self._good_steps}

    def load_state_dict(self, state: dict) -> None:
        kernels = [(g["fused"], g["foreach"]) for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        # Keep this process's kernel choice, not the one of the process that saved (older checkpoints: neither).
        for group, (fused, foreach) in zip(self.optimizer.param_groups, kernels):
            group["fused"], group["foreach"] = fused, foreach
        self.loss_scale, self._good_steps = state["loss_scale"], int(state["good_steps"])
