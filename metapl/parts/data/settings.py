"""The data sets' own settings: each data set's keys of the config's `data` section beside the shared ones
(config.DataConfig), as dataclasses that declare their defaults, allowed values and size keys (metapl/core/settings.py).
Torch-free, so that the config (and `metapl config`) is built without importing PyTorch; each data set's module
puts its class on its DatasetEntry, and parts/data/registry.py names it in DATASETS' settings table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from metapl.core.settings import at_least, path_field


@dataclass
class TwoMoonSettings:
    """data.name=twomoon: the points' count and spread, and the strong view's jitter."""

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("num_points",)

    num_points: int = at_least(4, 2000)  # the training pool; the test set is as large (an independent draw)
    noise: float = at_least(0, 0.1)  # std of the points around the moons
    jitter: float = at_least(0, 0.0)  # std of the strong view's Gaussian jitter

    def least_memory(self) -> list[tuple[str, int]]:
        """What loading takes on the host at the least, by the key that sizes it: two draws of num_points points
        (float64 coordinates, int64 labels)."""
        return [("num_points", 2 * self.num_points * (2 * 8 + 8))]


@dataclass
class SVHNSettings:
    """data.name=svhn."""

    extra: bool = False  # add extra_32x32.mat (531,131 images) to the unlabeled pool


@dataclass
class ImageFilesSettings:
    """data.name=imagenet and folder: image files, decoded and cropped at a side of our choosing."""

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("image_size",)

    # the crop side (0: 224 for imagenet, 32 for folder; with model.pretrained, the weights' own side)
    image_size: int = at_least(0, 0, " (0: the dataset's)")


@dataclass
class FolderSettings(ImageFilesSettings):
    """data.name=folder: your labeled images (data.root) and, apart, a test set."""

    test_dir: str = path_field()  # the test images (class folders or a path,label CSV); empty: no test set
