"""Stored class distributions of a teacher: what `metapl label` writes and `data.label_dir` reads (Reduced MPL).

A label directory holds `manifest.json` and shards (safetensors files, no pickle), in two parts.

The *pool part* (`shard-NNNNN.safetensors`, manifest key `shards`): each shard covers a contiguous range of the data
set's training pool, the `dataset.x_train` indices that split indices refer to, so one store serves every split of
that pool (the labeled images' p_l always comes from here):

    index    int64 [n]      the pool indices of the shard's images
    values   [n, K] or [n, k]  the class probabilities: all K of them, or the k largest (float16 or float32)
    classes  int16/int32 [n, k]  the classes of the k largest (top-k stores only)

The *shard part* (format 2; `unlabeled-NNNNNN.safetensors`, manifest key `unlabeled_shards`), present when the
images of data.unlabeled_shards were labeled: one store file per input tar shard, holding that shard's samples
keyed by their WebDataset key (`__key__`, the member name up to the first dot of its file name):

    keys      uint8 [bytes]  the samples' keys, UTF-8, one after the other
    key_ends  int64 [n]      where each key ends in `keys`
    values, classes          as above, row i for key i

A sample is found by (input shard, key): keys need to be unique within a shard only (webdataset's writer and
`metapl shard` make them unique across shards too, but shards from elsewhere need not). The manifest names every
input shard relative to the folder they share, with its fingerprint (run/run_inputs.py), so a training run
refuses shards that changed since they were labeled. Reading one input shard loads its store file alone
(KeyStore, a few cached): no process holds the whole store. Format 1 stores (pool part only) are still read.

The manifest names the source model, the data fingerprint (a hash of the pool's size, labels and files or a sample
of its images), the class count, the precision, top-k, the injected bias if any, and the shards. It is written
last: a directory without one is unfinished (`labeling.json` then holds the plan that a rerun resumes).

A top-k row is made dense again by spreading the probability left over (1 − Σ top k) evenly over the other K − k
classes; full rows are renormalised (float16 rounding).

A store is checked when it is read, before training writes anything: every row must be a probability distribution
(row_problem: finite, within [0, 1], not all zero, summing to 1 within sum_tolerance, or for top-k rows to at most
1), and every file the manifest names must lie inside the store (_shard_path). A damaged store is refused in one
line naming the store, the shard file and the row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from metapl.core.errors import DataError, first_line
from metapl.parts.data.folders import ImageFiles

FORMAT = 2  # 2: a shard part (data.unlabeled_shards keyed by shard and key) beside the pool part
READABLE = (1, 2)  # format 1: the pool part only
MANIFEST = "manifest.json"
PLAN = "labeling.json"  # the labeling run's settings, written first; a rerun with the same plan resumes
PRECISIONS = {"fp16": torch.float16, "fp32": torch.float32}
_SAMPLED_IMAGES = 256  # in-memory pools: images hashed into the fingerprint, evenly spaced


def pool_hash(dataset) -> str:
    """A short hash of a training pool: its size, class count and labels, and its file names (the last two parts
    of each path, so that a moved data set keeps its fingerprint) or an evenly spaced sample of its images."""
    return data_hash(dataset.x_train, dataset.y_train, dataset.num_classes)


def data_hash(x, y, num_classes: int) -> str:
    """pool_hash()'s hash of any images `x` with labels `y` (a pool, a test set)."""
    digest = hashlib.sha256(f"pool={len(y)};classes={num_classes};".encode())
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
    """Write one shard atomically (core/atomic.py): a killed run leaves no partial shard."""
    from safetensors.torch import save

    from metapl.core.atomic import atomic_write_bytes

    tensors = {"index": index.to(torch.int64).contiguous(), "values": values.contiguous()}
    if classes is not None:
        tensors["classes"] = classes.contiguous()
    atomic_write_bytes(Path(path), save(tensors))


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError, ValueError) as err:
        first = first_line(err)
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


@dataclass
class StoredDistributions:
    """A stored teacher's distributions of a DataBundle's images (data.label_dir), aligned with its x_labeled,
    x_unlabeled and x_val. `unlabeled` is None when the unlabeled images are shards: the shard stream joins each
    sample with its row by key as it reads it (parts/data/shards.py)."""

    labeled: Distributions
    unlabeled: Distributions | None
    val: Distributions


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
        if manifest.get("format") not in READABLE:
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
    expected = pool_hash(dataset)
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
        detail = first_line(err)
        raise DataError(
            f"the store at {label_dir} is damaged ({type(err).__name__}: {detail}); delete it and run metapl label again"
        ) from None


