"""metapl eval | predict | export on a tiny run: the evaluator's numbers again, predictions on PNGs, folders and CSVs,
exports that reproduce the model, and bad input ending in one line, exit code 2, no traceback."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error
from PIL import Image

from metapl.commands.evaluate import evaluate_run
from metapl.commands.export import export_run
from metapl.commands.finished_run import load_run
from metapl.commands.predict import predict_run
from metapl.commands.predict_inputs import load_image
from metapl.core.errors import CheckpointError
from metapl.parts.data import build_data
from metapl.run.build import build_model
from metapl.run.config import build_config, load_config_file
from metapl.run.experiment import run_experiment
from metapl.run.scoring import make_evaluator, predict_proba

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def metapl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metapl", *args], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 30-step MPL run on digits (EMA student, 10 validation images per class): every file eval needs."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("inference") / "run"
    cfg = build_config("digits", ["train.steps=30", "train.eval_every=10", "train.log_every=10"])
    run_experiment(cfg, out, progress=False, tensorboard=False)
    return out


def _model_and_data(run: Path, weights: str = "model.pt"):
    """The run's model rebuilt the way training built it (split re-drawn from the seed), outside metapl.inference."""
    cfg = load_config_file(run / "config.yaml")
    data = build_data(cfg.data, cfg.train.seed)
    model = build_model(cfg, data)
    model.load_state_dict(torch.load(run / weights, weights_only=True))
    return model.eval(), data, cfg


def _png(path: Path, image: np.ndarray) -> Path:
    """Save an (H, W) or (H, W, C) array in [0, 1] as an 8-bit PNG."""
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)
    return path


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return list(rows[0]), rows


def _check_prediction_rows(rows: list[dict], num_classes: int) -> torch.Tensor:
    proba = torch.tensor([[float(r[f"prob_{k}"]) for k in range(num_classes)] for r in rows])
    assert torch.allclose(proba.sum(1), torch.ones(len(rows)), atol=1e-5)
    assert [int(r["class"]) for r in rows] == proba.argmax(1).tolist()
    return proba


# ---------------------------------------------------------------------------------------------- eval
def test_eval_gives_the_evaluators_numbers_and_writes_eval_json(run):
    model, data, cfg = _model_and_data(run)
    expected = make_evaluator(data, cfg.train.eval_batch_size)(
        # A stand-in with only the two methods the evaluator calls, not a whole Method.
        SimpleNamespace(eval_model=lambda: model, reported_networks=dict)  # type: ignore[arg-type]
    )
    result = evaluate_run(run)
    for key, value in expected.items():
        assert result[key] == value, key
    assert {"val_top1", "val_top5", "val_loss", "test_top1", "test_top5", "test_loss"} <= set(result)
    assert json.loads((run / "eval.json").read_text()) == result

    # The same numbers the run logged at its end, for the final and the best-on-validation weights.
    summary = json.loads((run / "summary.json").read_text())
    last_eval = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last_eval["phase"] == "train_eval"
    for key in ("val_top1", "val_top5", "test_top1", "test_top5"):
        assert result[key] == last_eval[key] == summary[f"train_final_{key}"], key
    for key in ("val_loss", "test_loss"):
        assert result[key] == pytest.approx(last_eval[key], rel=1e-6), key
    assert evaluate_run(run, "best", batch_size=7)["test_top1"] == summary["test_top1_selected"]


@pytest.mark.slow
def test_eval_command_prints_a_table(run):
    result = metapl("eval", str(run), "--batch-size", "64")
    assert result.returncode == 0, result.stderr
    header, val, test = result.stdout.splitlines()[1:4]
    assert header.split() == ["split", "examples", "top1", "top5", "loss"]
    assert val.split()[:2] == ["val", "100"] and test.split()[:2] == ["test", "500"]
    assert json.loads((run / "eval.json").read_text())["batch_size"] == 64


# ---------------------------------------------------------------------------------------------- predict
def test_load_image_converts_resizes_scales_and_inverts(tmp_path):
    ink = np.zeros((8, 8))
    ink[2:6, 3] = 1.0
    grey = _png(tmp_path / "grey.png", ink)
    assert torch.allclose(load_image(grey, (1, 8, 8))[0], torch.from_numpy(ink).float(), atol=1 / 255)
    assert torch.allclose(load_image(grey, (1, 8, 8), invert=True)[0], 1 - torch.from_numpy(ink).float(), atol=1 / 255)
    big_rgb = _png(tmp_path / "rgb.png", np.ones((40, 30, 3)) * 0.5)
    assert load_image(big_rgb, (1, 8, 8)).shape == (1, 8, 8)
    assert load_image(big_rgb, (3, 5, 7)).shape == (3, 5, 7)
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert torch.equal(load_image(tmp_path / "clear.png", (1, 8, 8)), torch.ones(1, 8, 8))  # transparent is paper


