"""Datasets, splits, augmentation and batch streams."""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

import torch

from metapl.data import augment
from metapl.data.datasets import ArrayDataset, load_digits, load_fashion_mnist, load_twomoon
from metapl.data.folders import ImageFiles
from metapl.data.loaders import BatchStream, DataBundle
from metapl.data.splits import Split, make_split
from metapl.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_data(cfg, seed: int) -> DataBundle:
    """The DataBundle for a DataConfig: load the dataset, split it (seeded), attach the augmentations."""
    labelable = None
    views = normalization = None
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
    elif cfg.name in ("cifar10", "cifar100", "svhn"):
        dataset, labelable, normalization = _small_color_images(cfg)
        labeled_aug, weak, strong, views = _cifar_pipeline(cfg)
    elif cfg.name in ("imagenet", "folder"):
        from metapl.data.image_sets import load_image_set

        dataset, labelable = load_image_set(cfg)
        labeled_aug = weak = strong = augment.identity  # the loader workers augment (streaming.py)
        normalization = (IMAGENET_MEAN, IMAGENET_STD)
    else:
        raise DataError(f"unknown dataset {cfg.name!r}")
    if cfg.split_file:
        split = Split.load(Path(cfg.split_file))
        _check_split(split, len(dataset.y_train), cfg.split_file, labelable)
    else:
        split = make_split(
            dataset.y_train.numpy(),
            cfg.labeled_per_class,
            cfg.val_per_class,
            seed,
            cfg.unlabeled_includes_labeled,
            selection=cfg.labeled_selection,
            labelable=labelable,
        )
    bundle = bundle_from_split(dataset, split, labeled_aug, weak, strong)
    bundle.normalization, bundle.unlabeled_views = normalization, views
    return bundle


def download_dataset(cfg) -> None:
    """Fetch the files of a DataConfig's dataset into data.root with torchvision's own download code, unless
    they are there already (`metapl train --download`). ImageNet and custom folders cannot be downloaded."""
    from torchvision import datasets

    root = cfg.root or "data"
    try:
        if cfg.name in ("cifar10", "cifar100"):
            from metapl.data.cifar import cifar_folder

            if cifar_folder(cfg.name, cfg.root).is_dir():
                return
            cls = datasets.CIFAR10 if cfg.name == "cifar10" else datasets.CIFAR100
            for train in (True, False):
                cls(root, train=train, download=True)
        elif cfg.name == "svhn":
            for split in ("train", "test") + (("extra",) if cfg.extra else ()):
                if not (Path(root) / f"{split}_32x32.mat").is_file():
                    datasets.SVHN(root, split=split, download=True)
        elif cfg.name == "fashion_mnist":
            if not cfg.root:
                raise DataError("--download for fashion_mnist needs data.root, the IDX folder to download into")
            with tempfile.TemporaryDirectory(dir=cfg.root if Path(cfg.root).is_dir() else None) as tmp:
                for train in (True, False):
                    datasets.FashionMNIST(tmp, train=train, download=True)
                Path(cfg.root).mkdir(parents=True, exist_ok=True)
                for file in (Path(tmp) / "FashionMNIST" / "raw").glob("*.gz"):
                    file.replace(Path(cfg.root) / file.name)
        else:
            raise DataError(
                f"--download cannot fetch {cfg.name}: it has no public download; put the files in data.root"
            )
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - network and archive errors come in many types
        raise DataError(
            f"could not download {cfg.name} into {root}: {err}; download it by hand and set data.root"
        ) from None


def _small_color_images(cfg) -> tuple[ArrayDataset, int | None, tuple]:
    """CIFAR-10/100 or SVHN as uint8 tensors, the labelable part of the pool, and the channel statistics."""
    if cfg.name == "svhn":
        from metapl.data.svhn import SVHN_MEAN, SVHN_STD, load_svhn

        dataset, labelable = load_svhn(cfg.root, cfg.extra)
        return dataset, labelable, (SVHN_MEAN, SVHN_STD)
    from metapl.data.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar

    return load_cifar(cfg.name, cfg.root), None, (CIFAR_MEAN, CIFAR_STD)


def _cifar_pipeline(cfg):
    """(labeled, weak, strong, views) for 32×32 uint8 batches: spec §8.2."""
    from metapl.data import randaugment

    if not cfg.augment:
        return augment.identity, augment.identity, augment.identity, None
    magnitude = cfg.magnitude or 16
    weak = partial(randaugment.cifar_weak, flip=cfg.flip)
    views = partial(randaugment.cifar_views, magnitude=magnitude, flip=cfg.flip)
    return weak, weak, _strong_only(views), views


def _strong_only(views):
    def strong(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return views(x, generator)[1]

    return strong


def example_inputs(x, count: int) -> torch.Tensor:
    """The first `count` inputs as the model takes them from `metapl predict`: images as floats in [0, 1]."""
    if isinstance(x, ImageFiles):
        from metapl.data.streaming import eval_batches

        x = next(eval_batches(x[:count], count))
    x = x[:count]
    return x.float() / 255.0 if x.dtype == torch.uint8 else x


def default_workers() -> int:
    """Loader processes for image files: one per core, at most 8."""
    return min(8, os.cpu_count() or 1)


def bundle_from_split(dataset: ArrayDataset, split: Split, labeled_aug, weak, strong) -> DataBundle:
    idx = {
        name: torch.as_tensor(getattr(split, name), dtype=torch.long) for name in ("labeled", "unlabeled", "validation")
    }
    x, y = dataset.x_train, dataset.y_train
    y_unlabeled = y[idx["unlabeled"]]
    return DataBundle(
        x_labeled=x[idx["labeled"]],
        y_labeled=y[idx["labeled"]],
        x_unlabeled=x[idx["unlabeled"]],
        y_unlabeled=None if bool((y_unlabeled < 0).any()) else y_unlabeled,  # −1: images without a label
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


def _check_split(split: Split, pool_size: int, path: str, labelable: int | None = None) -> None:
    for name in ("labeled", "unlabeled", "validation"):
        # only the head of the pool has labels (SVHN's extra images and an unlabeled folder follow it)
        limit = pool_size if name == "unlabeled" or labelable is None else labelable
        bad = [i for i in getattr(split, name) if not 0 <= i < limit]
        if bad:
            raise DataError(
                f"split file {path}: {name} index {bad[0]} is outside the pool of {limit}; use a split of this dataset"
            )
    if not split.labeled or not split.unlabeled:
        raise DataError(f"split file {path} has an empty labeled or unlabeled set; use a split written by metapl train")


__all__ = [
    "BatchStream",
    "DataBundle",
    "ImageFiles",
    "Split",
    "build_data",
    "download_dataset",
    "example_inputs",
    "make_split",
]
