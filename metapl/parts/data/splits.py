"""Seeded, class-balanced splits; the indices are saved with each run so that a split can be reused.

A split is saved with a fingerprint of the pool it was drawn from (its size, its labels and, for image files,
the list of files), so that a run resumed, evaluated or reused on a data set that has changed since (an image
deleted, a label fixed) is refused in one line instead of silently drawing or indexing another split.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metapl.core.errors import DataError, first_line

SPLIT_NAMES = ("labeled", "unlabeled", "validation")


@dataclass
class Split:
    """Indices into the training pool (labeled, unlabeled, validation); `source`: the pool's fingerprint."""

    labeled: list[int]
    unlabeled: list[int]
    validation: list[int]
    source: dict | None = None  # pool_fingerprint() of what the split was drawn from; None in older files

    def save(self, path: Path) -> None:
        state = asdict(self)
        if state["source"] is None:
            del state["source"]
        from metapl.core.atomic import atomic_write_text

        atomic_write_text(path, json.dumps(state))

    @classmethod
    def load(cls, path: Path) -> Split:
        """A split file written by metapl train; one line naming the file and the entry for anything else."""
        fix = "pass a splits.json written by metapl train"
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
            first = first_line(err)
            raise DataError(f"cannot read split file {path}: {first}; {fix}") from None
        if not isinstance(data, dict):
            raise DataError(f"split file {path} holds a JSON {type(data).__name__}, not an object; {fix}")
        lists = {}
        for name in SPLIT_NAMES:
            if name not in data:
                raise DataError(f"split file {path} has no {name!r} list; {fix}")
            lists[name] = _indices(data[name], f"split file {path}: {name}", fix)
        source = data.get("source")
        if source is not None and not isinstance(source, dict):
            raise DataError(f"split file {path}: 'source' is not an object; {fix}")
        return cls(**lists, source=source)


def _indices(value: Any, where: str, fix: str) -> list[int]:
    """A JSON list of integer indices; a fractional, non-numeric or boolean entry is refused, not rounded."""
    if not isinstance(value, list):
        raise DataError(f"{where} is a JSON {_json_type(value)}, not a list of indices; {fix}")
    for position, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise DataError(f"{where}[{position}] is {json.dumps(item)[:40]}, not an integer index; {fix}")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "object", str: "string", float: "number", int: "number", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def pool_fingerprint(labels: np.ndarray, paths=None, labelable: int | None = None) -> dict:
    """What a split is drawn from: the pool's size, how many of its examples may be labeled, a hash of the
    labels and, for image files, a hash of the file list (in order)."""
    labels = np.ascontiguousarray(np.asarray(labels, dtype=np.int64))
    source = {
        "pool": len(labels),
        "labelable": len(labels) if labelable is None else int(labelable),
        "labels_sha256": hashlib.sha256(labels.tobytes()).hexdigest(),
    }
    if paths is not None:
        digest = hashlib.sha256()
        for path in paths:
            digest.update(str(path).encode("utf-8", "surrogateescape") + b"\n")
        source["files_sha256"] = digest.hexdigest()
    return source


def check_source(saved: dict | None, current: dict, path: Path | str) -> None:
    """Refuse a saved split whose pool differs from the data set as it is now (one line, with the choices);
    a split file without a fingerprint (written by an older metapl) is taken as it is."""
    if not saved:
        return
    if saved.get("pool") != current["pool"]:
        change = f"the training pool had {saved.get('pool')} examples and now has {current['pool']}"
    elif "files_sha256" in saved and saved["files_sha256"] != current.get("files_sha256"):
        change = f"the list of image files differs (the same count, {current['pool']}, but other names or order)"
    elif saved.get("labelable", current["labelable"]) != current["labelable"]:
        change = f"{saved.get('labelable')} of its examples were labeled and now {current['labelable']} are"
    elif saved.get("labels_sha256") != current["labels_sha256"]:
        change = "the labels differ"
    else:
        return
    raise DataError(
        f"the data set changed since {path} was written: {change}, so its indices no longer name the same "
        "examples; restore the data as it was (e.g. put back a deleted image or a fixed label) to use this run, "
        "or start a new run on the data as it is (metapl train --restart, or another --out)"
    )


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
    if len(candidates) == 0:
        raise DataError(
            f"validation split: data.val_per_class={val_per_class} takes every labelable example, and none is left "
            "to label; lower data.val_per_class"
        )
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