def test_predict_png_folder_and_csv_of_paths(run, tmp_path):
    model, data, _ = _model_and_data(run)
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(4):  # dark ink on white, as scanned: --invert turns them into digits' ink-high convention
        _png(folder / f"digit{i}.png", 1 - data.x_test[i, 0].numpy())
    (folder / "notes.txt").write_text("not an image")

    out, count = predict_run(run, folder / "digit0.png", tmp_path / "one.csv", invert=True)
    columns, rows = _read_csv(out)
    assert count == 1 and columns == ["input", "class", *(f"prob_{k}" for k in range(10))]
    expected = predict_proba(model, load_image(folder / "digit0.png", (1, 8, 8), invert=True)[None])
    assert torch.allclose(_check_prediction_rows(rows, 10), expected, atol=1e-6)

    out, count = predict_run(run, folder, invert=True)
    assert out == run / "predictions.csv" and count == 4
    _, folder_rows = _read_csv(out)
    assert [Path(r["input"]).name for r in folder_rows] == [f"digit{i}.png" for i in range(4)]
    folder_proba = _check_prediction_rows(folder_rows, 10)
    assert torch.allclose(folder_proba[0], expected[0], atol=1e-6)

    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"scans/digit{i}.png\n" for i in (2, 0)))
    out, count = predict_run(run, listing, tmp_path / "from_paths.csv", invert=True)
    _, rows = _read_csv(out)
    assert count == 2 and [r["input"] for r in rows] == ["scans/digit2.png", "scans/digit0.png"]
    assert torch.allclose(_check_prediction_rows(rows, 10), folder_proba[[2, 0]], atol=1e-6)


