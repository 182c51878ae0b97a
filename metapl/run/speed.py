"""The speed switches (train.channels_last, train.sync_bn, train.compile, train.precision): whether this
machine can honour them, and applying them to a method's networks."""

from __future__ import annotations

import torch
from torch import nn

from metapl.core import distributed
from metapl.core.errors import ConfigError
from metapl.parts.methods.base import Method
from metapl.parts.models import compile_network

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_switches(train, device: torch.device) -> None:
    """Refuse, before anything is written, the switches this device or process group cannot run."""
    if train.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU (CPUs emulate float16, very slowly); use bf16 or fp32")
    if train.sync_bn and (device.type != "cuda" or distributed.world_size() == 1):
        raise ConfigError("train.sync_bn=true needs torchrun with several CUDA processes; set train.sync_bn=false")


def apply_switches(train, method: Method, image_inputs: bool) -> None:
    """channels_last, SyncBatchNorm and torch.compile on every network of the method, as `train` asks (after the
    EMA copied the student)."""
    for net in method.networks().values():
        if train.channels_last and image_inputs:
            net.to(memory_format=torch.channels_last)
        if train.sync_bn:
            convert_sync_bn(net)
        if train.compile:
            compile_network(net)


def convert_sync_bn(net: nn.Module) -> None:
    """Swap BatchNorm layers for SyncBatchNorm in place (the parameters stay the same objects)."""
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            convert_sync_bn(child)
