"""Run outputs for metrics: a JSONL file (one record per logged step) and TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from metapl.core.atomic import atomic_write_text


def to_float(value: torch.Tensor | float | int) -> float:
    """A metric as a Python float (a host sync for device tensors: only when logging)."""
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


class RunLogger:
    """Appends metrics to `metrics.jsonl` and, when tensorboard is installed and enabled, to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int | None = None):
        """With `resume_step`, records after that step (written by an interrupted run) are dropped first."""
        self.run_dir = Path(run_dir)
        path = self.run_dir / "metrics.jsonl"
        if resume_step is not None and path.exists():
            kept = [json.dumps(r) + "\n" for r in read_metrics(self.run_dir) if r["step"] <= resume_step]
            atomic_write_text(path, "".join(kept))
        self.jsonl = open(path, "a", encoding="utf-8")
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self.writer = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict, phase: str = "train") -> dict[str, float]:
        """Write one record {'phase', 'step', metric: value, ...}; returns the floats written."""
        values = {k: to_float(v) for k, v in metrics.items()}
        record = {"phase": phase, "step": step, **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{phase}/{name}", value, step)
        return values

    def close(self) -> None:
        self.jsonl.close()
        if self.writer is not None:
            self.writer.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except ValueError:  # a line cut short by a killed process
                continue
    return records
