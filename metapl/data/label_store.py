"""Stored class distributions of a teacher: what `metapl label` writes and `data.label_dir` reads (Reduced MPL).

A label directory holds `manifest.json` and shards (safetensors files, no pickle). Each shard covers a contiguous
range of the data set's training pool, the `dataset.x_train` indices that split indices refer to, so one store
serves every split of that pool:

    index    int64 [n]      the pool indices of the shard's images
    values   [n, K] or [n, k]  the class probabilities: all K of them, or the k largest (float16 or float32)
    classes  int16/int32 [n, k]  the classes of the k largest (top-k stores only)

The manifest names the source model, the data fingerprint (a hash of the pool's size, labels and files or a sample
of its images), the class count, the precision, top-k, the injected bias if any, and the shards. It is written
last: a directory without one is unfinished (`labeling.json` then holds the plan that a rerun resumes).

A top-k row is made dense again by spreading the probability left over (1 − Σ top k) evenly over the other K − k
classes; full rows are renormalised (float16 rounding).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from metapl.data.folders import ImageFiles
from metapl.errors import DataError

FORMAT = 1
MANIFEST = "manifest.json"
PLAN = "labeling.json"  # the labeling run's settings, written first; a rerun with the same plan resumes
PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}
_SAMPLED_IMAGES = 256  # in-memory pools: images hashed into the fingerprint, evenly spaced


def fingerprint(dataset) -> str:
    """A short hash of a training pool: its size, class count and labels, and its file names (the last two parts
    of each path, so that a moved data set keeps its fingerprint) or an evenly spaced sample of its images."""
    x, y = dataset.x_train, dataset.y_train
    digest = hashlib.sha256(f"pool={len(y)};classes={dataset.num_classes};".encode())
    digest.update(torch.as_tensor(y).to(torch.int64).numpy().tobytes())
    if isinstance(x, ImageFiles):
        for path in x.paths:
            digest.update(("/".join(str(path).replace("\\", "/").rsplit("/", 2)[-2:]) + "\n").encode())
    elif len(x):
        picks = torch.linspace(0, len(x) - 1, steps=min(len(x), _SAMPLED_IMAGES)).round().long()
        digest.update(x[picks].contiguous().numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def shard_name(number: int) -> str:
    return f"shard-{number:05d}.safetensors"


def save_shard(path: Path, index: torch.Tensor, values: torch.Tensor, classes: torch.Tensor | None) -> None:
    """Write one shard atomically (a temporary file, then a rename): a killed run leaves no partial shard."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {"index": index.to(torch.int64).contiguous(), "values": values.contiguous()}
    if classes is not None:
        tensors["classes"] = classes.contiguous()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp))
    except SafetensorError as err:  # safetensors' own type for an OS error: raised as the OSError it is
        tmp.unlink(missing_ok=True)
        number = re.search(r"os error (\d+)", str(err))
        code = int(number.group(1)) if number else errno.EIO
        raise OSError(code, os.strerror(code), str(path)) from None
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(path)


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot read label shard {path} ({first}); delete it and run metapl label again") from None


@dataclass
class Distributions:
    """Stored distributions of some images, in a compact form: `values` [n, K] (full) or [n, k] with `classes`."""

    values: torch.Tensor
    classes: torch.Tensor | None
    num_classes: int

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, index) -> Distributions:
        """The rows at `index` (a list or tensor of row numbers), still compact."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Distributions(
            self.values[index], None if self.classes is None else self.classes[index], self.num_classes
        )

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at `index` as dense float32 distributions over the K classes."""
        values = self.values[index].float()
        if self.classes is None:
            return values / values.sum(-1, keepdim=True).clamp_min(1e-12)
        k = values.shape[1]
        rest = (1.0 - values.sum(-1, keepdim=True)).clamp_min(0.0) / max(self.num_classes - k, 1)
        dense = rest.expand(len(values), self.num_classes).clone()
        return dense.scatter_(1, self.classes[index].long(), values)

    def dense(self) -> torch.Tensor:
        return self.take(torch.arange(len(self)))


