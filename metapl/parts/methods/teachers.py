"""MPL's teacher as a part: steps 1 and 5 of the step (parts/methods/mpl.py), behind one small interface, while
MetaPseudoLabels runs steps 2–4 (the feedback) for any part.

    forward(batch, learns)   step 1: T(x_u)'s logits as values (the student's targets), and a function that
                             gives step 5 the logits of all of the teacher's rows with their graph
    loss(batch, step, logits, mpl_term)
                             step 5: the teacher's own losses + the MPL term, from those logits; the method takes
                             the gradient and applies it
    learns(mpl_term)         whether the teacher has any loss (with or without the MPL term); if not, the step
                             leaves it alone and step 1 builds no graph
    label_smoothing          ε of its supervised CE (the official feedback smooths the student's target with it)
    takes_images             whether evaluation can score it on images (teacher_val_top1)

Two parts:
    ImageTeacher   an image network on [x_l; x_u_weak; x_u_strong] (BN statistics over all of it), its own losses
                   the supervised CE and UDA (method.teacher_losses), its graph kept or recomputed (teacher_graph)
    StoredTeacher  Reduced MPL's R over the stored distributions [p_l; p_u] of the same images
                   (parts/methods/reduced_mpl.py), its own loss supervised_weight · CE(R(p_l), y_l)

ImageTeacher's graph (docs/method.md#compute-memory). Its gradient is J_Tᵀ·(∂L_aux/∂z + c·∂CE(ŷ, z_strong)/∂z), J_T
the Jacobian of its logits z, and c exists only after step 4. BN statistics shared over the concatenation make every row of every layer
part of J_T, so no part of that backward can run before c without a second backward. Two exact schedules:
    keep       step 1 keeps its graph until step 5: the least work (one teacher forward + backward), but the
               teacher's activations are alive while the student runs
    recompute  step 1 runs without a graph (values only: ŷ, the student's targets) and step 5 runs it again with
               one, on the same dropout masks, BN running statistics counted once: one more teacher forward, and
               the peak memory of one network's step at a time instead of both together
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from metapl.core.batch import Batch, StoredBatch
from metapl.core.losses import smoothed_cross_entropy
from metapl.parts.methods.base import Metrics, frozen_bn_stats, replayed_randomness, rng_state
from metapl.parts.methods.settings import ReducedTeacherLosses, TeacherLosses
from metapl.parts.methods.uda import auxiliary_losses

MplTerm = Callable[[torch.Tensor], torch.Tensor]  # T(x_u_strong)'s logits, with their graph → the MPL term


@dataclass
class TeacherForward:
    """Step 1's result: T(x_u)'s logits without a graph, and how step 5 gets all rows' logits with their graph."""

    strong: torch.Tensor
    with_graph: Callable[[], torch.Tensor]


@dataclass
class TeacherLoss:
    """Step 5's teacher side: the loss to differentiate, and what the metrics report."""

    total: torch.Tensor  # the teacher's own losses + the MPL term
    mpl: torch.Tensor  # the MPL term alone
    own: Metrics  # the own losses' parts, named teacher_*
    logits_l: torch.Tensor  # the labeled images' logits (teacher_labeled_acc)
    logits_u: torch.Tensor  # the unlabeled images' logits that stand for T(x_u_strong) (teacher_unlabeled_acc)


class Teacher(Protocol):
    """Steps 1 and 5 of MPL for one kind of teacher (see the module's docstring)."""

    network: nn.Module
    takes_images: bool

    @property
    def label_smoothing(self) -> float: ...

    def learns(self, mpl_term: bool) -> bool: ...

    def forward(self, batch: Batch, learns: bool) -> TeacherForward: ...

    def loss(self, batch: Batch, step: int, logits: torch.Tensor, mpl_term: MplTerm) -> TeacherLoss: ...


