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


SELECTIONS = ("balanced", "random", "first", "all")


def make_split(
    labels: np.ndarray,
    labeled_per_class: int,
    val_per_class: int,
    seed: int,
    unlabeled_includes_labeled: bool = True,
    selection: str = "balanced",
    labelable: int | None = None,
) -> Split:
    """Carve a class-balanced validation set, then the labeled set, from the training pool.

    Only the first `labelable` examples of the pool may be labeled or validate (SVHN's extra images and an
    extra unlabeled folder follow them). The labeled set is `labeled_per_class` × classes examples:
    `balanced` draws that many of every class (seeded), `random` draws them uniformly (seeded, unbalanced, as
    for ImageNet-10%), `first` takes the first ones in file order (the official CIFAR code), `all` labels
    every example left after validation. The unlabeled pool is the rest of the pool; it includes the labeled
    examples by default (docs/method.md#splits).
    """
    if selection not in SELECTIONS:
        raise DataError(f"unknown data.labeled_selection {selection!r}; use one of {', '.join(SELECTIONS)}")
    rng = np.random.default_rng(seed)
    labelable = len(labels) if labelable is None else labelable
    head = labels[:labelable]
    validation = per_class_sample(head, val_per_class, rng, "validation split") if val_per_class else np.array([], int)
    candidates = np.setdiff1d(np.arange(labelable), validation)
    count = labeled_per_class * len(np.unique(head))
    if selection in ("random", "first") and count > len(candidates):
        raise DataError(
            f"labeled split: {count} labeled examples requested but only {len(candidates)} remain after validation; "
            "lower data.labeled_per_class or data.val_per_class"
        )
    if selection == "balanced":
        labeled = candidates[per_class_sample(head[candidates], labeled_per_class, rng, "labeled split")]
    elif selection == "random":
        labeled = np.sort(rng.choice(candidates, size=count, replace=False))
    elif selection == "first":
        labeled = candidates[:count]
    else:
        labeled = candidates
    pool = np.concatenate([candidates, np.arange(labelable, len(labels))])
    unlabeled = pool if unlabeled_includes_labeled else np.setdiff1d(pool, labeled)
    return Split(labeled=labeled.tolist(), unlabeled=unlabeled.tolist(), validation=validation.tolist())
