"""Small files in the real on-disk formats of CIFAR, SVHN and image folders, for the loader tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def _images(rng: np.random.Generator, labels: np.ndarray, side: int = 32) -> np.ndarray:
    """(N, side, side, 3) uint8 noise with a class-dependent bright square, so that classes are learnable."""
    images = rng.integers(0, 120, (len(labels), side, side, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        y, x = divmod(int(label) % 16, 4)
        images[i, y * side // 4 : (y + 1) * side // 4, x * side // 4 : (x + 1) * side // 4] = 250
    return images


def write_cifar10(root: Path, per_batch: int = 20) -> Path:
    """cifar-10-batches-py with five training batches and a test batch of `per_batch` images each."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.arange(per_batch) % 10
        data = _images(rng, labels).transpose(0, 3, 1, 2).reshape(per_batch, -1)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": b"fake", b"labels": labels.tolist(), b"data": data}, handle, protocol=2)
    with open(folder / "batches.meta", "wb") as handle:  # the class names, as the real archive holds them
        pickle.dump({b"label_names": [f"class{k}".encode() for k in range(10)], b"num_vis": 3072}, handle, protocol=2)
    return folder


def write_cifar100(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, count in (("train", 100 * per_class), ("test", 100)):
        labels = np.arange(count) % 100
        data = _images(rng, labels).transpose(0, 3, 1, 2).reshape(count, -1)
        with open(folder / name, "wb") as handle:
            pickle.dump(
                {b"fine_labels": labels.tolist(), b"coarse_labels": (labels // 5).tolist(), b"data": data}, handle
            )
    return folder


def write_svhn(root: Path, counts: dict[str, int] | None = None) -> Path:
    """train/test/extra_32x32.mat: X of shape (32, 32, 3, N), y of shape (N, 1) with digit 0 stored as 10."""
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in (counts or {"train": 40, "test": 20, "extra": 30}).items():
        digits = np.arange(count) % 10
        x = _images(rng, digits).transpose(1, 2, 3, 0)
        savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": np.where(digits == 0, 10, digits)[:, None]})
    return root


def write_class_folders(root: Path, classes: list[str], per_class: int, side: int = 40, fmt: str = "png") -> Path:
    rng = np.random.default_rng(3)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i, image in enumerate(_images(rng, np.full(per_class, label), side)):
            Image.fromarray(image).save(root / name / f"{i}.{fmt}")
    return root


def write_unlabeled_folder(root: Path, count: int, side: int = 40) -> Path:
    rng = np.random.default_rng(4)
    (root / "nested").mkdir(parents=True)
    for i, image in enumerate(_images(rng, np.arange(count) % 3, side)):
        Image.fromarray(image).save(root / ("nested" if i % 2 else ".") / f"u{i}.jpg")
    return root
