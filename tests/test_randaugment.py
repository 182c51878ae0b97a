"""The paper's RandAugment variant and view pipelines (docs/method.md#augmentation): each op, the magnitude table, seeding, batching."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from metapl.core.errors import ConfigError, DataError
from metapl.parts.data import randaugment as ra


def _images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random uint8 images with no pixel equal to 128, so any 128 was painted by an op."""
    x = torch.randint(0, 255, (n, channels, size, size), generator=torch.Generator().manual_seed(seed))
    return torch.where(x == 128, 127, x).to(torch.uint8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _marker(value: int = 200, at: tuple[int, int] = (10, 20), channels: int = 3) -> torch.Tensor:
    img = torch.full((channels, 32, 32), 10, dtype=torch.uint8)
    img[:, at[0], at[1]] = value
    return img


def _where(img: torch.Tensor, value: int = 200) -> list[list[int]]:
    return (img[0] == value).nonzero().tolist()


def test_magnitude_table_at_16_cifar_and_17_imagenet():
    # The float fields are pytest.approx objects on purpose (OpLevels' == compares them field by field),
    # hence the type: ignore on each.
    assert ra.op_levels(16, cutout_const=4, translate_const=4) == ra.OpLevels(
        rotate_degrees=pytest.approx(48.0),  # type: ignore[arg-type]
        shear=pytest.approx(0.48),  # type: ignore[arg-type]
        translate_pixels=pytest.approx(6.4),  # type: ignore[arg-type]
        enhance_factor=pytest.approx(2.98),  # type: ignore[arg-type]
        posterize_bits=6,
        cutout_size=12,
        solarize_threshold=153,  # int(409.6) = 409, wrapped mod 256
    )
    assert ra.op_levels(17, cutout_const=40, translate_const=100) == ra.OpLevels(
        rotate_degrees=pytest.approx(51.0),  # type: ignore[arg-type]
        shear=pytest.approx(0.51),  # type: ignore[arg-type]
        translate_pixels=pytest.approx(170.0),  # type: ignore[arg-type]
        enhance_factor=pytest.approx(3.16),  # type: ignore[arg-type]
        posterize_bits=6,
        cutout_size=136,
        solarize_threshold=179,  # int(435.2) = 435, wrapped mod 256
    )


def test_invert_posterize_solarize():
    img = torch.tensor([0, 3, 150, 153, 200, 255], dtype=torch.uint8).reshape(1, 1, 6).expand(3, 1, 6).clone()
    assert torch.equal(ra.apply_op(img, "invert"), 255 - img)
    assert ra.apply_op(img, "posterize")[0, 0].tolist() == [0, 0, 148, 152, 200, 252]  # 6 bits kept
    # threshold 153: below stays, at or above becomes 255 - x (150 stays, 200 -> 55)
    assert ra.apply_op(img, "solarize")[0, 0].tolist() == [0, 3, 150, 102, 55, 0]


def test_rotate_is_v2_rotate_by_48_degrees_with_fill_128():
    img = _images(1)[0]
    for negate, angle in ((False, 48.0), (True, -48.0)):
        expected = TF.rotate(img, angle, InterpolationMode.NEAREST, fill=[128.0] * 3)
        assert torch.equal(ra.apply_op(img, "rotate", negate=negate), expected)
    rotated = ra.apply_op(img, "rotate")
    assert (rotated[:, 0, 0] == 128).all()  # corners uncovered by a 48° turn are filled with 128


def test_translate_moves_a_marker_by_the_rounded_6_4_pixels():
    img = _marker()
    assert _where(ra.apply_op(img, "translate_x")) == [[10, 26]]
    assert _where(ra.apply_op(img, "translate_x", negate=True)) == [[10, 14]]
    assert _where(ra.apply_op(img, "translate_y")) == [[16, 20]]
    moved = ra.apply_op(img, "translate_y", negate=True)
    assert _where(moved) == [[4, 20]]
    assert (moved[:, -6:] == 128).all() and (moved[:, :-6] != 128).all()  # the uncovered 6 rows are filled


def test_shear_is_about_the_top_left_corner_by_0_48():
    img = _marker(at=(10, 20))
    img[:, 0, 20] = 201  # row 0 stays put under ShearX when the origin is the top-left corner
    sheared = ra.apply_op(img, "shear_x")
    assert _where(sheared) == [[10, 15]] and _where(sheared, 201) == [[0, 20]]  # 20 - round(0.48·10)
    assert _where(ra.apply_op(img, "shear_x", negate=True)) == [[10, 25]]
    transposed = img.transpose(-1, -2).contiguous()
    assert _where(ra.apply_op(transposed, "shear_y")) == [[15, 10]]


def test_cutout_paints_a_12_by_12_square_of_128_clipped_at_the_border():
    img = _images(1)[0]
    out = ra.apply_op(img, "cutout", centre=(16, 20))
    painted = out == 128
    assert painted[:, 10:22, 14:26].all() and painted.sum() == 3 * 12 * 12
    assert torch.equal(out[~painted], img[~painted])
    assert (ra.apply_op(img, "cutout", centre=(0, 31)) == 128).sum() == 3 * 6 * 7


def test_enhance_ops_use_factor_2_98_and_saturate():
    grey = torch.tensor([40, 100], dtype=torch.uint8).reshape(1, 1, 2).expand(3, 4, 2).clone()
    assert ra.apply_op(grey, "brightness")[0, 0].tolist() == [119, 255]  # 40·2.98 = 119.2; 298 saturates, not wraps
    # contrast blends with the mean grey level (70 here; one channel avoids RGB-to-grey rounding)
    assert ra.apply_op(grey[:1], "contrast")[0, 0].tolist() == [0, 159]  # 70 ± 2.98·30, clipped at 0
    img = _images(1)[0]
    assert torch.equal(ra.apply_op(img, "color"), TF.adjust_saturation(img, 2.98))
    assert torch.equal(ra.apply_op(img, "sharpness"), TF.adjust_sharpness(img, 2.98))
    # grey pixels barely move: torchvision floors the grey level (weights sum to 0.9999), so 40 is seen as 39
    assert (ra.apply_op(grey, "color").int() - grey.int()).abs().max() <= 2
    one_channel = img[:1]
    assert torch.equal(ra.apply_op(one_channel, "color"), one_channel)  # Color is the identity for C = 1


def test_auto_contrast_and_equalize():
    img = (torch.arange(32 * 32).reshape(1, 32, 32) % 51 + 50).to(torch.uint8).expand(3, 32, 32).clone()
    stretched = ra.apply_op(img, "auto_contrast")
    assert stretched.min() == 0 and stretched.max() >= 254  # the float-to-uint8 cast truncates 254.99
    assert torch.equal(stretched, TF.autocontrast(img))
    assert torch.equal(ra.apply_op(img, "equalize"), TF.equalize(img))


def test_every_op_keeps_dtype_and_shape_for_one_and_three_channels():
    for channels in (1, 3):
        img = _images(1, channels)[0]
        for op in ra.OPS:
            out = ra.apply_op(img, op, negate=True)
            assert out.dtype == torch.uint8 and out.shape == img.shape, op


def test_probability_is_drawn_once_per_image_in_0_2_to_0_8(monkeypatch):
    applied: list[int] = []

    def counting_apply(x, op, levels, negate, centres):
        applied.append(1)
        return x

    monkeypatch.setattr(ra, "_apply", counting_apply)
    rates = []
    generator = _gen(0)
    img = _images(1, size=4)[0]
    for _ in range(40):
        applied.clear()
        ra.rand_augment(img, generator, num_layers=300)
        rates.append(len(applied) / 300)
    assert 0.2 - 0.08 < min(rates) < 0.3 and 0.7 < max(rates) < 0.8 + 0.08  # per-image p spans [0.2, 0.8]


def test_seeded_generator_repeats_and_other_seeds_differ():
    x = _images(16)
    assert torch.equal(ra.rand_augment_batch(x, _gen(1)), ra.rand_augment_batch(x, _gen(1)))
    assert not torch.equal(ra.rand_augment_batch(x, _gen(1)), ra.rand_augment_batch(x, _gen(2)))
    a, b = ra.cifar_views(x, _gen(3)), ra.cifar_views(x, _gen(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], ra.cifar_views(x, _gen(4))[1])
    img = _images(1, size=64)[0]
    c, d = ra.imagenet_views(img, _gen(5), size=48), ra.imagenet_views(img, _gen(5), size=48)
    assert torch.equal(c[0], d[0]) and torch.equal(c[1], d[1])


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_equals_per_image_in_order(channels):
    x = _images(64, channels)
    generator = _gen(7)
    one_by_one = torch.stack([ra.rand_augment(img, generator) for img in x])
    batched = ra.rand_augment_batch(x, _gen(7))
    assert torch.equal(batched, one_by_one)
    assert not torch.equal(batched, x)
    big = ra.rand_augment_batch(x, _gen(8), magnitude=17, cutout_const=40, translate_const=100)
    generator = _gen(8)
    assert torch.equal(
        big, torch.stack([ra.rand_augment(img, generator, 17, cutout_const=40, translate_const=100) for img in x])
    )


def test_cifar_views_shapes_and_strong_differs_from_weak():
    x = _images(32)
    weak, strong = ra.cifar_views(x, _gen(0))
    assert weak.shape == strong.shape == x.shape and weak.dtype == strong.dtype == torch.uint8
    assert all(not torch.equal(w, s) for w, s in zip(weak, strong))


def _is_flip_shift_of(out: torch.Tensor, src: torch.Tensor, pad: int, flips: tuple[bool, ...]) -> bool:
    padded = TF.pad(src, [pad], fill=128)
    for flip in flips:
        candidate = TF.pad(src.flip(-1), [pad], fill=128) if flip else padded
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.equal(candidate[:, dy : dy + src.shape[-2], dx : dx + src.shape[-1]], out):
                    return True
    return False


def test_weak_is_a_flip_and_pad_crop_and_strong_starts_from_the_same_weak_view():
    x = _images(8)
    weak, strong = ra.cifar_views(x, _gen(0))
    generator = _gen(0)
    assert torch.equal(weak, ra.cifar_weak(x, generator))
    assert torch.equal(strong, ra.cifar_strong(weak, generator))  # by construction: same draws, same weak view
    assert all(_is_flip_shift_of(w, img, 4, (False, True)) for w, img in zip(weak, x))
    # with RandAugment and Cutout off, the strong view is only a flip and pad-crop of the weak one
    bare = ra.cifar_strong(weak, _gen(1), num_layers=0, cutout=False)
    assert all(_is_flip_shift_of(s, w, 4, (False, True)) for s, w in zip(bare, weak))


def test_flip_false_never_mirrors():
    x = torch.zeros(16, 1, 32, 32, dtype=torch.uint8)
    x[..., 16:] = 255
    weak, strong = ra.cifar_views(x, _gen(0), magnitude=0, flip=False)
    assert all(_is_flip_shift_of(w, img, 4, (False,)) for w, img in zip(weak, x))


def test_final_cutout_is_half_the_side(monkeypatch):
    monkeypatch.setattr(ra, "_pad_crop", lambda x, generator: x)
    for size in (32, 64):
        x = _images(64, size=size)
        strong = ra.cifar_strong(x, _gen(0), flip=False, num_layers=0)
        painted = (strong == 128)[:, 0]
        heights = painted.any(2).sum(1)
        widths = painted.any(1).sum(1)
        assert heights.max() == widths.max() == size // 2 and heights.min() > 0
        assert torch.equal(painted.sum((1, 2)), heights * widths)  # one rectangle per image


def test_imagenet_functions_give_224_from_300_by_400():
    img = _images(1, size=400)[0, :, :300]
    generator = _gen(0)
    weak, strong = ra.imagenet_views(img, generator)
    for out in (ra.inception_crop(img, generator), ra.imagenet_labeled(img, generator), weak, strong):
        assert out.shape == (3, 224, 224) and out.dtype == torch.uint8
    assert ra.center_crop_eval(img).shape == (3, 224, 224)
    # the strong view can equal the weak one (no op kept, same flip); over a few seeds it must not always
    assert any(not torch.equal(*ra.imagenet_views(img, _gen(seed))) for seed in range(1, 4))


def test_imagenet_views_share_one_crop(monkeypatch):
    monkeypatch.setattr(ra, "rand_augment", lambda img, generator, *args, **kwargs: img)
    img = _images(1, size=96)[0]
    for seed in range(6):
        weak, strong = ra.imagenet_views(img, _gen(seed), size=32)
        assert torch.equal(strong, weak) or torch.equal(strong, weak.flip(-1))


def test_center_crop_takes_the_central_224_of_256():
    img = _images(1, size=512)[0, :, :256]
    assert torch.equal(ra.center_crop_eval(img), img[:, 16:240, 144:368])


def test_inception_crop_falls_back_to_a_central_crop_for_elongated_images():
    img = _images(1, size=400)[0, :, :10]
    a, b = ra.inception_crop(img, _gen(0), size=16), ra.inception_crop(img, _gen(1), size=16)
    assert a.shape == (3, 16, 16) and torch.equal(a, b)


def test_user_errors_are_one_line():
    with pytest.raises(DataError, match="uint8"):
        ra.rand_augment(torch.zeros(3, 8, 8), _gen(0))
    with pytest.raises(DataError, match=r"\(N,C,H,W\)"):
        ra.cifar_views(torch.zeros(3, 8, 8, dtype=torch.uint8), _gen(0))
    with pytest.raises(DataError, match="1 or 3 channels"):
        ra.rand_augment_batch(torch.zeros(2, 4, 8, 8, dtype=torch.uint8), _gen(0))
    with pytest.raises(ConfigError, match="magnitude 30"):
        ra.rand_augment(torch.zeros(3, 8, 8, dtype=torch.uint8), _gen(0), magnitude=30)
    with pytest.raises(ConfigError, match="unknown RandAugment op"):
        ra.apply_op(torch.zeros(3, 8, 8, dtype=torch.uint8), "identity")
    with pytest.raises(ConfigError, match="crop size"):
        ra.center_crop_eval(torch.zeros(3, 8, 8, dtype=torch.uint8), size=0)
