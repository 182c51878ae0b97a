"""A run directory's rules: what metapl writes there, when a new command may resume it, start it over or must
refuse, and the lock that keeps a second trainer out.

A run directory is metapl's when it holds metapl.json of kind "run" (run/ownership.py): metapl writes it first
into a new or empty folder, and refuses any other folder that is not empty. A run directory never locks its user
out: one that holds nothing trained (no checkpoint, no model) takes any config and starts over; one with a
checkpoint resumes only with the same config, and `--restart` (train's flag) discards the run and starts over.
Starting over removes only the names metapl writes (RUN_OUTPUTS, COMMAND_OUTPUTS, checkpoints), each checked to be
a plain file (or TensorBoard's folder of event files) before anything is removed; files of other names are the
user's and stay.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from metapl.core.atomic import TEMPORARY, atomic_write_json
from metapl.core.checkpoint import read_training_state
from metapl.core.errors import CheckpointError, ConfigError, MetaplError
from metapl.run import ownership
from metapl.run.config import Config, load_config_file, save_config
from metapl.run.values import flatten

CHECKPOINT = "checkpoint.pt"
TEACHER_MODEL = "teacher_model.pt"  # the teacher's final weights (methods whose teacher is an image network)
# What metapl writes into a run directory, besides metapl.json, checkpoint.pt, its numbered copies and the lock.
RUN_OUTPUTS = (
    "config.yaml",
    "splits.json",
    "classes.json",
    "metrics.jsonl",
    "tensorboard",
    "model.pt",
    "best_model.pt",
    TEACHER_MODEL,
    "summary.json",
    "eval.json",
    "teacher_eval.json",
    "inputs.json",  # fingerprints of the shards, label store, weights and test set read (run/run_inputs.py)
)
# What the other commands write into a run directory by default (predict, export, plot): they describe its model,
# so a fresh start removes them with the rest.
COMMAND_OUTPUTS = (
    "predictions.csv",
    "teacher_predictions.csv",
    "model.safetensors",
    "model.onnx",
    "best_model.safetensors",
    "best_model.onnx",
    "teacher_model.safetensors",
    "teacher_model.onnx",
    "curves.png",
    "regions.png",
)
TREES = {"tensorboard": "events.out.tfevents."}  # run outputs that are folders: the files metapl writes in them
_NUMBERED = re.compile(r"checkpoint-\d{8}\.pt")  # CheckpointKeeper's copies
_TEMPORARY = TEMPORARY  # what atomic writes leave when killed (core/atomic.py)
_RESTART = "add --restart to discard it and start over, or pass another --out"
_SAME = "resume with the same settings, "


def is_training_file(name: str) -> bool:
    """Whether `name` is one that training writes in a run directory (no other command may write it)."""
    return name in RUN_OUTPUTS or name in (CHECKPOINT, ownership.MARKER, LOCK) or bool(_NUMBERED.fullmatch(name))


def is_run_file(name: str) -> bool:
    """Whether `name` is one that metapl writes in a run directory (training or the other commands)."""
    return is_training_file(name) or name in COMMAND_OUTPUTS


def resume_state(out_dir: Path, cfg: Config, restart: bool = False) -> dict | None:
    """The training state to resume from, or None to start from step 0. Refuses (one line, nothing touched) a
    path that is a file, a folder that is neither empty nor metapl's, a trained run of another config, and a
    start over that would have to remove something metapl did not write."""
    if not ownership.check_folder(out_dir, "run", adopt=_earlier_run(out_dir)):
        return None  # new or empty
    # Every name metapl will write or remove, checked to be metapl's (no link, no folder of the user's) before any
    # work: a resumed run replaces model.pt and adds to tensorboard/ as a fresh start removes them.
    _outputs(out_dir)
    checkpoint = out_dir / CHECKPOINT
    trained = checkpoint.exists() or (out_dir / "model.pt").exists()
    if restart or not trained:
        return None  # nothing to lose (or --restart): any config starts over here
    saved_cfg = _saved_config(out_dir)
    difference = config_difference(saved_cfg, cfg)
    extends = difference is not None and _extends(saved_cfg, cfg)
    if difference is not None and not extends:
        key, old, new = difference
        raise ConfigError(f"{out_dir} holds a trained run with {key}={old!r}, not {new!r}; {_SAME}{_RESTART}")
    if not checkpoint.exists():
        if extends:
            raise ConfigError(
                f"{out_dir} holds no {CHECKPOINT} to continue from to train.steps={cfg.train.steps}; {_RESTART}"
            )
        return None  # the same run, finished, its checkpoint moved away: train it again
    saved = read_training_state(checkpoint, fix=start_over_hint(checkpoint))
    return continued(saved, saved_cfg.train.steps, checkpoint) if extends else saved


def _extends(old: Config, new: Config) -> bool:
    """Whether `new` is `old` with a larger train.steps and nothing else changed: a finished run trained longer."""
    if new.train.steps <= old.train.steps:
        return False
    same = dataclasses.replace(new, train=dataclasses.replace(new.train, steps=old.train.steps))
    if config_difference(old, same) is not None:
        return False
    if new.method.name == "pseudo_label":  # its teacher trains for a share of train.steps, then stops for good
        raise ConfigError(
            f"method.name=pseudo_label cannot continue to train.steps={new.train.steps}: its teacher's share "
            f"(method.teacher_fraction) of the old train.steps={old.train.steps} is over; {_RESTART}"
        )
    return True


def continued(saved: dict, steps: int, checkpoint: Path) -> dict:
    """The state of a run of `steps` training steps (finished, or stopped anywhere) as the state to train longer
    from: the training phase goes on from its last step, and finetuning (for methods that have it) runs again, from
    scratch, after the longer training (docs/cli.md#training-longer). `continued_from` marks it."""
    if saved["phase"] == "finetune":
        end = saved.get("train_end")  # the training stream's position and RNG when training ended
        if end is None:
            raise ConfigError(
                f"{checkpoint} was written by a metapl that did not keep the end of training in it, so the run cannot "
                f"continue; {_RESTART}"
            )
        results = {name: r for name, r in saved["results"].items() if name != "finetune"}
        saved = {**saved, "phase": "train", "step": steps, "finetune": None, **end, "results": results}
    return {**saved, "continued_from": steps}


def with_own_split(run: Path, data_cfg):
    """The data config that rebuilds a run's data from the split it saved (splits.json, checked against the data
    set's fingerprint when loaded), not from a new draw; unchanged when the run saved none (metapl 0.1 runs)."""
    path = run / "splits.json"
    return dataclasses.replace(data_cfg, split_file=str(path)) if path.is_file() else data_cfg


def start_over_hint(checkpoint: Path) -> str:
    """How to get past a checkpoint that cannot be resumed."""
    return f"move {checkpoint} away to train this run from step 0, or {_RESTART}"


def claim(out_dir: Path) -> None:
    """Create the run directory (a new or empty folder, or metapl's) and mark it as metapl's run, before the lock
    or anything else is written into it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ownership.claim(out_dir, "run")


def start(
    out_dir: Path, cfg: Config, split, fresh: bool, class_names: list[str] | None = None, continued: bool = False
) -> None:
    """On a fresh start remove what an earlier attempt left (only metapl's names, all checked before the first is
    removed) and write config, splits and the class names (classes.json: the data's names in label order, or
    "0".."K-1" when it has none). A `continued` run (trained longer) writes its new config. The directory was
    claimed and locked before."""
    if continued:
        save_config(cfg, out_dir / "config.yaml")
    if fresh:
        ownership.remove(_outputs(out_dir))
        save_config(cfg, out_dir / "config.yaml")
        split.save(out_dir / "splits.json")
        if class_names is not None:
            atomic_write_json({"names": list(class_names)}, out_dir / "classes.json")


def _outputs(out_dir: Path) -> list[Path]:
    """What a fresh start removes, each checked to be metapl's: its outputs, checkpoints and the temporary files
    of killed writes."""
    names = [*RUN_OUTPUTS, *COMMAND_OUTPUTS, CHECKPOINT]
    for entry in sorted(os.listdir(out_dir)):
        temporary = _TEMPORARY.fullmatch(entry)
        if _NUMBERED.fullmatch(entry) or (temporary and is_run_file(temporary.group(1))):
            names.append(entry)
    return ownership.check_removable(out_dir, names, TREES)


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


def _earlier_run(out_dir: Path) -> bool:
    """A run directory of a metapl from before metapl.json, recognised by content, not by names: its config.yaml
    loads as a metapl config and its checkpoint.pt as a metapl training state (or its summary.json as a
    finished run's summary). Such a run is adopted (marked) when training resumes or restarts it."""
    if not out_dir.is_dir() or ownership.marker_kind(out_dir) is not None or not (out_dir / "config.yaml").is_file():
        return False
    try:
        load_config_file(out_dir / "config.yaml")
        if (out_dir / CHECKPOINT).is_file():
            read_training_state(out_dir / CHECKPOINT, fix="")
            return True
        import json

        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        return isinstance(summary, dict) and {"preset", "method", "test_top1"} <= summary.keys()
    except (MetaplError, OSError, ValueError):
        return False


LOCK = ".lock"
_LOCK_TEXT = re.compile(r"metapl (\d+)\n?|(\d+)")  # "metapl PID"; a bare PID: metapl before that


class RunLock:
    """`RUN/.lock` holds "metapl PID" of the process training into RUN; a second process is refused, and a stale
    lock (its process is gone) is taken over, but only one that metapl wrote: any other `.lock` is the user's."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.held = False

    def acquire(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    raise ConfigError(
                        f"{self.path} was not written by metapl (it holds no 'metapl PID'), so metapl will not "
                        f"remove it; move it away, or pass another --out"
                    ) from None
                if holder != os.getpid() and _alive(holder):
                    raise CheckpointError(
                        f"{self.path.parent} is in use by process {holder}; wait for it to end or pass another --out"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: metapl's, and its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"metapl {os.getpid()}\n")
            self.held = True
            return
        raise CheckpointError(f"cannot lock {self.path}; remove it if no metapl process uses {self.path.parent}")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> int | None:
        """The PID in a lock that metapl wrote; None for anything else (a link, a folder, other text)."""
        try:
            if self.path.is_symlink() or not self.path.is_file() or self.path.stat().st_size > 64:
                return None
            found = _LOCK_TEXT.fullmatch(self.path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None
        return int(found.group(1) or found.group(2)) if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
