"""Built-in datasets that need no download: TwoMoon (spec §9.6) and scikit-learn's 8×8 digits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ArrayDataset:
    """A training pool and a test set as tensors, with the classes' count."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


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
