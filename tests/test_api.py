"""The Python API stands alone: a user's own modules and tensors, no config, no files."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from metapl import (
    UDA,
    Batch,
    FeedbackSettings,
    MetaPseudoLabels,
    MPLSettings,
    OptimSettings,
    PseudoLabel,
    Supervised,
    TeacherLosses,
)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 3))


def _blobs(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, 3, (n,), generator=generator)
    centres = torch.tensor([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    return centres[y] + 0.5 * torch.randn(n, 2, generator=generator), y


def test_readme_snippet_trains_a_users_own_model():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x_test, y_test = _blobs(300, g)
    teacher, student = _net(), _net()
    mpl = MetaPseudoLabels(
        teacher,
        student,
        num_classes=3,
        settings=MPLSettings(FeedbackSettings(mode="hard", h="dot"), TeacherLosses(uda_ramp_steps=50)),
        teacher_optim=OptimSettings(lr=0.05, total_steps=300),
        student_optim=OptimSettings(lr=0.05, total_steps=300),
    )
    for step in range(300):
        x_l, y_l = _blobs(12, g)
        x_u, _ = _blobs(84, g)
        batch = Batch(
            x_l, y_l, x_u + 0.05 * torch.randn(x_u.shape, generator=g), x_u + 0.3 * torch.randn(x_u.shape, generator=g)
        )
        metrics = mpl.step(batch, step)
    assert {"teacher_loss", "student_loss", "h", "baseline"} <= set(metrics)
    model = mpl.eval_model().eval()
    with torch.no_grad():
        predictions = model(x_test).argmax(-1)
    accuracy = (predictions == y_test).float().mean()
    assert accuracy > 0.9


@pytest.mark.parametrize(
    "make",
    [
        lambda: Supervised(_net(), 3),
        lambda: UDA(_net(), 3),
        lambda: PseudoLabel(_net(), _net(), 3, teacher_steps=2),
        lambda: MetaPseudoLabels(_net(), _net(), 3, MPLSettings(FeedbackSettings(mode="soft"))),
        lambda: MetaPseudoLabels(_net(), _net(), 3, MPLSettings(FeedbackSettings(mode="official")), ema_decay=0.9),
    ],
)
def test_state_dict_round_trip_restores_the_same_next_step(make):
    g = torch.Generator().manual_seed(1)
    x_l, y_l = _blobs(6, g)
    x_u, _ = _blobs(12, g)
    batch = Batch(x_l, y_l, x_u, x_u + 0.1)
    a = make()
    for step in range(3):
        a.step(batch, step)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)  # the path a checkpoint takes: to bytes and back, weights_only
    buffer.seek(0)
    b = make()
    b.load_state_dict(torch.load(buffer, weights_only=True))
    torch.manual_seed(5)
    metrics_a = a.step(batch, 3)
    torch.manual_seed(5)
    metrics_b = b.step(batch, 3)
    assert all(float(metrics_a[k]) == float(metrics_b[k]) for k in metrics_a)
    for p, q in zip(a.eval_model().parameters(), b.eval_model().parameters()):
        assert torch.equal(p, q)


def test_invalid_options_are_refused():
    with pytest.raises(ValueError, match="feedback.mode='hrad'"):
        MetaPseudoLabels(_net(), _net(), 3, MPLSettings(FeedbackSettings(mode="hrad")))
    with pytest.raises(ValueError, match="h='dott'"):
        MetaPseudoLabels(_net(), _net(), 3, MPLSettings(FeedbackSettings(h="dott")))
    net = _net()
    with pytest.raises(ValueError, match="two separate modules"):
        MetaPseudoLabels(net, net, 3)


def test_every_name_the_docs_promise_is_importable_from_metapl():
    import metapl

    promised = {"ReducedMetaPseudoLabels", "ReducedTeacher", "ReducedMPLSettings", "load_run", "create_model"}
    promised |= {"METHODS", "DATASETS", "MODELS", "evaluate_run", "predict_run", "export_run", "from_flat"}
    promised |= {"ConfigError", "DataError", "CheckpointError", "TrainingError", "StoredBatch", "TeacherLosses"}
    assert promised <= set(metapl.__all__)
    for name in metapl.__all__:
        assert getattr(metapl, name) is not None, name
