"""Unlabeled images streamed from WebDataset tar shards (data.unlabeled_shards; docs/scale.md#shards).

A shard is a tar file of samples in WebDataset's layout: consecutive members that share a key (the member name up
to the first dot of its file name) form one sample, and a sample's image is its member with an image extension
(`000000042.jpg`). Nothing lists the images: the main process holds the shard file names only, and each image
is read once from its shard, decoded and augmented in a loader worker.

The unlabeled batch of μB images is cut into L *lanes* of μB / L images each, concatenated in lane order. A
lane reads its own shards one after the other: pass p deals the shards out in a seeded permutation, shard
perm_p[j] going to lane j mod L, and the lane walks its share in that order, every sample of a shard in file
order. Under torchrun rank r owns the contiguous lanes r·L/world ... (r + 1)·L/world − 1 (its contiguous slice of
the global batch, as for every other stream), and a rank's loader workers share its lanes round-robin, so each
rank and each worker reads shards no other one reads. Every image's augmentation seed is a hash of the run's
seed, the pass, the shard and the image's place in it: the batches depend on L, not on how many processes or
workers make them.

A lane's position is (pass, shard in the lane's order, samples read from that shard). The checkpoint holds every
lane's position after the last batch the trainer *received* (workers read ahead); a resumed stream reopens each
lane's shard and skips that many samples by their tar headers, so it goes on bit for bit. Rank 0 alone writes
checkpoints: the positions of other ranks' lanes follow from the samples each lane has consumed and the shards'
sample counts, which rank 0 learns from the tar headers when it saves (each shard counted once per run).

With data.label_dir (Reduced MPL) the ShardSet carries a label_store.KeyStore, and the workers join every image with
its stored distribution by (shard file, key) as they read it; the chunks carry it as p_u. A lookup loads the store
file of the shard being read (a few kept), never the whole store.

Reading uses the standard library's tarfile rather than the webdataset package: webdataset streams a tar once
from its first byte and offers no position to save or restore, while an exact resume needs "shard k, sample o",
found here by seeking over tar headers. Shards written by webdataset's ShardWriter or `metapl shard` read alike.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from metapl.core.batch import Batch, StoredBatch, with_stored
from metapl.core.errors import CheckpointError, ConfigError, DataError, MetaplError, first_line

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CHUNK = 64  # images per worker item, as for image files (streaming.CHUNK)
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split: key up to the first dot of the file name
_MASK = (1 << 64) - 1


# ------------------------------------------------------------------------------------------------ shard lists
# The most shard names a pattern may expand to: a million shards of `metapl shard`'s 5,000 images hold five
# billion images, beyond any data set, while a pattern such as {0..999999999999} would exhaust memory (and
# take hours to stat) before its first name was checked.
MAX_SHARDS = 1_000_000


def _groups(pattern: str) -> Iterator[tuple[str, list[str] | tuple[int, int, int]]]:
    """The pattern cut at its brace groups: (text before the group, the group), the group a list of its
    items or a range (first, last, zero-padding width); a last ("", []) pair carries the text after them."""
    rest = pattern
    while (match := re.search(r"\{([^{}]*)\}", rest)) is not None:
        body, head = match.group(1), rest[: match.start()]
        numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        if numeric:
            first, last = numeric.groups()
            width = len(first) if first.startswith("0") or len(first) == len(last) else 0
            yield head, (int(first), int(last), width)
        elif "," in body:
            yield head, body.split(",")
        else:
            raise ConfigError(
                f"data.unlabeled_shards={pattern!r}: {{{body}}} is neither a range {{000..099}} nor a list {{a,b}}; "
                "fix the pattern"
            )
        rest = rest[match.end() :]
    yield rest, []


def _size(group: list[str] | tuple[int, int, int]) -> int:
    return len(group) if isinstance(group, list) else abs(group[1] - group[0]) + 1


def _items(group: list[str] | tuple[int, int, int]) -> list[str]:
    if isinstance(group, list):
        return group
    first, last, width = group
    step = 1 if last >= first else -1
    return [str(i).zfill(width) for i in range(first, last + step, step)]


def count_braces(pattern: str) -> int:
    """How many names `pattern` expands to, computed from its groups without expanding any."""
    return math.prod(_size(group) for _, group in _groups(pattern) if group)


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's brace notation: '{000..012}' counts (keeping the zero padding), '{a,b}' lists; several groups
    expand left to right ('u-{0..1}-{a,b}.tar' → u-0-a, u-0-b, u-1-a, u-1-b). A pattern of more than MAX_SHARDS
    names is refused from its groups' sizes, before any name is made."""
    count = count_braces(pattern)
    if count > MAX_SHARDS:
        raise ConfigError(
            f"data.unlabeled_shards={pattern!r} names {count:,} shards, more than metapl reads ({MAX_SHARDS:,}); "
            "fix the pattern's range, or write fewer, larger shards (metapl shard --shard-size)"
        )
    names = [""]
    for text, group in _groups(pattern):
        names = [name + text for name in names]
        if group:
            names = [name + item for name in names for item in _items(group)]
    return names


