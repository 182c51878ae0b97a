"""Seeded, class-balanced splits; the indices are saved with each run so that a split can be reused."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from metapl.errors import DataError


@dataclass
class Split:
    """Indices into the training pool (labeled, unlabeled, validation) and into the test set."""

    labeled: list[int]
    unlabeled: list[int]
    validation: list[int]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Split:
        try:
            data = json.loads(Path(path).read_text())
            return cls(labeled=data["labeled"], unlabeled=data["unlabeled"], validation=data["validation"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(
                f"cannot read split file {path}: {err}; pass a splits.json written by metapl train"
            ) from None


def per_class_sample(labels: np.ndarray, per_class: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """`per_class` random indices of every class, sorted; a DataError when a class has fewer."""
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise DataError(
                f"{what}: class {cls} has {len(members)} examples, fewer than the {per_class} requested; "
                f"lower data.labeled_per_class (or data.val_per_class) to at most {len(members)}"
            )
        chosen.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def make_split(
    labels: np.ndarray, labeled_per_class: int, val_per_class: int, seed: int, unlabeled_includes_labeled: bool = True
) -> Split:
    """Carve a class-balanced validation set, then a class-balanced labeled set, from the training pool.

    The unlabeled pool is the rest of the training pool; it includes the labeled examples by default (spec §10).
    """
    rng = np.random.default_rng(seed)
    all_indices = np.arange(len(labels))
    validation = (
        per_class_sample(labels, val_per_class, rng, "validation split") if val_per_class else np.array([], int)
    )
    train = np.setdiff1d(all_indices, validation)
    labeled = train[per_class_sample(labels[train], labeled_per_class, rng, "labeled split")]
    unlabeled = train if unlabeled_includes_labeled else np.setdiff1d(train, labeled)
    return Split(labeled=labeled.tolist(), unlabeled=unlabeled.tolist(), validation=validation.tolist())
