"""Where a command may write: never over a file it reads (an input file, anything inside an input folder, the
images an input CSV names, a run's data), nor over a run's own files. Paths are compared once symbolic links are
resolved, so a link to an input is refused like the input."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from metapl.engine.run_dir import RUN_OUTPUTS
from metapl.errors import ConfigError


def check_output(out: Path, runs: list[Path], inputs: Iterable[Path] = ()) -> None:
    """Refuse an --out that is a directory, a file or folder the command reads (`inputs`, and each run's data
    as its config.yaml names it), or one of a run's own files."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass a file name inside it")
    folder = next((p for p in out.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"--out {out} lies under {folder}, an existing file, not a directory; pass another --out")
    target = out.resolve()
    for source in inputs:
        _refuse_read(out, target, Path(source), "the input file", "the input folder")
    run_paths = [Path(run).resolve() for run in runs]
    name = target.name
    for run_path in run_paths:
        if target.parent == run_path and (name in RUN_OUTPUTS or name.startswith("checkpoint")):
            raise ConfigError(f"--out {out} would overwrite the run's own {name}; pass another --out")
    if any(target.is_relative_to(run_path) for run_path in run_paths):
        return  # a run directory holds no data (the default outputs go there)
    for run in runs:
        for key, source in run_data_sources(Path(run)):
            words = f"the run's data ({key}={str(source)!r})"
            _refuse_read(out, target, source, f"a file of {words}", f"a folder of {words}")


def check_not_among(out: Path, files: Iterable[str], what: str) -> None:
    """Refuse an --out that is one of `files` (image paths a run's data or an input CSV lists, anywhere)."""
    target = Path(out).resolve()
    name = target.name
    for file in files:
        if os.path.basename(str(file)) == name and Path(file).resolve() == target:  # the cheap test first
            raise ConfigError(
                f"--out {out} is {file}, an image of {what}, which would be overwritten; pass another --out"
            )


def run_data_sources(run: Path) -> list[tuple[str, Path]]:
    """(config key, path) of the files and folders a run's data is read from, as its config.yaml names them;
    none when the config cannot be read (the command then refuses the run itself)."""
    from metapl.config import load_config_file
    from metapl.errors import MetaplError

    try:
        cfg = load_config_file(Path(run) / "config.yaml")
    except MetaplError:
        return []
    data = cfg.data
    sources = [("data.root", path) for path in _root_files(data)]
    for key, value in (
        ("data.test_dir", data.test_dir),
        ("data.unlabeled_dir", data.unlabeled_dir),
        ("data.split_file", data.split_file),
        ("data.label_dir", getattr(data, "label_dir", "")),
    ):
        if value:
            sources.append((key, Path(value)))
    return sources


def _root_files(data) -> list[Path]:
    """What a data set reads under data.root: image folders and ImageNet the whole tree (or the CSV), CIFAR its
    batches' folder, SVHN and Fashion-MNIST their files."""
    if data.name == "folder":
        return [Path(data.root)] if data.root else []
    if data.name == "imagenet":
        return [Path(data.root or "data/imagenet")]
    if data.name in ("cifar10", "cifar100"):
        from metapl.data.cifar import cifar_folder

        return [cifar_folder(data.name, data.root)]
    if data.name == "svhn":
        return [Path(data.root or "data") / f"{part}_32x32.mat" for part in ("train", "test", "extra")]
    if data.name == "fashion_mnist":
        from metapl.data.datasets import _IDX_FILES, FASHION_MNIST_ROOT

        stems = [stem for pair in _IDX_FILES.values() for stem in pair]
        return [Path(data.root or FASHION_MNIST_ROOT) / f"{stem}{gz}" for stem in stems for gz in ("", ".gz")]
    return []


def _refuse_read(out: Path, target: Path, source: Path, file_words: str, folder_words: str) -> None:
    resolved = source.resolve()
    if resolved == target:
        raise ConfigError(f"--out {out} is {file_words}, which would be overwritten; pass another --out")
    if resolved.is_dir() and target.is_relative_to(resolved):
        raise ConfigError(
            f"--out {out} is inside {folder_words} {source}, whose files this command reads; pass an --out outside it"
        )
