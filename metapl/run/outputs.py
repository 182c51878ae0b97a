"""Where a command may write: the one rule that keeps every input safe from every output.

An output (train's run folder, label's store, shard's folder, the file of predict, export and plot) may not be an
input of the command, nor lie inside an input folder; a folder output may not hold an input either. The inputs are
what the command reads: the files and folders that a config's data and model settings name (config_inputs: data,
splits, label stores, shards, pretrained weights), plus the command's own (predict's images, label's weights).
Paths are compared once symbolic links are resolved, so a link to an input is refused like the input. An output
file that exists already must also be metapl's (run/ownership.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from metapl.core.errors import ConfigError

Input = tuple[str, Path]  # (what it is, in words a user recognises: "data.root='imgs'"; the path)


def check_output_file(out: Path, inputs: Iterable[Input], runs: Iterable[Path] = (), flag: str = "--out") -> None:
    """Refuse an output file that is a folder, lies under a file, is or lies inside an input, or is one of a run's
    own files. The caller ends its checks with ownership.check_replaceable (an existing file must be metapl's), so
    that a more specific refusal (check_not_among) speaks first."""
    from metapl.run.run_dir import is_training_file

    out = Path(out)
    if out.is_dir() and not out.is_symlink():
        raise ConfigError(f"{flag} {out} is a directory; pass a file name inside it")
    folder = next((p for p in out.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise ConfigError(f"{flag} {out} lies under {folder}, an existing file, not a directory; pass another {flag}")
    target = out.resolve()
    for run in runs:
        if target.parent == Path(run).resolve() and is_training_file(target.name):
            raise ConfigError(f"{flag} {out} would overwrite the run's own {target.name}; pass another {flag}")
    _check_apart(out, target, inputs, flag, folder_output=False)


def check_output_folder(out: Path, inputs: Iterable[Input], flag: str = "--out") -> None:
    """Refuse an output directory that is or lies inside an input, or holds one."""
    out = Path(out)
    _check_apart(out, out.resolve(), inputs, flag, folder_output=True)


def check_not_among(out: Path, files: Iterable[str], what: str, flag: str = "--out") -> None:
    """Refuse an output that is one of `files` (image paths a run's data or an input CSV lists, anywhere)."""
    target = Path(out).resolve()
    name = target.name
    for file in files:
        if os.path.basename(str(file)) == name and Path(file).resolve() == target:  # the cheap test first
            raise ConfigError(
                f"{flag} {out} is {file}, an image of {what}, which would be overwritten; pass another {flag}"
            )


def _check_apart(out: Path, target: Path, inputs: Iterable[Input], flag: str, folder_output: bool) -> None:
    for what, source in inputs:
        resolved = Path(source).resolve()
        if resolved == target:
            raise ConfigError(f"{flag} {out} is {what}, which would be overwritten; pass another {flag}")
        if resolved.is_dir() and target.is_relative_to(resolved):
            raise ConfigError(
                f"{flag} {out} is inside {what}, whose files this command reads; pass an {flag} outside it"
            )
        if folder_output and resolved.is_relative_to(target):
            raise ConfigError(f"{flag} {out} holds {what}, which this command reads; pass an {flag} outside it")


# ---------------------------------------------------------------------------------------------- what a run reads
def config_inputs(cfg) -> list[Input]:
    """The files and folders a config's data and model settings name, each with its setting."""
    data, model = cfg.data, cfg.model
    found: list[Input] = [(f"the run's data (data.root={data.root!r})", path) for path in _root_files(data)]
    for key in (*_own_paths(data), "unlabeled_dir", "split_file", "label_dir"):
        value = getattr(data, key, "") or getattr(data.settings, key, "")
        if value:
            found.append((f"the run's data.{key}={value!r}", Path(value)))
    if data.unlabeled_shards:
        found += _shard_inputs(data.unlabeled_shards)
    for key in ("pretrained", "teacher_pretrained"):
        value = getattr(model, key, "")
        if value and value != "cache":  # cache: timm's own cache folder, which metapl only reads
            found.append((f"the run's model.{key}={value!r}", Path(value)))
    return found


def _own_paths(data) -> list[str]:
    """The data set's own keys that name files (path_field: folder's test_dir)."""
    return [f.name for f in dataclasses.fields(data.settings) if f.metadata.get("path")]


def inputs_of_run(run: Path) -> list[Input]:
    """config_inputs of a run's config.yaml; none when it cannot be read (the command then refuses the run)."""
    from metapl.core.errors import MetaplError
    from metapl.run.config import load_config_file

    try:
        return config_inputs(load_config_file(Path(run) / "config.yaml"))
    except MetaplError:
        return []


_LISTED_SHARDS = 10_000  # a brace pattern up to this many names is checked file by file, a larger one by its folders


def _shard_inputs(spec: str) -> list[Input]:
    """data.unlabeled_shards as inputs: a folder (or one file) as it is; a brace pattern's files, or for a pattern of
    more than _LISTED_SHARDS names the folders that hold them (resolving a million names costs seconds). A pattern
    of more names than metapl reads is refused here in its own line (shards.expand_braces)."""
    from metapl.parts.data.shards import MAX_SHARDS, count_braces, expand_braces

    what = f"the run's data.unlabeled_shards={spec!r}"
    if "{" not in spec:
        return [(what, Path(spec))]
    count = count_braces(spec)
    if count <= _LISTED_SHARDS or count > MAX_SHARDS:  # the second: expand_braces says why in one line
        return [(f"a shard of {what}", Path(name)) for name in expand_braces(spec)]
    parent = str(Path(spec).parent)
    folders = expand_braces(parent) if "{" in parent else [parent]
    return [(f"the folder of {what}", Path(folder)) for folder in folders]


def _root_files(data) -> list[Path]:
    """What a data set reads under data.root: image folders and ImageNet the whole tree (or the CSV), CIFAR its
    batches' folder, SVHN and Fashion-MNIST their files."""
    if data.name == "folder":
        return [Path(data.root)] if data.root else []
    if data.name == "imagenet":
        return [Path(data.root or "data/imagenet")]
    if data.name in ("cifar10", "cifar100"):
        from metapl.parts.data.cifar import cifar_folder

        return [cifar_folder(data.name, data.root)]
    if data.name == "svhn":
        return [Path(data.root or "data") / f"{part}_32x32.mat" for part in ("train", "test", "extra")]
    if data.name == "fashion_mnist":
        from metapl.parts.data.datasets import _IDX_FILES, FASHION_MNIST_ROOT

        stems = [stem for pair in _IDX_FILES.values() for stem in pair]
        return [Path(data.root or FASHION_MNIST_ROOT) / f"{stem}{gz}" for stem in stems for gz in ("", ".gz")]
    return []
