"""Every input is protected from every output: the --out of train, label, shard, predict, export and plot may not
be, lie inside or hold a file or folder the command reads (data, splits, label stores, shards, pretrained weights),
and an existing output file is replaced only when metapl wrote it (run/outputs.py, run/ownership.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, snapshot, succeeds
from PIL import Image

from metapl.commands.cli import main
from metapl.core.errors import ConfigError
from metapl.run.config import build_config
from metapl.run.outputs import check_output_file, check_output_folder, config_inputs
from metapl.run.ownership import written_by_metapl

TRAIN = ["train", "--preset", "twomoon", "--no-progress", "--set", "train.steps=2", "--set", "train.eval_every=2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished twomoon run whose split came from a split file outside it (so that file is one of its inputs)."""
    torch.set_num_threads(1)

    root = tmp_path_factory.mktemp("outputs")
    assert main([*TRAIN, "--no-tensorboard", "--out", str(root / "first")]) == 0
    split = root / "shared" / "split.json"
    split.parent.mkdir()
    split.write_bytes((root / "first" / "splits.json").read_bytes())
    assert main([*TRAIN, "--no-tensorboard", "--set", f"data.split_file={split}", "--out", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def rows(tmp_path) -> Path:
    path = tmp_path / "rows.csv"
    path.write_text("0.5,0.5\n-1,0.25\n")
    return path


# ---------------------------------------------------------------------------------------------- the one rule
def test_config_inputs_name_every_file_and_folder_a_run_reads(tmp_path):
    cfg = build_config(
        "twomoon",
        [
            f"data.split_file={tmp_path / 'split.json'}",
            f"data.unlabeled_shards={tmp_path / 'shards' / 'u-{000..999999}.tar'}",
        ],
    )
    cfg.data.label_dir = str(tmp_path / "labels")
    cfg.model.pretrained = str(tmp_path / "student.safetensors")
    cfg.model.teacher_pretrained = str(tmp_path / "teacher.pt")
    found = {str(path): what for what, path in config_inputs(cfg)}
    for name, key in [
        ("split.json", "data.split_file"),
        ("shards", "data.unlabeled_shards"),  # the folder, without expanding a million names
        ("labels", "data.label_dir"),
        ("student.safetensors", "model.pretrained"),
        ("teacher.pt", "model.teacher_pretrained"),
    ]:
        assert key in found[str(tmp_path / name)]


@pytest.mark.parametrize(
    "out, fragment",
    [
        ("weights.pt", "is the weights, which would be overwritten"),
        ("data/new.csv", "is inside the data, whose files this command reads"),
        ("link-to-data/new.csv", "is inside the data, whose files this command reads"),
    ],
)
def test_an_output_file_is_never_an_input_or_inside_one(tmp_path, out, fragment):
    (tmp_path / "data").mkdir()
    (tmp_path / "weights.pt").write_bytes(b"w")
    (tmp_path / "link-to-data").symlink_to(tmp_path / "data")
    inputs = [("the weights", tmp_path / "weights.pt"), ("the data", tmp_path / "data")]
    with pytest.raises(ConfigError, match=fragment):
        check_output_file(tmp_path / out, inputs)


@pytest.mark.parametrize(
    "out, fragment",
    [("data", "is the data"), ("data/labels", "is inside the data"), (".", "holds the data")],
)
def test_an_output_folder_neither_is_nor_lies_in_nor_holds_an_input(tmp_path, out, fragment):
    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError, match=fragment):
        check_output_folder(tmp_path / out, [("the data", tmp_path / "data")])


# ---------------------------------------------------------------------------------------------- per command
def test_train_refuses_an_out_that_holds_its_split_file_or_lies_in_its_data(capsys, tmp_path, finished):
    split = finished.parent / "shared" / "split.json"
    before = snapshot(split.parent)
    line = one_line_error(capsys, *TRAIN, "--set", f"data.split_file={split}", "--out", split.parent)
    assert "holds the run's data.split_file" in line
    assert snapshot(split.parent) == before


def test_train_refuses_an_out_inside_its_image_folder(capsys, tmp_path):
    images = tmp_path / "images"
    for label in ("a", "b"):
        (images / label).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / label / "0.png")
    before = snapshot(images)
    line = one_line_error(
        capsys, "train", "--preset", "digits", "--set", "data.name=folder", "--set", f"data.root={images}",
        "--out", images / "runs" / "x",
    )  # fmt: skip
    assert "is inside the run's data (data.root=" in line
    assert snapshot(images) == before


