"""The optimiser's settings as plain dataclasses (the config's `teacher` and `student` sections), torch-free so that
the config can be built without PyTorch; metapl/core/optim.py applies them."""

from __future__ import annotations

from dataclasses import dataclass

from metapl.core.settings import above, at_least, choice, fraction

OPTIMIZERS = ("sgd", "adam")
STATE_SLOTS = {"sgd": 1, "adam": 2}  # tensors the optimiser keeps per weight: momentum; Adam's two moments


@dataclass
class OptimConfig:
    """One network's optimiser as the config's `teacher` and `student` sections set it: Nesterov SGD (the paper's)
    or Adam, coupled L2 (norm layers skipped), global-norm clip, LR schedule (docs/method.md#optimisation)."""

    # sgd: the paper's; adam: a scale-free rule (the step's size does not follow the gradient's), for a teacher
    # whose gradient is too small for SGD to move it (docs/method.md#adam)
    optimizer: str = choice("sgd", OPTIMIZERS)
    lr: float = above(0, 0.05)
    momentum: float = fraction(0.9)  # SGD's momentum; Adam's β1 (the decay of its first moment)
    nesterov: bool = True  # SGD only
    beta2: float = fraction(0.999)  # Adam only: the decay of its second moment
    # Adam only: added to the second moment's root; at least 1e-30, as float32 (the weights' type) rounds a smaller
    # ε to 0 and a weight whose gradient is 0 would then step by 0/0
    eps: float = at_least(1e-30, 1e-8)
    weight_decay: float = at_least(0, 0.0)
    grad_clip: float = at_least(0, 0.0, " (0 turns clipping off)")  # global-norm bound
    schedule: str = choice("cosine", ("cosine", "constant"))  # cosine: to 0 at total_steps
    warmup_steps: int = at_least(0, 0)
    wait_steps: int = at_least(
        0, 0
    )  # LR 0 for this many steps (the student's wait period, docs/method.md#student-wait)


@dataclass
class OptimSettings(OptimConfig):
    """OptimConfig plus what the run decides: the step budget and float16 loss scaling."""

    total_steps: int = at_least(1, 1000)  # the run sets it to the network's share of train.steps
    fp16_loss_scale: bool = False  # dynamic loss scaling for float16 autocast (the run sets it for precision=fp16)
