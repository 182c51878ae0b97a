"""train.threads: one intra-op thread for small networks on the CPU, all cores for big ones, N when set."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import one_line_error
from torch import nn

from metapl.config import build_config
from metapl.engine import threads
from metapl.engine.threads import AUTO_ONE_THREAD_BELOW, apply_threads, automatic_threads
from metapl.experiment import run_experiment

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def _restore_threads(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_DEFAULT", 2)  # PyTorch's default, as on a 2-core machine
    yield
    torch.set_num_threads(before)


def test_the_automatic_choice_follows_the_networks_size_and_device():
    assert automatic_threads(AUTO_ONE_THREAD_BELOW - 1, CPU, 8) == 1
    assert automatic_threads(AUTO_ONE_THREAD_BELOW, CPU, 8) == 8
    assert automatic_threads(100, GPU, 8) == 8  # the GPU computes: the CPU threads only feed it


def test_apply_sets_the_count_and_keeps_omp_num_threads(monkeypatch):
    small, big = nn.Linear(10, 10), nn.Linear(1000, 1000)  # 110 and 1,001,000 parameters
    assert apply_threads(0, [small], CPU) == 1 == torch.get_num_threads()
    assert apply_threads(0, [small, big], CPU) == 2 == torch.get_num_threads()  # the largest network decides
    assert apply_threads(1, [big], CPU) == 1 == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert apply_threads(0, [small], CPU) == 2  # set by the user (or torchrun): automatic keeps it
    assert apply_threads(1, [small], CPU) == 1  # an explicit train.threads wins


@pytest.mark.parametrize("setting, expected", [(0, 1), (2, 2)])
def test_training_applies_train_threads(tmp_path, setting, expected):
    torch.set_num_threads(2)
    cfg = build_config("digits", ["train.steps=2", f"train.threads={setting}"], "supervised")
    run_experiment(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert torch.get_num_threads() == expected


def test_a_negative_thread_count_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, "train", "--preset", "digits", "--set", "train.threads=-1", "--out", tmp_path / "r")
    assert "train.threads=-1" in line and "0: automatic" in line
