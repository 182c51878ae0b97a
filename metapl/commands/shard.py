"""`metapl shard SOURCE --out DIR`: an image folder or CSV written as WebDataset tar shards (docs/scale.md#shard).

Each image is stored as it is (its file's bytes, no re-encoding) as the sample `KEY.EXT`, KEY the image's running
number in the output (000000042); shards hold `shard_size` images each and are named shard-000000.tar, ... .

Streaming. The source is read one entry at a time (folders.iter_unlabeled_source) and cut, in its order, into
*blocks* of `block_size` entries (the shuffle buffer rounded up to whole shards). A block is shuffled with a seeded
permutation of its own (seed, block number) and cut into shards; the main process holds one block's entries and
the shards in flight, never the whole list. So each shard is a uniform random sample of its block, and with a
buffer at least the source's size (or a source already in random order) of the whole set; `--no-shuffle` keeps
the source's order.

Workers. Worker processes each write whole shards; what a shard holds is fixed by the block plan alone, so the
shards are the same bytes for any worker count. The members' metadata is fixed (mtime 0, owner 0).

Manifest. DIR/shards.jsonl records, one JSON line each, appended and fsynced: the settings (first line), each
block before any of its shards is written (its first entry's number, entry count and a SHA-256 of its entries'
names), and each shard once it is on disk under its final name (image count, first and last source entry, bytes,
SHA-256, the files left out). A later run with the same settings replays the recorded blocks against the source
(which must still begin with them: the names are compared by their hashes), skips every shard the manifest lists
with its recorded size on disk, writes the rest, and cuts any entries after the last recorded block into new
blocks: a killed run continues to the shards an uninterrupted run writes, and a source that grew at its end gets
new shards without the finished ones being rewritten. A shard is written under a hidden `.partial` name and
renamed when complete; a failure or Ctrl-C removes only that partial file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import sys
import tarfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metapl.core.atomic import atomic_write_text
from metapl.core.errors import ConfigError, DataError, Interrupted, first_line
from metapl.core.settings import SEED_LIMIT, SEEDS
from metapl.run import ownership
from metapl.run.outputs import check_output_folder

SHARD_NAME = "shard-{:06d}.tar"
MANIFEST = "shards.jsonl"
SKIPPED = "skipped.txt"
PARTIAL = ".partial"  # a shard being written: `.shard-000042.tar.partial`
MANIFEST_FORMAT = 1
DEFAULT_SHARD_SIZE = 5000
DEFAULT_BUFFER = 100_000  # images shuffled together: about 10 MB of names in the main process
MAX_WORKERS = 256  # past the cores, more processes only wait on the disk
SETTINGS = ("shard_size", "shuffle", "seed", "buffer")  # what a later run must repeat; the option of each below
_OPTION = {"shard_size": "--shard-size", "shuffle": "--no-shuffle", "seed": "--seed", "buffer": "--shuffle-buffer"}


def default_workers() -> int:
    """Worker processes for metapl shard: the cores this process may use, at most 8 (reading and checking images
    is all the work; past 8 the disk, not the cores, sets the pace)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


