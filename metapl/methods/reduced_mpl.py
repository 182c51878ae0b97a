"""Reduced Meta Pseudo Labels (paper App. E; docs/reduced-mpl.md): a big teacher's class distributions, stored once
by `metapl label`, and a small *reduced teacher* trained jointly with the student by MPL's feedback.

The reduced teacher R maps a stored distribution p of an image to logits, with a residual path:

    R(p) = log(p + ε) + MLP(p),   the MLP's last layer initialised to 0, so softmax(R(p)) starts as p (the big teacher)

One step is MPL's step (methods/mpl.py) with steps 1 and 5 replaced and steps 2–4 (every feedback mode: hard with
dot, cosine or taylor; soft, exact; official) shared as they are:

    1. R on [p_l; p_u], the stored distributions of the labeled and unlabeled images of the batch
    2–4. MPL's feedback, unchanged: the student learns pseudo labels from R(p_u) on the strong view x_u_strong,
         and the feedback gives the MPL term as a function of R(p_u)'s logits
    5. R's update from the MPL term and, optionally, supervised_weight · CE(R(p_l), y_l)

`teacher_signal` chooses R's feedback for the controls of docs/reduced-mpl.md#experiment: `mpl` (MPL's feedback),
`shuffled` (h replaced by the h of a random earlier step: the same distribution, no information about this step;
hard and official feedback), `none` (no MPL term: with supervised_weight 0, R stays the big teacher and the run is
plain Pseudo Labels on the stored distributions; with supervised_weight > 0 it is calibration on labeled data only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, cast

import torch
from torch import nn

from metapl.batch import Batch
from metapl.losses import smoothed_cross_entropy
from metapl.methods.base import BuildContext, MemoryShape, MethodEntry, Metrics, module_device, top1
from metapl.methods.mpl import MetaPseudoLabels, MplTerm
from metapl.methods.settings import ReducedMPLSettings, check_teacher_signal
from metapl.optim import OptimSettings
from metapl.settings import check_settings

if TYPE_CHECKING:
    from collections.abc import Callable


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
    """MPL with a reduced teacher on stored distributions (batches carry them as p_l and p_u)."""

    finetunes: ClassVar[bool] = True

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
        check_teacher_signal(settings)
        super().__init__(
            teacher,
            student,
            num_classes,
            settings,  # type: ignore[arg-type]  # the feedback reads FeedbackSettings' fields and label_smoothing
            teacher_optim=teacher_optim,
            student_optim=student_optim,
            ema_decay=ema_decay,
        )
        device = module_device(student)
        self.h_buffer = torch.zeros(settings.shuffle_buffer, device=device)  # shuffled: earlier steps' h
        self.h_seen = 0
        self._h_drawn: torch.Tensor | None = None

    @property
    def reduced(self) -> ReducedMPLSettings:
        """self.settings with its own type (MetaPseudoLabels declares MPLSettings; the feedback reads only the fields
        both have)."""
        return cast(ReducedMPLSettings, self.settings)

    @property
    def teacher_learns(self) -> bool:
        """False: R has no loss (teacher_signal=none, supervised_weight 0) and stays the big teacher."""
        return self.reduced.teacher_signal != "none" or self.reduced.supervised_weight > 0

    # ------------------------------------------------------------------ steps 1 and 5
    def _teacher_forward(self, batch: Batch) -> tuple[torch.Tensor, Callable[[], torch.Tensor]]:
        """Step 1: R on [p_l; p_u]; R(p_u) stands for T(x_u_strong) (the strong view's image is the same image)."""
        if batch.p_l is None or batch.p_u is None:
            raise ValueError("reduced_mpl needs batches with stored distributions (p_l, p_u): set data.label_dir")
        with torch.set_grad_enabled(self.teacher_learns):
            logits = self.teacher(torch.cat([batch.p_l, batch.p_u]))
        return logits[batch.p_l.shape[0] :].detach(), lambda: logits

    def _teacher_update(self, batch: Batch, step: int, teacher_logits: torch.Tensor, mpl_term: MplTerm) -> Metrics:
        """Step 5: supervised_weight · CE(R(p_l), y_l) + the MPL term (unless teacher_signal=none), one backward."""
        settings = self.reduced
        b = batch.x_l.shape[0]  # R's logits are [R(p_l); R(p_u)]
        logits_l, logits_u = teacher_logits[:b], teacher_logits[b:]
        metrics: Metrics = {}
        loss = logits_l.new_zeros(())
        if settings.supervised_weight > 0:
            supervised = smoothed_cross_entropy(logits_l, batch.y_l, settings.label_smoothing)
            loss = loss + settings.supervised_weight * supervised
            metrics["teacher_sup_loss"] = supervised.detach()
        mpl_loss = mpl_term(logits_u) if settings.teacher_signal != "none" else logits_u.new_zeros(())
        loss = loss + mpl_loss
        if self.teacher_learns:
            metrics["teacher_grad_norm"] = self.teacher_updater.apply(self.teacher_updater.gradients(loss))
        metrics.update(
            teacher_loss=loss.detach(),
            teacher_mpl_loss=mpl_loss.detach(),
            teacher_labeled_acc=top1(logits_l, batch.y_l),
        )
        if self._h_drawn is not None:
            metrics["h_shuffled"] = self._h_drawn
            self._h_drawn = None
        if batch.y_u is not None:
            metrics["teacher_unlabeled_acc"] = top1(logits_u, batch.y_u)
        return metrics

    # ------------------------------------------------------------------ the shuffled control
    def _baseline_coefficient(self, h: torch.Tensor) -> torch.Tensor:
        """teacher_signal=shuffled: the feedback's h is swapped for an earlier step's before the baseline."""
        if self.reduced.teacher_signal == "shuffled":
            h = self._shuffled(h)
        return super()._baseline_coefficient(h)

    def _shuffled(self, h: torch.Tensor) -> torch.Tensor:
        """A uniform draw from the h of the latest `shuffle_buffer` earlier steps (0 at the first step); this step's h
        joins the buffer afterwards."""
        filled = min(self.h_seen, len(self.h_buffer))
        if filled == 0:
            drawn = torch.zeros_like(h)
        else:
            drawn = self.h_buffer[int(torch.randint(filled, ()))].clone().to(h.dtype)
        self.h_buffer[self.h_seen % len(self.h_buffer)] = h.detach()
        self.h_seen += 1
        self._h_drawn = drawn
        return drawn

    # ------------------------------------------------------------------ interface
    def reported_networks(self) -> dict[str, nn.Module]:
        return {}  # R takes distributions, not images: evaluation cannot score it

    def state_dict(self) -> dict:
        return {**super().state_dict(), "h_buffer": self.h_buffer.clone(), "h_seen": self.h_seen}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.h_buffer = state["h_buffer"].to(self.h_buffer.device).clone()
        self.h_seen = int(state["h_seen"])


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
    feedback = settings.feedback_label()
    parts = {"mpl": [feedback], "shuffled": [feedback, "shuffled h"], "none": ["no feedback"]}[settings.teacher_signal]
    if settings.supervised_weight > 0:
        parts.append(f"+CE×{settings.supervised_weight:g}")
    elif settings.teacher_signal == "none":
        parts.append("frozen")
    return ", ".join(parts)


def _own_memory(settings: ReducedMPLSettings, num_classes: int, examples: int) -> list[tuple[str, int]]:
    """What the reduced teacher allocates at least (float32): its weights, gradients and momentum and its hidden
    layer's output on a step's examples; and the shuffled control's buffer of earlier steps' h."""
    parameters = 2 * num_classes * settings.hidden + settings.hidden + num_classes
    return [
        ("method.hidden", 4 * (3 * parameters + examples * settings.hidden)),
        ("method.shuffle_buffer", 4 * settings.shuffle_buffer),
    ]


# one network of the run's model (the student); its teacher is a small network on stored distributions
METHOD = MethodEntry(
    ReducedMPLSettings,
    _build,
    _label,
    MemoryShape(networks=1, unlabeled_views=1, own=_own_memory),
)
