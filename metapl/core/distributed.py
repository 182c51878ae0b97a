"""Data-parallel training across processes (torchrun): rank bookkeeping and gradient averaging.

Every rank holds the same models and sees its own slice of the global batch. Averaging the gradients of
per-rank batch means gives the gradient of the global batch mean, so h, b and every update are the same on
every rank and equal to a single process's on the whole global batch (up to float summation order).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Only rank 0 writes files and logs."""
    return rank() == 0


def setup_from_env() -> torch.device | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns this rank's device, or None alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_initialized():
        # torch._dynamo, imported lazily by the first optimiser, keeps references to whatever process group exists
        # at its import; the group then outlives destroy_process_group, and a gloo worker thread still releasing
        # a finished all-reduce when the interpreter shuts down aborts the process (SIGABRT) after a good run.
        # Imported before the group exists, it holds none, and cleanup() frees the group and joins its threads.
        import torch._dynamo  # noqa: F401

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def cleanup() -> None:
    """Leave the process group: destroys it, which joins its worker threads (see setup_from_env)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def averaged(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`tensors` averaged over all ranks (one flat all-reduce; new tensors); unchanged in a single process."""
    size = world_size()
    if size == 1 or not tensors:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= size
    return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def rank_max(value: int, device: torch.device) -> int:
    """The largest of the ranks' `value`s (one 1-element all-reduce and a host sync); `value` in a single process."""
    if world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks."""
    return averaged([value.detach()])[0]
