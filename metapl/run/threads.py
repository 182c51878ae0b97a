"""How many intra-op threads PyTorch uses on the CPU (train.threads; docs/performance.md#threads).

PyTorch starts one thread per core. benchmarks/threads.py measured the presets on 2 cores, 1 thread against 2:
- a network whose forward pass costs little per example (the MLPs: 320 and 169 K FLOPs) is no faster with more
  threads: its operations are too short to split, and the threads wait for each other (digits 0.8×, TwoMoon
  18× slower with 2 threads);
- a convolutional network (the small CNN: 9–13 M FLOPs per example) gains from every core on an idle machine
  (1.8× faster with 2 threads);
- on a busy machine (another process on a core) one thread wins for every network, big ones included (1.7× to
  10×): a thread that is not scheduled stalls every operation of the others.
train.threads=0 (automatic) therefore takes one thread on the CPU when the network's forward pass costs less than
AUTO_FLOPS per example or the machine is busy when training starts (load average of the last minute at least half
the cores), and PyTorch's default otherwise and on GPUs; OMP_NUM_THREADS, when set, is kept. N > 0 takes N.
"""

from __future__ import annotations

import os

import torch
from torch import nn

AUTO_FLOPS = 1_000_000  # forward FLOPs per example below which one thread is fastest (the MLPs; the CNNs above)
BUSY_LOAD = 0.5  # a machine is busy when its 1-minute load average is at least this share of its cores
# PyTorch's own choice when metapl loaded: one thread per core, or OMP_NUM_THREADS.
_DEFAULT = torch.get_num_threads()


def forward_flops(network: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one example's forward pass (counted by PyTorch on a zero input, in eval mode, without gradients);
    0 for a network that takes other inputs (Reduced MPL's teacher reads class distributions, not images)."""
    from torch.utils.flop_counter import FlopCounterMode

    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            network(torch.zeros(1, *input_shape, device=device))
    except (RuntimeError, ValueError, TypeError, IndexError):  # shapes that do not fit this network
        return 0
    finally:
        network.train(was_training)
    return int(counter.get_total_flops())


def machine_busy(cores: int) -> bool:
    try:
        return os.getloadavg()[0] >= BUSY_LOAD * cores
    except OSError:  # no load average on this system
        return False


def automatic_threads(flops: int, device: torch.device, default: int, busy: bool) -> int:
    """train.threads=0's choice: 1 on the CPU for a network of `flops` forward FLOPs per example below AUTO_FLOPS or
    on a busy machine, else `default` (PyTorch's)."""
    return 1 if device.type == "cpu" and (flops < AUTO_FLOPS or busy) else default


def apply_threads(setting: int, networks: list[nn.Module], device: torch.device, input_shape: tuple[int, ...]) -> int:
    """Set PyTorch's intra-op threads for train.threads=`setting` and the run's networks (inputs of `input_shape`);
    returns the count in effect. Automatic (0) leaves a count set by OMP_NUM_THREADS alone: whoever set it (a
    user, torchrun) chose."""
    if setting > 0:
        count = setting
    elif "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    elif device.type != "cpu" or _DEFAULT <= 1:
        count = _DEFAULT
    else:
        flops = max((forward_flops(n, tuple(input_shape)) for n in networks), default=0)
        count = automatic_threads(flops, device, _DEFAULT, machine_busy(_DEFAULT))
    torch.set_num_threads(count)
    return count
