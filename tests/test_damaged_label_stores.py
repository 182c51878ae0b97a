"""Damaged label stores are refused when read, before training writes anything (metapl/parts/data/label_store.py): rows
that are no probability distributions (NaN or infinity, a value below 0 or above 1, all zero, a sum off 1 beyond
float16 rounding; top-k rows above 1, below what their k largest can hold, or naming a class twice), and a
manifest that names files outside the store (an absolute path, '..', a symbolic link leading out). One line
naming the store, the shard file and the row; exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from metapl.commands.cli import main
from metapl.core.errors import DataError
from metapl.parts.data.label_store import (
    FORMAT,
    MANIFEST,
    pool_hash,
    read_store,
    save_shard,
    shard_name,
    sum_tolerance,
)
from metapl.parts.data.registry import DATASETS
from metapl.run.config import build_config

SHARD = 500  # images per shard: the digits pool (1437 images) makes three


@pytest.fixture(scope="module")
def dataset():
    cfg = build_config("digits", ["data.label_dir=unused"], "reduced_mpl")
    return DATASETS.get("digits").load(cfg.data, 0).dataset


def _probabilities(count: int, seed: int = 0) -> torch.Tensor:
    """Softmax rows of random logits, as a teacher's would be (float32)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(count, 10, generator=generator), -1)