def test_predict_csv_of_test_values_gives_the_models_classes(run, tmp_path):
    model, data, _ = _model_and_data(run)
    x = data.x_test[:50]
    values = tmp_path / "values.csv"
    values.write_text("\n".join(",".join(repr(v) for v in row) for row in x.flatten(1).tolist()) + "\n")
    out, count = predict_run(run, values, tmp_path / "pred.csv")
    _, rows = _read_csv(out)
    assert count == 50 and rows[0]["input"] == "values.csv:1"
    _check_prediction_rows(rows, 10)
    assert [int(r["class"]) for r in rows] == predict_proba(model, x).argmax(1).tolist()


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.slow
def test_export_safetensors_and_onnx_reproduce_the_model(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    model, data, cfg = _model_and_data(run)
    x = data.x_test[100:103]  # a batch size the export never saw: the batch dimension must be dynamic

    result = metapl("export", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "max abs difference to PyTorch 0" in result.stdout
    fresh = build_model(cfg, data)
    fresh.load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert torch.equal(fresh.eval()(x), model(x))
    with safe_open(tmp_path / "m.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert metadata["num_classes"] == "10" and json.loads(metadata["input_shape"]) == [1, 8, 8]

    import onnx
    import onnxruntime

    exported = export_run(run, "onnx")
    assert exported.path == run / "model.onnx" and exported.max_abs_diff <= 1e-4
    onnx.checker.check_model(str(exported.path))
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert np.abs(logits - model(x).detach().numpy()).max() <= 1e-4
    assert not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------- bad input
def _broken_run(run: Path, tmp_path: Path, damage: str) -> Path:
    copy = tmp_path / "broken"
    copy.mkdir()
    for name in ("config.yaml", "splits.json", "model.pt"):
        shutil.copy(run / name, copy / name)
    if damage == "truncated":
        data = (copy / "model.pt").read_bytes()
        (copy / "model.pt").write_bytes(data[: len(data) // 2])
    elif damage == "classes":  # the same network with a 3-class head, as another dataset's run would have
        state = torch.load(copy / "model.pt", weights_only=True)
        head = [k for k in state if k.endswith(".weight")][-1]
        state[head], state[head.replace("weight", "bias")] = state[head][:3], state[head.replace("weight", "bias")][:3]
        torch.save(state, copy / "model.pt")
    return copy


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing run", "no run directory at"),
        ("truncated", "model.pt"),
        ("classes", "has shape (3, 256) where the model needs (10, 256)"),
        ("csv count", "row 2 of"),
    ],
)
def test_bad_input_is_one_line_exit_2_no_traceback(run, tmp_path, case, fragment):
    if case == "missing run":
        result = metapl("eval", str(tmp_path / "nope"))
    elif case == "csv count":
        bad = tmp_path / "bad.csv"
        bad.write_text(",".join(["0.5"] * 64) + "\n" + ",".join(["0.5"] * 63) + "\n")
        result = metapl("predict", str(run), str(bad), "--out", str(tmp_path / "p.csv"))
        assert not (tmp_path / "p.csv").exists()
    else:
        broken = _broken_run(run, tmp_path, case)
        result = metapl("eval", str(broken))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0] and lines[0].startswith("metapl: error: ")
    assert "Traceback" not in result.stderr


def test_load_run_reports_missing_best_weights(run, tmp_path):
    broken = _broken_run(run, tmp_path, "none")
    with pytest.raises(CheckpointError, match="use --weights final"):
        load_run(broken, "best")


# ---------------------------------------------------------------------------------------------- the teacher
def _copy_run(run: Path, to: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(run, to)
    for name in drop:
        (to / name).unlink()
    return to


def test_the_teacher_is_in_the_summary_eval_predict_and_export(run, tmp_path):
    import onnx

    summary = json.loads((run / "summary.json").read_text())
    assert summary["teacher_test_top1"] == summary["train_final_teacher_test_top1"]
    assert summary["teacher_test_top1"] != summary["test_top1"]  # a 30-step teacher is not its EMA student
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r["phase"] == "train_eval"]
    best = max(evaluations, key=lambda r: (r["teacher_val_top1"], -r["teacher_val_loss"]))  # the teacher's own pick
    assert summary["teacher_test_top1_selected"] == best["teacher_test_top1"]

    teacher = evaluate_run(run, network="teacher")
    assert teacher["network"] == "teacher" and teacher["weights_file"] == "teacher_model.pt"
    assert teacher["test_top1"] == summary["teacher_test_top1"]
    assert teacher["val_top1"] == summary["train_final_teacher_val_top1"]
    assert json.loads((run / "teacher_eval.json").read_text())["test_top1"] == teacher["test_top1"]

    values = tmp_path / "values.csv"
    _, data, _ = _model_and_data(run)
    values.write_text("\n".join(",".join(repr(v) for v in row) for row in data.x_test[:20].flatten(1).tolist()))
    out, _ = predict_run(run, values, network="teacher")
    assert out == run / "teacher_predictions.csv"
    student_out, _ = predict_run(run, values, tmp_path / "student.csv")
    teacher_proba = _check_prediction_rows(_read_csv(out)[1], 10)
    assert not torch.allclose(teacher_proba, _check_prediction_rows(_read_csv(student_out)[1], 10), atol=1e-3)

    exported = export_run(run, "onnx", network="teacher")
    assert exported.path == run / "teacher_model.onnx" and exported.max_abs_diff <= 1e-4
    metadata = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert metadata["network"] == "teacher" and metadata["weights"] == "teacher_model.pt"


def test_a_run_from_before_teacher_model_pt_takes_its_teacher_from_the_checkpoint(run, tmp_path, capsys):
    old = _copy_run(run, tmp_path / "old", drop=("teacher_model.pt",))
    from_checkpoint = evaluate_run(old, network="teacher")
    assert from_checkpoint["weights_file"] == "checkpoint.pt"
    assert from_checkpoint["test_top1"] == evaluate_run(run, network="teacher")["test_top1"]
    (old / "checkpoint.pt").unlink()
    line = one_line_error(capsys, "eval", old, "--network", "teacher")
    assert "predates teacher_model.pt" in line and "--restart" in line
    assert "best" in one_line_error(capsys, "predict", run, old, "--network", "teacher", "--weights", "best")


def test_network_teacher_is_refused_for_methods_without_an_image_teacher(tmp_path, capsys):
    cfg = build_config("digits", ["train.steps=4", "train.eval_every=0"], "supervised")
    run_experiment(cfg, tmp_path / "sup", progress=False, tensorboard=False)
    assert not (tmp_path / "sup" / "teacher_model.pt").exists()
    assert "teacher_test_top1" not in json.loads((tmp_path / "sup" / "summary.json").read_text())
    line = one_line_error(capsys, "export", tmp_path / "sup", "--format", "onnx", "--network", "teacher")
    assert "method supervised trains no teacher" in line and "mpl" in line and "pseudo_label" in line
    (tmp_path / "sup" / "config.yaml").write_text(
        (tmp_path / "sup" / "config.yaml")
        .read_text()
        .replace("name: supervised", "name: reduced_mpl", 1)
        .replace("label_dir: ''", f"label_dir: {tmp_path}", 1)
    )
    assert "not an image network" in one_line_error(capsys, "eval", tmp_path / "sup", "--network", "teacher")


@pytest.mark.slow
def test_train_prints_the_teacher_in_its_final_line(tmp_path):
    result = metapl(
        "train", "--preset", "digits", "--set", "train.steps=6", "--out", str(tmp_path / "r"), "--no-tensorboard"
    )
    assert result.returncode == 0, result.stderr
    final = result.stdout.strip().splitlines()[-1]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert f"teacher_test_top1={summary['teacher_test_top1']:.4f}" in final and "test_top1=" in final


# ---------------------------------------------------------------------------------------------- class names, folders
def test_predict_names_columns_by_class_and_reads_class_folders(run, tmp_path):
    named = _copy_run(run, tmp_path / "named")
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (named / "classes.json").write_text(json.dumps({"names": names}))
    _, data, _ = _model_and_data(run)
    scans = tmp_path / "scans"
    for i, folder in enumerate(["b", "a", "a/deeper", ".ipynb_checkpoints"]):  # class folders, a nested one
        (scans / folder).mkdir(parents=True)
        _png(scans / folder / f"digit{i}.png", data.x_test[i, 0].numpy())
    out, count = predict_run(named, scans, tmp_path / "p.csv")
    columns, rows = _read_csv(out)
    assert columns == ["input", "class", "label", *(f"prob_{n}" for n in names)]
    assert count == 3  # the hidden folder's image is metadata, not the user's
    inputs = [r["input"] for r in rows]
    assert inputs == [
        str(scans / "a" / "deeper" / "digit2.png"),  # sorted by the path's parts, as `ls -R` lists them
        str(scans / "a" / "digit1.png"),
        str(scans / "b" / "digit0.png"),
    ]
    assert all(r["label"] == names[int(r["class"])] for r in rows)


def test_probability_columns_are_safe_and_unique():
    from metapl.commands.predict import probability_columns

    assert probability_columns(["0", "1", "2"]) == ["prob_0", "prob_1", "prob_2"]
    columns = probability_columns(["cat", "hot dog", "hot-dog", "", "1", "Ünï", "a,b"])
    assert columns == ["prob_cat", "prob_1", "prob_2", "prob_3", "prob_4", "prob_Ünï", "prob_a_b"]
    assert len(set(columns)) == len(columns)


def test_empty_folder_tree_is_one_line(run, tmp_path, capsys):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    line = one_line_error(capsys, "predict", run, tmp_path / "empty", "--out", tmp_path / "p.csv")
    assert "no image files in" in line and "sub-folders" in line


# ---------------------------------------------------------------------------------------------- preprocessing
def _documented_preprocessing(
    path: Path, metadata: dict[str, str], resample: Image.Resampling = Image.Resampling.BILINEAR
) -> np.ndarray:
    """docs/cli.md#preprocessing, repeated with PIL and NumPy only: the image as the ONNX model's input."""
    from PIL import ImageOps

    channels, height, width = json.loads(metadata["input_shape"])
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height), resample)
    array = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    return array.transpose(2, 0, 1)


