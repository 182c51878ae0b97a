"""Reduced Meta Pseudo Labels (paper App. E; docs/reduced-mpl.md): a big teacher's class distributions, stored once
by `metapl label`, and a small *reduced teacher* trained jointly with the student by MPL's feedback.

The reduced teacher R maps a stored distribution p of an image to logits, with a residual path:

    R(p) = log(p + ε) + MLP(p),   the MLP's last layer initialised to 0, so softmax(R(p)) starts as p (the big teacher)

Reduced MPL is MPL (parts/methods/mpl.py) given the stored teacher part (parts/methods/teachers.py: StoredTeacher): steps 1
and 5 are R's, steps 2–4 (every feedback mode: hard with dot, cosine or taylor; soft, exact; official) MPL's as they
are:

    1. R on [p_l; p_u], the stored distributions of the labeled and unlabeled images of the batch (a StoredBatch)
    2–4. MPL's feedback: the student learns pseudo labels from R(p_u) on the strong view x_u_strong, and the
         feedback gives the MPL term as a function of R(p_u)'s logits
    5. R's update from the MPL term and, optionally, supervised_weight · CE(R(p_l), y_l)

`method.feedback.teacher_signal` chooses R's feedback for the controls of docs/reduced-mpl.md#experiment, as for
MPL: `mpl`, `shuffled` (h of a random earlier step), `none` (no MPL term: with supervised_weight 0, R stays the big
teacher and the run is plain Pseudo Labels on the stored distributions; with supervised_weight > 0 it is
calibration on labeled data only).
"""

from __future__ import annotations

import torch
from torch import nn

from metapl.core.optim import OptimSettings
from metapl.core.settings import check_settings
from metapl.parts.methods.base import BuildContext, MemoryShape, MethodEntry, module_device
from metapl.parts.methods.mpl import MetaPseudoLabels, feedback_memory
from metapl.parts.methods.settings import ReducedMPLSettings
from metapl.parts.methods.teachers import StoredTeacher

LOG_EPS = 1e-6  # ε of log(p + ε): stored float16 probabilities can be 0


class ReducedTeacher(nn.Module):
    """R(p) = log(p + ε) + MLP(p): a stored distribution in, recalibrated logits out. The MLP's last layer starts at
    zero, so R starts out as the big teacher: softmax(R(p)) = (p + ε) / (1 + Kε)."""

    def __init__(self, num_classes: int, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_classes, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return torch.log(p + LOG_EPS) + self.mlp(p)


class ReducedMetaPseudoLabels(MetaPseudoLabels):
    """MPL with the reduced teacher R on stored distributions (batches are StoredBatch, with p_l and p_u): MPL's step
    given the stored teacher part."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        num_classes: int,
        settings: ReducedMPLSettings | None = None,
        *,
        teacher_optim: OptimSettings | None = None,
        student_optim: OptimSettings | None = None,
        ema_decay: float | None = None,
    ):
        settings = settings or ReducedMPLSettings()
        check_settings(settings, "method")
        part = StoredTeacher(teacher, settings.teacher_losses)
        self._assemble(part, student, num_classes, settings.feedback, teacher_optim, student_optim, ema_decay)


@torch.no_grad()
def teacher_confusion(teacher: nn.Module | None, p: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts [true class, predicted class] of R's argmax on stored distributions `p` (dense), or of the stored
    distributions' own argmax (the big teacher) when `teacher` is None."""
    if teacher is None:
        predicted = p.argmax(-1)
    else:
        was_training = teacher.training
        teacher.eval()
        predicted = teacher(p.to(module_device(teacher))).argmax(-1).cpu()
        teacher.train(was_training)
    return torch.bincount(y.long() * num_classes + predicted.long(), minlength=num_classes**2).view(
        num_classes, num_classes
    )


def _build(settings: ReducedMPLSettings, run: BuildContext) -> ReducedMetaPseudoLabels:
    student = run.new_network()
    teacher = ReducedTeacher(run.num_classes, settings.hidden).to(module_device(student))
    return ReducedMetaPseudoLabels(
        teacher,
        student,
        run.num_classes,
        settings,
        teacher_optim=run.optim("teacher", run.total_steps),
        student_optim=run.optim("student", run.total_steps),
        ema_decay=run.ema_decay,
    )


def _label(settings: ReducedMPLSettings) -> str:
    """'hard/dot', 'soft, +CE×0.5', 'hard/dot, shuffled h', 'no feedback' (frozen when without CE)."""
    parts = [settings.feedback.label()]
    weight = settings.teacher_losses.supervised_weight
    if weight > 0:
        parts.append(f"+CE×{weight:g}")
    elif settings.feedback.teacher_signal == "none":
        parts.append("frozen")
    return ", ".join(parts)


def _own_memory(settings: ReducedMPLSettings, num_classes: int, examples: int) -> list[tuple[str, int]]:
    """What the reduced teacher allocates at least (float32): its weights, gradients and momentum and its hidden
    layer's output on a step's examples; and the shuffled control's buffer of earlier steps' h."""
    parameters = 2 * num_classes * settings.hidden + settings.hidden + num_classes
    return [("method.hidden", 4 * (3 * parameters + examples * settings.hidden)), *feedback_memory(settings, 0, 0)]


# one network of the run's model (the student); its teacher is a small network on stored distributions
METHOD = MethodEntry(
    ReducedMPLSettings,
    _build,
    _label,
    MemoryShape(networks=1, unlabeled_views=1, own=_own_memory),
)
