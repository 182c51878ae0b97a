"""A run's damaged files (weights, checkpoint, split file, classes.json): one line naming the file and the fix,
nothing of the run changed, and no pickled code ever runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import DIGITS_TRAIN, cli, one_line_error, snapshot, succeeds


# ------------------------------------------------------------------------------ weights of a run
class RunsCode:
    """Pickles as a call to open(marker, 'w'): loading it unsafely would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _damage(path: Path, how: str, marker: Path) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif how == "pickled code":
        torch.save({"weight": RunsCode(marker)}, path)
    elif how == "architecture":  # a small CNN's weights where the config builds an MLP
        from metapl.parts.models import create_model

        torch.save(create_model("small_cnn", 10, (1, 8, 8)).state_dict(), path)
    elif how == "classes":  # the network of a 3-class dataset
        state = torch.load(path, weights_only=True)
        for key in [k for k in state if k.endswith(("weight", "bias"))][-2:]:
            state[key] = state[key][:3]
        torch.save(state, path)


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
@pytest.mark.parametrize(
    "how, fragment",
    [
        ("missing", "the run's training has not finished; run the same metapl train command again"),
        ("truncated", "model.pt: it is truncated or not a checkpoint"),
        ("garbage", "model.pt: it is truncated or not a checkpoint"),
        ("pickled code", "model.pt holds pickled Python objects (io.open), not only tensors, and was refused unread"),
        ("architecture", "does not fit the model of"),
        ("classes", "where the model needs (10, 256)"),
    ],
)
def test_bad_weights_file_is_named_with_the_fix(capsys, digits_run_copy, tmp_path, command, how, fragment):
    marker = tmp_path / "code-ran"
    _damage(digits_run_copy / "model.pt", how, marker)
    image_rows = tmp_path / "rows.csv"
    image_rows.write_text(",".join(["0.5"] * 64) + "\n")
    args = {
        "eval": ["eval", digits_run_copy],
        "predict": ["predict", digits_run_copy, image_rows, "--out", tmp_path / "p.csv"],
        "export": ["export", digits_run_copy, "--format", "safetensors", "--out", tmp_path / "m.safetensors"],
    }[command]
    before = snapshot(digits_run_copy)
    line = one_line_error(capsys, *args)
    assert fragment in line
    assert str(digits_run_copy / "model.pt") in line or how == "missing"
    assert not marker.exists(), "the pickled code ran"
    assert snapshot(digits_run_copy) == before
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.safetensors").exists()


@pytest.mark.slow
def test_pickled_code_is_refused_by_a_process_without_running(digits_run_copy, tmp_path):
    marker = tmp_path / "code-ran"
    _damage(digits_run_copy / "model.pt", "pickled code", marker)
    result = subprocess.run(
        [sys.executable, "-m", "metapl", "eval", str(digits_run_copy)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "refused unread" in line and "pass a run whose weights are intact, or train this one again" in line
    assert not marker.exists()


# -------------------------------------------------------------------------------------- resuming
def _damage_checkpoint(path: Path, how: str, marker: Path) -> None:
    if how in ("truncated", "garbage", "pickled code"):
        _damage(path, how, marker)
        return
    state = torch.load(path, weights_only=True)
    if how == "not metapl's":
        state = state["method"]["student"]
    elif how == "architecture":
        from metapl.parts.models import create_model

        for net in ("teacher", "student"):
            state["method"][net] = create_model("small_cnn", 10, (1, 8, 8)).state_dict()
    elif how == "classes":
        for net in ("teacher", "student"):
            weights = state["method"][net]
            for key in [k for k in weights if k.endswith(("weight", "bias"))][-2:]:
                weights[key] = weights[key][:3]
    elif how == "no optimizer":
        del state["method"]["teacher_optimizer"]
    torch.save(state, path)


@pytest.mark.parametrize(
    "how, fragment",
    [
        ("truncated", "checkpoint.pt: it is truncated or not a checkpoint"),
        ("garbage", "checkpoint.pt: it is truncated or not a checkpoint"),
        ("pickled code", "checkpoint.pt holds pickled Python objects"),
        ("not metapl's", "checkpoint.pt is not a checkpoint written by metapl train"),
        ("architecture", "checkpoint.pt does not fit the models of"),
        ("classes", "size mismatch for"),
        ("no optimizer", "it lacks the entry 'teacher_optimizer'"),
    ],
)
def test_resume_from_a_bad_checkpoint_is_refused_and_destroys_nothing(capsys, digits_run_copy, tmp_path, how, fragment):
    marker = tmp_path / "code-ran"
    _damage_checkpoint(digits_run_copy / "checkpoint.pt", how, marker)
    before = snapshot(digits_run_copy)
    line = one_line_error(capsys, *DIGITS_TRAIN, "--out", digits_run_copy)
    assert fragment in line
    assert f"move {digits_run_copy / 'checkpoint.pt'} away to train this run from step 0, or add --restart" in line
    assert line.endswith("or pass another --out")
    assert not marker.exists(), "the pickled code ran"
    assert snapshot(digits_run_copy) == before


def test_moving_a_bad_checkpoint_away_starts_the_run_over_with_clean_logs(capsys, digits_run_copy):
    (digits_run_copy / "checkpoint.pt").write_bytes(b"garbage")
    one_line_error(capsys, *DIGITS_TRAIN, "--out", digits_run_copy)
    (digits_run_copy / "checkpoint.pt").rename(digits_run_copy / "broken-checkpoint.pt")
    code, lines, _ = cli(capsys, *DIGITS_TRAIN, "--out", digits_run_copy)
    assert code == 0, lines
    steps = [json.loads(line)["step"] for line in (digits_run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 2, 4, 4]  # train and train_eval records once each: the first attempt's were dropped
    assert (digits_run_copy / "broken-checkpoint.pt").read_bytes() == b"garbage"


def test_a_refused_resume_prints_no_resuming_line(capsys, digits_run_copy):
    (digits_run_copy / "checkpoint.pt").write_bytes(b"garbage")
    code, lines, out = cli(capsys, *DIGITS_TRAIN, "--out", digits_run_copy)
    assert code == 2 and "resuming" not in out


# ----------------------------------------------------------------------- split and classes files
def test_a_runs_own_split_file_of_the_wrong_shape_is_one_line_for_eval(capsys, digits_run_copy):
    (digits_run_copy / "splits.json").write_text('{"labeled": [0, 2.5], "unlabeled": [1], "validation": []}')
    assert "labeled[1] is 2.5, not an integer index" in one_line_error(capsys, "eval", digits_run_copy)


def test_old_split_files_without_a_fingerprint_still_load(capsys, digits_run_copy, tmp_path):
    saved = json.loads((digits_run_copy / "splits.json").read_text())
    del saved["source"]
    (digits_run_copy / "splits.json").write_text(json.dumps(saved))
    (digits_run_copy / "classes.json").unlink()  # and a run from before classes.json
    succeeds(capsys, "eval", digits_run_copy)
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    succeeds(capsys, "predict", digits_run_copy, rows, "--out", tmp_path / "p.csv")
    succeeds(capsys, *DIGITS_TRAIN, "--out", digits_run_copy)  # resumes from its checkpoint


def test_a_damaged_classes_json_is_one_line(capsys, digits_run_copy, tmp_path):
    (digits_run_copy / "classes.json").write_text('{"names": ["only one"]}')
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    line = one_line_error(capsys, "predict", digits_run_copy, rows, "--out", tmp_path / "p.csv")
    assert "classes.json does not hold the names of the run's 10 classes" in line
