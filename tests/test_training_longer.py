"""A finished run trained longer: train.steps raised on the same --out continues it; short runs are warned about
their wait and warm-up; the folder_small preset trains on a folder of small images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import cli, one_line_error
from PIL import Image

from metapl.core.errors import ConfigError
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment
from metapl.run.short_runs import short_run_warning

SMALL = ["model.hidden=[16]", "train.eval_every=10", "train.checkpoint_every=0"]


def _train(out, steps, method="supervised", *extra):
    lines: list[str] = []
    cfg = build_config("digits", [*SMALL, f"train.steps={steps}", *extra], method)
    summary = run_experiment(cfg, out, progress=False, tensorboard=False, announce=lines.append)
    return summary, [line for line in lines if not line.startswith("metapl: warning:")]  # short runs, on purpose


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_raised_train_steps_continues_a_finished_run(tmp_path):
    out = tmp_path / "run"
    _train(out, 20)
    before = _records(out)
    summary, lines = _train(out, 40)
    assert lines == [f"continuing the run in {out} (train.steps=20) from step 20 to train.steps=40"]
    assert summary["train_steps"] == 40 and summary["resumed_from_step"] == 20
    after = _records(out)
    assert after[: len(before)] == before  # the first 20 steps are kept, not trained again
    steps = [r["step"] for r in after if r["phase"] == "train_eval"]
    assert steps == [10, 20, 30, 40]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["steps"] == 40
    _, lines = _train(out, 40)  # the same config again: resumed at its end, nothing more to do
    assert lines == [f"resuming the run in {out} from its checkpoint at step 40"]


def test_finetuning_runs_again_after_the_longer_training(tmp_path):
    out = tmp_path / "run"
    _train(out, 20, "mpl", "finetune.steps=5")
    summary, lines = _train(out, 30, "mpl", "finetune.steps=5")
    assert lines[0].endswith("from step 20 to train.steps=30, then finetuning again")
    assert summary["train_steps"] == 30 and summary["finetune_steps"] == 5
    records = _records(out)
    finetune = [r["step"] for r in records if r["phase"] == "finetune_eval"]
    assert finetune == [35]  # the old finetuning (steps 21-25) is gone; the new one follows the 30 steps
    train = [r["step"] for r in records if r["phase"] == "train_eval"]
    assert train == [10, 20, 30]


@pytest.mark.parametrize(
    "change, fragment",
    [
        (["train.steps=10"], "train.steps=20, not 10"),  # fewer steps: another run
        (["train.steps=40", "student.lr=0.2"], "student.lr=0.05, not 0.2"),  # longer and something else
    ],
)
def test_only_a_raised_train_steps_continues(tmp_path, change, fragment):
    out = tmp_path / "run"
    _train(out, 20)
    cfg = build_config("digits", [*SMALL, "train.steps=20", *change], "supervised")
    with pytest.raises(ConfigError, match=fragment):
        run_experiment(cfg, out, progress=False, tensorboard=False)


def test_pseudo_label_and_a_run_without_its_checkpoint_are_refused(tmp_path):
    out = tmp_path / "pl"
    _train(out, 20, "pseudo_label")
    with pytest.raises(ConfigError, match="method.name=pseudo_label cannot continue to train.steps=40"):
        _train(out, 40, "pseudo_label")
    out = tmp_path / "moved"
    _train(out, 20)
    (out / "checkpoint.pt").rename(tmp_path / "elsewhere.pt")
    with pytest.raises(ConfigError, match="holds no checkpoint.pt to continue from to train.steps=40"):
        _train(out, 40)


def test_short_runs_are_warned_with_the_values_scaled(capsys, tmp_path):
    assert short_run_warning(build_config("digits")) is None  # the preset's own length
    assert short_run_warning(build_config("folder_small")) is None
    warning = short_run_warning(build_config("digits", ["train.steps=200"]))
    assert warning is not None and "student.warmup_steps=100" in warning
    assert "--set student.warmup_steps=5 --set teacher.warmup_steps=5 --set method.uda_ramp_steps=25" in warning
    short = ["train", "--preset", "digits", "--no-progress", "--no-tensorboard", "--set", "train.steps=4"]
    code, lines, out = cli(capsys, *short, "--set", "model.hidden=[8]", "--out", tmp_path / "r")
    assert code == 0 and lines == [], lines  # stderr stays for errors
    assert out.splitlines()[0].startswith("metapl: warning: train.steps=4 is short for student.warmup_steps=100")
    line = one_line_error(capsys, *short, "--set", "data.mu=0", "--out", tmp_path / "s")
    assert line.startswith("metapl: error: data.mu=0")  # a refused run: the error alone


def _image_folder(root, classes=3, per_class=12, side=20):
    rng = np.random.default_rng(0)
    colours = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]
    for k in range(classes):
        (root / f"class_{k}").mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colours[k]) + rng.normal(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{k}" / f"{i}.png")


@pytest.mark.slow
def test_folder_small_trains_on_a_folder_of_class_folders(capsys, tmp_path):
    """The CPU-sized own-images preset end to end: a generated folder of 3 colour classes, shortened."""
    torch.set_num_threads(1)
    _image_folder(tmp_path / "photos")
    out = tmp_path / "run"
    settings = [
        "data.root=" + str(tmp_path / "photos"),
        "data.val_per_class=2",
        "data.batch_size=8",
        "train.steps=60",
        "student.wait_steps=0",
        "student.warmup_steps=5",
        "teacher.warmup_steps=5",
        "method.uda_ramp_steps=15",
        "train.eval_every=30",
    ]
    code, lines, stdout = cli(
        capsys,
        "train",
        "--preset",
        "folder_small",
        "--no-progress",
        "--no-tensorboard",
        *(a for s in settings for a in ("--set", s)),
        "--out",
        out,
    )
    assert code == 0 and lines == [], lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_steps"] == 60 and summary["train_best_val_top1"] >= 0.5  # 3 classes: chance is 1/3
    assert json.loads((out / "classes.json").read_text())["names"] == ["class_0", "class_1", "class_2"]
