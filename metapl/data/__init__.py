"""Datasets, splits, augmentation and batch streams."""

from __future__ import annotations

from pathlib import Path

import torch

from metapl.data import augment
from metapl.data.datasets import ArrayDataset, load_digits, load_fashion_mnist, load_twomoon
from metapl.data.loaders import BatchStream, DataBundle
from metapl.data.splits import Split, make_split
from metapl.errors import DataError


def build_data(cfg, seed: int) -> DataBundle:
    """The DataBundle for a DataConfig: load the dataset, split it (seeded, class-balanced), attach augmentations."""
    if cfg.name == "twomoon":
        dataset = load_twomoon(cfg.num_points, cfg.noise, seed)
        weak, strong = augment.identity, augment.point_jitter(cfg.jitter if cfg.augment else 0.0)
        labeled_aug = augment.identity
    elif cfg.name == "digits":
        dataset = load_digits()
        weak = augment.small_image_weak if cfg.augment else augment.identity
        strong = augment.small_image_strong if cfg.augment else augment.identity
        labeled_aug = weak
    elif cfg.name == "fashion_mnist":
        dataset = load_fashion_mnist(cfg.root)
        weak, strong = augment.image_views(flip=True) if cfg.augment else (augment.identity, augment.identity)
        labeled_aug = weak
    else:
        raise DataError(f"unknown dataset {cfg.name!r}; use twomoon, digits or fashion_mnist")
    if cfg.split_file:
        split = Split.load(Path(cfg.split_file))
        _check_split(split, len(dataset.y_train), cfg.split_file)
    else:
        split = make_split(
            dataset.y_train.numpy(), cfg.labeled_per_class, cfg.val_per_class, seed, cfg.unlabeled_includes_labeled
        )
    return bundle_from_split(dataset, split, labeled_aug, weak, strong)


def bundle_from_split(dataset: ArrayDataset, split: Split, labeled_aug, weak, strong) -> DataBundle:
    idx = {
        name: torch.as_tensor(getattr(split, name), dtype=torch.long) for name in ("labeled", "unlabeled", "validation")
    }
    x, y = dataset.x_train, dataset.y_train
    return DataBundle(
        x_labeled=x[idx["labeled"]],
        y_labeled=y[idx["labeled"]],
        x_unlabeled=x[idx["unlabeled"]],
        y_unlabeled=y[idx["unlabeled"]],
        x_val=x[idx["validation"]],
        y_val=y[idx["validation"]],
        x_test=dataset.x_test,
        y_test=dataset.y_test,
        num_classes=dataset.num_classes,
        split=split,
        labeled_augment=labeled_aug,
        weak_augment=weak,
        strong_augment=strong,
    )


def _check_split(split: Split, pool_size: int, path: str) -> None:
    for name in ("labeled", "unlabeled", "validation"):
        bad = [i for i in getattr(split, name) if not 0 <= i < pool_size]
        if bad:
            raise DataError(
                f"split file {path}: {name} index {bad[0]} is outside the pool of {pool_size}; use a split of this dataset"
            )
    if not split.labeled or not split.unlabeled:
        raise DataError(f"split file {path} has an empty labeled or unlabeled set; use a split written by metapl train")


__all__ = ["BatchStream", "DataBundle", "Split", "build_data", "make_split"]
