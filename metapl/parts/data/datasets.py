"""Datasets that need no download: TwoMoon (docs/method.md#preset-twomoon), scikit-learn's 8×8 digits, and Fashion-MNIST from the
IDX files on disk (Debian's dataset-fashion-mnist)."""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metapl.core.errors import DataError
from metapl.parts.data import augment
from metapl.parts.data.registry import DatasetEntry, LoadedDataset
from metapl.parts.data.settings import TwoMoonSettings


@dataclass
class ArrayDataset:
    """A training pool and a test set as tensors, with the classes' count."""

    x_train: Any  # a tensor, or ImageFiles (paths decoded by loader workers) for image-file data sets
    y_train: torch.Tensor
    x_test: Any
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str] | None = None  # the classes' names in label order, when the data names them


def two_moons(num_points: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`num_points` points on two interleaving half circles (half per moon), Gaussian noise of std `noise`."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=num_points, noise=noise, random_state=seed)
    return x.astype(np.float32), y.astype(np.int64)


def load_twomoon(num_points: int, noise: float, seed: int) -> ArrayDataset:
    """TwoMoon: a training pool of `num_points` and a test set of the same size from an independent draw."""
    x_train, y_train = two_moons(num_points, noise, seed)
    x_test, y_test = two_moons(num_points, noise, seed + 1_000_003)
    return ArrayDataset(
        torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test), 2
    )


DIGITS_TEST_SIZE = 500


def load_digits() -> ArrayDataset:
    """scikit-learn's 1,797 8×8 digits as (1, 8, 8) images in [0, 1]; a fixed stratified test set of 500."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=DIGITS_TEST_SIZE, stratify=labels, random_state=0
    )
    return ArrayDataset(
        torch.from_numpy(x_train), torch.from_numpy(y_train), torch.from_numpy(x_test), torch.from_numpy(y_test), 10
    )


FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs it
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a uint8 array; a DataError names the file and what is wrong with it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as err:
        raise DataError(
            f"cannot read {path}: {err}; reinstall the dataset (e.g. apt-get install dataset-fashion-mnist)"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number); reinstall the dataset")
    dims = raw[3]
    header = 4 + 4 * dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if len(raw) != header + math.prod(shape):
        raise DataError(
            f"{path} is truncated or padded: the header promises {math.prod(shape)} bytes, the file holds "
            f"{len(raw) - header}; reinstall the dataset"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"no {stem}[.gz] in {root}; install Fashion-MNIST (apt-get install dataset-fashion-mnist) or set data.root"
    )


# Label order of the data set's documentation (zalandoresearch/fashion-mnist).
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def load_fashion_mnist(root: str = "") -> ArrayDataset:
    """Fashion-MNIST from its IDX files (gzipped or not): 60,000 training and 10,000 test 28×28 images in [0, 1]."""
    folder = Path(root or FASHION_MNIST_ROOT)
    if not folder.is_dir():
        raise DataError(
            f"no Fashion-MNIST directory at {folder}; install it (apt-get install dataset-fashion-mnist) or set data.root"
        )
    arrays = {}
    for split, (images_stem, labels_stem) in _IDX_FILES.items():
        images, labels = read_idx(_find_idx(folder, images_stem)), read_idx(_find_idx(folder, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(
                f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match; reinstall the dataset"
            )
        arrays[split] = (
            torch.from_numpy(images.astype(np.float32) / 255.0)[:, None],
            torch.from_numpy(labels.astype(np.int64)),
        )
    classes = int(max(arrays["train"][1].max(), arrays["test"][1].max())) + 1
    names = list(FASHION_MNIST_CLASSES) if classes == len(FASHION_MNIST_CLASSES) else None
    return ArrayDataset(*arrays["train"], *arrays["test"], classes, names)


def _load_twomoon(cfg, seed: int) -> LoadedDataset:
    own = cfg.settings  # TwoMoonSettings
    strong = augment.point_jitter(own.jitter if cfg.augment else 0.0)
    return LoadedDataset(load_twomoon(own.num_points, own.noise, seed), augment.identity, augment.identity, strong)


def _load_digits(cfg, seed: int) -> LoadedDataset:
    weak = augment.small_image_weak if cfg.augment else augment.identity
    strong = augment.small_image_strong if cfg.augment else augment.identity
    return LoadedDataset(load_digits(), weak, weak, strong)


def _load_fashion_mnist(cfg, seed: int) -> LoadedDataset:
    weak, strong = augment.image_views(flip=True) if cfg.augment else (augment.identity, augment.identity)
    return LoadedDataset(load_fashion_mnist(cfg.root), weak, weak, strong)


def _download_fashion_mnist(cfg) -> None:
    """torchvision's download into a temporary folder, then the .gz IDX files into data.root."""
    import tempfile

    from torchvision import datasets

    if not cfg.root:
        raise DataError("--download for fashion_mnist needs data.root, the IDX folder to download into")
    with tempfile.TemporaryDirectory(dir=cfg.root if Path(cfg.root).is_dir() else None) as tmp:
        for train in (True, False):
            datasets.FashionMNIST(tmp, train=train, download=True)
        Path(cfg.root).mkdir(parents=True, exist_ok=True)
        for file in (Path(tmp) / "FashionMNIST" / "raw").glob("*.gz"):
            file.replace(Path(cfg.root) / file.name)


TWOMOON = DatasetEntry(_load_twomoon, settings=TwoMoonSettings)
DIGITS = DatasetEntry(_load_digits)
FASHION_MNIST = DatasetEntry(_load_fashion_mnist, _download_fashion_mnist)
