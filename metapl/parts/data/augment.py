"""Batched augmentation on tensors: the weak and strong views for small images and for 2-D points.

Every function takes a batch and a torch.Generator, so a seeded generator gives the same views twice and the
whole batch is transformed in a few tensor operations (on the CPU here, on the GPU when the batch lives there).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * (high - low) + low).to(device)


def identity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """No augmentation."""
    return x


def translate(x: torch.Tensor, generator: torch.Generator, max_shift: int = 1, fill: float = 0.0) -> torch.Tensor:
    """Pad by `max_shift` with `fill`, then crop back at a random offset per image (integer pixel shifts)."""
    n, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).to(x.device)
    rows = (dy[:, None] + torch.arange(height, device=x.device)[None, :])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(width, device=x.device)[None, :])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def random_affine(
    x: torch.Tensor, generator: torch.Generator, degrees: float, scale: tuple[float, float], shear: float
) -> torch.Tensor:
    """Rotate by U(±degrees), scale by U(scale), shear by U(±shear), per image, zero fill, bilinear."""
    n = x.shape[0]
    angle = _uniform(n, -degrees, degrees, generator, x.device) * math.pi / 180
    zoom = _uniform(n, scale[0], scale[1], generator, x.device)
    shear_x = _uniform(n, -shear, shear, generator, x.device)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear_x * cos, torch.zeros_like(cos)], 1),
            torch.stack([sin, cos + shear_x * sin, torch.zeros_like(cos)], 1),
        ],
        1,
    ).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def cutout(x: torch.Tensor, generator: torch.Generator, size: int, fill: float = 0.0) -> torch.Tensor:
    """Set a size×size square, centred uniformly over each image (clipped at the border), to `fill`."""
    n, _, height, width = x.shape
    cy = torch.randint(0, height, (n,), generator=generator).to(x.device)
    cx = torch.randint(0, width, (n,), generator=generator).to(x.device)
    ys = torch.arange(height, device=x.device)[None, :]
    xs = torch.arange(width, device=x.device)[None, :]
    half = size // 2
    inside_y = (ys >= (cy - half)[:, None]) & (ys < (cy - half + size)[:, None])
    inside_x = (xs >= (cx - half)[:, None]) & (xs < (cx - half + size)[:, None])
    mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    return torch.where(mask, torch.full_like(x, fill), x)


def hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability ½."""
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def image_views(flip: bool) -> tuple[Augment, Augment]:
    """(weak, strong) views for small grey images: the weak view shifts by up to 1/8 of the side (and flips when
    `flip`); the strong view adds a random affine warp, contrast jitter and a Cutout square of 3/8 of the side."""

    def weak(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if flip:
            x = hflip(x, generator)
        return translate(x, generator, max_shift=max(1, x.shape[-1] // 8))

    def strong(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return _strong_tail(weak(x, generator), generator)

    return weak, strong


def small_image_weak(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Weak view for tiny grey images: a random shift of up to 1 pixel."""
    return translate(x, generator, max_shift=1)


def small_image_strong(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Strong view for tiny grey images: the weak shift, a random affine warp, contrast jitter and a Cutout square."""
    return _strong_tail(translate(x, generator, max_shift=1), generator)


def _strong_tail(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    x = random_affine(x, generator, degrees=20.0, scale=(0.85, 1.15), shear=0.3)
    gain = _uniform(x.shape[0], 0.6, 1.4, generator, x.device).to(x.dtype)[:, None, None, None]
    x = (x * gain).clamp(0.0, 1.0)
    size = max(1, round(x.shape[-1] * 3 / 8))
    return cutout(x, generator, size=size)


def point_jitter(sigma: float) -> Augment:
    """For 2-D points: add N(0, sigma²) noise to each coordinate."""

    def jitter(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if sigma == 0.0:
            return x
        return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)

    return jitter
