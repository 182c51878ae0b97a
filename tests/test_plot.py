"""Plots: decision regions for 2-D runs side by side, curves for the rest, bars for summaries."""

from __future__ import annotations

import pytest

from metapl.config import build_config
from metapl.errors import CheckpointError
from metapl.experiment import run_experiment
from metapl.plot import plot_bars, plot_runs


def test_twomoon_regions_side_by_side(tmp_path):
    runs = []
    for method in ("supervised", "mpl"):
        cfg = build_config("twomoon", ["train.steps=20", "train.eval_every=0"], method)
        run_experiment(cfg, tmp_path / method, progress=False, tensorboard=False)
        runs.append(tmp_path / method)
    out = plot_runs(runs, tmp_path / "regions.png")
    assert out == tmp_path / "regions.png" and out.stat().st_size > 20_000
    curves = plot_runs(runs[:1], kind="curves")
    assert curves.name == "curves.png" and curves.stat().st_size > 10_000


def test_bars(tmp_path):
    plot_bars({"a": [0.5, 0.6], "b": [0.9]}, tmp_path / "bars.png", "title")
    assert (tmp_path / "bars.png").stat().st_size > 5_000


def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        plot_runs([tmp_path])
