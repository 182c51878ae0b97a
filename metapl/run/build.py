"""From a validated Config to the run's parts: device, seeds, networks and the method (looked up by name)."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import torch
from torch import nn

from metapl.core.errors import ConfigError
from metapl.core.optim import OptimSettings
from metapl.parts.data.loaders import DataBundle
from metapl.parts.methods import METHODS
from metapl.parts.methods.base import BuildContext, Method
from metapl.parts.models import MODELS
from metapl.parts.models.normalize import Standardized
from metapl.run.config import Config


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA GPU is visible; use train.device=auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, data: DataBundle, role: str = "student", pretrained: bool = False) -> nn.Module:
    """A fresh network of model.name (role "teacher": model.teacher_name) for the data's inputs and classes,
    standardising uint8 images with the data's statistics, or with its pretrained weights' own (timm models).
    `pretrained` loads model.pretrained's weights (training starts from them); without it the network is the
    bare architecture, into which a run's own weights are loaded (eval, predict, export)."""
    check_num_classes(cfg, data)
    model_cfg = cfg.model.of(role)
    key = "model.teacher_name" if role == "teacher" and cfg.model.teacher_name else "model.name"
    entry = MODELS.get(model_cfg.name)
    options = entry.options(model_cfg)
    if pretrained and model_cfg.pretrained:
        weights_key = (
            "model.teacher_pretrained" if role == "teacher" and cfg.model.teacher_pretrained else "model.pretrained"
        )
        options.update(pretrained=model_cfg.pretrained, pretrained_key=weights_key)
    try:
        model = entry.create(data.num_classes, data.input_shape, model_cfg.dropout, **options)
    except ConfigError:  # a ValueError too, already one line (pretrained weights that are not there)
        raise
    except ValueError as err:  # the model cannot take this data's inputs
        raise ConfigError(f"{key}={model_cfg.name!r} does not fit data.name={cfg.data.name!r}: {err}") from None
    if data.normalization is not None:
        mean, std = data.normalization
        own = entry.preprocessing(model_cfg)
        if own is not None and len(own.mean) == data.input_shape[0]:
            mean, std = own.mean, own.std
        model = Standardized(model, mean, std)
    return model


def check_num_classes(cfg: Config, data: DataBundle) -> None:
    """model.num_classes, when set, must be the data's class count (a guard for folder and CSV datasets)."""
    if cfg.model.num_classes and cfg.model.num_classes != data.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but data.name={cfg.data.name!r} has {data.num_classes} "
            f"classes; set model.num_classes={data.num_classes}, or 0 to take the data's"
        )


def optim_settings(cfg: Config, network: str, total_steps: int) -> OptimSettings:
    """One network's optimiser settings for the run ("teacher" or "student" section): its step budget, the
    batch-scaled LR (train.scale_lr) and fp16 loss scaling (train.precision=fp16)."""
    section = getattr(cfg, network)
    lr = section.lr * cfg.data.batch_size / 256 if cfg.train.scale_lr else section.lr
    fp16 = cfg.train.precision == "fp16"
    return OptimSettings(
        **{**dataclasses.asdict(section), "lr": lr}, total_steps=max(total_steps, 1), fp16_loss_scale=fp16
    )


def build_method(cfg: Config, data: DataBundle, device: torch.device) -> Method:
    """The method named by method.name, built by its registered entry, with fresh networks on `device` (starting
    from model.pretrained's weights when set)."""
    roles: set[str] = set()

    def new_network(role: str = "student") -> nn.Module:
        roles.add(role)
        return build_model(cfg, data, role, pretrained=True).to(device)

    context = BuildContext(
        num_classes=data.num_classes,
        total_steps=cfg.train.steps,
        ema_decay=cfg.train.ema_decay or None,
        new_network=new_network,
        optim=lambda network, steps: optim_settings(cfg, network, steps),
    )
    method = METHODS.get(cfg.method.name).build(cfg.method.settings, context)
    for key in ("teacher_name", "teacher_pretrained"):
        if getattr(cfg.model, key) and "teacher" not in roles:
            raise ConfigError(
                f"model.{key}={getattr(cfg.model, key)!r}, but method.name={cfg.method.name} builds no teacher "
                "network from the model section; clear it, or choose --method mpl or pseudo_label"
            )
    return method


def method_label(cfg: Config) -> str:
    """'mpl (hard/dot)', 'uda': the method's name and its entry's label of the settings."""
    label = METHODS.get(cfg.method.name).label(cfg.method.settings)
    return f"{cfg.method.name} ({label})" if label else cfg.method.name