def sum_tolerance(num_classes: int) -> float:
    """How far a stored row's sum may stray from 1 (a full row; a top-k row's may not exceed 1 by more): 2^-10 +
    K·2^-24, twice the worst error of a float16 row of K probabilities summing to 1. Rounding to float16 moves a
    normal value by at most 2^-11 of itself, at most 2^-11 over the row, and a subnormal one (below 2^-14) by
    at most 2^-25 each; doubling leaves room for the float32 softmax and sums. K=1000: 1.04e-3."""
    return 2.0**-10 + num_classes * 2.0**-24


def store_files(label_dir: Path) -> list[Path]:
    """The files of a finished store: its manifest and the shards it names (each checked to lie inside it)."""
    label_dir = Path(label_dir)
    manifest = read_manifest(label_dir)
    try:
        keyed = (manifest.get("unlabeled_shards") or {}).get("files", [])
        return [label_dir / MANIFEST] + [_shard_path(label_dir, entry) for entry in [*manifest["shards"], *keyed]]
    except (KeyError, TypeError, AttributeError) as err:
        raise DataError(
            f"the store at {label_dir} is damaged ({type(err).__name__}: {err}); delete it and run metapl label again"
        ) from None


def _shard_path(label_dir: Path, entry: dict) -> Path:
    """A manifest entry's shard file, refused (one line) unless it lies inside the store: no absolute path, no
    '..', no symbolic link that leads out of it. metapl label writes plain file names."""
    name = entry["file"]
    if not isinstance(name, str):
        raise TypeError(f"a shard's 'file' is {type(name).__name__}, not a string")
    path = label_dir / name
    inside = not Path(name).is_absolute() and ".." not in Path(name).parts
    inside = inside and path.resolve().is_relative_to(label_dir.resolve())
    if not inside:
        raise DataError(
            f"{label_dir / MANIFEST} names the shard {name!r}, outside the store {label_dir}; a store reads only its "
            "own files: delete it and run metapl label again"
        )
    return path


