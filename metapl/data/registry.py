"""The data sets metapl loads, by name (data.name): each one's module defines a DatasetEntry, whose settings
dataclass (data/settings.py for metapl's own, torch-free) holds the data set's own keys of the `data` section.

Adding a data set: its module (a loader and `ENTRY = DatasetEntry(load, settings=MySettings)`) and one line in the
table below; metapl's own data sets also name their settings class in the torch-free settings table, so that the
config is built without importing PyTorch."""

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
    """load(data config, seed) -> LoadedDataset; download(data config) fetches the files (None: it cannot).
    `settings`: the dataclass of the data set's own keys (data.num_points), which the loader reads from the data
    config's `settings`; None: it has none."""

    load: Callable[[Any, int], LoadedDataset]
    download: Callable[[Any], None] | None = None
    settings: type | None = None


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
    settings={  # each one's settings, torch-free (the same classes as their entries': tests check it)
        "twomoon": "metapl.data.settings:TwoMoonSettings",
        "digits": "metapl.settings:NoSettings",
        "fashion_mnist": "metapl.settings:NoSettings",
        "cifar10": "metapl.settings:NoSettings",
        "cifar100": "metapl.settings:NoSettings",
        "svhn": "metapl.data.settings:SVHNSettings",
        "imagenet": "metapl.data.settings:ImageFilesSettings",
        "folder": "metapl.data.settings:FolderSettings",
    },
)
