"""Image files on disk: ImageNet's class folders, and custom data sets given as class folders or CSV files.

Nothing here is decoded up front: an `ImageFiles` is a list of paths that loader workers decode and augment
one image at a time (see streaming.py), so a pool of a million images costs only its file names in memory.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metapl.core.errors import DataError, first_line
from metapl.core.settings import check_path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class ImageFiles:
    """Image paths with the side and channel count that the pipeline turns every image into."""

    paths: np.ndarray  # of str
    size: int
    channels: int = 3
    workers: int = 0
    pipeline: object = field(default=None, repr=False)  # an ImagePipeline (streaming.py)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.size, self.size)

    def __getitem__(self, index) -> ImageFiles:
        picked = self.paths[index.numpy() if isinstance(index, torch.Tensor) else index]
        return ImageFiles(np.atleast_1d(picked), self.size, self.channels, self.workers, self.pipeline)


# What to do about an image of the training pool that cannot be decoded. Deleting it changes the pool the run's
# split was drawn from, which the run then refuses to resume (splits.py: check_source).
POOL_IMAGE_FIX = (
    "replace it with an intact copy and run the same command, or remove it and start the run over "
    "(metapl train --restart): the run's split was drawn with it"
)


# PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS, about 89 million pixels: 256 MiB of RGB), held
# here so that a library that turns PIL's limit off cannot turn metapl's off.
MAX_IMAGE_PIXELS = 89_478_485


def open_image(source: Any) -> Any:
    """PIL's Image.open of a path or file object, which reads the header only; an image whose header declares more
    than MAX_IMAGE_PIXELS pixels raises Image.DecompressionBombError before a pixel is decoded (PIL itself would
    only warn below twice its limit, on stderr, and then decode it). Every reader of images opens them here."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise Image.DecompressionBombError(
            f"its header declares {width}x{height} = {width * height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
            "of PIL's decompression-bomb limit"
        )
    return image


