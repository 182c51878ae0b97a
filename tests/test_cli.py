"""The command line: a tiny run writes every output; bad input ends in one line, exit code 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metapl.run.presets import ABOUT, load_preset, preset_names, preset_table

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def metapl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "metapl", *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=300
    )


@pytest.mark.slow
def test_train_writes_config_metrics_tensorboard_and_summary(tmp_path):
    out = tmp_path / "run"
    result = metapl(
        "train",
        "--preset",
        "digits",
        "--set",
        "train.steps=30",
        "--set",
        "train.eval_every=10",
        "--set",
        "train.log_every=5",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["train"]["steps"] == 30 and config["method"]["name"] == "mpl"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["phase"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30]
    for key in ("teacher_loss", "student_loss", "h", "baseline", "teacher_uda_mask", "agreement", "pseudo_label_acc"):
        assert key in train[-1], key
    assert [r["step"] for r in records if r["phase"] == "train_eval"] == [10, 20, 30]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["test_top1_selected"] <= 1.0
    splits = json.loads((out / "splits.json").read_text())
    assert len(splits["labeled"]) == 50 and len(splits["validation"]) == 100
    assert (out / "model.pt").is_file()

    plot = metapl("plot", str(out))
    assert plot.returncode == 0, plot.stderr
    assert (out / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--preset", "digits", "--set", "train.stepz=3"], "did you mean 'train.steps'"),
        (["train", "--preset", "digits", "--set", "train.steps=x"], "must be an integer"),
        (["train", "--preset", "digits", "--set", "data.mu=0"], "data.mu=0 is impossible"),
        (["train", "--preset", "digits", "--set", "data.labeled_per_class=500"], "fewer than the 500 requested"),
        (["train", "--preset", "digits", "--method", "mlp"], "invalid choice: 'mlp'"),
        (["train", "--preset", "digits", "--bogus"], "unrecognized arguments: --bogus"),
        (["fly"], "invalid choice: 'fly'"),
        (["plot", "/nonexistent/run"], "is not a run directory"),
        (["train", "--preset", "digits", "--set", "preset=twomoon"], "choose the preset with --preset"),
        (["train", "--preset", "digits", "--set", "teacher.total_steps=5"], "it is train.steps"),
        (["train", "--preset", "digits", "--set", "train.seed=-1"], "train.seed=-1 is impossible"),
        (["train", "--preset", "twomoon", "--set", "model.name=small_cnn"], "model.name='small_cnn' does not fit"),
        (["train", "--preset", "twomoon", "--set", "data.labeled_per_class=1000"], "0 unlabeled examples"),
        (["train", "--preset", "digits", "--set", "teacher.lr=1e6", "--set", "train.steps=40"], "lower teacher.lr"),
        (["demo", "--steps", "0"], "train.steps=0 is impossible"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, args, fragment):
    result = metapl(*args, "--out", str(tmp_path / "x")) if args[0] in ("train", "demo") else metapl(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_presets_and_config_commands():
    listed = metapl("presets")
    assert listed.returncode == 0
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert sorted(rows) == preset_names()
    assert rows["digits"][1:5] == ["digits", "mlp", "mpl", "4,000"]
    assert "96.11" in " ".join(rows["cifar10_4k"])  # the paper's accuracy, from the preset's about line
    shown = metapl("config", "--preset", "twomoon", "--set", "train.steps=9")
    assert shown.returncode == 0
    assert yaml.safe_load(shown.stdout)["train"]["steps"] == 9


@pytest.mark.slow
def test_unwritable_or_odd_paths_are_one_line(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    for args in (
        ["train", "--preset", "twomoon", "--set", "train.steps=2", "--out", str(a_file)],
        ["train", "--preset", "twomoon", "--set", "train.steps=2", "--out", str(a_file / "run")],
    ):
        result = metapl(*args)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert a_file.read_text() == "not a directory"


@pytest.mark.slow
def test_plot_errors_are_one_line(tmp_path):
    run = tmp_path / "run"
    assert (
        metapl(
            "train", "--preset", "digits", "--set", "train.steps=2", "--out", str(run), "--no-tensorboard"
        ).returncode
        == 0
    )
    for args, fragment in (
        (["plot", str(run), "--kind", "regions"], "needs runs on 2-D data"),
        (["plot", str(run), "--out", str(tmp_path / "missing" / "x.png")], "No such file or directory"),
    ):
        result = metapl(*args)
        assert result.returncode == 2 and fragment in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    (run / "metrics.jsonl").unlink()
    result = metapl("plot", str(run))
    assert result.returncode == 2 and "no metrics.jsonl" in result.stderr


def test_every_preset_says_what_it_is_and_its_about_line_is_no_config_key():
    for row in preset_table():
        assert row["about"] and row["data"] and row["model"] and row["steps"].isdigit(), row
        assert ABOUT not in load_preset(row["preset"])


@pytest.mark.slow
def test_a_reader_that_closes_the_pipe_early_gets_no_error_line():
    """metapl presets | head -1: the rest of the table has nobody to go to, which is no error."""
    import subprocess
    import sys

    read, write = os.pipe()
    os.close(read)  # the reader is gone before metapl writes a line
    result = subprocess.run(
        [sys.executable, "-m", "metapl", "presets"], stdout=write, stderr=subprocess.PIPE, text=True
    )
    os.close(write)
    assert result.returncode == 0 and result.stderr == ""
