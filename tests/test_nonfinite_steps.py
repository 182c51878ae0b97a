"""A non-finite step: stopped at once by default; with train.nonfinite=skip undone exactly (weights, momentum),
counted in metrics and summary, and a run that keeps diverging stops after the bound with a finite checkpoint."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import ClassVar

import pytest
import torch
from torch import nn

from metapl import Batch
from metapl.core.errors import TrainingError
from metapl.core.optim import OptimSettings
from metapl.parts.methods import Supervised
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment
from metapl.run.loop import fit


def _batches(xs: list[torch.Tensor]):
    y = torch.tensor([0, 1, 0, 1])
    return iter([Batch(x, y) for x in xs])


def _supervised() -> Supervised:
    torch.manual_seed(0)
    settings = OptimSettings(lr=0.1, momentum=0.9, schedule="constant", total_steps=10)
    return Supervised(nn.Linear(3, 2), 2, optim=settings)


def _no_eval(method) -> dict[str, float]:
    return {}


def test_skip_undoes_a_nonfinite_step_exactly():
    torch.manual_seed(1)
    good = [torch.randn(4, 3) for _ in range(3)]
    bad = torch.full((4, 3), math.nan)
    reference = _supervised()
    fit(reference, _batches(good), 3, evaluate=_no_eval, progress=False)
    skipping = _supervised()
    result = fit(
        skipping, _batches([good[0], good[1], bad, good[2]]), 4, evaluate=_no_eval, progress=False, nonfinite="skip"
    )
    assert result.skipped_steps == 1 and result.skipped_in_a_row == 0
    # Parameters and the momentum buffers are those of a run that never saw the bad batch.
    for (key, want), (_, got) in zip(reference.state_dict()["model"].items(), skipping.state_dict()["model"].items()):
        assert torch.equal(want, got), key
    momentum = [s["momentum_buffer"] for s in skipping.updater.optimizer.state.values()]
    expected = [s["momentum_buffer"] for s in reference.updater.optimizer.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected))


class _Counter:
    """A method with one parameter that each step adds 1 to; its metrics are scripted per step."""

    uses_unlabeled: ClassVar[bool] = False
    finetunes: ClassVar[bool] = False

    def __init__(self, metrics):
        self.value = torch.zeros(())
        self.metrics = metrics

    def step(self, batch, step):
        self.value += 1
        return self.metrics(step)

    def networks(self) -> dict[str, nn.Module]:
        return {}

    def eval_model(self):
        return nn.Identity()

    def reported_networks(self) -> dict[str, nn.Module]:
        return {}

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value.copy_(state["value"])


def test_skip_also_undoes_a_step_whose_gradient_alone_is_not_finite():
    method = _Counter(lambda step: {"loss": torch.tensor(1.0), "grad_norm": torch.tensor(math.inf if step == 1 else 1)})
    result = fit(method, _batches([torch.zeros(4, 3)] * 3), 3, evaluate=_no_eval, progress=False, nonfinite="skip")
    assert method.value.item() == 2 and result.skipped_steps == 1


def test_too_many_skipped_steps_in_a_row_stop_the_run():
    method = _Counter(lambda step: {"loss": torch.tensor(math.nan if step >= 2 else 1.0)})
    with pytest.raises(TrainingError, match=r"loss was nan at step 6, after 3 skipped steps in a row .*=3\)"):
        fit(
            method,
            _batches([torch.zeros(4, 3)] * 10),
            10,
            evaluate=_no_eval,
            progress=False,
            nonfinite="skip",
            max_skipped_in_a_row=3,
        )
    assert method.value.item() == 2  # the state before the first bad step


def _poison(monkeypatch, steps: set[int]) -> None:
    """Feed NaN inputs to the supervised method at the given steps."""
    original = Supervised.step

    def step(self, batch, step):
        if step in steps:
            batch = dataclasses.replace(batch, x_l=torch.full_like(batch.x_l, math.nan))
        return original(self, batch, step)

    monkeypatch.setattr(Supervised, "step", step)


def test_skipped_steps_are_counted_in_metrics_and_summary(monkeypatch, tmp_path):
    _poison(monkeypatch, {3, 5})
    settings = ["train.steps=8", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=2"]
    cfg = build_config("digits", [*settings, "train.nonfinite=skip"], "supervised")
    summary = run_experiment(cfg, tmp_path / "skip", progress=False, tensorboard=False)
    assert summary["train_skipped_steps"] == 2
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["train_skipped_steps"] == 2
    records = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if r["phase"] == "train"] == [0, 0, 0, 1, 1, 2, 2, 2]
    weights = torch.load(tmp_path / "skip" / "model.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    # The default stops at the first non-finite loss instead.
    with pytest.raises(TrainingError, match="loss became nan at step 4"):
        run_experiment(build_config("digits", settings, "supervised"), tmp_path / "stop", False, False)


def test_a_diverging_mpl_run_with_skip_stops_after_the_bound_with_a_finite_checkpoint(tmp_path):
    settings = ["teacher.lr=1e4", "student.lr=1e4", "train.steps=200", "train.checkpoint_every=1"]
    settings += ["train.log_every=1", "method.sampling=argmax", "train.nonfinite=skip", "train.max_skipped_in_a_row=5"]
    with pytest.raises(TrainingError, match=r"after 5 skipped steps in a row"):
        run_experiment(build_config("digits", settings, "mpl"), tmp_path, progress=False, tensorboard=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["results"]["train"]["skipped_steps"] == saved["results"]["train"]["skipped_in_a_row"] == 5
    states = [saved["method"][net] for net in ("teacher", "student")] + [saved["method"]["ema"]]
    assert all(torch.isfinite(t).all() for state in states for t in _tensors(state) if t.is_floating_point())


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)
