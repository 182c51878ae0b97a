"""A run directory's rules: what metapl writes there, when a new command may resume it, start it over or must
refuse, and the lock that keeps a second trainer out.

A run directory never locks its user out: a directory that holds nothing trained (no checkpoint, no model)
takes any config and starts over; one with a checkpoint resumes only with the same config, and `--restart`
(train's flag) discards the run and starts over. Files that metapl did not write are never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from metapl.config import Config, flatten, load_config_file, save_config
from metapl.engine.checkpoint import atomic_write_json, read_training_state
from metapl.errors import CheckpointError, ConfigError

CHECKPOINT = "checkpoint.pt"
# What metapl writes into a run directory, besides checkpoint.pt, its numbered copies and dot-files.
RUN_OUTPUTS = (
    "config.yaml",
    "splits.json",
    "classes.json",
    "metrics.jsonl",
    "tensorboard",
    "model.pt",
    "best_model.pt",
    "summary.json",
    "eval.json",
    "inputs.json",  # fingerprints of the shards, label store, weights and test set read (engine/run_inputs.py)
)
# What the other commands write into a run directory by default (predict, export, plot): they describe its model,
# so a fresh start removes them with the rest.
COMMAND_OUTPUTS = (
    "predictions.csv",
    "model.safetensors",
    "model.onnx",
    "best_model.safetensors",
    "best_model.onnx",
    "curves.png",
    "regions.png",
)
_RESTART = "add --restart to discard it and start over, or pass another --out"
_SAME = "resume with the same settings, "


def resume_state(out_dir: Path, cfg: Config, restart: bool = False) -> dict | None:
    """The training state to resume from, or None to start from step 0. Refuses (one line, nothing touched) a
    path that is a file, a folder of files metapl did not write, and a trained run of another config."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is an existing file, not a directory; pass a directory")
    if not _is_run(out_dir):
        _refuse_foreign_files(out_dir)
    if restart:
        return None
    checkpoint = out_dir / CHECKPOINT
    trained = checkpoint.exists() or (out_dir / "model.pt").exists()
    if not trained:
        return None  # nothing to lose: any config starts over here
    saved_cfg = _saved_config(out_dir)
    difference = config_difference(saved_cfg, cfg)
    if difference is not None:
        key, old, new = difference
        raise ConfigError(f"{out_dir} holds a trained run with {key}={old!r}, not {new!r}; {_SAME}{_RESTART}")
    if not checkpoint.exists():
        return None  # the same run, finished, its checkpoint moved away: train it again
    return read_training_state(checkpoint, fix=start_over_hint(checkpoint))


def with_own_split(run: Path, data_cfg):
    """The data config that rebuilds a run's data from the split it saved (splits.json, checked against the data
    set's fingerprint when loaded), not from a new draw; unchanged when the run saved none (metapl 0.1 runs)."""
    path = run / "splits.json"
    return dataclasses.replace(data_cfg, split_file=str(path)) if path.is_file() else data_cfg


def start_over_hint(checkpoint: Path) -> str:
    """How to get past a checkpoint that cannot be resumed."""
    return f"move {checkpoint} away to train this run from step 0, or {_RESTART}"


def start(out_dir: Path, cfg: Config, split, fresh: bool, class_names: list[str] | None = None) -> None:
    """Create the directory; on a fresh start remove what an earlier attempt left and write config, splits and
    the class names (classes.json: the data's names in label order, or "0".."K-1" when it has none)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for name in RUN_OUTPUTS + COMMAND_OUTPUTS:
            path = out_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for path in out_dir.glob("checkpoint*.pt"):
            path.unlink()
        save_config(cfg, out_dir / "config.yaml")
        split.save(out_dir / "splits.json")
        if class_names is not None:
            atomic_write_json({"names": list(class_names)}, out_dir / "classes.json")


def config_difference(old: Config, new: Config) -> tuple[str, object, object] | None:
    """The first key whose value differs between two configs (the preset's name aside), or None."""
    old_items, new_items = dict(flatten(old.to_dict())), dict(flatten(new.to_dict()))
    for key in list(old_items) + [k for k in new_items if k not in old_items]:
        if key != "preset" and old_items.get(key) != new_items.get(key):
            return key, old_items.get(key), new_items.get(key)
    return None


def _saved_config(out_dir: Path) -> Config:
    path = out_dir / "config.yaml"
    if not path.exists():
        raise ConfigError(f"{out_dir} holds a trained run but no config.yaml, so it cannot be resumed; {_RESTART}")
    return load_config_file(path)


def _is_run(out_dir: Path) -> bool:
    """A directory whose config.yaml metapl can read is a run directory, whatever else the user put in it."""
    try:
        load_config_file(out_dir / "config.yaml")
    except ConfigError:
        return False
    return True


def _refuse_foreign_files(out_dir: Path) -> None:
    """Refuse a directory that holds files metapl did not write: a wrong --out (a project folder, say)."""
    known = set(RUN_OUTPUTS + COMMAND_OUTPUTS) | {"config.tmp"}  # config.tmp: metapl 0.1's temporary file
    for entry in sorted(out_dir.iterdir()):
        name = entry.name
        if name.startswith(".") or name in known or (name.startswith("checkpoint") and name.endswith(".pt")):
            continue
        raise ConfigError(
            f"--out {out_dir} is not a metapl run directory (it holds {name!r}, which metapl did not write) and "
            "training would write over its files; pass a new or empty directory"
        )


class RunLock:
    """`RUN/.lock` holds the PID of the process training into RUN; a second process is refused, a stale lock
    (its process is gone) is taken over."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder != os.getpid() and _alive(holder):
                    raise CheckpointError(
                        f"{self.path.parent} is in use by process {holder}; wait for it to end or pass another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            self.held = True
            return
        raise CheckpointError(f"cannot lock {self.path}; remove it if no metapl process uses {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