def decode(path: str, channels: int = 3, fix: str = POOL_IMAGE_FIX) -> torch.Tensor:
    """One image file as a uint8 (C, H, W) tensor; a DataError names the file and `fix` when it cannot be decoded."""
    from PIL import Image, ImageOps

    try:
        with open_image(path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB" if channels == 3 else "L")
            array = np.array(image, dtype=np.uint8)  # a copy: torch wants a writable buffer
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        first = first_line(err)
        raise DataError(f"cannot decode image {path} ({first}); {fix}") from None
    return torch.from_numpy(array.reshape(array.shape[0], array.shape[1], channels)).permute(2, 0, 1).contiguous()


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def scan_class_folders(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, class names) of a folder with one sub-folder of images per class, classes sorted by name.

    With `classes` given (the training set's), the folder must hold exactly those classes.
    """
    if not root.is_dir():
        raise DataError(f"no folder {root}; expected one sub-folder of images per class")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not found:
        raise DataError(f"{root} has no class sub-folders; put each class's images in a folder named after it")
    if classes is not None and found != classes:
        extra, missing = sorted(set(found) - set(classes)), sorted(set(classes) - set(found))
        raise DataError(
            f"{root} has classes that differ from the training set's (extra: {extra[:3]}, missing: {missing[:3]}); "
            "use the same class folder names"
        )
    paths, labels = [], []
    for label, name in enumerate(found):
        images = _images_in(root / name)
        if not images:
            raise DataError(
                f"class folder {root / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove it"
            )
        paths += [str(p) for p in images]
        labels += [label] * len(images)
    return paths, labels, found


def _csv_rows(path: Path, need_label: bool) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row with stripped cells) of a CSV with a header naming `path` and, when needed, `label`,
    read one row at a time."""
    try:
        # utf-8-sig: a spreadsheet program's byte-order mark is dropped, not read into the first column's name
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            wanted = ["path", "label"] if need_label else ["path"]
            missing = [c for c in wanted if c not in columns]
            if missing:
                raise DataError(
                    f"{path} has no column {missing[0]!r} (its header is {columns}); write a header line 'path,label'"
                    if need_label
                    else f"{path} has no column 'path' (its header is {columns}); write a header line 'path'"
                )
            for row in reader:  # line_num: the file's line, blank lines (which DictReader skips) counted
                yield reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read CSV {path}: {err}; pass a UTF-8 text file with a header line") from None


def _csv_image(path: Path, line: int, row: dict[str, str], exists: bool = True) -> str:
    """The image file a CSV row names (relative paths are relative to the CSV's folder); with `exists`, it must be
    a file."""
    file = Path(row["path"])
    file = file if file.is_absolute() else path.parent / file
    check_path(file, f"{path} line {line}: image")
    if not row["path"] or (exists and not file.is_file()):
        raise DataError(f"{path} line {line}: image {row['path']!r} does not exist; fix the path or remove the row")
    return str(file)


def read_csv(path: Path, need_label: bool) -> tuple[list[str], list[str]]:
    """(paths, label texts) from a CSV with a header naming the columns `path` and, when needed, `label`.

    Relative paths are relative to the CSV's folder; every path must exist.
    """
    paths, labels = [], []
    for line, row in _csv_rows(path, need_label):
        file = _csv_image(path, line, row)
        if need_label and not row["label"]:
            raise DataError(f"{path} line {line}: the label is empty; give a class name or number")
        paths.append(file)
        labels.append(row.get("label", ""))
    if not paths:
        raise DataError(f"{path} lists no images; add rows below the header")
    return paths, labels


def labeled_source(source: Path, classes: list[str] | None = None) -> tuple[list[str], list[int], list[str]]:
    """(paths, labels, class names) from a folder of class folders or a CSV of path,label."""
    if source.suffix.lower() == ".csv":
        if not source.is_file():
            raise DataError(
                f"no CSV file {source}; pass a CSV with the columns path,label or a folder of class folders"
            )
        paths, texts = read_csv(source, need_label=True)
        names = classes if classes is not None else sorted(set(texts), key=_class_order)
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted(set(texts) - set(index))
        if unknown:
            raise DataError(
                f"{source}: label {unknown[0]!r} is not a class of the training set {names[:10]}; fix the label"
            )
        return paths, [index[t] for t in texts], names
    return scan_class_folders(source, classes)


def _class_order(name: str) -> tuple:
    """Numbers in numeric order (so that labels 0..K−1 keep their values), then names alphabetically."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def unlabeled_source(source: Path) -> list[str]:
    """Image paths from a folder (searched recursively) or a CSV with a `path` column, in iter_unlabeled_source's
    order."""
    return [path for _, path in iter_unlabeled_source(source)]


def iter_unlabeled_source(source: Path, check_files: bool = True) -> Iterator[tuple[str, str]]:
    """(entry, path) of every image of a folder (searched recursively) or a CSV with a `path` column, one at a time:
    the source is checked here, then read lazily, so that no caller needs the whole list (metapl shard streams a
    source of any size). The entry names the image within the source: its path relative to the folder ('a/b.jpg',
    '/' between parts), or the CSV row's path as written. A folder's order is sorted(Path.rglob)'s: depth first,
    each folder's names sorted, links to folders not followed; only the folders on the way down are listed at a
    time. Without `check_files`, a CSV row's file is not checked to exist (the reader of its bytes says so)."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        if not source.is_file():
            raise DataError(f"no CSV file {source}; pass a CSV with a 'path' column or a folder of images")
        return _csv_entries(source, check_files)
    if not source.is_dir():
        # one message for both callers (data.unlabeled_dir and metapl shard SOURCE): name the path and what it must be
        raise DataError(
            f"no folder {source} of unlabeled images; pass a folder of images or a CSV with a 'path' column"
        )
    return _folder_entries(source)


def _csv_entries(source: Path, check_files: bool) -> Iterator[tuple[str, str]]:
    count = 0
    for line, row in _csv_rows(source, need_label=False):
        yield row["path"], _csv_image(source, line, row, exists=check_files)
        count += 1
    if not count:
        raise DataError(f"{source} lists no images; add rows below the header")


def _folder_entries(source: Path) -> Iterator[tuple[str, str]]:
    count = 0
    for relative in _walk(source, ""):
        yield relative, str(source / relative)
        count += 1
    if not count:
        raise DataError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); add some or fix the path")


def _walk(folder: Path, prefix: str) -> Iterator[str]:
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError as err:
        raise DataError(
            f"cannot list folder {folder} ({err.strerror or err}); check its permissions or move it out of the source"
        ) from None
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), f"{prefix}{entry.name}/")
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.is_file():
            yield f"{prefix}{entry.name}"