def _read_shards(label_dir: Path, manifest: dict) -> Distributions:
    num_classes, top_k = int(manifest["num_classes"]), int(manifest.get("top_k", 0))
    values, classes, indices = [], [], []
    for entry in manifest["shards"]:
        shard_path = _shard_path(label_dir, entry)
        if not shard_path.is_file():
            raise DataError(f"{shard_path} is missing; run metapl label --out {label_dir} again to write it")
        shard = load_shard(shard_path)
        index, value, shard_classes = shard["index"], shard["values"], shard.get("classes")
        _check_rows(label_dir, shard_path, value, shard_classes, len(index), num_classes, top_k)
        problem = row_problem(value, shard_classes, num_classes)
        if problem is not None:
            row, what = problem
            raise DataError(
                f"the store at {label_dir} is damaged: {shard_path.name} row {row} (image {int(index[row])} of the "
                f"pool) {what}; delete the store and run metapl label again"
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


def _check_rows(
    label_dir: Path,
    path: Path,
    value: torch.Tensor,
    classes: torch.Tensor | None,
    rows: int,
    num_classes: int,
    top_k: int,
) -> None:
    """One line unless a shard holds `rows` rows of (top_k or num_classes) probabilities as its manifest says."""
    width = top_k or num_classes
    fits = value.dim() == 2 and value.shape == (rows, width) and value.is_floating_point()
    fits = fits and (classes is None) == (top_k == 0)
    if fits and classes is not None and classes.numel():
        low, high = int(classes.min()), int(classes.max())
        fits = classes.shape == value.shape and 0 <= low and high < num_classes
    if not fits:
        raise DataError(
            f"{path} does not hold {width} probabilities per image as {label_dir / MANIFEST} says; "
            "delete the directory and run metapl label again"
        )


def row_problem(values: torch.Tensor, classes: torch.Tensor | None, num_classes: int) -> tuple[int, str] | None:
    """The first row of a shard that is no probability distribution, and what is wrong with it; None when every
    row is one. Full rows ([n, K]) must sum to 1 within sum_tolerance(K); top-k rows ([n, k] with `classes`) hold
    the k largest of K probabilities, so they sum to at least k/K and at most 1 (both within the tolerance),
    and name k different classes. Every value is finite and within [0, 1] (1 is exact in float16)."""
    if not len(values):
        return None
    values = values.float()
    tol = sum_tolerance(num_classes)
    sums = values.sum(-1)
    width = values.shape[1]
    checks = [
        (~torch.isfinite(values).all(-1), "holds NaN or infinity"),
        ((values < 0).any(-1), "holds a negative probability"),
        ((values > 1).any(-1), "holds a probability above 1"),
        (values.eq(0).all(-1), "is all zero"),
    ]
    if classes is None:
        checks.append(((sums - 1).abs() > tol, f"sums to {{sum}}, not 1 (within {tol:.2g})"))
    else:
        low = width / num_classes
        checks.append((sums > 1 + tol, f"sums to {{sum}}, above 1 (by more than {tol:.2g})"))
        checks.append((sums < low - tol, f"sums to {{sum}}, less than its {width} largest of {num_classes} can"))
        ordered = classes.long().sort(-1).values
        checks.append(((ordered[:, 1:] == ordered[:, :-1]).any(-1), "names a class twice"))
    failed = torch.stack([bad for bad, _ in checks])  # [checks, n]
    rows = torch.nonzero(failed.any(0)).flatten()
    if not len(rows):
        return None
    row = int(rows[0])
    what = checks[int(torch.nonzero(failed[:, row])[0])][1]
    return row, what.format(sum=f"{float(sums[row]):.6g}")


def attach(bundle, dataset, label_dir: str) -> None:
    """Give a DataBundle the stored distributions of its labeled, unlabeled and validation images (data.label_dir),
    aligned with x_labeled, x_unlabeled and x_val. With data.unlabeled_shards the unlabeled images are the shards'
    samples: the ShardSet gets a KeyStore, and the shard stream joins every sample with its row by key."""
    from metapl.parts.data.shards import ShardSet

    store = read_store(Path(label_dir), dataset)
    split = bundle.split
    unlabeled = None
    if isinstance(bundle.x_unlabeled, ShardSet):
        bundle.x_unlabeled.store = key_store(Path(label_dir), bundle.x_unlabeled.files)
    else:
        unlabeled = store.subset(split.unlabeled)
    bundle.stored = StoredDistributions(store.subset(split.labeled), unlabeled, store.subset(split.validation))


# ---------------------------------------------------------------------------------------------- the shard part
KEYED_PREFIX = "unlabeled-"
STORE_CACHE = 4  # store files a reader keeps loaded: lanes read one input shard at a time
_LABEL_FIX = "label them: metapl label SOURCE --out DIR --set data.unlabeled_shards=... (the same shards)"


def keyed_name(number: int) -> str:
    """The store file of the `number`-th input shard (in data.unlabeled_shards' order when labeled)."""
    return f"{KEYED_PREFIX}{number:06d}.safetensors"


def save_keyed_shard(path: Path, keys: list[str], values: torch.Tensor, classes: torch.Tensor | None) -> None:
    """Write one input shard's distributions, keyed, atomically (core/atomic.py)."""
    import numpy as np
    from safetensors.torch import save

    from metapl.core.atomic import atomic_write_bytes

    encoded = [key.encode("utf-8") for key in keys]
    ends = torch.tensor([len(k) for k in encoded], dtype=torch.int64).cumsum(0)
    tensors = {
        "keys": torch.from_numpy(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()),
        "key_ends": ends.contiguous(),
        "values": values.contiguous(),
    }
    if classes is not None:
        tensors["classes"] = classes.contiguous()
    atomic_write_bytes(Path(path), save(tensors))


@dataclass
class KeyedShard:
    """One input shard's stored distributions: key → row of `rows`."""

    rows: Distributions
    keys: dict[str, int]


def load_keyed_shard(label_dir: Path, path: Path, num_classes: int, top_k: int, count: int | None = None) -> KeyedShard:
    """A store file of the shard part, checked as the pool part is (shape, classes, every row a distribution, and
    each key once); one line naming the store, the file and the row or key otherwise."""
    tensors = load_shard(path)
    try:
        data, ends = tensors["keys"], tensors["key_ends"].tolist()
        starts = [0, *ends[:-1]]
        raw = data.numpy().tobytes()
        keys = [raw[a:b].decode("utf-8") for a, b in zip(starts, ends)]
        values, classes = tensors["values"], tensors.get("classes")
    except (KeyError, UnicodeDecodeError, RuntimeError, ValueError) as err:
        raise DataError(
            f"the store at {label_dir} is damaged: {path.name} has no readable keys ({type(err).__name__}); "
            "delete the store and run metapl label again"
        ) from None
    _check_rows(label_dir, path, values, classes, len(keys), num_classes, top_k)
    if count is not None and len(keys) != count:
        raise DataError(
            f"the store at {label_dir} is damaged: {path.name} holds {len(keys)} samples, its manifest says {count}; "
            "delete the store and run metapl label again"
        )
    problem = row_problem(values, classes, num_classes)
    if problem is not None:
        row, what = problem
        raise DataError(
            f"the store at {label_dir} is damaged: {path.name} row {row} (key {keys[row]!r}) {what}; delete the "
            "store and run metapl label again"
        )
    index = {key: row for row, key in enumerate(keys)}
    if len(index) != len(keys):
        twice = next(key for row, key in enumerate(keys) if index[key] != row)
        raise DataError(
            f"the store at {label_dir} is damaged: {path.name} holds key {twice!r} twice; delete the store and run "
            "metapl label again"
        )
    return KeyedShard(Distributions(values, classes, num_classes), index)


@dataclass
class KeyStore:
    """The shard part of a store, opened for reading: which store file holds each input shard's samples. Lookups
    load that one file (STORE_CACHE of them kept), so a reader never holds the whole store. Picklable: the
    shard lanes' loader workers each get a copy and load what their lanes read."""

    root: Path
    files: dict[str, tuple[str, int]]  # input shard path as read → (store file, samples)
    num_classes: int
    top_k: int

    def __post_init__(self) -> None:
        self._cache: dict[str, KeyedShard] = {}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = {}

    def lookup(self, shard: str, keys: list[str]) -> torch.Tensor:
        """The dense distributions [len(keys), K] of the samples `keys` of the input shard `shard`."""
        loaded = self._cache.pop(shard, None)
        if loaded is None:
            name, count = self.files[shard]
            loaded = load_keyed_shard(self.root, self.root / name, self.num_classes, self.top_k, count)
            while len(self._cache) >= STORE_CACHE:
                self._cache.pop(next(iter(self._cache)))
        self._cache[shard] = loaded  # the most recently used last
        rows = []
        for key in keys:
            row = loaded.keys.get(key)
            if row is None:
                raise DataError(
                    f"shard {shard}: sample {key!r} has no stored distribution in data.label_dir={str(self.root)!r} "
                    f"({self.files[shard][0]}); the shard changed since it was labeled: {_LABEL_FIX}"
                )
            rows.append(row)
        return loaded.rows.take(torch.tensor(rows, dtype=torch.long))


def key_store(label_dir: Path, shards: list[str]) -> KeyStore:
    """The KeyStore for training on `shards` (data.unlabeled_shards): every one of them must have been labeled into
    the store, unchanged since (size and sampled SHA-256, as run/run_inputs.py fingerprints a shard)."""
    from metapl.core.fingerprint import file_fingerprint
    from metapl.parts.data.shards import input_names

    manifest = read_manifest(label_dir)
    part = manifest.get("unlabeled_shards")
    if not part:
        raise DataError(
            f"data.label_dir={str(label_dir)!r} holds distributions of the pool's images only, not of "
            f"data.unlabeled_shards' samples; {_LABEL_FIX}"
        )
    try:
        entries = {entry["input"]: entry for entry in part["files"]}
        files = {}
        for path, name in zip(shards, input_names(shards)):
            entry = entries.get(name)
            if entry is None:
                raise DataError(
                    f"data.label_dir={str(label_dir)!r} holds no distributions of the shard {path} (its store names "
                    f"{len(entries)} shards, e.g. {next(iter(entries), 'none')}); {_LABEL_FIX}"
                )
            if entry["fingerprint"] != file_fingerprint(path):
                raise DataError(
                    f"shard {path} changed since data.label_dir={str(label_dir)!r} labeled it (its size or content "
                    f"differs); restore it, or {_LABEL_FIX}"
                )
            files[path] = (_shard_path(label_dir, entry).name, int(entry["count"]))
        return KeyStore(label_dir, files, int(manifest["num_classes"]), int(manifest.get("top_k", 0)))
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        raise DataError(
            f"the store at {label_dir} is damaged ({type(err).__name__}: {err}); delete it and run metapl label again"
        ) from None
