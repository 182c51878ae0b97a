"""Checkpoint files: atomic writes (a temporary file in the same directory, then a rename), loading with
weights_only=True, and the RNG states a bit-exact resume needs."""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from metapl.core.atomic import atomic_write
from metapl.core.errors import CheckpointError, disk_full, first_line


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to `path` without ever leaving a half-written file there; a failed write leaves the old file."""
    path = Path(path)
    try:
        atomic_write(path, lambda handle: torch.save(obj, handle))
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        reason = "no space left on device" if disk_full(err) else getattr(err, "strerror", None) or first_line(err)
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise CheckpointError(
            f"could not write {path}: {reason}; {kept}; free disk space or fix permissions, then run the same command"
        ) from None


def load_weights(path: Path, fix: str = "re-run metapl train or pass another run") -> dict:
    """A state dict saved by metapl, loaded with weights_only=True (no pickled code runs); `fix` ends the errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if refused:  # the file asks to import a Python object (a class, or a function such as os.system) on load
            raise CheckpointError(
                f"{path} holds pickled Python objects ({refused.group(1)}), not only tensors, and was refused unread "
                f"(loading it could run code); metapl never writes such files, so do not trust it; {fix}"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        reason = detail.group(1).strip() if detail else first_line(err)
    except Exception as err:  # torch raises several types (RuntimeError, EOFError, KeyError) for truncated files
        reason = first_line(err)
    raise CheckpointError(f"cannot load {path}: it is truncated or not a checkpoint ({reason}); {fix}") from None


def state_mismatch(model: torch.nn.Module, state: dict) -> str | None:
    """Why `state` does not fit `model` (its first missing or unknown key, or a shape), or None when it does:
    checked before load_state_dict, whose own message is many lines and starts with no detail."""
    expected = model.state_dict()
    if missing := [k for k in expected if k not in state]:
        return f"it lacks {missing[0]!r}" + (f" and {len(missing) - 1} more keys" if len(missing) > 1 else "")
    if unexpected := [k for k in state if k not in expected]:
        return f"it has the unknown key {unexpected[0]!r}"
    bad = next((k for k, t in expected.items() if state[k].shape != t.shape), None)
    if bad is not None:
        return f"{bad} has shape {tuple(state[bad].shape)} where the model needs {tuple(expected[bad].shape)}"
    integer = next((k for k, t in expected.items() if t.is_floating_point() and not state[k].is_floating_point()), None)
    if integer is not None:  # load_state_dict would copy the integers into floats without a word
        stored = str(state[integer].dtype).replace("torch.", "")
        return f"{integer} is stored as {stored} where the model needs floating point"
    return None


STATE_WRAPPERS = ("state_dict", "model", "state_dict_ema")  # where training scripts keep the weights in a checkpoint


def load_state_file(path: Path, fix: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from a weights file someone else wrote: safetensors or a PyTorch file (never
    unpickling code), unwrapped from the usual checkpoint layouts ({'state_dict': ...}, {'model': ...},
    {'state_dict_ema': ...}, DDP's 'module.' prefix); `fix` ends the errors."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"no weights file at {path}; {fix}")
        try:
            state: object = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for bad files
            raise CheckpointError(f"cannot load {path}: not a readable safetensors file ({err}); {fix}") from None
    else:
        state = load_weights(path, fix=fix)
    if isinstance(state, dict):
        for wrapper in STATE_WRAPPERS:
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; {fix}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    check_weight_values(state, path, fix)
    return state


PARAMETER_NAMES = ("weight", "bias")  # the last part of a parameter's key; buffers (num_batches_tracked) may be ints


def check_weight_values(state: dict[str, torch.Tensor], path: Path, fix: str) -> None:
    """Refuse weights no trained network has, naming the file and the key: a NaN or infinite value (training would
    diverge from them and seem to blame its learning rate), or a parameter stored as integers (loading would turn
    it into floats without a word)."""
    for key, tensor in state.items():
        if tensor.is_floating_point():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int(finite.numel() - finite.sum())
                raise CheckpointError(
                    f"{path}: {key} holds {bad:,} NaN or infinite value{'s' if bad != 1 else ''}, so these weights "
                    f"are broken (saved from a diverged run?); {fix}"
                )
        elif key.rpartition(".")[2] in PARAMETER_NAMES and not tensor.is_complex():
            raise CheckpointError(
                f"{path}: {key} is stored as {str(tensor.dtype).replace('torch.', '')}, but a network's weights are "
                f"floating point (integer-typed weights are quantised or not weights at all); {fix}"
            )


def process_rng_states() -> dict:
    """The RNG states of Python, NumPy, torch (CPU) and CUDA, in types that load with weights_only=True."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys).astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_process_rng_states(state: dict) -> None:
    """Restore what process_rng_states() returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointKeeper:
    """Writes `path` (the last checkpoint) atomically and keeps the `keep` previous ones as path-STEP files."""

    def __init__(self, path: Path, keep: int = 0):
        self.path, self.keep = Path(path), keep

    def save(self, state: dict, step: int) -> None:
        atomic_save(state, self.path)
        if self.keep > 0:
            numbered = self.path.with_name(f"{self.path.stem}-{step:08d}{self.path.suffix}")
            numbered.unlink(missing_ok=True)
            try:
                os.link(self.path, numbered)  # a second name for the same bytes; atomic_save replaces, never edits
            except OSError:
                shutil.copyfile(self.path, numbered)
            # Only the copies this class names (STEM-<8 digits>.pt): a user's checkpoint-mine.pt is not one of them.
            copy = re.compile(rf"{re.escape(self.path.stem)}-\d{{8}}{re.escape(self.path.suffix)}")
            copies = sorted(p for p in self.path.parent.iterdir() if copy.fullmatch(p.name))
            for old in copies[: -self.keep]:
                old.unlink()


# ---------------------------------------------------------------------------------------------- the format
# checkpoint.pt: one dict of tensors and plain values (loads with weights_only=True). FORMAT counts its layout;
# a file of a format in READABLE_FORMATS loads, any other is refused in one line that says why.
FORMAT = 1
READABLE_FORMATS = (1,)
PHASES = ("train", "finetune")  # a run's phases, in order


def training_state(phase: str, step: int, method: dict, finetune: dict | None, stream: dict, results: dict) -> dict:
    """What checkpoint.pt holds after `step` steps of `phase`: the method's state (and the finetuning method's),
    the batch stream's position, the phases' results so far, and every RNG state."""
    return {
        "format": FORMAT,
        "phase": phase,
        "step": step,
        "method": method,
        "finetune": finetune,
        "stream": stream,
        "results": results,
        "rng": process_rng_states(),
    }


def read_training_state(path: Path, fix: str) -> dict:
    """A checkpoint written by training_state; a file of another format, or not one at all, is one
    CheckpointError ending in `fix`."""
    saved = load_weights(path, fix=fix)
    if not isinstance(saved, dict) or "format" not in saved:
        raise CheckpointError(f"{path} is not a checkpoint written by metapl train; {fix}")
    if saved["format"] not in READABLE_FORMATS:
        raise CheckpointError(
            f"{path} has checkpoint format {saved['format']!r}, which this metapl (format {FORMAT}) cannot read; "
            f"resume it with the metapl that wrote it, or {fix}"
        )
    missing = {"phase", "step", "method", "stream", "results", "rng", "finetune"} - saved.keys()
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(sorted(missing))}; {fix}")
    if saved["phase"] not in PHASES or (saved["phase"] == "finetune" and saved["finetune"] is None):
        raise CheckpointError(f"{path} names an unknown phase; {fix}")
    return saved
