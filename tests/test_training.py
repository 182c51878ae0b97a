"""The loop on real small data: each method's loss falls and its test accuracy rises; runs are reproducible."""

from __future__ import annotations

import pytest
import torch

from metapl.parts.data import build_data
from metapl.parts.data.loaders import BatchStream
from metapl.run.build import build_method, seed_everything
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment
from metapl.run.logger import read_metrics
from metapl.run.scoring import make_evaluator

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them


def _train(method: str, steps: int, *overrides: str):
    cfg = build_config("digits", [f"train.steps={steps}", "train.eval_every=0", *overrides], method)
    seed_everything(0)
    data = build_data(cfg.data, 0)
    m = build_method(cfg, data, torch.device("cpu"))
    stream = BatchStream(data, cfg.data.batch_size, cfg.data.mu, 0, labeled_only=method == "supervised")
    evaluator = make_evaluator(data, 1024)
    before = evaluator(m)["test_top1"]
    losses = [m.step(next(stream), step) for step in range(steps)]
    return m, before, evaluator(m), losses


@pytest.mark.parametrize(
    "method, loss_key, overrides",
    [
        ("supervised", "loss", ()),
        ("uda", "sup_loss", ()),
        ("pseudo_label", "student_loss", ()),
        ("mpl", "student_loss", ()),
        ("mpl", "student_loss", ("method.feedback=soft",)),
        ("mpl", "student_loss", ("method.h=taylor",)),
    ],
)
def test_each_method_learns_digits(method, loss_key, overrides):
    steps = 300
    m, before, after, metrics = _train(method, steps, *overrides)
    assert before < 0.3  # an untrained network is near chance (10 classes)
    assert after["test_top1"] > (0.7 if method == "supervised" else 0.45), after  # chance is 0.1
    losses = [float(x[loss_key]) for x in metrics if loss_key in x]
    assert sum(losses[-20:]) / 20 < 0.9 * sum(losses[:20]) / 20, (method, losses[:3], losses[-3:])


def test_mpl_reports_every_diagnostic():
    _, _, scores, metrics = _train("mpl", 3)
    for key in (
        "teacher_loss",
        "student_loss",
        "h",
        "baseline",
        "teacher_uda_mask",
        "agreement",
        "pseudo_label_acc",
        "teacher_sup_loss",
        "teacher_uda_loss",
        "lr_teacher",
        "lr_student",
    ):
        assert key in metrics[-1], key
    assert "teacher_test_top1" in scores and "val_top1" in scores


def test_same_seed_same_run():
    a = _train("mpl", 5)[3]
    b = _train("mpl", 5)[3]
    assert [float(x["teacher_loss"]) for x in a] == [float(x["teacher_loss"]) for x in b]


def test_validation_selects_and_test_is_only_reported(tmp_path):
    cfg = build_config("digits", ["train.steps=60", "train.eval_every=10"], "supervised")
    summary = run_experiment(cfg, tmp_path, progress=False, tensorboard=False)
    evals = [r for r in read_metrics(tmp_path) if r["phase"] == "train_eval"]
    best_val = max(r["val_top1"] for r in evals)
    chosen = next(r for r in evals if r["val_top1"] == best_val)  # the first evaluation with the best val score
    assert summary["train_best_step"] == chosen["step"]
    assert summary["test_top1_selected"] == chosen["test_top1"]
    assert summary["test_top1"] == evals[-1]["test_top1"]


def test_finetune_phase_runs_after_mpl(tmp_path):
    cfg = build_config(
        "digits", ["train.steps=20", "finetune.steps=10", "finetune.lr=0.01", "train.eval_every=0"], "mpl"
    )
    summary = run_experiment(cfg, tmp_path, progress=False, tensorboard=False)
    assert summary["finetune_steps"] == 10
    assert "finetune_final_test_top1" in summary


def test_no_validation_split_means_best_is_last(tmp_path):
    """Without a validation split nothing may select on the test set."""
    cfg = build_config("twomoon", ["train.steps=30", "train.eval_every=10"], "supervised")
    summary = run_experiment(cfg, tmp_path, progress=False, tensorboard=False)
    assert summary["train_best_step"] == 30


def test_finetuning_starts_from_the_evaluated_student_and_moves_it():
    cfg = build_config("digits", ["train.steps=20", "train.eval_every=0", "train.ema_decay=0.9"], "mpl")
    seed_everything(0)
    data = build_data(cfg.data, 0)
    method = build_method(cfg, data, torch.device("cpu"))
    stream = BatchStream(data, cfg.data.batch_size, cfg.data.mu, 0)
    for step in range(20):
        method.step(next(stream), step)
    from metapl import finetuner
    from metapl.core.optim import OptimSettings

    tuner = finetuner(method.eval_model(), data.num_classes, OptimSettings(lr=0.05, schedule="constant", total_steps=5))
    start = {k: v.clone() for k, v in tuner.model.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in method.eval_model().state_dict().items())  # the EMA student
    labeled = BatchStream(data, 50, 1, 0, labeled_only=True)
    for step in range(5):
        tuner.step(next(labeled), step)
    assert any(not torch.equal(start[k], v) for k, v in tuner.model.state_dict().items())
    assert all(torch.equal(start[k], v) for k, v in method.eval_model().state_dict().items())  # a copy was tuned


def test_pseudo_label_selection_never_picks_the_teacher(tmp_path):
    cfg = build_config("digits", ["train.steps=60", "train.eval_every=10"], "pseudo_label")
    summary = run_experiment(cfg, tmp_path, progress=False, tensorboard=False)
    evals = [r for r in read_metrics(tmp_path) if r["phase"] == "train_eval"]
    assert all("teacher_test_top1" in r for r in evals)  # the teacher is reported beside the student
    assert summary["test_top1_selected"] in [r["test_top1"] for r in evals]
    assert summary["train_best_step"] > 30  # the first 30 steps train only the teacher (teacher_fraction 0.5)