def test_predict_and_export_refuse_the_runs_split_file(capsys, tmp_path, finished, rows):
    split = finished.parent / "shared" / "split.json"
    before = split.read_bytes()
    line = one_line_error(capsys, "predict", finished, rows, "--out", split)
    assert "is the run's data.split_file=" in line
    line = one_line_error(capsys, "export", finished, "--format", "safetensors", "--out", split)
    assert "is the run's data.split_file=" in line
    assert split.read_bytes() == before


def test_label_refuses_an_out_that_is_its_teachers_weights(capsys, tmp_path, finished):
    weights = tmp_path / "teacher.pt"
    weights.write_bytes((finished / "model.pt").read_bytes())
    before = weights.read_bytes()
    line = one_line_error(
        capsys, "label", "mlp", "--weights", weights, "--preset", "twomoon", "--out", weights, "--no-progress"
    )
    assert "is the teacher's weights" in line
    assert weights.read_bytes() == before


def test_shard_refuses_an_out_inside_its_source_folder(capsys, tmp_path):
    source = tmp_path / "images"
    source.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(source / "0.png")
    line = one_line_error(capsys, "shard", source, "--out", source / "shards", "--no-progress")
    assert "is inside the source folder" in line
    assert snapshot(source) == {"0.png": (source / "0.png").read_bytes()}


# ---------------------------------------------------------------------------------------------- existing files
def test_predict_replaces_its_own_csv_but_never_a_users_file(capsys, tmp_path, finished, rows):
    out = tmp_path / "predictions.csv"
    succeeds(capsys, "predict", finished, rows, "--out", out)
    assert written_by_metapl(out)
    succeeds(capsys, "predict", finished, rows, "--out", out)  # metapl's own file: replaced
    mine = tmp_path / "report.csv"
    mine.write_text("name,score\nme,1\n")
    line = one_line_error(capsys, "predict", finished, rows, "--out", mine)
    assert "exists and was not written by metapl" in line
    assert mine.read_text() == "name,score\nme,1\n"


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_export_replaces_its_own_file_but_never_a_users_file(capsys, tmp_path, finished, fmt):
    out = tmp_path / f"model.{fmt}"
    succeeds(capsys, "export", finished, "--format", fmt, "--out", out)
    assert written_by_metapl(out)
    succeeds(capsys, "export", finished, "--format", fmt, "--out", out)
    mine = tmp_path / f"mine.{fmt}"
    mine.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    line = one_line_error(capsys, "export", finished, "--format", fmt, "--out", mine)
    assert "exists and was not written by metapl" in line
    assert mine.read_bytes() == b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, mine.name])  # no temporary file left


@pytest.mark.parametrize("suffix", ["png", "pdf", "svg"])
def test_plot_replaces_its_own_image_but_never_a_users_image(capsys, tmp_path, finished, suffix):
    out = tmp_path / f"curves.{suffix}"
    succeeds(capsys, "plot", finished, "--kind", "curves", "--out", out)
    assert written_by_metapl(out)
    succeeds(capsys, "plot", finished, "--kind", "curves", "--out", out)
    mine = tmp_path / f"holiday.{suffix}"
    if suffix == "png":
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(mine)
    else:
        mine.write_bytes(b"my drawing")
    before = mine.read_bytes()
    line = one_line_error(capsys, "plot", finished, "--kind", "curves", "--out", mine)
    assert "exists and was not written by metapl" in line
    assert mine.read_bytes() == before


def test_an_output_through_a_symbolic_link_is_refused(capsys, tmp_path, finished, rows):
    target = tmp_path / "elsewhere.csv"
    target.write_text("mine")
    (tmp_path / "link.csv").symlink_to(target)
    line = one_line_error(capsys, "predict", finished, rows, "--out", tmp_path / "link.csv")
    assert "is a symbolic link" in line
    assert target.read_text() == "mine"


