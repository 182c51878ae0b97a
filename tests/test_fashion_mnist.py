"""Fashion-MNIST from IDX files: fake files in the real format (gzipped or not), their corruptions, and the
real files when Debian's dataset-fashion-mnist is installed (CI installs it)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from metapl.core.errors import DataError
from metapl.parts.data import build_data
from metapl.parts.data.datasets import FASHION_MNIST_ROOT, load_fashion_mnist, read_idx
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_fake(root: Path, per_class: int = 12, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", 10 * per_class), ("t10k", 50)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 256, (count, 28, 28))
        images[:, :, :3] = (labels * 25)[:, None, None]  # a class-dependent stripe: learnable
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = root / f"{prefix}-{kind}-ubyte"
            data = _idx(array)
            if gz:
                with gzip.open(Path(f"{name}.gz"), "wb") as handle:
                    handle.write(data)
            else:
                name.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_fake_idx_files_load_and_train(tmp_path, gz):
    _write_fake(tmp_path / "fm", gz=gz)
    data = load_fashion_mnist(str(tmp_path / "fm"))
    assert data.x_train.shape == (120, 1, 28, 28) and data.x_test.shape == (50, 1, 28, 28)
    assert data.num_classes == 10 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    cfg = build_config(
        "fashion_mnist_400",
        [
            f"data.root={tmp_path / 'fm'}",
            "data.labeled_per_class=4",
            "data.val_per_class=2",
            "data.batch_size=8",
            "data.mu=2",
            "train.steps=3",
            "train.eval_every=0",
        ],
    )
    summary = run_experiment(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert summary["train_steps"] == 3
    names = json.loads((tmp_path / "run" / "classes.json").read_text())["names"]  # what predict prints
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot" and len(names) == 10


def test_corrupt_files_name_the_file(tmp_path):
    _write_fake(tmp_path / "fm", gz=False)
    images = tmp_path / "fm" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        load_fashion_mnist(str(tmp_path / "fm"))
    images.write_bytes(b"\x00\x00\x09\x03garbage")
    with pytest.raises(DataError, match="bad magic number"):
        read_idx(images)
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte").unlink()
    images.unlink()
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load_fashion_mnist(str(tmp_path / "fm"))
    with pytest.raises(DataError, match="no Fashion-MNIST directory"):
        load_fashion_mnist(str(tmp_path / "missing"))


def test_truncated_gzip_is_a_data_error(tmp_path):
    _write_fake(tmp_path / "fm", gz=True)
    path = tmp_path / "fm" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="cannot read"):
        load_fashion_mnist(str(tmp_path / "fm"))


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist():
    data = build_data(build_config("fashion_mnist_400").data, seed=0)
    assert len(data.y_labeled) == 400 and len(data.y_val) == 1000 and len(data.y_test) == 10_000
    assert len(data.x_unlabeled) == 59_000  # the training images minus validation, labeled ones included
    assert torch.bincount(data.y_labeled).tolist() == [40] * 10
