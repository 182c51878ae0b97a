"""How many intra-op threads PyTorch uses on the CPU (train.threads; docs/performance.md#threads).

PyTorch starts one thread per core. A small network's operations are too short to split: the threads mostly
wait for each other, and on a machine busy with other work a thread that is not scheduled stalls every operation
(benchmarks/threads.py: digits' MLP on 2 cores, quiet 1.6× and busy 6× slower with 2 threads than with 1). A
big network's convolutions are long enough to gain from every core. train.threads=0 (automatic) takes one
thread for networks below AUTO_ONE_THREAD_BELOW parameters on the CPU, and PyTorch's default (all cores) otherwise
and on GPUs; N > 0 takes N threads.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# Networks with fewer parameters than this train faster on one thread (benchmarks/threads.py measured the presets:
# the MLPs and the small CNN below, WRN-28-2's 1.5 M above).
AUTO_ONE_THREAD_BELOW = 500_000
# PyTorch's own choice when metapl loaded: one thread per core, or OMP_NUM_THREADS.
_DEFAULT = torch.get_num_threads()


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def automatic_threads(parameters: int, device: torch.device, default: int) -> int:
    """train.threads=0's choice for the largest network's parameter count: 1 for a small network on the CPU, else
    `default` (PyTorch's)."""
    return 1 if device.type == "cpu" and parameters < AUTO_ONE_THREAD_BELOW else default


def apply_threads(setting: int, networks: list[nn.Module], device: torch.device) -> int:
    """Set PyTorch's intra-op threads for train.threads=`setting` and the run's networks; returns the count in
    effect. Automatic (0) leaves a count set by OMP_NUM_THREADS alone: whoever set it (a user, torchrun) chose."""
    if setting > 0:
        count = setting
    elif "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    else:
        count = automatic_threads(max((parameter_count(n) for n in networks), default=0), device, _DEFAULT)
    torch.set_num_threads(count)
    return count