# --------------------------------------------------------- options that would overwrite an input
@pytest.mark.parametrize(
    "command, fragment",
    [
        (["predict", "RUN", "INPUT", "--out", "INPUT"], "is the input file"),
        (["predict", "RUN", "INPUT", "--out", "RUN/model.pt"], "would overwrite the run's own model.pt"),
        (["predict", "RUN", "INPUT", "--out", "RUN"], "is a directory"),
        (["predict", "RUN", "INPUT", "--invert"], "--invert maps image pixels"),
        (
            ["export", "RUN", "--format", "safetensors", "--out", "RUN/model.pt"],
            "would overwrite the run's own model.pt",
        ),
        (["export", "RUN", "--format", "onnx", "--out", "RUN/checkpoint.pt"], "own checkpoint.pt"),
        (["plot", "RUN", "--out", "RUN/config.yaml"], "would overwrite the run's own config.yaml"),
        (["eval", "RUN", "--weights", "best"], "the run kept no best-on-validation weights; use --weights final"),
    ],
)
def test_conflicting_options_are_refused_and_destroy_nothing(capsys, digits_run_copy, tmp_path, command, fragment):
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    (digits_run_copy / "best_model.pt").unlink()  # a run without best weights (interrupted before its first evaluation)
    args = [a.replace("RUN", str(digits_run_copy)).replace("INPUT", str(rows)) for a in command]
    before, rows_before = snapshot(digits_run_copy), rows.read_bytes()
    line = one_line_error(capsys, *args)
    assert fragment in line
    assert snapshot(digits_run_copy) == before and rows.read_bytes() == rows_before


@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"00{i}.png")
    return folder


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("photos/000.png", "is inside the input folder"),
        ("photos/new.csv", "is inside the input folder"),
        ("photos/sub/new.csv", "is inside the input folder"),
        ("link-to-input", "is inside the input folder"),
        ("list.csv", "is the input file"),
        ("photos", "is a directory"),
        ("list.csv/p.csv", "lies under"),
    ],
)
def test_predict_never_writes_over_what_it_reads(capsys, digits_run, photos, target, fragment):
    tmp = photos.parent
    (tmp / "link-to-input").symlink_to(photos / "001.png")
    (tmp / "list.csv").write_text("path\nphotos/000.png\n")
    source = tmp / "list.csv" if target == "list.csv" else photos
    before = snapshot(tmp)
    line = one_line_error(capsys, "predict", digits_run, source, "--out", tmp / target)
    assert fragment in line
    assert snapshot(tmp) == before


def test_predict_never_writes_over_an_image_its_csv_names(capsys, digits_run, photos):
    listing = photos.parent / "list.csv"
    listing.write_text(f"path\n{photos / '000.png'}\nphotos/001.png\n")
    before = snapshot(photos)
    elsewhere = photos.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "alias.png").symlink_to(photos / "001.png")
    for target in (photos / "000.png", elsewhere / "alias.png"):
        line = one_line_error(capsys, "predict", digits_run, listing, "--out", target)
        assert f"an image of the input CSV {listing}, which would be overwritten" in line
    assert snapshot(photos) == before


@pytest.mark.parametrize("command", ["predict", "export"])
def test_outputs_never_go_over_the_runs_data(capsys, folder_run, command):
    tmp, digits_run_copy = folder_run
    before = snapshot(tmp / "images") | {"labels.csv": (tmp / "labels.csv").read_bytes()}
    for target, fragment in (
        (tmp / "labels.csv", "is the run's data (data.root="),
        (tmp / "images" / "cat" / "0.png", "an image of the run's data"),
    ):
        args = (
            ["predict", digits_run_copy, tmp / "images" / "dog" / "1.png"]
            if command == "predict"
            else ["export", digits_run_copy]
        )
        if command == "export":
            args += ["--format", "safetensors"]
        line = one_line_error(capsys, *args, "--out", target)
        assert fragment in line
    assert snapshot(tmp / "images") | {"labels.csv": (tmp / "labels.csv").read_bytes()} == before


def test_plot_never_writes_over_another_runs_files(capsys, digits_run, digits_run_copy):
    before = snapshot(digits_run_copy)
    line = one_line_error(capsys, "plot", digits_run, digits_run_copy, "--out", digits_run_copy / "classes.json")
    assert "would overwrite the run's own classes.json" in line
    assert snapshot(digits_run_copy) == before
