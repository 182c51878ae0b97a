"""benchmarks/gpu_step.py on the CPU, shrunk: both measurements run the real preset code and report sane numbers."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from benchmark_scripts import load

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

TINY = ["data.batch_size=4", "data.mu=2", "data.val_per_class=2", "data.labeled_per_class=2"]


@pytest.fixture(scope="module")
def bench():
    return load("gpu_step")


def test_synthetic_cifar_has_the_reader_format(bench, tmp_path):
    bench.write_synthetic_cifar10(tmp_path, per_batch=30)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "rb") as handle:
        batch = pickle.load(handle)
    assert batch[b"data"].shape == (30, 3072) and len(batch[b"labels"]) == 30


def test_end_to_end_times_the_logged_steps(bench, tmp_path):
    torch.set_num_threads(1)
    bench.write_synthetic_cifar10(tmp_path, per_batch=40)
    # fp32 after the script's bf16: what is tested is how the steps are timed, and bf16 is slow on CPUs without it.
    r = bench.end_to_end("cifar10_4k", "mpl", 30, 10, [*TINY, "train.precision=fp32"], tmp_path, tmp_path / "run")
    assert r["images_per_step"] == 4 + 2 * 2 * 4
    # The median interval after the warm-up, per step: 20 such steps fit in the run's wall time, and the step
    # time is the loop's own (its logged rate of images), not a guess from the whole run.
    assert 0.0 < 20 * r["s_per_step"] <= r["wall_s"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    mean_step = summary["train_seconds"] / 30  # warm-up and the final evaluation included: an upper estimate
    assert 0.3 * mean_step <= r["s_per_step"] <= 1.5 * mean_step


def test_model_only_runs_the_method_step(bench):
    torch.set_num_threads(1)
    r = bench.model_only("cifar10_4k", "uda", 2, 1, [*TINY, "train.precision=fp32"], torch.device("cpu"))
    assert r["images_per_step"] == 4 + 2 * 2 * 4 and r["s_per_step"] > 0.0 and r["peak_gib"] is None


def test_a_scaled_down_step_is_extrapolated_by_images(bench):
    from metapl.run.config import build_config

    preset = build_config("imagenet_10pct", [])  # B = 1,024, μ = 15
    small = build_config("imagenet_10pct", ["data.batch_size=8"])
    images = bench.images_per_step(small, "mpl")
    assert images == 8 + 2 * 15 * 8
    assert bench.full_batch_seconds(0.5, images, preset, "mpl") == pytest.approx(0.5 * 128)
    fewer_mu = build_config("imagenet_10pct", ["data.batch_size=8", "data.mu=5"])
    scaled = bench.full_batch_seconds(0.5, bench.images_per_step(fewer_mu, "mpl"), preset, "mpl")
    assert scaled == pytest.approx(0.5 * (1024 * 31) / (8 * 11))


def test_floor_and_profile_run_on_a_shrunk_preset(bench, tmp_path):
    """The device floor (the MPL step against its passes timed alone) and the profiler path, on the CPU."""
    torch.set_num_threads(1)
    cpu = [*TINY, "train.precision=fp32"]
    r = bench.mpl_floor("cifar10_4k", 2, 1, cpu, torch.device("cpu"))
    assert set(r["passes_s"]) == {"step", "teacher fwd+bwd", "student fwd+bwd", "labeled fwd+bwd"}
    assert r["floor_s"] == pytest.approx(sum(v for k, v in r["passes_s"].items() if k != "step"))
    assert r["x_floor"] > 0.5  # the step does at least about the floor's work
    table = bench.profile_mpl("cifar10_4k", 1, cpu, torch.device("cpu"), tmp_path)
    assert "aten::" in table.read_text() and (tmp_path / "trace_mpl.json").stat().st_size > 1000
