"""The data sets metapl loads, by name (data.name): each one's module defines a DatasetEntry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metapl.registry import Registry

if TYPE_CHECKING:
    from metapl.data.augment import Augment
    from metapl.data.datasets import ArrayDataset


@dataclass
class LoadedDataset:
    """What a data set's loader returns: the images and labels, and how the training views are made."""

    dataset: ArrayDataset
    labeled_augment: Augment
    weak_augment: Augment
    strong_augment: Augment
    unlabeled_views: Any = None  # (weak, strong) made together, when the strong view starts from the weak one
    labelable: int | None = None  # only the pool's head has labels (SVHN's extra images, an unlabeled folder)
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # uint8 images: channel mean, std


@dataclass(frozen=True)
class DatasetEntry:
    """load(data config, seed) -> LoadedDataset; download(data config) fetches the files (None: it cannot)."""

    load: Callable[[Any, int], LoadedDataset]
    download: Callable[[Any], None] | None = None


DATASETS: Registry[DatasetEntry] = Registry(
    "dataset",
    "data.name",
    {
        "twomoon": "metapl.data.datasets:TWOMOON",
        "digits": "metapl.data.datasets:DIGITS",
        "fashion_mnist": "metapl.data.datasets:FASHION_MNIST",
        "cifar10": "metapl.data.cifar:CIFAR10",
        "cifar100": "metapl.data.cifar:CIFAR100",
        "svhn": "metapl.data.svhn:SVHN",
        "imagenet": "metapl.data.image_sets:IMAGENET",
        "folder": "metapl.data.image_sets:FOLDER",
    },
)
