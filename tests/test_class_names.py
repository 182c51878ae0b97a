"""Class names: kept in the run (classes.json, from folder names or label values, a CSV with a byte-order mark
included) and written with predictions; runs without names keep their columns; a damaged classes.json is one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cli_helpers import folder_train, succeeds
from fake_datasets import write_class_folders


def _predictions(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return list(rows[0]), rows


def test_a_csv_with_a_byte_order_mark_trains_and_class_names_come_back(capsys, folder_run, tmp_path):
    images, digits_run_copy = folder_run
    assert json.loads((digits_run_copy / "classes.json").read_text()) == {"names": ["cat", "dog"]}
    out = tmp_path / "p.csv"
    succeeds(capsys, "predict", digits_run_copy, images / "images" / "dog", "--out", out)
    columns, rows = _predictions(out)
    assert columns[:3] == ["input", "class", "label"] and columns[3:] == ["prob_cat", "prob_dog"]
    assert all(r["label"] == ["cat", "dog"][int(r["class"])] for r in rows)


def test_numeric_labels_keep_their_values_as_names(capsys, tmp_path):
    write_class_folders(tmp_path / "images", ["x", "y"], per_class=4, side=12)
    lines = [f"images/x/{i}.png,0" for i in range(4)] + [f"images/y/{i}.png,99" for i in range(4)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    digits_run_copy = tmp_path / "run"
    succeeds(capsys, *folder_train(tmp_path / "labels.csv", digits_run_copy))
    assert json.loads((digits_run_copy / "classes.json").read_text()) == {"names": ["0", "99"]}
    succeeds(capsys, "predict", digits_run_copy, tmp_path / "images" / "y", "--out", tmp_path / "p.csv")
    columns, rows = _predictions(tmp_path / "p.csv")
    assert "label" in columns and {r["label"] for r in rows} <= {"0", "99"}


def test_runs_without_named_classes_keep_their_prediction_columns(capsys, digits_run, tmp_path):
    assert json.loads((digits_run / "classes.json").read_text()) == {"names": [str(k) for k in range(10)]}
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    succeeds(capsys, "predict", digits_run, rows, "--out", tmp_path / "p.csv")
    columns, _ = _predictions(tmp_path / "p.csv")
    assert columns == ["input", "class", *(f"prob_{k}" for k in range(10))]