def named_shards(spec: str) -> list[str]:
    """The shard files that data.unlabeled_shards names, whether they exist or not: a folder's .tar files (sorted),
    or a brace pattern's expansion (a finished run's outputs must spare them, though only training reads them)."""
    path = Path(spec)
    if "{" not in spec and path.is_dir():
        return sorted(str(p) for p in path.iterdir() if p.name.endswith(SHARD_SUFFIXES) and p.is_file())
    return expand_braces(spec)


def shard_files(spec: str) -> list[str]:
    """The shard files that data.unlabeled_shards names (named_shards), each of which must exist; one line naming
    the setting otherwise."""
    fix = "write shards with: metapl shard SOURCE --out DIR"
    files = named_shards(spec)
    if "{" not in spec and Path(spec).is_dir():
        if not files:
            raise DataError(f"data.unlabeled_shards={spec!r}: the folder holds no .tar shards; {fix}")
        return files
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        what = (
            "no such folder or shard" if len(files) == 1 else f"{len(missing)} of its {len(files)} shards are missing"
        )
        raise DataError(
            f"data.unlabeled_shards={spec!r}: {what} (first: {missing[0]}); fix the pattern or the folder, or {fix}"
        )
    return files


def input_names(paths: list[str]) -> list[str]:
    """Each shard path relative to the folder the paths share (a brace pattern may name files of the same name in
    several folders), so that the folder itself may move: how inputs.json and a label store name shards."""
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]) if paths else ""
    return [os.path.relpath(os.path.abspath(p), common) for p in paths]


@dataclass
class ShardSet:
    """What DataBundle.x_unlabeled holds with data.unlabeled_shards: the shard files, and how every image becomes
    the model's input (as for ImageFiles). len() counts shards: the images are never counted up front."""

    spec: str  # data.unlabeled_shards as given
    files: list[str]
    size: int
    channels: int = 3
    workers: int = 0
    pipeline: Any = field(default=None, repr=False)  # an ImagePipeline (streaming.py)
    lanes: int = 0  # data.shard_lanes (0: processes × workers)
    store: Any = field(default=None, repr=False)  # a label_store.KeyStore (data.label_dir): p_u joined by key

    def __len__(self) -> int:
        return len(self.files)

    @property
    def paths(self) -> list[str]:
        """The files a run reads (so that outputs never overwrite them)."""
        return self.files

    def fingerprint(self) -> str:
        """The shard names, hashed: a resumed stream must read the same shards in the same order."""
        digest = hashlib.sha256()
        for name in self.files:
            digest.update(os.path.basename(name).encode() + b"\0")
        return f"{len(self.files)}:{digest.hexdigest()[:16]}"


def check_shard_data(images: Any, cfg: Any) -> None:
    """One line unless data.unlabeled_shards can go with the data set (image files, no data.unlabeled_dir)."""
    from metapl.parts.data.folders import ImageFiles

    if not isinstance(images, ImageFiles):
        raise ConfigError(
            f"data.unlabeled_shards is for image files (data.name=imagenet or folder), not data.name={cfg.name}; "
            "clear it"
        )
    if cfg.unlabeled_dir:
        raise ConfigError(
            "data.unlabeled_dir and data.unlabeled_shards both name unlabeled images; keep one (metapl shard "
            f"{cfg.unlabeled_dir} --out DIR turns the folder into shards)"
        )


def attach_shards(bundle: Any, cfg: Any) -> None:
    """Put the shards in place of a DataBundle's unlabeled pool (data.name=imagenet or folder)."""
    labeled = bundle.x_labeled
    check_shard_data(labeled, cfg)
    shards = ShardSet(
        cfg.unlabeled_shards, shard_files(cfg.unlabeled_shards), labeled.size, labeled.channels, labeled.workers
    )
    shards.pipeline, shards.lanes = labeled.pipeline, cfg.shard_lanes
    from metapl.core import distributed

    plan_lanes(shards, cfg.batch_size * cfg.mu, distributed.world_size())  # one line now for an impossible plan
    bundle.x_unlabeled, bundle.y_unlabeled = shards, None


