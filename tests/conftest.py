"""Shared fixtures: one CPU thread (tiny models run faster without OpenMP hand-offs), quiet runs."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def float64():
    """float64 as the default dtype, for exact gradient comparisons on tiny models."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
