"""What every method shares: the batch, the interface, and small helpers for train-mode forwards."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from metapl.core.batch import Batch
from metapl.core.ema import ModelEMA
from metapl.core.optim import OptimSettings, Updater

# What a step returns: scalars, as 0-dim tensors (no host sync inside a step) or Python floats.
Metrics = dict[str, torch.Tensor | float]


class Method(Protocol):
    """One semi-supervised algorithm: it owns its models, optimisers, schedules and EMA.

    The engine reads two class attributes: `uses_unlabeled` (False: batches carry only labeled data) and
    `finetunes` (True: the finetuning phase follows on the labeled data, starting from eval_model()).
    """

    uses_unlabeled: ClassVar[bool]
    finetunes: ClassVar[bool]

    def step(self, batch: Batch, step: int) -> Metrics:
        """One optimisation step; returns scalar metrics."""

    def networks(self) -> dict[str, nn.Module]:
        """The trained networks by name: what the engine checkpoints, compiles and converts to SyncBatchNorm."""

    def eval_model(self) -> nn.Module:
        """The network that evaluation and export use (the EMA student when EMA is on)."""

    def reported_networks(self) -> dict[str, nn.Module]:
        """Networks scored besides eval_model() (their metrics get the name as prefix: teacher_val_top1)."""

    def state_dict(self) -> dict:
        """Models, optimisers, EMA, baselines, counters."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Run train-mode forwards without changing BN running statistics (docs/method.md#gradient-flow: forward 2 and lookaheads).

    The forwards update scratch copies swapped in for the statistics; the originals are put back untouched.
    (Restoring them in place instead would bump the version of tensors that BN's autograd node saved, and a
    backward taken after the block, e.g. ∇L_l(θ'_S), would fail.)
    """
    saved = []
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and _is_norm_stat(name):
                saved.append((module, name, buf))
                module._buffers[name] = buf.clone()
    try:
        yield
    finally:
        for module, name, buf in saved:
            module._buffers[name] = buf


def _is_norm_stat(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))


RngState = tuple[torch.device, torch.Tensor, torch.Tensor | None]


def rng_state(device: torch.device) -> RngState:
    """The RNG state a forward on `device` is about to draw its dropout masks from (no host sync)."""
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return device, torch.get_rng_state(), cuda_state


@contextlib.contextmanager
def replayed_randomness(state: RngState) -> Iterator[None]:
    """Draw from `state` again, so that a second forward gets the first one's dropout masks; the RNG outside the
    block is left as it was."""
    device, cpu_state, cuda_state = state
    devices = [device] if cuda_state is not None else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
        yield


def top1(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The share of rows whose highest score is at `labels`, a 0-dim tensor (no host sync: the loop logs it when it
    logs); scores are logits or probabilities, detached here."""
    return (scores.detach().argmax(-1) == labels).float().mean()


def module_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@dataclass
class BuildContext:
    """What a method's build function gets from the run (the method never reads a config or a file)."""

    num_classes: int
    total_steps: int  # the training phase's steps (train.steps)
    ema_decay: float | None  # the student's EMA decay; None: no EMA
    # a fresh network of the configured model, on the run's device: new_network() the student (or the one
    # network), new_network(role="teacher") the teacher (model.teacher_name, which may be another architecture)
    new_network: Callable[..., nn.Module]
    optim: Callable[[str, int], OptimSettings]  # ("teacher" | "student", its steps) -> its optimiser settings


@dataclass(frozen=True)
class MemoryShape:
    """What one step of a method holds at least, for the memory check before a run (run/budget.py): the
    networks of the run's model it trains (each with weights, gradients and momentum), the views of the μB
    unlabeled images that go through a network with a graph, and whether the B labeled ones do. `own` gives
    what the method's own settings allocate besides those networks: (settings, class count, examples per step)
    -> [(setting key, bytes)], so that a setting too large is named before anything is allocated."""

    networks: int = 1
    unlabeled_views: int = 1
    labeled: bool = False
    own: Callable[[Any, int, int], list[tuple[str, int]]] | None = None


@dataclass(frozen=True)
class MethodEntry:
    """A method's registration: its settings dataclass (the config's `method` section and the constructor's
    argument), how to build it for a run, a short label of its settings for plots and tables, the memory
    shape of its step. Which data inputs it reads is said by its settings class (parts/methods/settings.py: READS_*)."""

    settings: type
    build: Callable[[Any, BuildContext], Method]
    label: Callable[[Any], str] = lambda settings: ""
    memory: MemoryShape = MemoryShape()


class SingleModelMethod:
    """State handling for the one-network methods (supervised, UDA): model, optimiser, optional EMA."""

    uses_unlabeled: ClassVar[bool] = True
    finetunes: ClassVar[bool] = False

    def __init__(self, model: nn.Module, num_classes: int, optim: OptimSettings | None, ema_decay: float | None):
        self.model = model
        self.num_classes = num_classes
        self.updater = Updater(model, optim or OptimSettings())
        self.ema = ModelEMA(model, ema_decay) if ema_decay else None

    def _finish_update(self, grads: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        grad_norm = self.updater.apply(list(grads))
        if self.ema is not None and not self.updater.skipped:
            self.ema.update(self.model, step)
        return grad_norm

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def networks(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def reported_networks(self) -> dict[str, nn.Module]:
        return {}

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.updater.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updater.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])


class TwoModelMethod:
    """State handling for teacher–student methods (pseudo-label, MPL): two models, two optimisers, student EMA."""

    uses_unlabeled: ClassVar[bool] = True
    finetunes: ClassVar[bool] = False
    teacher: nn.Module
    student: nn.Module
    teacher_updater: Updater
    student_updater: Updater
    ema: ModelEMA | None

    def _init_models(
        self,
        teacher: nn.Module,
        student: nn.Module,
        teacher_optim: OptimSettings | None,
        student_optim: OptimSettings | None,
        ema_decay: float | None,
    ) -> None:
        if teacher is student:
            raise ValueError("teacher and student must be two separate modules")
        self.teacher, self.student = teacher, student
        self.teacher_updater = Updater(teacher, teacher_optim or OptimSettings())
        self.student_updater = Updater(student, student_optim or OptimSettings())
        self.ema = ModelEMA(student, ema_decay) if ema_decay else None

    def _update_student(self, grads: Sequence[torch.Tensor], step: int) -> torch.Tensor:
        """Apply the student's gradient (left untouched for the caller), then update its EMA."""
        grad_norm = self.student_updater.apply(list(grads))
        if self.ema is not None and not self.student_updater.skipped:
            self.ema.update(self.student, step)
        # Autocast keeps the low-precision copies of the weights it casts until its region ends, and a step runs
        # in one region: without this, the student's forwards at θ'_S (the feedback) would reuse θ_S's copies.
        torch.clear_autocast_cache()
        return grad_norm

    def eval_model(self) -> nn.Module:
        """The EMA student when EMA is on, else the student: only the student is used for prediction."""
        return self.ema.module if self.ema is not None else self.student

    def networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher, "student": self.student}

    def reported_networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher}

    def state_dict(self) -> dict:
        return {
            "teacher": self.teacher.state_dict(),
            "student": self.student.state_dict(),
            "teacher_optimizer": self.teacher_updater.state_dict(),
            "student_optimizer": self.student_updater.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.student.load_state_dict(state["student"])
        self.teacher_updater.load_state_dict(state["teacher_optimizer"])
        self.student_updater.load_state_dict(state["student_optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
