"""The data sets metapl loads, by name (data.name): each one's module defines a DatasetEntry, whose settings
dataclass (parts/data/settings.py for metapl's own, torch-free) holds the data set's own keys of the `data` section.

Adding a data set: its module (a loader and `ENTRY = DatasetEntry(load, settings=MySettings)`) and one line in the
table below; metapl's own data sets also name their settings class in the torch-free settings table, so that the
config is built without importing PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from metapl.core.registry import Registry

if TYPE_CHECKING:
    from metapl.parts.data.augment import Augment
    from metapl.parts.data.datasets import ArrayDataset


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
        "twomoon": "metapl.parts.data.datasets:TWOMOON",
        "digits": "metapl.parts.data.datasets:DIGITS",
        "fashion_mnist": "metapl.parts.data.datasets:FASHION_MNIST",
        "cifar10": "metapl.parts.data.cifar:CIFAR10",
        "cifar100": "metapl.parts.data.cifar:CIFAR100",
        "svhn": "metapl.parts.data.svhn:SVHN",
        "imagenet": "metapl.parts.data.image_sets:IMAGENET",
        "folder": "metapl.parts.data.image_sets:FOLDER",
    },
    settings={  # each one's settings, torch-free (the same classes as their entries': tests check it)
        "twomoon": "metapl.parts.data.settings:TwoMoonSettings",
        "digits": "metapl.core.settings:NoSettings",
        "fashion_mnist": "metapl.core.settings:NoSettings",
        "cifar10": "metapl.core.settings:NoSettings",
        "cifar100": "metapl.core.settings:NoSettings",
        "svhn": "metapl.parts.data.settings:SVHNSettings",
        "imagenet": "metapl.parts.data.settings:ImageFilesSettings",
        "folder": "metapl.parts.data.settings:FolderSettings",
    },
)
