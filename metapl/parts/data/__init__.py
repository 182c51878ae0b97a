"""Datasets, splits, augmentation and batch streams.

The names below load on first use, so that the config (which reads data.registry) and `metapl config` do not
import PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.core.registry import lazy_exports
from metapl.parts.data.registry import DATASETS, DatasetEntry, LoadedDataset

if TYPE_CHECKING:
    from metapl.parts.data.bundle import build_data as build_data
    from metapl.parts.data.bundle import bundle_from_split as bundle_from_split
    from metapl.parts.data.bundle import default_workers as default_workers
    from metapl.parts.data.bundle import download_dataset as download_dataset
    from metapl.parts.data.bundle import example_inputs as example_inputs
    from metapl.parts.data.folders import ImageFiles as ImageFiles
    from metapl.parts.data.loaders import BatchStream as BatchStream
    from metapl.parts.data.loaders import DataBundle as DataBundle
    from metapl.parts.data.splits import Split as Split
    from metapl.parts.data.splits import make_split as make_split

_EXPORTS = {
    "BatchStream": "metapl.parts.data.loaders",
    "DataBundle": "metapl.parts.data.loaders",
    "ImageFiles": "metapl.parts.data.folders",
    "Split": "metapl.parts.data.splits",
    "build_data": "metapl.parts.data.bundle",
    "bundle_from_split": "metapl.parts.data.bundle",
    "default_workers": "metapl.parts.data.bundle",
    "download_dataset": "metapl.parts.data.bundle",
    "example_inputs": "metapl.parts.data.bundle",
    "make_split": "metapl.parts.data.splits",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["DATASETS", "DatasetEntry", "LoadedDataset", *_EXPORTS]
