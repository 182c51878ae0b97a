"""SVHN from the cropped-digits MATLAB files (train_32x32.mat, test_32x32.mat, extra_32x32.mat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metapl.core.errors import DataError
from metapl.parts.data.datasets import ArrayDataset
from metapl.parts.data.randaugment import color_pipeline
from metapl.parts.data.registry import DatasetEntry, LoadedDataset
from metapl.parts.data.settings import SVHNSettings

SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file as (N, 3, 32, 32) uint8 images and labels 0-9 (the file stores digit 0 as 10)."""
    from scipy.io import loadmat

    if not path.is_file():
        raise DataError(f"missing SVHN file {path}; download it (metapl train --download) or set data.root")
    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
        images = np.asarray(mat["X"], dtype=np.uint8)
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    except Exception as err:  # noqa: BLE001 - scipy raises many types for a damaged file
        raise DataError(
            f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {err}); download it again"
        ) from None
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise DataError(
            f"{path}: X has shape {images.shape} and y {len(labels)} entries; expected (32, 32, 3, N) and N"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{path}: labels range over {labels.min()}..{labels.max()}, not 1..10; download the file again")
    labels = labels % 10  # the file stores the digit 0 as 10
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels


def load_svhn(root: str = "", extra: bool = False) -> tuple[ArrayDataset, int]:
    """SVHN train (73,257) [+ extra (531,131)] and test (26,032); returns the dataset and the size of the part
    that may be labeled (train): the extra images only join the unlabeled pool (docs/method.md#splits, SVHN-1K)."""
    folder = Path(root or "data")
    if not folder.is_dir():
        raise DataError(
            f"no SVHN folder at {folder} (expected train_32x32.mat, test_32x32.mat); set data.root or add --download"
        )
    x_train, y_train = read_mat(folder / "train_32x32.mat")
    labelable = len(y_train)
    if extra:
        x_extra, y_extra = read_mat(folder / "extra_32x32.mat")
        x_train, y_train = np.concatenate([x_train, x_extra]), np.concatenate([y_train, y_extra])
    x_test, y_test = read_mat(folder / "test_32x32.mat")
    dataset = ArrayDataset(
        torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test), 10
    )
    return dataset, labelable


def _load(cfg, seed: int) -> LoadedDataset:
    dataset, labelable = load_svhn(cfg.root, cfg.settings.extra)
    labeled, weak, strong, views = color_pipeline(cfg)
    return LoadedDataset(dataset, labeled, weak, strong, views, labelable, (SVHN_MEAN, SVHN_STD))


def _download(cfg) -> None:
    from torchvision import datasets

    root = cfg.root or "data"
    for split in ("train", "test") + (("extra",) if cfg.settings.extra else ()):
        if not (Path(root) / f"{split}_32x32.mat").is_file():
            datasets.SVHN(root, split=split, download=True)


SVHN = DatasetEntry(_load, _download, SVHNSettings)
