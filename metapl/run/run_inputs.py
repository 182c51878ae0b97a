"""What a run read besides its split: fingerprints of the files behind data.unlabeled_shards, data.label_dir,
model.pretrained and model.teacher_pretrained, and of the test set, recorded in RUN/inputs.json when the run
starts and compared when it is resumed (and, for the test set, when it is evaluated).

splits.json's fingerprint (parts/data/splits.py) guards the training pool the split indexes; this file guards the rest,
so that a resumed run never goes on with a shard rewritten under the same name, another label store at the same
data.label_dir or other weights at the same path. A run without inputs.json (written by an older metapl) is
taken as it is.

A file's fingerprint is metapl/core/fingerprint.py's (its size and the SHA-256 of its content, shards sampled).
Files are named relative to the folder they share (a store's to the store), so a folder moved whole keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metapl.core.atomic import atomic_write_json
from metapl.core.errors import DataError
from metapl.core.fingerprint import file_fingerprint

INPUTS = "inputs.json"
FORMAT = 1
TEST_SET = "the test set"
_FIX = "restore it as it was when the run started to resume it, or start over with --restart (or pass another --out)"


def file_inputs(cfg: Any) -> dict[str, dict]:
    """The fingerprints of the files a run reads through data.unlabeled_shards, data.label_dir, model.pretrained
    and model.teacher_pretrained (those set): setting → {"path": its value, "files": name → fingerprint}."""
    inputs: dict[str, dict] = {}
    if cfg.data.unlabeled_shards:
        from metapl.parts.data.shards import shard_files

        files = _by_name(shard_files(cfg.data.unlabeled_shards))
        inputs["data.unlabeled_shards"] = {"path": cfg.data.unlabeled_shards, "files": files}
    if cfg.data.label_dir:
        from metapl.parts.data.label_store import KEYED_PREFIX, store_files

        root = Path(cfg.data.label_dir)
        # the pool part and the manifest whole (a run reads them whole); the shard part's files sampled, as shards
        # are: a run reads them lazily, and hashing a store of 100M images at every start would cost minutes
        files = {
            str(f.relative_to(root)): file_fingerprint(f, sampled=f.name.startswith(KEYED_PREFIX))
            for f in store_files(root)
        }
        inputs["data.label_dir"] = {"path": cfg.data.label_dir, "files": files}
    for key in ("pretrained", "teacher_pretrained"):
        value = getattr(cfg.model, key)
        weights = _weights_file(cfg.model, key) if value else None
        if weights is not None:
            inputs[f"model.{key}"] = {"path": value, "files": {weights.name: file_fingerprint(weights, sampled=False)}}
    return inputs


def _by_name(paths: list[str]) -> dict[str, dict | None]:
    """Fingerprints keyed by each path relative to the folder the paths share (a brace pattern may name files of
    the same name in several folders), so that the folder itself may move."""
    from metapl.parts.data.shards import input_names

    return {name: file_fingerprint(p) for p, name in zip(paths, input_names(paths))}


def test_set_input(data: Any) -> dict[str, dict]:
    """The test set's fingerprint (its size, labels and file names or a sample of its images), as a stored
    teacher's pool is fingerprinted (parts/data/label_store.py)."""
    from metapl.parts.data.label_store import data_hash

    return {TEST_SET: {"hash": data_hash(data.x_test, data.y_test, data.num_classes), "size": len(data.y_test)}}


def record(run: Path, inputs: dict[str, dict]) -> None:
    """Write RUN/inputs.json (a fresh start)."""
    atomic_write_json({"format": FORMAT, "inputs": inputs}, Path(run) / INPUTS)


def check(run: Path, current: dict[str, dict], command: str = "resume") -> None:
    """Refuse, in one line naming the setting, the file and what changed, an input that differs from what
    RUN/inputs.json recorded; only the keys of `current` that the run recorded are compared."""
    saved = _saved(Path(run))
    for key, now in current.items():
        before = saved.get(key)
        if before is None:
            continue
        change = _change(before, now)
        if change is not None:
            where = f"{key}={before['path']!r}" if "path" in before else key
            fix = (
                _FIX
                if command == "resume"
                else "restore it as it was when the run trained, or train a new run on the data as it is"
            )
            raise DataError(f"{where} changed since {run} started: {change}; {fix}")


def _change(before: dict, now: dict) -> str | None:
    """What differs between two fingerprints of one input, in words; None when nothing does."""
    if "files" not in before:  # the test set
        if before.get("size") != now.get("size"):
            return f"it had {before.get('size')} examples and now has {now.get('size')}"
        return None if before.get("hash") == now.get("hash") else "its labels, images or file names differ"
    old, new = before["files"], now["files"]
    gone = [name for name in old if name not in new]
    if gone:
        return f"{gone[0]} is gone" + (f" ({len(gone)} files in all)" if len(gone) > 1 else "")
    added = [name for name in new if name not in old]
    if added:
        return f"{added[0]} was added" + (f" ({len(added)} files in all)" if len(added) > 1 else "")
    for name, fingerprint in old.items():
        if new[name] is None:
            return f"{name} is gone"
        if fingerprint is None:
            return f"{name} was added"
        if new[name]["size"] != fingerprint["size"]:
            return f"{name} was {fingerprint['size']} bytes and is now {new[name]['size']}"
        if new[name]["sha256"] != fingerprint["sha256"]:
            return f"the content of {name} changed (same size, {fingerprint['size']} bytes)"
    return None


def _saved(run: Path) -> dict[str, dict]:
    path = run / INPUTS
    if not path.is_file():
        return {}  # a run of an older metapl: nothing recorded, nothing to compare
    try:
        data = json.loads(path.read_text())
        inputs = data["inputs"]
        if not isinstance(inputs, dict):
            raise TypeError("'inputs' is not an object")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"cannot read {path} ({type(err).__name__}: {err}); restore it, or start over with --restart"
        ) from None
    return inputs


def _weights_file(model_cfg: Any, key: str) -> Path | None:
    """The local file behind model.pretrained / model.teacher_pretrained: the path itself, or for "cache" the file
    in timm's local cache (None when it is not there: building the model says so)."""
    value = getattr(model_cfg, key)
    if value != "cache":
        return Path(value)
    name = (model_cfg.teacher_name or model_cfg.name) if key == "teacher_pretrained" else model_cfg.name
    from metapl.parts.models.timm_models import PREFIX, cached_weights

    return cached_weights(name[len(PREFIX) :]) if name.startswith(PREFIX) else None
