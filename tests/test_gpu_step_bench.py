"""benchmarks/gpu_step.py on the CPU, shrunk: both measurements run the real preset code and report sane numbers."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_step.py"
TINY = ["data.batch_size=4", "data.mu=2", "data.val_per_class=2", "data.labeled_per_class=2"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_synthetic_cifar_has_the_reader_format(bench, tmp_path):
    bench.write_synthetic_cifar10(tmp_path, per_batch=30)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "rb") as handle:
        batch = pickle.load(handle)
    assert batch[b"data"].shape == (30, 3072) and len(batch[b"labels"]) == 30


def test_end_to_end_times_the_logged_steps(bench, tmp_path):
    torch.set_num_threads(1)
    bench.write_synthetic_cifar10(tmp_path, per_batch=40)
    r = bench.end_to_end("cifar10_4k", "mpl", 30, 10, TINY, tmp_path, tmp_path / "run")
    assert r["images_per_step"] == 4 + 2 * 2 * 4
    assert 0.0 < r["s_per_step"] < r["wall_s"]  # a median over steps 11..30, not the whole run
    assert (tmp_path / "run" / "summary.json").is_file()


def test_model_only_runs_the_method_step(bench):
    torch.set_num_threads(1)
    r = bench.model_only("cifar10_4k", "uda", 2, 1, [*TINY, "train.precision=fp32"], torch.device("cpu"))
    assert r["images_per_step"] == 4 + 2 * 2 * 4 and r["s_per_step"] > 0.0 and r["peak_gib"] is None