@dataclass(frozen=True)
class Settings:
    shard_size: int = DEFAULT_SHARD_SIZE
    shuffle: bool = True
    seed: int = 0
    buffer: int = DEFAULT_BUFFER

    @property
    def block_size(self) -> int:
        """Entries per block: the buffer rounded up to whole shards."""
        return -(-self.buffer // self.shard_size) * self.shard_size


@dataclass
class Block:
    """`count` consecutive source entries from entry number `start`, written as shards `first_shard`, ...; `sha256`
    hashes their names (entries_hash)."""

    block: int
    start: int
    count: int
    sha256: str
    first_shard: int

    def shards(self, shard_size: int) -> int:
        return -(-self.count // shard_size)


@dataclass
class ShardSummary:
    images: int  # in DIR's shards, all runs together
    shards: int
    out: Path
    written_images: int = 0  # by this run
    written_shards: int = 0
    skipped: int = 0  # files left out, all runs together

    @property
    def pattern(self) -> str:
        """The brace pattern of the shards, for data.unlabeled_shards."""
        if self.shards == 1:
            return str(self.out / SHARD_NAME.format(0))
        return str(self.out / f"shard-{{{0:06d}..{self.shards - 1:06d}}}.tar")


@dataclass
class _Task:
    shard: int
    items: list[tuple[int, str, str]]  # (key, entry, path)
    out: str
    skip_bad: bool


@dataclass
class _Manifest:
    settings: Settings | None = None
    blocks: list[Block] = field(default_factory=list)
    shards: dict[int, dict] = field(default_factory=dict)  # the last record of each shard


def check_image(data: bytes, path: str) -> None:
    """A DataError naming the file unless its bytes open as an image (PIL's verify: headers and structure)."""
    from PIL import Image

    from metapl.parts.data.folders import open_image

    try:
        with open_image(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        first = first_line(err)
        first = re.sub(r" <_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", first)  # an address: not the same twice
        raise DataError(f"cannot read image {path} ({first})") from None


def write_shards(
    source: Path,
    out: Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    shuffle: bool = True,
    seed: int = 0,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    workers: int = 1,
    buffer: int = DEFAULT_BUFFER,
    skip_bad: bool = False,
) -> ShardSummary:
    """Write the images of `source` (a folder, searched recursively, or a CSV with a `path` column) as shards in
    `out`, continuing or extending what an earlier run with the same settings wrote there."""
    if shard_size < 1:
        raise ConfigError(f"--shard-size {shard_size} is impossible; give the images per shard, e.g. 5000")
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed {seed} is impossible; it must be {SEEDS}")
    if not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(
            f"--workers {workers} is impossible; give the processes that write shards, 1 to {MAX_WORKERS}, e.g. 4"
        )
    if buffer < 1:
        raise ConfigError(f"--shuffle-buffer {buffer} is impossible; give the images shuffled together, e.g. 100000")
    settings = Settings(shard_size, shuffle, seed, buffer)
    out, source = Path(out), Path(source)
    what = "the source folder" if source.is_dir() else "the source file"
    check_output_folder(out, [(f"{what} {str(source)!r}", source)])
    from metapl.parts.data.folders import (
        iter_unlabeled_source,  # here: the CLI reads this module's defaults without torch
    )

    entries = iter_unlabeled_source(source, check_files=False)  # checks SOURCE now, reads it later
    if not ownership.check_folder(out, "shards"):
        out.mkdir(parents=True, exist_ok=True)
    ownership.claim(out, "shards")
    with _locked(out / MANIFEST) as log:
        manifest = _read_manifest(out / MANIFEST)
        if manifest.settings is None:
            _append(log, {"writer": ownership.WRITER, "format": MANIFEST_FORMAT, **asdict(settings)})
        elif manifest.settings != settings:
            raise ConfigError(_other_settings(out, manifest.settings, settings))
        _remove_partials(out)
        summary = _run(entries, source, out, settings, manifest, log, workers, skip_bad, progress)
    if announce is not None:
        announce(_summary_line(summary, source))
    return summary


# ---------------------------------------------------------------------------------------------- the plan
def entries_hash(names: list[str]) -> str:
    """SHA-256 of a block's entry names, each as its length and its UTF-8 bytes (surrogates escaped)."""
    digest = hashlib.sha256()
    for name in names:
        data = name.encode("utf-8", "surrogateescape")
        digest.update(len(data).to_bytes(4, "little") + data)
    return digest.hexdigest()


def plan_blocks(
    entries: Iterator[tuple[str, str]], settings: Settings, recorded: list[Block], source: Path
) -> Iterator[tuple[Block, list[tuple[str, str]], bool]]:
    """(block, its entries, new) for the recorded blocks, checked against the source, then for the entries after
    them cut into new blocks. Lazy: one block's entries at a time."""
    entries = iter(entries)
    start = shard = 0
    sharded = recorded[-1].start + recorded[-1].count if recorded else 0
    for block in recorded:
        taken = _take(entries, block.count)
        if len(taken) < block.count or entries_hash([name for name, _ in taken]) != block.sha256:
            raise DataError(_changed_source(source, block, taken, sharded))
        yield block, taken, False
        start, shard = block.start + block.count, block.first_shard + block.shards(settings.shard_size)
    number = len(recorded)
    while taken := _take(entries, settings.block_size):
        block = Block(number, start, len(taken), entries_hash([name for name, _ in taken]), shard)
        yield block, taken, True
        number, start, shard = number + 1, start + block.count, shard + block.shards(settings.shard_size)


def shard_items(block: Block, taken: list[tuple[str, str]], settings: Settings) -> Iterator[list[tuple[int, str, str]]]:
    """The (key, entry, path) of each of the block's shards, in shard order: the block's entries in a permutation
    seeded by (seed, block number), keys numbering them from the block's start."""
    order: list[int] | range = range(len(taken))
    if settings.shuffle:
        import numpy as np

        order = np.random.default_rng([settings.seed, block.block]).permutation(len(taken)).tolist()
    for first in range(0, len(taken), settings.shard_size):
        picked = order[first : first + settings.shard_size]
        yield [(block.start + first + i, *taken[index]) for i, index in enumerate(picked)]


def _take(entries: Iterator[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    taken = []
    for entry in entries:
        taken.append(entry)
        if len(taken) == count:
            break
    return taken


# ---------------------------------------------------------------------------------------------- writing
def _run(entries, source, out, settings, manifest, log, workers, skip_bad, progress) -> ShardSummary:
    from tqdm import tqdm

    pool = _start_pool(workers) if workers > 1 else None  # before the bar: tqdm's monitor thread must not be forked
    bar = tqdm(unit="img", desc="shard", disable=not progress, dynamic_ncols=True)
    pending: deque = deque()
    written = [0, 0]  # images, shards

    def finish(record: dict) -> None:
        _append(log, record)
        manifest.shards[record["shard"]] = record
        written[0] += record["count"]
        written[1] += 1
        bar.update(record["count"] + len(record["skipped"]))

    try:
        for block, taken, new in plan_blocks(entries, settings, manifest.blocks, source):
            if new:
                _append(log, {"block": block.block, **_block_fields(block)})
                manifest.blocks.append(block)
            for number, items in enumerate(shard_items(block, taken, settings), start=block.first_shard):
                if _finished(out, manifest.shards.get(number)):
                    bar.update(len(items))
                    continue
                task = _Task(number, items, str(out), skip_bad)
                if pool is None:
                    finish(_write_shard(task))
                    continue
                pending.append(pool.apply_async(_write_shard, (task,)))
                while len(pending) >= 2 * workers:  # in submission order: the manifest's order is the plan's
                    finish(pending.popleft().get())
        while pending:
            finish(pending.popleft().get())
    except BaseException as err:
        bar.leave = False  # the bar goes: the error's one line is what stays
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
        _remove_partials(Path(out))
        kept = sum(1 for record in manifest.shards.values() if _finished(out, record))
        if isinstance(err, KeyboardInterrupt):
            raise Interrupted(
                f"shard stopped by Ctrl-C: {kept} finished shards are kept in {out}; run the same command to continue",
                signal.SIGINT,
            ) from None
        if isinstance(err, DataError) and str(err).startswith("cannot read image"):
            raise DataError(
                f"{err}; replace it with an intact copy or remove it, or pass --skip-bad to leave it out (listed in "
                f"{Path(out) / SKIPPED}), then run the same command: the {kept} finished shards are kept"
            ) from None
        raise
    bar.close()
    if pool is not None:
        pool.close()
        pool.join()
    skipped = _write_skipped(Path(out), manifest)
    shards = sum(block.shards(settings.shard_size) for block in manifest.blocks)
    images = sum(record["count"] for record in manifest.shards.values())
    return ShardSummary(images, shards, Path(out), written[0], written[1], skipped)


def _start_pool(workers: int):
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method).Pool(workers, initializer=_start_worker)


def _start_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process answers it
    if sys.platform.startswith("linux"):  # a main process killed outright takes its workers with it
        import ctypes

        try:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def _finished(out, record: dict | None) -> bool:
    """Whether the manifest's record of a shard stands: the shard is on disk with the recorded size."""
    if record is None:
        return False
    try:
        return (Path(out) / SHARD_NAME.format(record["shard"])).stat().st_size == record["bytes"]
    except OSError:
        return False


class _HashingFile(io.RawIOBase):
    """A file that hashes what is written to it (tarfile writes sequentially and asks only for tell())."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.handle.write(data)
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _write_shard(task: _Task) -> dict:
    """Write one shard (in a worker process, or in the main one): its images, checked, under a partial name renamed
    when complete; the manifest's record of it."""
    final = Path(task.out) / SHARD_NAME.format(task.shard)
    partial = final.with_name(f".{final.name}{PARTIAL}")
    skipped: list[list[str]] = []
    written: list[str] = []
    with open(partial, "wb") as handle:
        hashing = _HashingFile(handle)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for key, entry, path in task.items:
                try:
                    data = _read_image(path)
                except DataError as err:
                    if not task.skip_bad:
                        raise
                    skipped.append([entry, str(err).removeprefix(f"cannot read image {path} ")])
                    continue
                info = tarfile.TarInfo(f"{key:09d}.{Path(path).suffix.lower().lstrip('.') or 'jpg'}")
                info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
                tar.addfile(info, io.BytesIO(data))
                written.append(entry)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, final)
    return {
        "shard": task.shard,
        "count": len(written),
        "first": written[0] if written else None,
        "last": written[-1] if written else None,
        "bytes": hashing.size,
        "sha256": hashing.digest.hexdigest(),
        "skipped": skipped,
    }


def _read_image(path: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read image {path} ({err.strerror or err})") from None
    check_image(data, path)
    return data


def _remove_partials(out: Path) -> None:
    """Remove the partial shards a stopped run left (names only metapl shard writes, in a folder of its own)."""
    for path in out.glob(f".shard-*.tar{PARTIAL}"):
        if path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)


def _write_skipped(out: Path, manifest: _Manifest) -> int:
    """DIR/skipped.txt from the manifest (every run's files left out, in shard order): 'ENTRY<TAB>why' lines."""
    lines = [
        f"{entry}\t{why}"
        for number in sorted(manifest.shards)
        if _finished(out, manifest.shards[number])
        for entry, why in manifest.shards[number]["skipped"]
    ]
    if lines or (out / SKIPPED).exists():
        atomic_write_text(out / SKIPPED, "".join(line + "\n" for line in lines))
    return len(lines)


# ---------------------------------------------------------------------------------------------- the manifest
class _locked:
    """The manifest opened for appending, locked so that two runs never write one folder."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import fcntl

        self.handle = open(self.path, "ab")
        try:  # a POSIX lock: the process's own, not inherited by its forked workers, gone when it dies
            fcntl.lockf(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.close()
            raise ConfigError(
                f"--out {self.path.parent} is being written by another metapl shard; wait for it to end"
            ) from None
        return self.handle

    def __exit__(self, *exc) -> None:
        self.handle.close()


def _append(log, record: dict) -> None:
    log.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8", "surrogateescape"))
    log.flush()
    os.fsync(log.fileno())


def _read_manifest(path: Path) -> _Manifest:
    """The manifest's settings, blocks and last record of each shard. A last line without its line end (a run
    killed while appending it) is dropped from the file; any other damage is one line."""
    manifest = _Manifest()
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        with open(path, "r+b") as handle:
            handle.truncate(len(data))
    for number, line in enumerate(data.splitlines(), start=1):
        try:
            record = json.loads(line.decode("utf-8", "surrogateescape"))
            if number == 1:
                if record.get("writer") != ownership.WRITER or record.get("format") != MANIFEST_FORMAT:
                    raise ValueError("not a manifest of this metapl")
                manifest.settings = Settings(**{key: record[key] for key in SETTINGS})
            elif "block" in record:
                block = Block(record["block"], *(record[key] for key in ("start", "count", "sha256", "first_shard")))
                if block.block != len(manifest.blocks):
                    raise ValueError(f"block {block.block} follows {len(manifest.blocks)} blocks")
                manifest.blocks.append(block)
            else:
                int(record["count"]), int(record["bytes"]), list(record["skipped"])  # what later reads need
                manifest.shards[int(record["shard"])] = record
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise DataError(
                f"{path} line {number} is damaged ({err}); it records what metapl shard wrote, so write the shards "
                "again into a new --out"
            ) from None
    return manifest


def _block_fields(block: Block) -> dict:
    return {"start": block.start, "count": block.count, "sha256": block.sha256, "first_shard": block.first_shard}


# ---------------------------------------------------------------------------------------------- messages
def _other_settings(out: Path, recorded: Settings, given: Settings) -> str:
    key = next(key for key in SETTINGS if getattr(recorded, key) != getattr(given, key))
    if key == "shuffle":
        was = "without --no-shuffle" if recorded.shuffle else "with --no-shuffle"
    else:
        was = f"with {_OPTION[key]} {getattr(recorded, key)}"
    return (
        f"--out {out} holds shards written {was}; run with the same settings to continue or extend them, or pass a "
        "new --out"
    )


def _changed_source(source: Path, block: Block, taken: list[tuple[str, str]], sharded: int) -> str:
    if len(taken) < block.count:
        change = f"it now has {block.start + len(taken)} images, fewer than the {sharded} already sharded"
    else:
        end = block.start + block.count
        change = f"its images {block.start + 1} to {end} (from {taken[0][0]!r}) are not the ones sharded"
    return (
        f"{source} changed since its shards were written: {change}; metapl shard extends a source only by images "
        "that come after its last sharded one (rows added at a CSV's end, files whose names sort last); restore it, "
        "or write its shards into a new --out"
    )


def _summary_line(summary: ShardSummary, source: Path) -> str:
    if summary.written_shards == 0:
        head = (
            f"{summary.out} already holds every image of {source}: {summary.images} images in {summary.shards} shards"
        )
    else:
        head = f"wrote {summary.written_images} images in {summary.written_shards} shards to {summary.out}"
        if summary.written_shards != summary.shards:
            head += f" ({summary.images} images in {summary.shards} shards in all)"
    if summary.skipped:
        head += f"; left out {summary.skipped} unreadable files, listed in {summary.out / SKIPPED}"
    return f"{head}; train on them with --set data.unlabeled_shards='{summary.pattern}'"