class ImageTeacher:
    """An image network: MPL's teacher as in the paper, trained with L_sup + λ·L_UDA + the MPL term."""

    takes_images = True

    def __init__(self, network: nn.Module, losses: TeacherLosses, graph: str, total_steps: int):
        self.network, self.losses, self.graph = network, losses, graph
        self.total_steps = total_steps  # TSA's threshold reaches 1 here (the teacher's optimiser's steps)

    @property
    def label_smoothing(self) -> float:
        return self.losses.label_smoothing

    def learns(self, mpl_term: bool) -> bool:
        return mpl_term or self.losses.supervised_loss or self.losses.uda

    def forward(self, batch: Batch, learns: bool) -> TeacherForward:
        """Step 1: the teacher at θ_T on [x_l; x_u_weak; x_u_strong], BN statistics over the whole concatenation.

        Step 5 gets the logits of all rows with their graph: the kept graph (teacher_graph=keep) or a replay of this
        forward on the same dropout masks, BN running statistics counted once (recompute)."""
        x_u_weak, x_u_strong = batch.unlabeled()
        teacher_input = torch.cat([batch.x_l, x_u_weak, x_u_strong])
        start = batch.x_l.shape[0] + x_u_weak.shape[0]
        if self.graph == "keep" or not learns:
            with torch.set_grad_enabled(learns):
                logits = self.network(teacher_input)  # its graph waits for c (step 5)
            return TeacherForward(logits[start:].detach(), lambda: logits)
        dropout_rng = rng_state(teacher_input.device)
        with torch.no_grad():
            logits = self.network(teacher_input)  # values only; rebuilt with a graph in step 5

        def recompute() -> torch.Tensor:
            with frozen_bn_stats(self.network), replayed_randomness(dropout_rng):
                return self.network(teacher_input)

        return TeacherForward(logits[start:], recompute)

    def loss(self, batch: Batch, step: int, logits: torch.Tensor, mpl_term: MplTerm) -> TeacherLoss:
        """Step 5: L_sup + λ·L_UDA + the MPL term, from the logits of [x_l; x_u_weak; x_u_strong]."""
        x_u_weak, x_u_strong = batch.unlabeled()
        logits_l, logits_weak, logits_strong = logits.split(
            [batch.x_l.shape[0], x_u_weak.shape[0], x_u_strong.shape[0]]
        )
        aux_loss, aux_metrics = auxiliary_losses(
            logits_l,
            batch.y_l,
            logits_weak,
            logits_strong,
            step,
            self.losses,
            self.total_steps,
            supervised=self.losses.supervised_loss,
            uda=self.losses.uda,
        )
        mpl_loss = mpl_term(logits_strong)
        own = {f"teacher_{k}": v for k, v in aux_metrics.items()}
        return TeacherLoss(aux_loss + mpl_loss, mpl_loss, own, logits_l, logits_strong)


class StoredTeacher:
    """Reduced MPL's teacher R (parts/methods/reduced_mpl.py): a small network over the stored distributions of the batch's
    images; R(p_u) stands for T(x_u_strong) (the strong view's image is the same image)."""

    takes_images = False  # R takes distributions, not images: evaluation cannot score it

    def __init__(self, network: nn.Module, losses: ReducedTeacherLosses):
        self.network, self.losses = network, losses

    @property
    def label_smoothing(self) -> float:
        return self.losses.label_smoothing

    def learns(self, mpl_term: bool) -> bool:
        """False without the MPL term and with supervised_weight 0: R has no loss and stays the big teacher."""
        return mpl_term or self.losses.supervised_weight > 0

    def forward(self, batch: Batch, learns: bool) -> TeacherForward:
        """Step 1: R on [p_l; p_u], the stored distributions of the labeled and unlabeled images."""
        p_l, p_u = _stored(batch)
        with torch.set_grad_enabled(learns):
            logits = self.network(torch.cat([p_l, p_u]))
        return TeacherForward(logits[p_l.shape[0] :].detach(), lambda: logits)

    def loss(self, batch: Batch, step: int, logits: torch.Tensor, mpl_term: MplTerm) -> TeacherLoss:
        """Step 5: supervised_weight · CE(R(p_l), y_l) + the MPL term, from R's logits [R(p_l); R(p_u)]."""
        b = batch.x_l.shape[0]
        logits_l, logits_u = logits[:b], logits[b:]
        own: Metrics = {}
        loss = logits_l.new_zeros(())
        if self.losses.supervised_weight > 0:
            supervised = smoothed_cross_entropy(logits_l, batch.y_l, self.losses.label_smoothing)
            loss = loss + self.losses.supervised_weight * supervised
            own["teacher_sup_loss"] = supervised.detach()
        mpl_loss = mpl_term(logits_u)
        return TeacherLoss(loss + mpl_loss, mpl_loss, own, logits_l, logits_u)


def _stored(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(p_l, p_u) of a batch that carries stored distributions."""
    if not isinstance(batch, StoredBatch) or batch.p_l is None or batch.p_u is None:
        raise ValueError("reduced_mpl needs batches with stored distributions (p_l, p_u): set data.label_dir")
    return batch.p_l, batch.p_u
