"""A run's split: saved with a fingerprint of the data it was drawn from and reused on resume; a changed data set,
a split file of another data set or of the wrong shape is one line with the ways on, and nothing is written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cli_helpers import DIGITS_TRAIN, QUICK_DIGITS, TINY, folder_train, one_line_error, snapshot, succeeds
from fake_datasets import write_class_folders

from metapl.core.errors import DataError
from metapl.parts.data.splits import Split, check_source, pool_fingerprint


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"labeled": [0, "a"], "unlabeled": [1], "validation": []}', 'labeled[1] is "a", not an integer index'),
        ('{"labeled": [0, 1.5], "unlabeled": [1], "validation": []}', "labeled[1] is 1.5, not an integer index"),
        ('{"labeled": [0, 1.0], "unlabeled": [1], "validation": []}', "labeled[1] is 1.0, not an integer index"),
        ('{"labeled": [true], "unlabeled": [1], "validation": []}', "labeled[0] is true, not an integer index"),
        ('{"labeled": [null], "unlabeled": [1], "validation": []}', "labeled[0] is null, not an integer index"),
        ('{"labeled": [[0]], "unlabeled": [1], "validation": []}', "labeled[0] is [0], not an integer index"),
        ('{"labeled": 3, "unlabeled": [1], "validation": []}', "labeled is a JSON number, not a list of indices"),
        ('{"labeled": "0,1", "unlabeled": [1], "validation": []}', "labeled is a JSON string, not a list"),
        ('{"labeled": {"0": 1}, "unlabeled": [1], "validation": []}', "labeled is a JSON object, not a list"),
        ('{"labeled": [0], "unlabeled": [1]}', "has no 'validation' list"),
        ('{"labeled": [0], "unlabeled": [1], "validation": [], "source": 3}', "'source' is not an object"),
        ("[[0], [1], []]", "holds a JSON list, not an object"),
        ('{"labeled": [0, 10000000000000000000000], "unlabeled": [1], "validation": []}', "outside the pool"),
        ("\xff\xfe", "cannot read split file"),
        ("", "cannot read split file"),
    ],
)
def test_split_files_of_the_wrong_shape_are_one_line_and_write_nothing(capsys, tmp_path, content, fragment):
    split = tmp_path / "splits.json"
    split.write_bytes(content.encode("latin-1"))
    out = tmp_path / "run"
    line = one_line_error(capsys, *QUICK_DIGITS, "--set", f"data.split_file={split}", "--out", out)
    assert fragment in line and str(split) in line
    assert not out.exists()


def test_split_check_message_for_a_fractional_index_in_a_reused_split(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text('{"labeled": [1.25], "unlabeled": [0], "validation": []}')
    with pytest.raises(DataError, match=r"labeled\[0\] is 1.25, not an integer index"):
        Split.load(path)


def test_a_changed_data_set_is_one_line_with_the_choices_and_the_advice_works(capsys, tmp_path):
    write_class_folders(tmp_path / "images", ["a", "b"], per_class=5, side=12)
    digits_run_copy = tmp_path / "run"
    args = folder_train(tmp_path / "images", digits_run_copy)
    succeeds(capsys, *args)
    saved = json.loads((digits_run_copy / "splits.json").read_text())
    assert saved["source"]["pool"] == 10 and "files_sha256" in saved["source"]
    moved = tmp_path / "moved.png"
    shutil.move(tmp_path / "images" / "a" / "2.png", moved)  # as "remove the file" advises
    before = snapshot(digits_run_copy)
    for command in (
        args,
        ["eval", digits_run_copy],
        ["predict", digits_run_copy, tmp_path / "images" / "b" / "0.png", "--out", tmp_path / "p.csv"],
        ["export", digits_run_copy, "--format", "safetensors", "--out", tmp_path / "m.safetensors"],
    ):
        line = one_line_error(capsys, *command)
        assert "the data set changed since" in line and "had 10 examples and now has 9" in line, line
        assert "restore the data as it was" in line and "--restart" in line
    assert snapshot(digits_run_copy) == before
    shutil.move(moved, tmp_path / "images" / "a" / "2.png")  # choice 1: restore the file
    succeeds(capsys, "eval", digits_run_copy)
    (tmp_path / "images" / "a" / "2.png").unlink()  # choice 2: a new run on the data as it is
    succeeds(capsys, *args, "--restart")
    assert json.loads((digits_run_copy / "splits.json").read_text())["source"]["pool"] == 9
    succeeds(capsys, "eval", digits_run_copy)


def test_the_fingerprint_sees_labels_files_and_counts():
    labels = np.array([0, 1, 0, 1])
    base = pool_fingerprint(labels, ["a.png", "b.png", "c.png", "d.png"])
    check_source(base, pool_fingerprint(labels, ["a.png", "b.png", "c.png", "d.png"]), "s.json")
    check_source(None, base, "s.json")  # no fingerprint: an old file
    for changed, fragment in (
        (pool_fingerprint(labels[:3], ["a.png", "b.png", "c.png"]), "had 4 examples and now has 3"),
        (pool_fingerprint(labels, ["a.png", "b.png", "c.png", "e.png"]), "list of image files differs"),
        (pool_fingerprint(np.array([0, 1, 1, 1]), ["a.png", "b.png", "c.png", "d.png"]), "the labels differ"),
        (pool_fingerprint(labels, ["a.png", "b.png", "c.png", "d.png"], labelable=2), "2 are"),
    ):
        with pytest.raises(DataError, match=fragment):
            check_source(base, changed, "s.json")


def test_a_split_file_of_another_data_set_is_refused(capsys, digits_run, tmp_path):
    moon = tmp_path / "moon"
    succeeds(capsys, "train", "--preset", "twomoon", *TINY, "--set", "train.steps=1", "--out", moon)
    line = one_line_error(
        capsys, *QUICK_DIGITS, "--set", f"data.split_file={moon / 'splits.json'}", "--out", tmp_path / "r"
    )
    assert "the data set changed since" in line and "had 2000 examples and now has 1297" in line


def test_a_resumed_run_uses_its_saved_split_not_a_new_draw(capsys, digits_run_copy):
    saved = json.loads((digits_run_copy / "splits.json").read_text())
    saved["labeled"] = saved["labeled"][::-1]  # the same indices in another order than the seed draws
    (digits_run_copy / "splits.json").write_text(json.dumps(saved))
    succeeds(capsys, *DIGITS_TRAIN, "--out", digits_run_copy)
    assert json.loads((digits_run_copy / "splits.json").read_text())["labeled"] == saved["labeled"]
