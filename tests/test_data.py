"""Data: splits are class-balanced, disjoint where they must be and seeded; augmentations are seeded and do their job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metapl.core.errors import DataError
from metapl.parts.data import augment, build_data, make_split
from metapl.parts.data.loaders import BatchStream
from metapl.run.config import build_config


def test_split_is_class_balanced_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), 30)
    a = make_split(labels, labeled_per_class=5, val_per_class=3, seed=7)
    b = make_split(labels, labeled_per_class=5, val_per_class=3, seed=7)
    c = make_split(labels, labeled_per_class=5, val_per_class=3, seed=8)
    assert a == b and a != c
    assert np.bincount(labels[a.labeled]).tolist() == [5] * 4
    assert np.bincount(labels[a.validation]).tolist() == [3] * 4
    assert not set(a.validation) & set(a.unlabeled)
    assert set(a.labeled) <= set(a.unlabeled)  # labeled images are also unlabeled by default (docs/method.md#splits)
    assert len(a.unlabeled) == 120 - 12
    excluded = make_split(labels, 5, 3, seed=7, unlabeled_includes_labeled=False)
    assert not set(excluded.labeled) & set(excluded.unlabeled)


def test_split_refuses_more_labels_than_a_class_has():
    with pytest.raises(DataError, match="class 1 has 2 examples, fewer than the 3 requested"):
        make_split(np.array([0, 0, 0, 1, 1]), labeled_per_class=3, val_per_class=0, seed=0)


def test_twomoon_has_six_labels_and_1994_unlabeled():
    data = build_data(build_config("twomoon").data, seed=0)
    assert len(data.y_labeled) == 6 and sorted(data.y_labeled.tolist()) == [0, 0, 0, 1, 1, 1]
    assert len(data.x_unlabeled) == 1994 and len(data.x_test) == 2000


def test_saved_split_is_reused(tmp_path):
    cfg = build_config("digits")
    first = build_data(cfg.data, seed=0)
    first.split.save(tmp_path / "splits.json")
    cfg = build_config("digits", [f"data.split_file={tmp_path / 'splits.json'}"])
    again = build_data(cfg.data, seed=123)
    assert torch.equal(first.x_labeled, again.x_labeled)


def test_batch_stream_is_seeded_and_resumable():
    data = build_data(build_config("digits").data, seed=0)
    a, b = BatchStream(data, 8, 3, seed=1), BatchStream(data, 8, 3, seed=1)
    for _ in range(3):
        next(a)
    state = a.state_dict()
    expected = next(a)
    next(b)
    b.load_state_dict(state)
    got = next(b)
    expected_weak, expected_strong = expected.unlabeled()
    assert torch.equal(expected_strong, got.unlabeled()[1]) and torch.equal(expected.y_l, got.y_l)
    assert expected_weak.shape == (24, 1, 8, 8)


def test_stream_visits_every_labeled_example_each_pass():
    data = build_data(build_config("digits").data, seed=0)
    stream = BatchStream(data, 10, 1, seed=0, labeled_only=True)
    seen = torch.cat([next(stream).y_l for _ in range(5)])
    assert sorted(seen.tolist()) == sorted(data.y_labeled.tolist())


def _image() -> torch.Tensor:
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2:6, 3:5] = 1.0
    return x


def test_translate_shifts_by_whole_pixels_and_is_seeded():
    x = _image().repeat(16, 1, 1, 1)
    out = augment.translate(x, torch.Generator().manual_seed(0), max_shift=1)
    again = augment.translate(x, torch.Generator().manual_seed(0), max_shift=1)
    assert torch.equal(out, again)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # the bar moves inside the frame, whole
    assert not all(torch.equal(o, x[0]) for o in out)


def test_cutout_blanks_a_square():
    x = torch.ones(4, 1, 8, 8)
    out = augment.cutout(x, torch.Generator().manual_seed(0), size=3)
    blanked = (out == 0).sum(dim=(1, 2, 3))
    assert ((blanked >= 4) & (blanked <= 9)).all()  # 3×3, or fewer where it crosses the border


def test_affine_identity_range_keeps_the_image():
    x = _image()
    out = augment.random_affine(x, torch.Generator(), degrees=0.0, scale=(1.0, 1.0), shear=0.0)
    assert torch.allclose(out, x, atol=1e-5)


def test_strong_view_differs_from_weak_and_is_seeded():
    data = build_data(build_config("digits").data, seed=0)
    x = data.x_unlabeled[:64]
    weak = augment.small_image_weak(x, torch.Generator().manual_seed(3))
    strong = augment.small_image_strong(x, torch.Generator().manual_seed(3))
    assert torch.equal(strong, augment.small_image_strong(x, torch.Generator().manual_seed(3)))
    assert (strong - weak).abs().mean() > 0.05
    assert strong.min() >= 0 and strong.max() <= 1
