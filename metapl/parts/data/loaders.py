"""In-memory data for a run, and the stream of training batches with the labeled/unlabeled ratio μ."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch

from metapl.core.batch import Batch, with_stored
from metapl.core.errors import DataError
from metapl.parts.data.augment import Augment, identity
from metapl.parts.data.folders import ImageFiles
from metapl.parts.data.splits import Split

if TYPE_CHECKING:
    from metapl.parts.data.label_store import StoredDistributions
    from metapl.parts.data.streaming import FileBatches


@dataclass
class DataBundle:
    """Everything a run needs from its dataset: the split tensors, the augmentations and the split indices."""

    # inputs: tensors, or ImageFiles (paths decoded by loader workers) for image-file data sets
    x_labeled: Any
    y_labeled: torch.Tensor
    x_unlabeled: Any
    y_unlabeled: torch.Tensor | None  # true labels, for metrics only
    x_val: Any
    y_val: torch.Tensor
    x_test: Any
    y_test: torch.Tensor
    num_classes: int
    split: Split
    labeled_augment: Augment = identity
    weak_augment: Augment = identity
    strong_augment: Augment = identity
    # uint8 images: the per-channel mean and std (in [0, 1] units) that the model standardises them with
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # (weak, strong) made together, when the strong view must start from the weak one (docs/method.md#cifar-pipeline)
    unlabeled_views: Any = None
    # a stored teacher's distributions of x_labeled, x_unlabeled and x_val (data.label_dir): Reduced MPL's inputs
    stored: StoredDistributions | None = None
    class_names: list[str] | None = None  # the classes' names in label order (folder data sets), else None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_labeled.shape[1:])


class _EpochSampler:
    """Indices without replacement, reshuffled every pass; a batch may span two passes."""

    def __init__(self, size: int):
        self.size = size
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0

    def take(self, count: int, generator: torch.Generator) -> torch.Tensor:
        parts = []
        while count > 0:
            if self.position >= len(self.order):
                self.order = torch.randperm(self.size, generator=generator)
                self.position = 0
            chunk = self.order[self.position : self.position + count]
            self.position += len(chunk)
            count -= len(chunk)
            parts.append(chunk)
        return torch.cat(parts)

    def state_dict(self) -> dict:
        return {"order": self.order.clone(), "position": self.position}

    def snapshot(self) -> tuple[torch.Tensor, int]:
        """The state without copying the order: a new pass makes a new tensor, so the reference stays valid."""
        return self.order, self.position

    def load_state_dict(self, state: dict) -> None:
        self.order, self.position = state["order"].clone(), int(state["position"])


def check_stream_data(data: DataBundle, labeled_only: bool) -> None:
    """A DataError unless the split has labeled examples and, for a method that uses them, unlabeled ones."""
    if len(data.y_labeled) == 0 or (not labeled_only and len(data.x_unlabeled) == 0):
        raise DataError(
            f"the split has {len(data.y_labeled)} labeled and {len(data.x_unlabeled)} unlabeled examples; "
            "a semi-supervised method needs both: label fewer examples or set data.unlabeled_includes_labeled=true"
        )


class BatchStream:
    """Endless training batches: B labeled examples and μB unlabeled ones in a weak and a strong view.

    `batch_size` is the global B. With `world_size` > 1 every rank draws the same global batch (one shared
    permutation per pass, like DistributedSampler with set_epoch) and keeps its contiguous slice of B/world
    labeled and μB/world unlabeled examples, so the ranks together see exactly a single process's batch.
    """

    def __init__(
        self,
        data: DataBundle,
        batch_size: int,
        mu: int,
        seed: int,
        labeled_only: bool = False,
        rank: int = 0,
        world_size: int = 1,
        augment_device: torch.device | str | None = None,
    ):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} data-parallel ranks")
        self.data, self.batch_size, self.mu, self.labeled_only = data, batch_size, mu, labeled_only
        self.rank, self.world_size = rank, world_size
        # in-memory images can be augmented where the model runs: the batched ops are the same on a GPU
        self.augment_device = torch.device(augment_device) if augment_device is not None else None
        check_stream_data(data, labeled_only)
        self.generator = torch.Generator().manual_seed(seed)
        self.labeled = _EpochSampler(len(data.y_labeled))
        self.unlabeled = _EpochSampler(len(data.x_unlabeled))
        self.files = isinstance(data.x_labeled, ImageFiles)
        self._files_batches: FileBatches | None = None  # the loader workers' batches, for image files
        self._shards = None  # unlabeled images from WebDataset shards (data.unlabeled_shards; parts/data/shards.py)
        if not labeled_only and self.files and not isinstance(data.x_unlabeled, ImageFiles):
            from metapl.parts.data.shards import ShardStream

            self._shards = ShardStream(data.x_unlabeled, batch_size * mu, seed, rank, world_size)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        if self.files:
            return self._next_from_files()
        data, gen = self.data, self.generator
        idx_l = self.labeled.take(self.batch_size, gen)
        x_l = data.labeled_augment(self._on_device(data.x_labeled[idx_l]), gen)
        stored = data.stored
        p_l = stored.labeled.take(idx_l) if stored is not None else None  # stored distributions
        if self.labeled_only:
            return self._slice(with_stored(Batch(x_l, data.y_labeled[idx_l]), p_l, None))
        idx_u = self.unlabeled.take(self.batch_size * self.mu, gen)
        x_u = self._on_device(data.x_unlabeled[idx_u])
        y_u = data.y_unlabeled[idx_u] if data.y_unlabeled is not None else None
        if data.unlabeled_views is not None:
            weak, strong = data.unlabeled_views(x_u, gen)
        else:
            weak, strong = data.weak_augment(x_u, gen), data.strong_augment(x_u, gen)
        p_u = stored.unlabeled.take(idx_u) if stored is not None and stored.unlabeled is not None else None
        batch = with_stored(Batch(x_l, data.y_labeled[idx_l], weak, strong, y_u), p_l, p_u)
        return self._slice(batch)

    def _on_device(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.augment_device is None else x.to(self.augment_device, non_blocking=True)

    def _slice(self, batch: Batch) -> Batch:
        """This rank's contiguous share of every tensor of the global batch."""
        if self.world_size == 1:
            return batch
        parts = {}
        for f in fields(batch):
            value = getattr(batch, f.name)
            if value is not None:
                share = len(value) // self.world_size
                value = value[self.rank * share : (self.rank + 1) * share]
            parts[f.name] = value
        return type(batch)(**parts)

    def _share(self, tensor: torch.Tensor) -> torch.Tensor:
        share = len(tensor) // self.world_size
        return tensor[self.rank * share : (self.rank + 1) * share]

    def _draw_files_task(self) -> dict:
        """One global batch's indices and per-image seeds; this rank's share is all its workers decode."""
        data, gen = self.data, self.generator
        idx_l = self.labeled.take(self.batch_size, gen)
        seeds_l = torch.randint(2**62, (len(idx_l),), generator=gen)
        idx_l, seeds_l = self._share(idx_l), self._share(seeds_l)
        plan = {"paths_l": data.x_labeled.paths[idx_l.numpy()], "seeds_l": seeds_l, "y_l": data.y_labeled[idx_l]}
        if data.stored is not None:
            plan["p_l"] = data.stored.labeled.take(idx_l)
        if not self.labeled_only and self._shards is None:
            idx_u = self.unlabeled.take(self.batch_size * self.mu, gen)
            seeds_u = torch.randint(2**62, (len(idx_u),), generator=gen)
            idx_u, seeds_u = self._share(idx_u), self._share(seeds_u)
            plan.update(paths_u=data.x_unlabeled.paths[idx_u.numpy()], seeds_u=seeds_u)
            if data.y_unlabeled is not None:
                plan["y_u"] = data.y_unlabeled[idx_u]
            if data.stored is not None and data.stored.unlabeled is not None:
                plan["p_u"] = data.stored.unlabeled.take(idx_u)
        return plan

    def _snapshot(self) -> dict:
        return {
            "generator": self.generator.get_state(),
            "labeled": self.labeled.snapshot(),
            "unlabeled": self.unlabeled.snapshot(),
        }

    def _next_from_files(self) -> Batch:
        from metapl.parts.data.streaming import FileBatches

        if self._files_batches is None:
            self._files_batches = FileBatches(self.data.x_labeled, self._draw_files_task, self._snapshot)
        batch = next(self._files_batches)
        return batch if self._shards is None else self._shards.attach(batch)

    def close(self) -> None:
        """Stop the loader workers (image files); the stream goes on later from the last batch it gave."""
        if self._files_batches is not None:
            self.load_state_dict(self.state_dict())

    def state_dict(self) -> dict:
        state = self._sampler_state()
        if self._shards is not None:  # the shard lanes' positions after the last batch received
            state["shards"] = self._shards.state_dict()
        return state

    def _sampler_state(self) -> dict:
        received = self._files_batches.received if self._files_batches is not None else None
        if received is not None:  # workers run ahead: the state after the last batch the trainer received
            generator, (l_order, l_pos), (u_order, u_pos) = (
                received["generator"],
                received["labeled"],
                received["unlabeled"],
            )
            return {
                "generator": generator.clone(),
                "labeled": {"order": l_order.clone(), "position": l_pos},
                "unlabeled": {"order": u_order.clone(), "position": u_pos},
            }
        return {
            "generator": self.generator.get_state(),
            "labeled": self.labeled.state_dict(),
            "unlabeled": self.unlabeled.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.labeled.load_state_dict(state["labeled"])
        self.unlabeled.load_state_dict(state["unlabeled"])
        if self._shards is not None:
            self._shards.load_state_dict(state["shards"])
        if self._files_batches is not None:  # prefetched batches belong to the old position
            self._files_batches.close()
            self._files_batches = None
