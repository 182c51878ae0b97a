"""Datasets, splits, augmentation and batch streams.

The names below load on first use, so that the config (which reads data.registry) and `metapl config` do not
import PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.data.registry import DATASETS, DatasetEntry, LoadedDataset
from metapl.registry import lazy_exports

if TYPE_CHECKING:
    from metapl.data.bundle import build_data as build_data
    from metapl.data.bundle import bundle_from_split as bundle_from_split
    from metapl.data.bundle import default_workers as default_workers
    from metapl.data.bundle import download_dataset as download_dataset
    from metapl.data.bundle import example_inputs as example_inputs
    from metapl.data.folders import ImageFiles as ImageFiles
    from metapl.data.loaders import BatchStream as BatchStream
    from metapl.data.loaders import DataBundle as DataBundle
    from metapl.data.splits import Split as Split
    from metapl.data.splits import make_split as make_split

_EXPORTS = {
    "BatchStream": "metapl.data.loaders",
    "DataBundle": "metapl.data.loaders",
    "ImageFiles": "metapl.data.folders",
    "Split": "metapl.data.splits",
    "build_data": "metapl.data.bundle",
    "bundle_from_split": "metapl.data.bundle",
    "default_workers": "metapl.data.bundle",
    "download_dataset": "metapl.data.bundle",
    "example_inputs": "metapl.data.bundle",
    "make_split": "metapl.data.splits",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["DATASETS", "DatasetEntry", "LoadedDataset", *_EXPORTS]
