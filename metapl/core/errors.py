"""Errors a user can cause; the CLI prints them on one line and exits with code 2. Also the words for the OS errors
that every writer meets alike (a full disk, a path too long)."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class MetaplError(Exception):
    """Base class: the message names the bad value and the fix."""


class ConfigError(MetaplError, ValueError):
    """A preset, key, type or value in the configuration (or a settings dataclass) is wrong."""


class DataError(MetaplError):
    """A dataset is missing, corrupt, or too small for the requested split."""


class CheckpointError(MetaplError):
    """A checkpoint or run directory cannot be read or does not fit the model."""


class TrainingError(MetaplError):
    """Training cannot go on (a loss became NaN or infinite)."""


class ExportError(MetaplError):
    """An export could not be written, or the written file does not reproduce the model's outputs."""


class Interrupted(MetaplError):
    """SIGINT or SIGTERM stopped training after a checkpoint was written; the same command resumes."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


# ---------------------------------------------------------------------------------------------- OS errors in words
# Each writer reports a full disk in its own words: Python an OSError ENOSPC, safetensors "os error 28", and
# torch.save, writing by path, only a short write ("unexpected pos"), which a disk without room explains.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_WORDS = re.compile(r"no space left on device|disk quota exceeded|os error (?:28|122)\b", re.IGNORECASE)
NEARLY_FULL = 1024**2  # bytes free below which a short write is put down to a full disk


def first_line(err: BaseException) -> str:
    """An exception's message cut to its first line (the type's name when it has none): what a one-line error
    quotes of a library's exception, whose messages may run over several lines."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def disk_full(err: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether `err` is a write that failed for want of space: ENOSPC or EDQUOT anywhere in its chain of
    exceptions, a writer's words for it, or a short write to `path` on a disk with less than NEARLY_FULL free
    (ask before the failed write's temporary file is removed)."""
    seen: BaseException | None = err
    for _ in range(8):  # the chain of causes; short, and never a loop
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL:
            return True
        if _DISK_FULL_WORDS.search(str(seen)):
            return True
        seen = seen.__cause__ or seen.__context__
    if path is not None and "unexpected pos" in str(err):
        free = free_bytes(path)
        return free is not None and free < NEARLY_FULL
    return False


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the disk that holds `path` (or its nearest existing parent)."""
    here = Path(os.path.abspath(path))
    for folder in (here, *here.parents):
        try:
            stat = os.statvfs(folder)
        except OSError:
            continue
        return stat.f_bavail * stat.f_frsize
    return None


def shorten(path: str | os.PathLike, limit: int = 100) -> str:
    """A path as a message shows it: whole up to `limit` characters, else its head and tail around an ellipsis."""
    text = os.fspath(path)
    text = text if isinstance(text, str) else os.fsdecode(text)
    if len(text) <= limit:
        return text
    part = (limit - 5) // 2
    return f"{text[:part]}[...]{text[-part:]}"


def no_space(path: str | os.PathLike) -> str:
    """The words for a full disk met writing `path`."""
    free = free_bytes(path)
    left = f"; {free:,} bytes free there" if free is not None else ""
    return f"no space left on device writing {shorten(path)}{left}"