def test_onnx_metadata_says_the_preprocessing_and_onnxruntime_matches_predict(run, tmp_path):
    import onnx
    import onnxruntime

    exported = export_run(run, "onnx", tmp_path / "m.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert metadata["preprocessing_input_layout"] == "NCHW: (N, 1, 8, 8)"
    assert metadata["preprocessing_input_dtype"] == "float32" and "[0, 1]" in metadata["preprocessing_input_range"]
    assert "Image.Resampling.BILINEAR" in metadata["preprocessing_resize"]
    assert "convert('L')" in metadata["preprocessing_color"]
    assert json.loads(metadata["classes"]) == [str(k) for k in range(10)]
    assert (
        "inside the model" in metadata["preprocessing_normalization"]
        or "none" in metadata["preprocessing_normalization"]
    )

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    _, data, _ = _model_and_data(run)
    digit = np.kron(data.x_test[0, 0].numpy(), np.ones((3, 3)))  # a test digit drawn at 24×24
    Image.fromarray(np.round(digit * 255).astype(np.uint8)).save(images / "big_grey.png")
    Image.fromarray(rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)).save(images / "sub" / "rgb.jpg", quality=90)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((9, 7)) < 0.5, 0, 255)
    Image.fromarray(rgba, "RGBA").save(images / "transparent.png")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(images / "same_size.png")

    out, count = predict_run(run, images, tmp_path / "p.csv")
    _, rows = _read_csv(out)
    assert count == 4
    predicted = _check_prediction_rows(rows, 10).numpy()
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])

    def onnx_proba(resample: Image.Resampling) -> np.ndarray:
        x = np.stack([_documented_preprocessing(Path(r["input"]), metadata, resample) for r in rows])
        (logits,) = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
        proba = np.exp(logits - logits.max(1, keepdims=True))
        return proba / proba.sum(1, keepdims=True)

    assert np.abs(onnx_proba(Image.Resampling.BILINEAR) - predicted).max() <= 1e-4
    # another resampling is seen: the match above says the documented resize is the one predict uses
    assert np.abs(onnx_proba(Image.Resampling.BICUBIC) - predicted).max() > 3e-4


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of the documented antialiased bilinear resize along one axis: a triangle filter whose
    support is the shrink factor (at least 1), centred on (i + 0.5)·scale, normalised per output pixel."""
    scale = in_size / out_size
    support, invscale = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    weights = np.zeros((out_size, in_size), dtype=np.float32)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), in_size)
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) * invscale))
        weights[i, lo:hi] = w / w.sum()
    return weights


@pytest.mark.slow
def test_a_folder_runs_documented_preprocessing_matches_predict_through_onnxruntime(tmp_path, capsys):
    """docs/cli.md#preprocessing step 3 (runs on image files, S up to 64), repeated with PIL and NumPy alone."""
    import onnx
    import onnxruntime
    from cli_helpers import succeeds
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "train" / name / f"{i}.png"
            )
    run = tmp_path / "run"
    overrides = ["data.name=folder", f"data.root={tmp_path / 'train'}", "data.labeled_selection=all"]
    overrides += ["data.val_per_class=1", "data.batch_size=4", "data.mu=1", "data.image_size=16", "data.workers=0"]
    overrides += ["model.name=small_cnn", "model.width=4", "train.steps=3", "train.eval_every=0", "finetune.steps=0"]
    sets = [arg for key in overrides for arg in ("--set", key)]
    succeeds(capsys, "train", "--preset", "cifar10_4k", *sets, "--out", run, "--no-progress", "--no-tensorboard")
    exported = export_run(run, "onnx", tmp_path / "m.onnx")
    metadata = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
    assert "antialias=True" in metadata["preprocessing_resize"] and "16x16" in metadata["preprocessing_resize"]
    assert json.loads(metadata["classes"]) == ["cat", "dog"]

    photos = tmp_path / "photos" / "cats"
    photos.mkdir(parents=True)
    for i, (height, width) in enumerate([(37, 53), (90, 31), (16, 16), (9, 12)]):  # shrunk, kept, enlarged
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    out, _ = predict_run(run, tmp_path / "photos", tmp_path / "p.csv")
    columns, rows = _read_csv(out)
    assert columns[3:] == ["prob_cat", "prob_dog"]
    predicted = np.array([[float(r["prob_cat"]), float(r["prob_dog"])] for r in rows])

    inputs = []
    for row in rows:
        with Image.open(row["input"]) as opened:
            pixels = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"), dtype=np.float32)
        if pixels.shape[:2] != (16, 16):
            pixels = np.einsum("oh,hwc->owc", _resize_weights(pixels.shape[0], 16), pixels)
            pixels = np.einsum("ow,hwc->hoc", _resize_weights(pixels.shape[1], 16), pixels)
            pixels = np.clip(np.round(pixels), 0, 255)
        inputs.append((pixels / 255.0).transpose(2, 0, 1).astype(np.float32))
    x = np.stack(inputs)
    # the same pixels as predict's own loading, up to float rounding at a half grey level (a few in 10,000)
    pipeline = load_run(run).data.x_labeled.pipeline
    reference = np.stack([load_image(Path(r["input"]), (3, 16, 16), pipeline=pipeline).numpy() for r in rows])
    assert np.abs(x - reference).max() <= 1 / 255 + 1e-6 and (np.abs(x - reference) > 1e-6).mean() < 1e-3
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    assert np.abs(proba - predicted).max() <= 1e-4
