"""ImageNet (train/ and val/ class folders) and custom image sets, as pools of image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metapl.core.errors import DataError
from metapl.parts.data import augment
from metapl.parts.data.datasets import ArrayDataset
from metapl.parts.data.folders import ImageFiles, labeled_source, unlabeled_source
from metapl.parts.data.registry import DatasetEntry, LoadedDataset
from metapl.parts.data.settings import FolderSettings, ImageFilesSettings
from metapl.parts.data.streaming import ImagePipeline

SMALL_IMAGE_LIMIT = 64  # sides up to this get the CIFAR pipeline, larger ones the ImageNet pipeline


def load_image_set(cfg) -> tuple[ArrayDataset, int]:
    """The pool (labeled source, then extra unlabeled images labeled −1) and test set, and the labelable count."""
    from metapl.parts.data import default_workers

    if cfg.name == "imagenet":
        root = Path(cfg.root or "data/imagenet")
        if not (root / "train").is_dir():
            raise DataError(
                f"no ImageNet at {root} (expected {root}/train/<class>/*.JPEG and {root}/val/<class>/); set data.root"
            )
        train = labeled_source(root / "train")
        test = labeled_source(root / "val", classes=train[2])
        size = cfg.settings.image_size or 224
    else:
        if not cfg.root:
            raise DataError("data.name=folder needs data.root: a folder of class folders or a CSV of path,label")
        train = labeled_source(Path(cfg.root))
        test_dir = cfg.settings.test_dir
        test = labeled_source(Path(test_dir), classes=train[2]) if test_dir else ([], [], train[2])
        size = cfg.settings.image_size or 32
    small = size <= SMALL_IMAGE_LIMIT
    pipeline = ImagePipeline(
        size=size,
        style="small" if small else "large",
        magnitude=cfg.magnitude or (16 if small else 17),
        flip=cfg.flip,
        augment=cfg.augment,
    )
    extra: list[str] = []
    if cfg.unlabeled_dir:
        try:
            extra = unlabeled_source(Path(cfg.unlabeled_dir))
        except DataError as err:  # name the setting the path came from
            raise DataError(f"data.unlabeled_dir: {err}") from None
    workers = default_workers() if cfg.workers < 0 else cfg.workers

    def files(paths: list[str]) -> ImageFiles:
        return ImageFiles(np.array(paths, dtype=object), size, 3, workers, pipeline)

    paths, labels, classes = train
    dataset = ArrayDataset(
        x_train=files(paths + extra),
        y_train=torch.tensor(labels + [-1] * len(extra), dtype=torch.long),
        x_test=files(test[0]),
        y_test=torch.tensor(test[1], dtype=torch.long),
        num_classes=len(classes),
        class_names=list(classes),
    )
    return dataset, len(paths)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _load(cfg, seed: int) -> LoadedDataset:
    dataset, labelable = load_image_set(cfg)
    identity = augment.identity  # the loader workers augment (streaming.py)
    return LoadedDataset(dataset, identity, identity, identity, None, labelable, (IMAGENET_MEAN, IMAGENET_STD))


IMAGENET = DatasetEntry(_load, settings=ImageFilesSettings)
FOLDER = DatasetEntry(_load, settings=FolderSettings)