def write_store(out: Path, dataset, probs: torch.Tensor, top_k: int = 0, precision=torch.float16) -> Path:
    """A store as metapl label writes it: shards of SHARD images, then the manifest; `probs` as given (damaged or
    not), compressed to the top k when top_k > 0."""
    out.mkdir(parents=True)
    entries = []
    for number, start in enumerate(range(0, len(probs), SHARD)):
        rows = probs[start : start + SHARD]
        values, classes = (rows, None) if not top_k else rows.topk(top_k, dim=-1)
        index = torch.arange(start, start + len(rows))
        save_shard(out / shard_name(number), index, values.to(precision), None if classes is None else classes.short())
        entries.append({"file": shard_name(number), "start": start, "count": len(rows)})
    manifest = {
        "format": FORMAT,
        "fingerprint": pool_hash(dataset),
        "num_classes": 10,
        "pool_size": len(probs),
        "top_k": top_k,
        "shards": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


def refused(label_dir: Path, dataset) -> str:
    with pytest.raises(DataError) as caught:
        read_store(label_dir, dataset)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_teachers_float16_rows_are_taken(dataset, tmp_path):
    """Real softmax rows rounded to float16 pass: the tolerance is not tighter than the rounding."""
    probs = _probabilities(len(dataset.y_train))
    full = read_store(write_store(tmp_path / "full", dataset, probs), dataset)
    assert torch.allclose(full.dense(), probs, atol=2e-3)
    sharp = torch.zeros_like(probs)
    sharp[:, 3] = 1.0  # one-hot rows: a sum of exactly 1, the top-k sum at its maximum
    read_store(write_store(tmp_path / "sharp", dataset, sharp, top_k=3), dataset)
    flat = torch.full_like(probs, 0.1)  # uniform rows: the top-k sum at its minimum, k/K
    read_store(write_store(tmp_path / "flat", dataset, flat, top_k=3), dataset)


def test_the_tolerance_covers_float16_rounding_of_many_classes():
    for classes in (10, 1000, 21841):
        probs = torch.softmax(4 * torch.randn(256, classes, generator=torch.Generator().manual_seed(1)), -1)
        error = (probs.half().float().sum(-1) - 1).abs().max()
        assert error <= sum_tolerance(classes) / 2, classes  # a factor of 2 to spare


def _damaged(probs: torch.Tensor, row: int, values: list[float]) -> torch.Tensor:
    damaged = probs.clone()
    damaged[row] = torch.tensor(values + [0.0] * (10 - len(values)))
    return damaged


ROW = SHARD + 5  # the damage: shard 1, row 5
FULL_DAMAGE = {
    "nan": ([float("nan"), 1.0], "holds NaN or infinity"),
    "infinity": ([float("inf")], "holds NaN or infinity"),
    "negative": ([1.2, -0.2], "holds a negative probability"),
    "above one": ([1.5], "holds a probability above 1"),
    "all zero": ([], "is all zero"),
    "sum above": ([0.6, 0.41], "sums to 1.01, not 1 (within 0.00098)"),
    "sum below": ([0.5, 0.49], "sums to 0.99, not 1 (within 0.00098)"),
}


@pytest.mark.parametrize("case", FULL_DAMAGE)
def test_full_rows_that_are_no_distribution_are_refused(dataset, tmp_path, case):
    values, words = FULL_DAMAGE[case]
    probs = _damaged(_probabilities(len(dataset.y_train)), ROW, values)
    store = write_store(tmp_path / "labels", dataset, probs, precision=torch.float32)
    message = refused(store, dataset)
    assert message.startswith(f"the store at {store} is damaged: {shard_name(1)} row 5 (image {ROW} of the pool) ")
    assert words in message and "run metapl label again" in message


TOP_K_DAMAGE = {
    "sum above one": ([0.75, 0.5, 0.0], None, "sums to 1.25, above 1"),
    "below k/K": ([0.1, 0.1, 0.05], None, "less than its 3 largest of 10 can"),
    "all zero": ([0.0, 0.0, 0.0], None, "is all zero"),
    "a class twice": ([0.5, 0.3, 0.1], [4, 4, 1], "names a class twice"),
}


@pytest.mark.parametrize("case", TOP_K_DAMAGE)
def test_top_k_rows_that_are_no_distribution_are_refused(dataset, tmp_path, case):
    top, classes, words = TOP_K_DAMAGE[case]
    store = write_store(tmp_path / "labels", dataset, _probabilities(len(dataset.y_train)), top_k=3)
    path = store / shard_name(1)
    from safetensors.torch import load_file

    shard = load_file(str(path))
    shard["values"][5] = torch.tensor(top, dtype=shard["values"].dtype)
    if classes is not None:
        shard["classes"][5] = torch.tensor(classes, dtype=shard["classes"].dtype)
    save_shard(path, shard["index"], shard["values"], shard["classes"])
    message = refused(store, dataset)
    assert f"{shard_name(1)} row 5 (image {ROW} of the pool) " in message and words in message


def _point_manifest_at(store: Path, name: str) -> None:
    manifest = json.loads((store / MANIFEST).read_text())
    manifest["shards"][0]["file"] = name
    (store / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("how", ["absolute", "dot-dot", "symlink out"])
def test_a_manifest_naming_files_outside_the_store_is_refused(dataset, tmp_path, how):
    """The file named is an intact shard: only where it lies is wrong."""
    store = write_store(tmp_path / "labels", dataset, _probabilities(len(dataset.y_train)))
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(store / shard_name(0), outside)
    name = {"absolute": str(outside), "dot-dot": "../elsewhere.safetensors", "symlink out": "link.safetensors"}[how]
    if how == "symlink out":
        (store / name).symlink_to(outside)
    _point_manifest_at(store, name)
    message = refused(store, dataset)
    assert message == (
        f"{store / MANIFEST} names the shard {name!r}, outside the store {store}; a store reads only its own files: "
        "delete it and run metapl label again"
    )


def test_a_symlink_inside_the_store_is_taken(dataset, tmp_path):
    store = write_store(tmp_path / "labels", dataset, _probabilities(len(dataset.y_train)))
    (store / "sub").mkdir()
    os.replace(store / shard_name(0), store / "sub" / shard_name(0))
    (store / "link.safetensors").symlink_to(Path("sub") / shard_name(0))
    _point_manifest_at(store, "link.safetensors")
    assert len(read_store(store, dataset)) == len(dataset.y_train)


@pytest.mark.slow  # builds the method through the CLI
def test_train_refuses_a_damaged_store_in_one_line_before_writing(dataset, tmp_path, capsys):
    probs = _damaged(_probabilities(len(dataset.y_train)), ROW, [])
    store = write_store(tmp_path / "labels", dataset, probs)
    out = tmp_path / "run"
    args = ["train", "--preset", "digits", "--method", "reduced_mpl", "--out", str(out), "--no-progress"]
    assert main([*args, "--set", f"data.label_dir={store}", "--set", "train.steps=2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metapl: error: the store at ") and "row 5" in lines[0]
    assert not out.exists()
