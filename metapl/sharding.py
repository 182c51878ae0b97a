"""`metapl shard SOURCE --out DIR`: an image folder or CSV written as WebDataset tar shards (docs/scale.md#shard).

Each image is stored as it is (its file's bytes, no re-encoding) as the sample `KEY.EXT`, KEY being the image's
running number (000000042); shards hold `shard_size` images each and are named shard-000000.tar, ... . The
images are shuffled (seeded) unless asked not to, so that a shard is a random sample of the set, not one class
or folder. Every image is checked to open before anything is written as final: a shard is written under a
temporary name and renamed when complete, and a failure removes what this command wrote, so DIR never holds a
half-written shard. The members' metadata is fixed (mtime 0, owner 0), so the same SOURCE and seed give the same
bytes.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from metapl.data.folders import unlabeled_source
from metapl.engine.outputs import check_output_folder
from metapl.errors import ConfigError, DataError
from metapl.settings import SEED_LIMIT, SEEDS

SHARD_NAME = "shard-{:06d}.tar"


@dataclass
class ShardSummary:
    images: int
    shards: int
    out: Path

    @property
    def pattern(self) -> str:
        """The brace pattern of the shards written, for data.unlabeled_shards."""
        if self.shards == 1:
            return str(self.out / SHARD_NAME.format(0))
        return str(self.out / f"shard-{{{0:06d}..{self.shards - 1:06d}}}.tar")


def check_image(data: bytes, path: str) -> None:
    """A DataError naming the file unless its bytes open as an image (PIL's verify: headers and structure)."""
    from PIL import Image

    from metapl.data.folders import open_image

    try:
        with open_image(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"cannot read image {path} ({first}); replace it with an intact copy or remove it, then run metapl shard "
            "again"
        ) from None


def write_shards(
    source: Path,
    out: Path,
    shard_size: int = 5000,
    shuffle: bool = True,
    seed: int = 0,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
) -> ShardSummary:
    """Write the images of `source` (a folder, searched recursively, or a CSV with a `path` column) as shards."""
    if shard_size < 1:
        raise ConfigError(f"--shard-size {shard_size} is impossible; give the images per shard, e.g. 5000")
    if not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed {seed} is impossible; it must be {SEEDS}")
    out = Path(out)
    what = "the source folder" if Path(source).is_dir() else "the source file"
    check_output_folder(out, [(f"{what} {str(source)!r}", Path(source))])
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "is a file" if not out.is_dir() else "holds files already"
        raise ConfigError(f"--out {out} {what}; pass a new or empty folder (metapl shard never overwrites)")
    paths = unlabeled_source(Path(source))
    if shuffle:
        import numpy as np

        paths = [paths[i] for i in np.random.default_rng(seed).permutation(len(paths))]
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    partial = out / ".shard.partial"
    from tqdm import tqdm

    bar = tqdm(total=len(paths), unit="img", desc="shard", disable=not progress, dynamic_ncols=True)
    try:
        for number, first in enumerate(range(0, len(paths), shard_size)):
            with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as tar:
                for index in range(first, min(first + shard_size, len(paths))):
                    _add(tar, paths[index], index)
                    bar.update(1)
            final = out / SHARD_NAME.format(number)
            os.replace(partial, final)
            written.append(final)
        bar.close()
    except BaseException:
        bar.leave = False  # the bar goes: the error's one line is what stays
        bar.close()
        partial.unlink(missing_ok=True)
        for path in written:
            path.unlink(missing_ok=True)
        if created:
            out.rmdir()
        raise
    summary = ShardSummary(len(paths), len(written), out)
    if announce is not None:
        announce(
            f"wrote {summary.images} images in {summary.shards} shards to {out}; train on them with "
            f"--set data.unlabeled_shards='{summary.pattern}'"
        )
    return summary


def _add(tar: tarfile.TarFile, path: str, index: int) -> None:
    suffix = Path(path).suffix.lower().lstrip(".") or "jpg"
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(
            f"cannot read image {path} ({err.strerror or err}); check the file and its permissions"
        ) from None
    check_image(data, path)
    info = tarfile.TarInfo(f"{index:09d}.{suffix}")
    info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
    tar.addfile(info, io.BytesIO(data))
