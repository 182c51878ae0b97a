"""The paper's augmentation on uint8 tensors (docs/method.md#augmentation): its RandAugment variant and the CIFAR and ImageNet views.

Images are uint8, (C,H,W) per image or (N,C,H,W) batched, with C = 1 or 3. Every random number comes from the
`generator` argument, a CPU torch.Generator (draws are made on the CPU and moved to the images' device), so a
seeded generator gives the same output twice, on the CPU or the GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from metapl.core.errors import ConfigError, DataError

FILL = 128  # docs/method.md#augmentation: every pixel an op uncovers becomes 128
MAX_LEVEL = 10.0  # the magnitude scale's nominal top; M = 16 or 17 extrapolates beyond it (docs/method.md#randaugment)

OPS: tuple[str, ...] = (
    "auto_contrast",
    "equalize",
    "invert",
    "rotate",
    "posterize",
    "solarize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "cutout",
)
GEOMETRIC_OPS = frozenset({"rotate", "shear_x", "shear_y", "translate_x", "translate_y"})  # negated with prob. ½
_GEOMETRIC_MASK = torch.tensor([op in GEOMETRIC_OPS for op in OPS])

# Per image: one draw for p, then five per layer (op, apply?, negate?, cutout row, cutout column). Every draw is
# made whether or not it is used, and torch.rand on the CPU fills an (N, D) block row by row from the stream, so
# a batch of N draws exactly what N single images draw in turn (tests/test_randaugment.py checks it).
_DRAWS_PER_LAYER = 5


@dataclass(frozen=True)
class OpLevels:
    """The fixed strength of each op at one magnitude (docs/method.md#randaugment table); geometric ones before their random sign."""

    rotate_degrees: float
    shear: float
    translate_pixels: float
    enhance_factor: float
    posterize_bits: int
    cutout_size: int
    solarize_threshold: int


def op_levels(magnitude: float = 16, cutout_const: int = 4, translate_const: int = 4) -> OpLevels:
    """The op strengths at `magnitude` with the given Cutout and translate constants (docs/method.md#randaugment)."""
    _check_settings(magnitude, 0, cutout_const, translate_const)
    level = magnitude / MAX_LEVEL
    return OpLevels(
        rotate_degrees=level * 30.0,
        shear=level * 0.3,
        translate_pixels=level * translate_const,
        enhance_factor=level * 1.8 + 0.1,
        posterize_bits=int(level * 4),
        cutout_size=2 * int(level * cutout_const),
        # the official code casts to uint8, which wraps: 409 -> 153 at M = 16 (docs/method.md#randaugment)
        solarize_threshold=int(level * 256) % 256,
    )


def apply_op(
    img: torch.Tensor,
    op: str,
    magnitude: float = 16,
    *,
    negate: bool = False,
    centre: tuple[int, int] | None = None,
    cutout_const: int = 4,
    translate_const: int = 4,
) -> torch.Tensor:
    """One op of the variant on a (C,H,W) image, with a chosen sign and Cutout centre (default: the middle)."""
    _check_images(img, 3)
    if op not in OPS:
        raise ConfigError(f"unknown RandAugment op {op!r}; use one of {', '.join(OPS)}")
    levels = op_levels(magnitude, cutout_const, translate_const)
    cy, cx = centre if centre is not None else (img.shape[-2] // 2, img.shape[-1] // 2)
    return _apply(img[None], op, levels, negate, torch.tensor([[cy, cx]]))[0]


def rand_augment(
    img: torch.Tensor,
    generator: torch.Generator,
    magnitude: float = 16,
    num_layers: int = 2,
    cutout_const: int = 4,
    translate_const: int = 4,
) -> torch.Tensor:
    """The paper's RandAugment on one (C,H,W) uint8 image: p ~ U(0.2, 0.8), then `num_layers` ops each kept with p."""
    _check_images(img, 3)
    return rand_augment_batch(img[None], generator, magnitude, num_layers, cutout_const, translate_const)[0]


def rand_augment_batch(
    x: torch.Tensor,
    generator: torch.Generator,
    magnitude: float = 16,
    num_layers: int = 2,
    cutout_const: int = 4,
    translate_const: int = 4,
) -> torch.Tensor:
    """`rand_augment` on an (N,C,H,W) batch, image by image in order, with one op call per (op, sign) group."""
    _check_images(x, 4)
    _check_settings(magnitude, num_layers, cutout_const, translate_const)
    levels = op_levels(magnitude, cutout_const, translate_const)
    draws = torch.rand(x.shape[0], 1 + _DRAWS_PER_LAYER * num_layers, generator=generator)
    out = x.clone()
    for op_index, apply, negate, centres in _layers(draws, num_layers, *x.shape[-2:]):
        group = torch.where(apply, op_index * 2 + negate.long(), -1)
        for key in group.unique().tolist():
            if key < 0:
                continue
            rows = (group == key).nonzero().squeeze(1)
            on_device = rows.to(x.device)
            out[on_device] = _apply(out[on_device], OPS[key // 2], levels, bool(key % 2), centres[rows])
    return out


def cifar_weak(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Weak view of an (N,C,H,W) uint8 batch (docs/method.md#cifar-pipeline): random flip, then pad by H/8 with 128 and crop back."""
    _check_images(x, 4)
    if flip:
        x = _random_hflip(x, generator)
    return _pad_crop(x, generator)


def cifar_strong(
    weak: torch.Tensor,
    generator: torch.Generator,
    magnitude: float = 16,
    flip: bool = True,
    num_layers: int = 2,
    cutout: bool = True,
) -> torch.Tensor:
    """Strong view from a weak one (docs/method.md#cifar-pipeline): RandAugment, Cutout of half the side, then flip and pad-crop again."""
    x = rand_augment_batch(weak, generator, magnitude, num_layers, cutout_const=4, translate_const=4)
    if cutout:
        n, _, height, width = x.shape
        # the official 16×16 patch on 32×32 images (pad_size 8), scaled as side/2 for other sizes
        centres = (torch.rand(n, 2, generator=generator) * torch.tensor([height, width])).long()
        x = _cutout(x, centres, min(height, width) // 4)
    if flip:
        x = _random_hflip(x, generator)
    return _pad_crop(x, generator)


def cifar_views(
    x: torch.Tensor, generator: torch.Generator, magnitude: float = 16, flip: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weak, strong) views of an (N,C,H,W) uint8 batch; the strong view starts from the weak one (same crop)."""
    weak = cifar_weak(x, generator, flip)
    return weak, cifar_strong(weak, generator, magnitude, flip)


def inception_crop(img: torch.Tensor, generator: torch.Generator, size: int = 224) -> torch.Tensor:
    """Inception-style crop of a (C,H,W) uint8 image: area 8-100 %, aspect 3/4-4/3 log-uniform, bicubic to size²."""
    _check_images(img, 3)
    _check_size(size)
    height, width = img.shape[-2:]
    log_low, log_high = math.log(3 / 4), math.log(4 / 3)
    for _ in range(10):
        area_frac, log_ratio, top_frac, left_frac = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        area = height * width * (0.08 + 0.92 * area_frac)
        ratio = math.exp(log_low + (log_high - log_low) * log_ratio)
        crop_w, crop_h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(top_frac * (height - crop_h + 1))
            left = int(left_frac * (width - crop_w + 1))
            return _resized_crop(img, top, left, crop_h, crop_w, size)
    # ten misses (very elongated images): the largest central crop whose aspect is within the range
    if width / height > 4 / 3:
        crop_h, crop_w = height, round(height * 4 / 3)
    elif width / height < 3 / 4:
        crop_h, crop_w = round(width * 4 / 3), width
    else:
        crop_h, crop_w = height, width
    return _resized_crop(img, (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w, size)


def imagenet_labeled(img: torch.Tensor, generator: torch.Generator, size: int = 224) -> torch.Tensor:
    """Labeled ImageNet view of a (C,H,W) uint8 image (docs/method.md#imagenet-pipeline): Inception crop, then a random flip."""
    return _maybe_hflip(inception_crop(img, generator, size), generator)


def imagenet_views(
    img: torch.Tensor, generator: torch.Generator, size: int = 224, magnitude: float = 17
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weak, strong) ImageNet views (docs/method.md#imagenet-pipeline): one crop, independent flips, RandAugment on strong, no Cutout."""
    crop = inception_crop(img, generator, size)
    weak = _maybe_hflip(crop, generator)
    strong = _maybe_hflip(crop, generator)
    return weak, rand_augment(strong, generator, magnitude, cutout_const=40, translate_const=100)


def center_crop_eval(img: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Evaluation view (docs/method.md#imagenet-pipeline): the central square of size/256 of the shorter side, bicubic-resized to size²."""
    _check_images(img, 3)
    _check_size(size)
    height, width = img.shape[-2:]
    side = max(1, int(size / (size + 32) * min(height, width)))  # 224/256 at size 224, as the official crop_padding 32
    return _resized_crop(img, (height - side + 1) // 2, (width - side + 1) // 2, side, side, size)


def _layers(
    draws: torch.Tensor, num_layers: int, height: int, width: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: (op index, apply mask, negate mask, Cutout centres) decoded from the (N, D) draws."""
    p = 0.2 + 0.6 * draws[:, 0]
    for layer in range(num_layers):
        d = draws[:, 1 + _DRAWS_PER_LAYER * layer : 1 + _DRAWS_PER_LAYER * (layer + 1)]
        op_index = (d[:, 0] * len(OPS)).long().clamp_(max=len(OPS) - 1)
        # non-geometric ops ignore the sign; zeroing it keeps them in one group per op
        negate = (d[:, 2] < 0.5) & _GEOMETRIC_MASK[op_index]
        centres = torch.stack([(d[:, 3] * height).long(), (d[:, 4] * width).long()], 1)
        yield op_index, d[:, 1] < p, negate, centres


def _apply(x: torch.Tensor, op: str, levels: OpLevels, negate: bool, centres: torch.Tensor) -> torch.Tensor:
    """One op on an (n,C,H,W) uint8 group that shares the sign; `centres` (n,2) is used by Cutout only."""
    sign = -1.0 if negate else 1.0
    fill = [float(FILL)] * x.shape[-3]
    # Enhance ops: torchvision's blend clamps to [0, 255] before the uint8 cast, a saturating (PIL-like) blend.
    # The official TF blend may wrap instead for factors > 1 (docs/method.md#randaugment, docs/method.md#pitfalls, unverified); we saturate.
    factor = levels.enhance_factor
    if op == "auto_contrast":
        return TF.autocontrast(x)
    if op == "equalize":
        return TF.equalize(x)
    if op == "invert":
        return TF.invert(x)
    if op == "rotate":
        return TF.rotate(x, sign * levels.rotate_degrees, InterpolationMode.NEAREST, fill=fill)
    if op == "posterize":
        return TF.posterize(x, levels.posterize_bits)
    if op == "solarize":
        return TF.solarize(x, levels.solarize_threshold)
    if op == "color":
        # a grey image has no colour to enhance: identity for C = 1 (PIL and torchvision do the same)
        return x if x.shape[-3] == 1 else TF.adjust_saturation(x, factor)
    if op == "contrast":
        return TF.adjust_contrast(x, factor)
    if op == "brightness":
        return TF.adjust_brightness(x, factor)
    if op == "sharpness":
        return TF.adjust_sharpness(x, factor)
    if op in ("shear_x", "shear_y"):
        # the official shear maps (x, y) -> (x + s·y, y) about the top-left corner; torchvision takes the angle atan(s)
        angle = math.degrees(math.atan(sign * levels.shear))
        shear = [angle, 0.0] if op == "shear_x" else [0.0, angle]
        return TF.affine(x, 0.0, [0.0, 0.0], 1.0, shear, InterpolationMode.NEAREST, fill=fill, center=[0.0, 0.0])
    if op in ("translate_x", "translate_y"):
        # nearest sampling of a fractional shift moves pixels by the rounded amount (6.4 px -> 6 px at M = 16)
        shift = sign * levels.translate_pixels
        offset = [shift, 0.0] if op == "translate_x" else [0.0, shift]
        return TF.affine(x, 0.0, offset, 1.0, [0.0, 0.0], InterpolationMode.NEAREST, fill=fill)
    return _cutout(x, centres, levels.cutout_size // 2)


def _cutout(x: torch.Tensor, centres: torch.Tensor, half: int) -> torch.Tensor:
    """Paint rows [cy-half, cy+half) × columns [cx-half, cx+half), clipped at the border, with 128 (official rule)."""
    if half <= 0:
        return x
    centres = centres.to(x.device)
    rows = torch.arange(x.shape[-2], device=x.device)[None, :]
    cols = torch.arange(x.shape[-1], device=x.device)[None, :]
    in_rows = (rows >= centres[:, :1] - half) & (rows < centres[:, :1] + half)
    in_cols = (cols >= centres[:, 1:] - half) & (cols < centres[:, 1:] + half)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    return x.masked_fill(mask, FILL)


def _random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def _maybe_hflip(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return img.flip(-1) if torch.rand(1, generator=generator).item() < 0.5 else img


def _pad_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pad by side/8 with 128, then take a side×side window at a random offset per image (integer shifts)."""
    n, _, height, width = x.shape
    pad = min(height, width) // 8
    if pad == 0:
        return x
    padded = TF.pad(x, [pad], fill=FILL)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    # every window as a strided view (no copy), then one pick per image: faster than a per-pixel gather
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)
    return windows[torch.arange(n, device=x.device), :, dy, dx]


def _resized_crop(img: torch.Tensor, top: int, left: int, height: int, width: int, size: int) -> torch.Tensor:
    return TF.resized_crop(img, top, left, height, width, [size, size], InterpolationMode.BICUBIC, antialias=True)


def _check_images(x: object, ndim: int) -> None:
    shape = "(C,H,W)" if ndim == 3 else "(N,C,H,W)"
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != ndim or x.shape[-3] not in (1, 3):
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"expected a uint8 {shape} image tensor with 1 or 3 channels, got {got}; convert it first")
    if x.shape[-2] < 1 or x.shape[-1] < 1:
        raise DataError(f"image of size {tuple(x.shape[-2:])} is empty; check the dataset")


def _check_settings(magnitude: float, num_layers: int, cutout_const: int, translate_const: int) -> None:
    # above 20 Posterize would need more than 8 bits (int(M/10·4) > 8)
    if not 0 <= magnitude <= 20:
        raise ConfigError(f"RandAugment magnitude {magnitude} is outside [0, 20]; the paper uses 16 (CIFAR) or 17")
    if not isinstance(num_layers, int) or num_layers < 0:
        raise ConfigError(f"RandAugment num_layers {num_layers!r} must be a non-negative integer; the paper uses 2")
    if cutout_const < 0 or translate_const < 0:
        raise ConfigError(f"cutout_const {cutout_const} and translate_const {translate_const} must be >= 0")


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"crop size {size!r} must be a positive integer, e.g. 224")


__all__ = [
    "FILL",
    "GEOMETRIC_OPS",
    "MAX_LEVEL",
    "OPS",
    "OpLevels",
    "apply_op",
    "center_crop_eval",
    "cifar_strong",
    "cifar_views",
    "cifar_weak",
    "imagenet_labeled",
    "imagenet_views",
    "inception_crop",
    "op_levels",
    "rand_augment",
    "rand_augment_batch",
]


def color_pipeline(cfg):
    """(labeled, weak, strong, views) for 32×32 uint8 colour batches (CIFAR, SVHN; docs/method.md#augmentation)."""
    from functools import partial

    from metapl.parts.data import augment

    if not cfg.augment:
        return augment.identity, augment.identity, augment.identity, None
    magnitude = cfg.magnitude or 16
    weak = partial(cifar_weak, flip=cfg.flip)
    views = partial(cifar_views, magnitude=magnitude, flip=cfg.flip)

    def strong(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return views(x, generator)[1]

    return weak, weak, strong, views
