"""Atomic writes of tensors and JSON: a temporary file in the same directory, then a rename."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from metapl.errors import CheckpointError


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to `path` without ever leaving a half-written file there."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def atomic_write_json(obj: object, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def load_weights(path: Path) -> dict:
    """A state dict saved by metapl, loaded with weights_only=True (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass a run directory written by metapl train")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot load checkpoint {path}: {first_line}; re-run training or pass another run"
        ) from None
