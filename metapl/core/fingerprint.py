"""Fingerprints of files: what tells a run that an input it read is still the same file.

A file's fingerprint is its size and the SHA-256 of its content. Weights files and a label store's manifest and pool
part are hashed whole: the run reads them whole at every start anyway; a store's shard part (one file per input
shard, read lazily) is sampled as shards are. Shards are sampled, since a run streams them lazily
and hashing ImageNet's 140 GB at every start would cost more than the check is worth: a shard of at most
WHOLE_LIMIT bytes (1 MiB) is hashed whole; a larger one through SAMPLED_BLOCKS (16) blocks of BLOCK bytes (16 KiB)
each: the first, the last (ending at the file's end) and 14 at evenly spaced offsets between, 256 KiB read per
shard whatever its size. A changed size is always noticed, and so is any change inside a sampled block (the head,
with a shard's first tar headers, and the tail); a change of the same size elsewhere in a big shard is not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from metapl.core.errors import DataError

WHOLE_LIMIT = 1 << 20  # files up to this size are hashed whole
SAMPLED_BLOCKS = 16  # larger files: this many blocks, the first and last included, evenly spaced
BLOCK = 16 << 10


def file_fingerprint(path: Path | str, sampled: bool = True) -> dict | None:
    """{"size": bytes, "sha256": hash of the whole file or, when `sampled` and the file is bigger than
    WHOLE_LIMIT, of its sampled blocks} (see the module's docstring); None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            digest = hashlib.sha256(f"size={size};".encode())
            if size <= WHOLE_LIMIT or not sampled:
                for chunk in iter(lambda: handle.read(WHOLE_LIMIT), b""):
                    digest.update(chunk)
            else:
                for offset in sampled_offsets(size):
                    handle.seek(offset)
                    digest.update(handle.read(BLOCK))
    except OSError as err:
        raise DataError(f"cannot read {path} ({err.strerror or type(err).__name__}); restore it") from None
    return {"size": size, "sha256": digest.hexdigest()[:32]}


def sampled_offsets(size: int) -> list[int]:
    """Where the blocks of a file bigger than WHOLE_LIMIT start: 0, size − BLOCK and evenly spaced between."""
    last = size - BLOCK
    return [round(last * i / (SAMPLED_BLOCKS - 1)) for i in range(SAMPLED_BLOCKS)]