def read_manifest(label_dir: Path) -> dict:
    """manifest.json of a finished label directory; one-line DataErrors name what is missing and the fix."""
    label_dir = Path(label_dir)
    path = label_dir / MANIFEST
    if not path.is_file():
        if (label_dir / PLAN).is_file():
            raise DataError(
                f"{label_dir} is unfinished (no {MANIFEST}): metapl label stopped before the end; "
                "run the same metapl label command again to finish it"
            )
        raise DataError(
            f"no stored distributions at {label_dir} (no {MANIFEST}); run metapl label SOURCE --out {label_dir} first"
        )
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise DataError(
                f"{path} has format {manifest.get('format')!r}, which this metapl ({FORMAT}) cannot read; "
                "label the data again with this metapl"
            )
        for key in ("fingerprint", "num_classes", "pool_size", "shards"):
            manifest[key]  # noqa: B018 - presence check
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"cannot read {path} ({type(err).__name__}: {err}); run metapl label again") from None
    return manifest


def read_store(label_dir: Path, dataset) -> Distributions:
    """Every image's stored distribution, in pool order, after checking that the store was made for this pool."""
    label_dir = Path(label_dir)
    manifest = read_manifest(label_dir)
    expected = fingerprint(dataset)
    if manifest["fingerprint"] != expected:
        raise DataError(
            f"{label_dir} holds distributions of another data set (fingerprint {manifest['fingerprint']}, this data "
            f"{expected}); label this data with metapl label, or set the data.* keys it was labeled with"
        )
    if manifest["num_classes"] != dataset.num_classes or manifest["pool_size"] != len(dataset.y_train):
        raise DataError(
            f"{label_dir} holds {manifest['pool_size']} images of {manifest['num_classes']} classes, this data "
            f"{len(dataset.y_train)} of {dataset.num_classes}; label this data with metapl label"
        )
    try:
        return _read_shards(label_dir, manifest)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:  # a damaged or hand-edited store
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"the store at {label_dir} is damaged ({type(err).__name__}: {detail}); delete it and run metapl label again"
        ) from None


def _read_shards(label_dir: Path, manifest: dict) -> Distributions:
    num_classes, top_k = int(manifest["num_classes"]), int(manifest.get("top_k", 0))
    width = top_k or num_classes
    values, classes, indices = [], [], []
    for entry in manifest["shards"]:
        shard_path = label_dir / str(entry["file"])
        if not shard_path.is_file():
            raise DataError(f"{shard_path} is missing; run metapl label --out {label_dir} again to write it")
        shard = load_shard(shard_path)
        index, value, shard_classes = shard["index"], shard["values"], shard.get("classes")
        fits = value.dim() == 2 and value.shape == (len(index), width) and value.is_floating_point()
        fits = fits and (shard_classes is None) == (top_k == 0)
        if fits and shard_classes is not None and shard_classes.numel():
            low, high = int(shard_classes.min()), int(shard_classes.max())
            fits = shard_classes.shape == value.shape and 0 <= low and high < num_classes
        if not fits or not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise DataError(
                f"{shard_path} does not hold {width} finite probabilities per image as {label_dir / MANIFEST} says; "
                "delete the directory and run metapl label again"
            )
        indices.append(index)
        values.append(value)
        if shard_classes is not None:
            classes.append(shard_classes)
    index = torch.cat(indices) if indices else torch.empty(0, dtype=torch.long)
    if not torch.equal(index, torch.arange(int(manifest["pool_size"]))):
        raise DataError(
            f"the shards of {label_dir} do not cover the pool's {manifest['pool_size']} images once each in order; "
            "delete the directory and run metapl label again"
        )
    return Distributions(torch.cat(values), torch.cat(classes) if classes else None, num_classes)


def attach(bundle, dataset, label_dir: str) -> None:
    """Give a DataBundle the stored distributions of its labeled, unlabeled and validation images (data.label_dir),
    aligned with x_labeled, x_unlabeled and x_val."""
    store = read_store(Path(label_dir), dataset)
    split = bundle.split
    bundle.p_labeled = store.subset(split.labeled)
    bundle.p_unlabeled = store.subset(split.unlabeled)
    bundle.p_val = store.subset(split.validation)
