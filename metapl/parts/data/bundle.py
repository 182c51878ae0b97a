"""Building a run's data: load the configured data set, split it, attach the augmentations (data.build_data)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch

from metapl.core.errors import DataError
from metapl.parts.data.datasets import ArrayDataset
from metapl.parts.data.folders import ImageFiles
from metapl.parts.data.loaders import DataBundle
from metapl.parts.data.registry import DATASETS
from metapl.parts.data.splits import Split, check_source, make_split, pool_fingerprint


def build_data(cfg, seed: int) -> DataBundle:
    """The DataBundle for a DataConfig: load the dataset, split it (seeded), attach the augmentations."""
    loaded = DATASETS.get(cfg.name).load(cfg, seed)
    dataset, labelable = loaded.dataset, loaded.labelable
    paths = dataset.x_train.paths if isinstance(dataset.x_train, ImageFiles) else None
    source = pool_fingerprint(dataset.y_train.numpy(), paths, labelable)  # what the split is drawn from
    if cfg.split_file:
        split = Split.load(Path(cfg.split_file))
        check_source(split.source, source, cfg.split_file)
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
        split.source = source
    bundle = bundle_from_split(dataset, split, loaded.labeled_augment, loaded.weak_augment, loaded.strong_augment)
    bundle.normalization, bundle.unlabeled_views = loaded.normalization, loaded.unlabeled_views
    if getattr(cfg, "unlabeled_shards", ""):  # unlabeled images streamed from WebDataset shards (parts/data/shards.py)
        from metapl.parts.data.shards import attach_shards

        attach_shards(bundle, cfg)
    if getattr(cfg, "label_dir", ""):  # a stored teacher's distributions (metapl label), aligned with the split
        from metapl.parts.data.label_store import attach

        attach(bundle, dataset, cfg.label_dir)
    return bundle


def download_dataset(cfg) -> None:
    """Fetch the files of a DataConfig's dataset into data.root with torchvision's own download code, unless
    they are there already (`metapl train --download`). ImageNet and custom folders cannot be downloaded."""
    download = DATASETS.get(cfg.name).download
    if download is None:
        raise DataError(f"--download cannot fetch {cfg.name}: it has no public download; put the files in data.root")
    from metapl.core.network import DOWNLOAD_TIMEOUT, describe, is_network_error

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)  # urllib waits forever for a server that never answers
    try:
        download(cfg)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - network and archive errors come in many types
        if is_network_error(err):
            raise DataError(
                f"no network: --download cannot reach the server of {cfg.name} ({describe(err)}); copy the files "
                f"to this machine into data.root={cfg.root or 'data'} and run without --download"
            ) from None
        raise DataError(
            f"could not download {cfg.name} into {cfg.root or 'data'}: {err}; download it by hand and set data.root"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


def example_inputs(x, count: int) -> torch.Tensor:
    """The first `count` inputs as the model takes them from `metapl predict`: images as floats in [0, 1]."""
    if isinstance(x, ImageFiles):
        from metapl.parts.data.streaming import eval_batches

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
        class_names=dataset.class_names,
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
    # an empty unlabeled set is a split of its own: data.unlabeled_shards (not in the pool) gives the unlabeled images
    # of such a run, and eval rebuilds it without them; a training stream that needs the pool's refuses it itself
    if not split.labeled:
        raise DataError(f"split file {path} has an empty labeled set; use a split written by metapl train")
