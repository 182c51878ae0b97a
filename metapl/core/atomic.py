"""Atomic writes: the one way metapl writes a file whole.

The bytes go to a temporary file that `tempfile.mkstemp` creates in the target's folder (a fresh name opened with
O_EXCL, so no file of the user's is ever opened, whatever it is called), are flushed to disk (fsync), and the
temporary file is renamed over the target. A reader sees the old file or the new one, never half of one; a kill or
a full disk leaves the old file and, at worst, one `.NAME.*.tmp` file that metapl made.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from metapl.core.errors import disk_full


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
# What atomic_write leaves when killed between creating and renaming its temporary file: `.NAME.XXXXXXXX.tmp`.
TEMPORARY = re.compile(r"\.(.+)\.[A-Za-z0-9_]{8}\.tmp")


def remove_leftovers(folder: Path, ours: Callable[[str], bool]) -> None:
    """Remove the temporary files that killed atomic writes of the files `ours(NAME)` accepts left in `folder`
    (plain files only: nothing else is metapl's)."""
    for path in Path(folder).iterdir():
        match = TEMPORARY.fullmatch(path.name)
        if match and ours(match.group(1)) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)  # what open() would have given the file; mkstemp makes it 0600


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(handle)` on a fresh temporary file beside `path`, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:200]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        # A full disk is recognised before the temporary file is removed: removing it frees the space that shows
        # it (torch.save reports a short write, not ENOSPC). It is raised as the OSError it is, naming the target.
        full = isinstance(err, Exception) and disk_full(err, tmp)
        Path(tmp).unlink(missing_ok=True)
        if full and not (isinstance(err, OSError) and err.errno == errno.ENOSPC):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(obj: object, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))
