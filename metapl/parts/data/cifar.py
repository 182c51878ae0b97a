"""CIFAR-10 and CIFAR-100 from the pickled batches that the official tarballs (and torchvision) unpack.

The batches are Python pickles. Unpickling can run code, so a restricted unpickler admits only what a CIFAR
batch holds (dicts, lists, bytes and numpy arrays); anything else is refused as a corrupt or tampered file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from metapl.core.errors import DataError
from metapl.parts.data.datasets import ArrayDataset
from metapl.parts.data.randaugment import color_pipeline
from metapl.parts.data.registry import DatasetEntry, LoadedDataset

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # docs/method.md#cifar-pipeline
CIFAR_STD = (0.2470, 0.2435, 0.2616)

_LAYOUTS = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100),
}
_META = {"cifar10": ("batches.meta", b"label_names"), "cifar100": ("meta", b"fine_label_names")}  # class names

_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("copy_reg", "_reconstructor"),
    ("copyreg", "_reconstructor"),
    ("__builtin__", "object"),
    ("builtins", "object"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as handle:
        return _BatchUnpickler(handle, encoding="bytes").load()


def read_class_names(name: str, folder: Path, classes: int) -> list[str] | None:
    """The classes' names from the archive's meta file, in label order (for predictions and plots); None when the
    folder has no meta file, which nothing else needs."""
    file, key = _META[name]
    path = folder / file
    if not path.is_file():
        return None
    try:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(path)[key]]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(
            f"{path} is not a readable CIFAR meta file ({type(err).__name__}: {err}); delete it and download again"
        ) from None
    if len(names) != classes:
        raise DataError(f"{path} names {len(names)} classes, not {classes}; delete it and download again")
    return names


def read_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch as (N, 3, 32, 32) uint8 images and int64 labels."""
    try:
        batch = _unpickle(path)
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32)
    except FileNotFoundError:
        raise DataError(
            f"missing CIFAR batch {path}; download the dataset (metapl train --download) or set data.root"
        ) from None
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise DataError(
            f"{path} is not a readable CIFAR batch ({type(err).__name__}: {err}); delete it and download again"
        ) from None
    if len(images) != len(labels):
        raise DataError(f"{path} holds {len(images)} images but {len(labels)} labels; delete it and download again")
    return images, labels


def cifar_folder(name: str, root: str) -> Path:
    """The batches' folder: `root` itself or the standard sub-folder inside it."""
    sub = _LAYOUTS[name][0]
    base = Path(root or "data")
    return base if base.name == sub else base / sub


def load_cifar(name: str, root: str = "") -> ArrayDataset:
    """CIFAR-10 (50,000 + 10,000) or CIFAR-100 as uint8 (3, 32, 32) images."""
    sub, train_files, test_files, label_key, classes = _LAYOUTS[name]
    folder = cifar_folder(name, root)
    if not folder.is_dir():
        raise DataError(
            f"no {name} at {folder} (expected the folder {sub} with {', '.join(train_files + test_files)}); "
            "set data.root or add --download"
        )
    parts = {}
    for split, files in (("train", train_files), ("test", test_files)):
        arrays = [read_batch(folder / f, label_key) for f in files]
        images = np.concatenate([a[0] for a in arrays])
        labels = np.concatenate([a[1] for a in arrays])
        if labels.min(initial=0) < 0 or labels.max(initial=0) >= classes:
            raise DataError(f"{folder}: {split} labels outside 0..{classes - 1}; delete the folder and download again")
        parts[split] = (torch.from_numpy(images), torch.from_numpy(labels))
    return ArrayDataset(*parts["train"], *parts["test"], classes, read_class_names(name, folder, classes))


def _loader(name: str):
    def load(cfg, seed: int) -> LoadedDataset:
        labeled, weak, strong, views = color_pipeline(cfg)
        return LoadedDataset(load_cifar(name, cfg.root), labeled, weak, strong, views, None, (CIFAR_MEAN, CIFAR_STD))

    return load


def _downloader(name: str):
    def download(cfg) -> None:
        from torchvision import datasets

        if cifar_folder(name, cfg.root).is_dir():
            return
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        for train in (True, False):
            cls(cfg.root or "data", train=train, download=True)

    return download


CIFAR10 = DatasetEntry(_loader("cifar10"), _downloader("cifar10"))
CIFAR100 = DatasetEntry(_loader("cifar100"), _downloader("cifar100"))
