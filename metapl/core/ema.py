"""Exponential moving average of a model, parameters and BN buffers alike (docs/method.md#optimisation)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA:
    """ema ← δ·ema + (1 − δ)·θ with δ = min(decay, (t + 1)/(t + 10)); integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        delta = min(self.decay, (step + 1) / (step + 10))
        ema_float, model_float = [], []
        for ema_t, t in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema_t.dtype.is_floating_point:
                ema_float.append(ema_t)
                model_float.append(t.detach())
            else:
                ema_t.copy_(t)
        if ema_float:
            torch._foreach_lerp_(ema_float, model_float, 1.0 - delta)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
