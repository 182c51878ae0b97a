"""What metapl wrote, and so may replace or remove: nothing else is ever overwritten or deleted.

Folders. A folder is metapl's when it holds `metapl.json`, the marker metapl writes first into every folder it
makes for a run or a demo: {"writer": "metapl", "kind": "run" | "demo" | "shards", "format": 1, ...}. A familiar file name
(config.yaml, metrics.jsonl, .lock) proves nothing, and dot-files are content like any other file. A folder that
is neither metapl's nor empty is refused whole. Inside a folder of metapl's, the names in its kind's list (for a run,
run/run_dir.py's RUN_OUTPUTS, COMMAND_OUTPUTS and checkpoints; for shards, metapl/commands/shard.py's) are metapl's; any other name is the user's and is
never touched.

Files. A command's output file that exists already is replaced only when it carries metapl's mark, read from the
file itself: the header row of a predictions CSV, the `writer` entry of a safetensors or ONNX file's metadata, the
`Software`/`Creator` entry of a PNG, PDF or SVG plot. Formats that carry no mark (a JPEG plot, say) are written
only to new names.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

from metapl import __version__
from metapl.core.errors import ConfigError

MARKER = "metapl.json"
MARKER_FORMAT = 1
WRITER = "metapl"
KINDS = ("run", "demo", "shards")
PREDICTIONS_HEADER = "input,class"  # how every CSV that predict writes begins
_MARK_BYTES = 1 << 20  # how far into a PDF or SVG the creator entry is looked for


# ---------------------------------------------------------------------------------------------- folders
def marker_kind(folder: Path) -> str | None:
    """The kind in `folder`'s metapl.json, or None when the folder holds no marker of metapl's (none, a link, a
    folder, or a file that is not metapl's JSON)."""
    path = Path(folder) / MARKER
    try:
        if not stat.S_ISREG(path.lstat().st_mode) or path.lstat().st_size > 65536:
            return None
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(content, dict) or content.get("writer") != WRITER or content.get("kind") not in KINDS:
        return None
    return content["kind"] if isinstance(content.get("format"), int) else None


def is_empty(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return next(entries, None) is None


def claim(folder: Path, kind: str) -> None:
    """Write metapl.json into `folder` (an empty folder, or one that holds it already). The file is created with
    O_EXCL, so nothing of the user's is replaced even if a file appeared since the folder was checked."""
    if kind not in KINDS:
        raise ValueError(f"unknown directory kind {kind!r}")
    if marker_kind(folder) == kind:
        return
    content = {"writer": WRITER, "kind": kind, "format": MARKER_FORMAT, "metapl_version": __version__}
    fd = os.open(Path(folder) / MARKER, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(content, indent=2) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def check_folder(folder: Path, kind: str, flag: str = "--out", adopt: bool = False) -> bool:
    """Whether `folder` may be written as a folder of `kind`: True when it is metapl's (or `adopt`: a folder from a
    metapl without markers that the caller has recognised by its content), False when it does not exist or is
    empty; anything else is refused in one line."""
    folder = Path(folder)
    if not folder.exists():
        if folder.is_symlink():
            raise ConfigError(f"{flag} {folder} is a symbolic link to nothing; pass a new or empty directory")
        return False
    if not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is an existing file, not a directory; pass a new or empty directory")
    found = marker_kind(folder)
    if found == kind or (found is None and adopt and not os.path.lexists(folder / MARKER)):
        return True
    if found is not None:
        raise ConfigError(f"{flag} {folder} is a metapl {found} directory, not a {kind} directory; pass another {flag}")
    if is_empty(folder):
        return False
    first = min(entry.name for entry in os.scandir(folder))
    raise ConfigError(
        f"{flag} {folder} is not a metapl {kind} directory (no {MARKER} of metapl's; it holds {first!r}), and metapl "
        "never writes over files it did not write; pass a new or empty directory"
    )


def check_removable(folder: Path, names: list[str], tree_files: dict[str, str]) -> list[Path]:
    """The paths among `names` in `folder` that exist, once each is checked to be metapl's: a plain file, or for a
    name in `tree_files` a real folder holding only plain files whose names start with tree_files[name] (what
    metapl writes there). Nothing is removed here; the first path that fails is refused in one line, so that the
    caller removes all or nothing."""
    found = []
    for name in names:
        path = Path(folder) / name
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode):
            _refuse_removal(path, "is a symbolic link, which metapl never writes")
        if name in tree_files:
            if not stat.S_ISDIR(mode):
                _refuse_removal(path, "is not the directory metapl writes there")
            for sub in sorted(path.rglob("*")):
                if sub.is_symlink() or not sub.is_file() or not sub.name.startswith(tree_files[name]):
                    _refuse_removal(sub, f"is not a {tree_files[name]}* file, which is all metapl writes there")
        elif not stat.S_ISREG(mode):
            _refuse_removal(path, "is not a plain file, which is all metapl writes there")
        found.append(path)
    return found


def _refuse_removal(path: Path, why: str) -> None:
    raise ConfigError(
        f"{path} {why}; metapl replaces and removes only its own files, so nothing was changed; move it out of the "
        "directory, then run the same command again"
    )


def remove(paths: list[Path]) -> None:
    """Remove what check_removable returned: files, and folders it checked hold plain files only (rmtree never
    follows a link)."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- files
def check_replaceable(out: Path, flag: str = "--out") -> None:
    """Refuse an output file that exists and does not carry metapl's mark; a new name passes."""
    out = Path(out)
    if out.is_symlink():
        raise ConfigError(f"{flag} {out} is a symbolic link; metapl writes only to plain files; pass another {flag}")
    if not out.exists():
        return
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a directory; pass a file name inside it")
    if not written_by_metapl(out):
        raise ConfigError(
            f"{flag} {out} exists and was not written by metapl (it carries no mark of metapl's), and metapl never "
            f"writes over other files; move it away or pass another {flag}"
        )


def written_by_metapl(path: Path) -> bool:
    """Whether the file carries the mark metapl puts in every output file of its format."""
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".csv":
            with open(path, encoding="utf-8-sig", errors="replace") as handle:
                return handle.readline().startswith(PREDICTIONS_HEADER)
        if suffix == ".safetensors":
            meta = _safetensors_metadata(Path(path))
            # Exports of metapl before the writer entry carry its config and model name.
            return meta.get("writer") == WRITER or {"config", "model", "num_classes"} <= meta.keys()
        if suffix == ".onnx":
            return _onnx_metadata(Path(path)).get("writer") == WRITER
        if suffix == ".png":
            from PIL import Image

            with Image.open(path) as image:
                return str(image.info.get("Software", "")).startswith(WRITER)
        if suffix in (".pdf", ".svg"):
            with open(path, "rb") as handle:
                head = handle.read(_MARK_BYTES)
                handle.seek(max(0, Path(path).stat().st_size - _MARK_BYTES))
                tail = handle.read(_MARK_BYTES)
            needle = b"/Creator (metapl" if suffix == ".pdf" else b"<dc:title>metapl"
            return needle in head or needle in tail
    except (OSError, ValueError, SyntaxError):
        return False
    return False


def figure_metadata(fmt: str) -> dict[str, str] | None:
    """The metadata that marks a plot as metapl's, for matplotlib's savefig in format `fmt` (None: no mark)."""
    key = {"png": "Software", "pdf": "Creator", "svg": "Creator"}.get(fmt)
    return {key: f"{WRITER} {__version__}"} if key else None


def mark(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The metadata entries that mark a safetensors or ONNX file as metapl's."""
    return {"writer": WRITER, "metapl_version": __version__, **(extra or {})}


def _safetensors_metadata(path: Path) -> dict:
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size <= 100_000_000:
            return {}
        header = json.loads(handle.read(size))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def _onnx_metadata(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        return {}
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - onnx raises protobuf's own errors for files that are not ONNX
        return {}
    return {prop.key: prop.value for prop in model.metadata_props}
