"""train.threads: one intra-op thread on the CPU for networks of little work per example or on a busy machine, all
cores otherwise, N when set."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import one_line_error
from torch import nn

from metapl.parts.models import create_model
from metapl.run import threads
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment
from metapl.run.threads import AUTO_FLOPS, apply_threads, automatic_threads, forward_flops

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_DEFAULT", 2)  # PyTorch's default, as on a 2-core machine
    yield
    torch.set_num_threads(before)


def test_the_automatic_choice_follows_the_work_per_example_the_load_and_the_device():
    assert automatic_threads(AUTO_FLOPS - 1, CPU, 8, busy=False) == 1
    assert automatic_threads(AUTO_FLOPS, CPU, 8, busy=False) == 8
    assert automatic_threads(AUTO_FLOPS, CPU, 8, busy=True) == 1  # another process on the cores: one thread
    assert automatic_threads(100, GPU, 8, busy=True) == 8  # the GPU computes: the CPU threads only feed it


def test_the_presets_networks_fall_on_the_measured_sides():
    """The MLPs (digits, TwoMoon) below the threshold, the CNNs (small CNN, WRN-28-2) above it."""
    assert forward_flops(create_model("mlp", 10, (64,), hidden=(256, 256)), (64,)) < AUTO_FLOPS
    assert forward_flops(create_model("small_cnn", 10, (1, 28, 28), width=16), (1, 28, 28)) > AUTO_FLOPS
    assert forward_flops(nn.Linear(10, 10), (1, 28, 28)) == 0  # a network of other inputs (Reduced MPL's teacher)


def test_apply_sets_the_count_and_keeps_omp_num_threads(monkeypatch):
    monkeypatch.setattr(threads, "machine_busy", lambda cores: False)
    small, big = nn.Linear(10, 10), nn.Sequential(nn.Linear(10, 2000), nn.Linear(2000, 10))  # 200 and 80 K FLOPs
    monkeypatch.setattr(threads, "AUTO_FLOPS", 10_000)
    assert apply_threads(0, [small], CPU, (10,)) == 1 == torch.get_num_threads()
    assert apply_threads(0, [small, big], CPU, (10,)) == 2 == torch.get_num_threads()  # the costlier network decides
    monkeypatch.setattr(threads, "machine_busy", lambda cores: True)
    assert apply_threads(0, [big], CPU, (10,)) == 1
    assert apply_threads(2, [small], CPU, (10,)) == 2 == torch.get_num_threads()  # an explicit count wins
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert apply_threads(0, [small], CPU, (10,)) == 2  # set by the user (or torchrun): automatic keeps it
    assert apply_threads(1, [small], CPU, (10,)) == 1


@pytest.mark.parametrize("setting, expected", [(0, 1), (2, 2)])
def test_training_applies_train_threads(tmp_path, setting, expected):
    torch.set_num_threads(2)
    cfg = build_config("digits", ["train.steps=2", f"train.threads={setting}"], "supervised")
    run_experiment(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert torch.get_num_threads() == expected


def test_a_negative_thread_count_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, "train", "--preset", "digits", "--set", "train.threads=-1", "--out", tmp_path / "r")
    assert "train.threads=-1" in line and "0: automatic" in line