def plan_lanes(shards: ShardSet, count: int, world: int, lanes: int = 0) -> tuple[int, int]:
    """(L, loader workers per rank) for an unlabeled batch of `count` images over `world` ranks. `lanes` (a
    checkpoint's) or data.shard_lanes fixes L; else L = world × the most workers (≤ data.workers) that divide
    the rank's share and have shards to read."""
    per_rank = count // world
    wanted = lanes or shards.lanes
    if wanted:
        setting = f"data.shard_lanes={wanted}" if not lanes else f"the checkpoint's {wanted} shard lanes"
        if wanted % world or count % wanted:
            raise ConfigError(
                f"{setting} must divide the unlabeled batch data.mu × data.batch_size = {count} and be a multiple of "
                f"the {world} processes; use e.g. data.shard_lanes={world * _largest_divisor(per_rank, 8)}"
            )
        total = wanted
    else:
        most = max(1, shards.workers)
        total = world * _largest_divisor(per_rank, min(most, max(1, len(shards.files) // world)))
    if len(shards.files) < total:
        raise DataError(
            f"data.unlabeled_shards={shards.spec!r} has {len(shards.files)} shards for {total} readers (shard lanes: "
            "processes × loader workers), and each reads its own; write more, smaller shards (metapl shard "
            "--shard-size) or lower data.shard_lanes / data.workers"
        )
    return total, _largest_divisor(total // world, max(0, shards.workers))


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest d ≤ at_most that divides n (0 when at_most is 0)."""
    return next((d for d in range(min(n, at_most), 0, -1) if n % d == 0), 0)


# ------------------------------------------------------------------------------------------------ reading tars
def _split(name: str) -> tuple[str | None, str]:
    match = _KEY.match(name)
    return (match.group(1), match.group(2).lower()) if match else (None, "")


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The regular files of a tar, headers only (data is read on demand), without tarfile's growing member list."""
    while True:
        info = tar.next()
        if info is None:
            return
        tar.members = []  # type: ignore[attr-defined]  # a TarFile keeps every header read: memory would grow
        name = os.path.basename(info.name)
        if info.isreg() and not (name.startswith("__") and "__" in name[2:]):
            yield info


def _samples(tar: tarfile.TarFile) -> Iterator[tuple[str, list[tarfile.TarInfo]]]:
    """(key, members) of each sample: consecutive members that share a key."""
    key: str | None = None
    group: list[tarfile.TarInfo] = []
    for info in _members(tar):
        member_key, _ = _split(info.name)
        if member_key is None:
            continue
        if group and member_key != key:
            yield key or "", group
            group = []
        key = member_key
        group.append(info)
    if group:
        yield key or "", group


def _open(path: str) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (OSError, tarfile.TarError, EOFError) as err:
        raise DataError(f"cannot read shard {path} ({first_line(err)}); {SHARD_FIX}") from None


SHARD_FIX = "write it again (metapl shard) or take it out of data.unlabeled_shards and start over (--restart)"


def count_samples(path: str) -> int:
    """The samples of a shard, from its tar headers alone."""
    try:
        with _open(path) as tar:
            return sum(1 for _ in _samples(tar))
    except (OSError, tarfile.TarError, EOFError) as err:
        raise DataError(f"cannot read shard {path} ({first_line(err)}); {SHARD_FIX}") from None


class ShardReader:
    """One shard's samples from the `skip`-th on: (key, image bytes, offset) with the offset of the sample."""

    def __init__(self, path: str, skip: int):
        self.path, self.offset = path, skip
        self._tar = _open(path)
        self._samples = _samples(self._tar)
        try:
            for _ in range(skip):
                next(self._samples)
        except StopIteration:
            pass
        except (OSError, tarfile.TarError, EOFError) as err:
            raise DataError(f"cannot read shard {path} ({first_line(err)}); {SHARD_FIX}") from None

    def next(self) -> tuple[str, bytes, int] | None:
        """The next sample's key, image bytes and offset; None at the shard's end."""
        try:
            sample = next(self._samples, None)
            if sample is None:
                return None
            key, members = sample
            image = next((m for m in members if _split(m.name)[1] in IMAGE_EXTENSIONS), None)
            if image is None:
                shown = ", ".join(os.path.basename(m.name) for m in members[:3])
                raise DataError(
                    f"shard {self.path}: sample {key!r} ({shown}) has no image ({', '.join(IMAGE_EXTENSIONS)}); "
                    "write shards whose samples hold a KEY.jpg or KEY.png (metapl shard does)"
                )
            handle = self._tar.extractfile(image)
            data = handle.read() if handle is not None else b""
        except (OSError, tarfile.TarError, EOFError) as err:
            raise DataError(f"cannot read shard {self.path} ({first_line(err)}); {SHARD_FIX}") from None
        offset = self.offset
        self.offset += 1
        return f"{key}.{_split(image.name)[1]}", data, offset

    def close(self) -> None:
        self._tar.close()


def decode_bytes(data: bytes, channels: int, where: str) -> torch.Tensor:
    """An image's bytes as a uint8 (C, H, W) tensor, decoded exactly as folders.decode decodes a file."""
    import numpy as np
    from PIL import Image, ImageOps

    from metapl.parts.data.folders import open_image

    try:
        with open_image(io.BytesIO(data)) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB" if channels == 3 else "L")
            array = np.array(image, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot decode image {where} ({first_line(err)}); {SHARD_FIX}") from None
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], channels)).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------------------ lanes
def _mix(*values: int) -> int:
    """A 62-bit hash of integers (splitmix64 steps): seeds that depend only on the values."""
    h = 0x9E3779B97F4A7C15
    for value in values:
        h = (h ^ (value & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h >> 2


def lane_order(files: int, lanes: int, lane: int, pass_: int, seed: int) -> list[int]:
    """The shard indices lane `lane` reads in pass `pass_`: every L-th of the pass's seeded permutation."""
    generator = torch.Generator().manual_seed(_mix(seed, pass_, 0x5A4D))
    return torch.randperm(files, generator=generator)[lane::lanes].tolist()


@dataclass
class Position:
    """Where a lane reads next: sample `offset` of the `index`-th shard of its order in pass `pass_`."""

    pass_: int = 0
    index: int = 0
    offset: int = 0

    def as_list(self) -> list[int]:
        return [self.pass_, self.index, self.offset]


class _Lane:
    """Reads one lane's images in order, from `position` on; moves to the next shard at a shard's end."""

    def __init__(self, shards: ShardSet, lanes: int, lane: int, seed: int, position: Position):
        self.shards, self.lanes, self.lane, self.seed = shards, lanes, lane, seed
        self.position = replace(position)
        self._order = lane_order(len(shards.files), lanes, lane, position.pass_, seed)
        self._reader: ShardReader | None = None

    def _shard(self) -> int:
        return self._order[self.position.index]

    def take(self) -> tuple[torch.Tensor, int, str, str]:
        """The next image (decoded), its augmentation seed, its shard file and its key in the shard."""
        empty_run = 0
        while True:
            if self._reader is None:
                self._reader = ShardReader(self.shards.files[self._shard()], self.position.offset)
            sample = self._reader.next()
            if sample is not None:
                name, data, offset = sample
                self.position.offset = offset + 1
                shard = self._shard()
                where = f"{name} in shard {self.shards.files[shard]}"
                image = decode_bytes(data, self.shards.channels, where)
                key = name.rsplit(".", 1)[0]  # ShardReader names the image KEY.EXT, the extension without dots
                return image, _mix(self.seed, self.position.pass_, shard, offset), self.shards.files[shard], key
            empty_run = 0 if self.position.offset else empty_run + 1
            if empty_run > len(self._order):
                raise DataError(
                    f"data.unlabeled_shards={self.shards.spec!r}: the {len(self._order)} shards of lane {self.lane} "
                    "hold no samples; write shards with images in them (metapl shard)"
                )
            self._advance()

    def _advance(self) -> None:
        self.close()
        self.position.index += 1
        self.position.offset = 0
        if self.position.index >= len(self._order):
            self.position.pass_ += 1
            self.position.index = 0
            self._order = lane_order(len(self.shards.files), self.lanes, self.lane, self.position.pass_, self.seed)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


class _Tracker:
    """A lane's position without reading images: advanced by sample counts from the tar headers (rank 0's view
    of the lanes other ranks read, for the checkpoint)."""

    def __init__(self, shards: ShardSet, lanes: int, lane: int, seed: int, position: Position, counts: dict):
        self.shards, self.lanes, self.lane, self.seed, self.counts = shards, lanes, lane, seed, counts
        self.position = replace(position)

    def advance(self, samples: int) -> None:
        p = self.position
        order = lane_order(len(self.shards.files), self.lanes, self.lane, p.pass_, self.seed)
        empty_run = 0
        while samples > 0:
            shard = order[p.index]
            if shard not in self.counts:
                self.counts[shard] = count_samples(self.shards.files[shard])
            left = self.counts[shard] - p.offset
            if left > 0:
                taken = min(left, samples)
                p.offset += taken
                samples -= taken
                empty_run = 0
                continue
            empty_run = empty_run + 1 if p.offset == 0 else 0
            if empty_run > len(order):
                raise DataError(
                    f"data.unlabeled_shards={self.shards.spec!r}: the {len(order)} shards of lane {self.lane} hold "
                    "no samples; write shards with images in them (metapl shard)"
                )
            p.index, p.offset = p.index + 1, 0
            if p.index >= len(order):
                p.pass_, p.index = p.pass_ + 1, 0
                order = lane_order(len(self.shards.files), self.lanes, self.lane, p.pass_, self.seed)


class _LaneImages(torch.utils.data.IterableDataset):
    """What the loader workers run: each takes its share of the rank's lanes and yields, step after step, every
    lane's μB / L images in (weak, strong) views, in chunks of up to CHUNK, with the lane's position after each."""

    def __init__(self, shards: ShardSet, lanes: int, own: list[int], per_lane: int, seed: int, start: dict):
        self.shards, self.lanes, self.own, self.per_lane, self.seed = shards, lanes, own, per_lane, seed
        self.start = start  # lane → Position at the stream's (re)start

    def __iter__(self):
        from metapl.parts.data.streaming import _generator

        info = torch.utils.data.get_worker_info()
        mine = self.own if info is None else self.own[info.id :: info.num_workers]
        readers = [_Lane(self.shards, self.lanes, lane, self.seed, self.start[lane]) for lane in mine]
        pipeline = self.shards.pipeline
        step = 0
        try:
            while True:
                for reader in readers:
                    for part, first in enumerate(range(0, self.per_lane, CHUNK)):
                        taken = [reader.take() for _ in range(min(CHUNK, self.per_lane - first))]
                        views = [pipeline.views(image, _generator(seed)) for image, seed, _, _ in taken]
                        weak, strong = [w for w, _ in views], [s for _, s in views]
                        out = {
                            "lane": reader.lane,
                            "step": step,
                            "part": part,
                            "weak": torch.stack(weak),
                            "strong": torch.stack(strong),
                            "position": reader.position.as_list(),
                        }
                        if self.shards.store is not None:  # the stored distributions, joined by (shard, key)
                            out["p"] = _joined(self.shards.store, [(shard, key) for _, _, shard, key in taken])
                        yield out
                step += 1
        except MetaplError as err:
            yield {"error": f"{type(err).__name__}:{err}"}
        finally:
            for reader in readers:
                reader.close()


def _joined(store: Any, samples: list[tuple[str, str]]) -> torch.Tensor:
    """The stored distributions of (shard, key) samples, in order: one store lookup per run of one shard."""
    parts, start = [], 0
    for end in range(1, len(samples) + 1):
        if end == len(samples) or samples[end][0] != samples[start][0]:
            parts.append(store.lookup(samples[start][0], [key for _, key in samples[start:end]]))
            start = end
    return torch.cat(parts)


class ShardStream:
    """The unlabeled half of a BatchStream's batches, from shards: `attach(batch)` gives a labeled batch this
    rank's μB / world unlabeled images; state_dict() holds every lane's position after the last attached step."""

    def __init__(self, shards: Any, count: int, seed: int, rank: int = 0, world: int = 1):
        self.shards: ShardSet = shards  # DataBundle.x_unlabeled (typed as a tensor there)
        self.count, self.seed, self.rank, self.world = count, seed, rank, world
        self.lanes, self.workers = plan_lanes(shards, count, world)
        self.positions = [Position() for _ in range(self.lanes)]
        self.step = 0  # steps received since the run began
        self._counts: dict[int, int] = {}  # shard → samples, learned from headers (other ranks' lanes)
        self._trackers: dict[int, tuple[int, _Tracker]] = {}  # lane → (step it is at, tracker)
        self._outputs: Iterator[dict] | None = None
        self._loader_iter: Any = None
        self._buffer: dict[tuple[int, int, int], dict] = {}
        self._started_at = 0  # self.step when the workers (re)started
        self._restored_step = 0  # the step that self.positions describe for other ranks' lanes

    @property
    def per_lane(self) -> int:
        return self.count // self.lanes

    def own_lanes(self) -> list[int]:
        share = self.lanes // self.world
        return list(range(self.rank * share, (self.rank + 1) * share))

    def _start(self) -> None:
        from metapl.parts.data.streaming import _own_process_group

        own = self.own_lanes()
        dataset = _LaneImages(
            self.shards, self.lanes, own, self.per_lane, self.seed, {lane: self.positions[lane] for lane in own}
        )
        if self.workers == 0:
            self._outputs = iter(dataset)
        else:
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_size=None,
                num_workers=self.workers,
                prefetch_factor=2,
                worker_init_fn=_own_process_group,
                generator=torch.Generator(),  # the workers' base seed never comes from the global RNG (streaming.py)
            )
            self._loader_iter = iter(loader)
            self._outputs = self._loader_iter
        self._buffer, self._started_at = {}, self.step

    def attach(self, batch: Batch) -> Batch:
        """`batch` with this rank's unlabeled images of the next step (weak and strong views)."""
        from metapl.parts.data.streaming import _raise

        if self._outputs is None:
            self._start()
        assert self._outputs is not None
        local_step = self.step - self._started_at
        parts = -(-self.per_lane // CHUNK)
        weak, strong, stored = [], [], []
        for lane in self.own_lanes():
            for part in range(parts):
                wanted = (lane, local_step, part)
                while wanted not in self._buffer:
                    out = next(self._outputs)
                    if "error" in out:
                        _raise(out["error"])
                    self._buffer[(out["lane"], out["step"], out["part"])] = out
                out = self._buffer.pop(wanted)
                weak.append(out["weak"])
                strong.append(out["strong"])
                if "p" in out:
                    stored.append(out["p"])
                self.positions[lane] = Position(*out["position"])
        self.step += 1
        p_l = batch.p_l if isinstance(batch, StoredBatch) else None
        p_u = torch.cat(stored) if stored else None
        unlabeled = replace(batch, x_u_weak=torch.cat(weak), x_u_strong=torch.cat(strong), y_u=None)
        return with_stored(unlabeled, p_l, p_u)

    def _position(self, lane: int) -> Position:
        """Lane `lane`'s position after `self.step` steps: read by this rank, or tracked through the headers."""
        if lane in self.own_lanes():
            return self.positions[lane]
        at, tracker = self._trackers.get(lane, (0, None))
        if tracker is None:
            tracker = _Tracker(self.shards, self.lanes, lane, self.seed, self.positions[lane], self._counts)
            at = self._restored_step
        tracker.advance((self.step - at) * self.per_lane)
        self._trackers[lane] = (self.step, tracker)
        return tracker.position

    def state_dict(self) -> dict:
        positions = [self._position(lane).as_list() for lane in range(self.lanes)]
        return {
            "lanes": self.lanes,
            "seed": self.seed,
            "step": self.step,
            "shards": self.shards.fingerprint(),
            "positions": torch.tensor(positions, dtype=torch.long),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["shards"] != self.shards.fingerprint():
            raise CheckpointError(
                f"data.unlabeled_shards={self.shards.spec!r} now lists other shards ({self.shards.fingerprint()}) "
                f"than the checkpoint's stream read ({state['shards']}); restore them to resume, or start over with "
                "--restart"
            )
        lanes = int(state["lanes"])
        if lanes != self.lanes:
            self.lanes, self.workers = plan_lanes(self.shards, self.count, self.world, lanes)
        self.close()
        self.seed = int(state["seed"])  # the lanes' shard orders and the images' seeds
        self.positions = [Position(*row) for row in state["positions"].tolist()]
        self.step = self._restored_step = int(state["step"])
        self._trackers = {}

    def close(self) -> None:
        """Stop the workers; the stream goes on later from the last step it attached."""
        if self._loader_iter is not None:
            getattr(self._loader_iter, "_shutdown_workers", lambda: None)()  # what DataLoader does when deleted
        elif self._outputs is not None:
            getattr(self._outputs, "close", lambda: None)()  # the in-process generator: closes its shards
        self._outputs = self._loader_iter = None
        self._buffer = {}
