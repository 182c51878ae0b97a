"""The batch of one training step: what the data streams produce and every method consumes. It sits below both
(data/ and methods/ import it; it imports neither). A run with a teacher's stored distributions (data.label_dir)
gets StoredBatch, the batch plus those distributions: Reduced MPL's inputs."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class Batch:
    """One training step's data: B labeled examples and μB unlabeled ones in a weak and a strong view.

    `y_u` holds the unlabeled examples' true labels when they are known; it is used only for metrics.
    """

    x_l: torch.Tensor
    y_l: torch.Tensor
    x_u_weak: torch.Tensor | None = None
    x_u_strong: torch.Tensor | None = None
    y_u: torch.Tensor | None = None

    def unlabeled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_u_weak, x_u_strong), for the methods that need them."""
        if self.x_u_weak is None or self.x_u_strong is None:
            raise ValueError("this method needs unlabeled data, and the batch has none")
        return self.x_u_weak, self.x_u_strong

    def to(self, device: torch.device | str, non_blocking: bool = False, channels_last: bool = False) -> Batch:
        """The same batch on `device`; image tensors in NHWC memory format with `channels_last`."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking, memory_format=_format(t, channels_last)))

    def pin_memory(self) -> Batch:
        """The same batch in page-locked host memory, so that copies to the GPU can overlap compute."""
        return self._map(lambda t: t.pin_memory() if t.is_cpu else t)  # images augmented on the GPU stay there

    def _map(self, fn) -> Batch:
        """The same kind of batch with `fn` applied to each tensor."""
        mapped: dict[str, Any] = {
            f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name))) for f in fields(self)
        }
        return type(self)(**mapped)


@dataclass
class StoredBatch(Batch):
    """A batch with a stored teacher's class distributions of its images (data.label_dir): `p_l` of the labeled
    ones, `p_u` of the unlabeled ones (None in a labeled-only batch). Reduced MPL's teacher reads them."""

    p_l: torch.Tensor | None = None
    p_u: torch.Tensor | None = None


def with_stored(batch: Batch, p_l: torch.Tensor | None, p_u: torch.Tensor | None) -> Batch:
    """`batch` with the stored distributions `p_l` and `p_u`: a StoredBatch when either is given, else the batch."""
    if p_l is None and p_u is None:
        return batch
    plain = {f.name: getattr(batch, f.name) for f in fields(Batch)}
    return StoredBatch(**plain, p_l=p_l, p_u=p_u)


def _format(t: torch.Tensor, channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last and t.dim() == 4 else torch.preserve_format
