"""Plots: decision regions for 2-D runs side by side, curves for the rest, bars for summaries. Each plot function
is rendered on small synthetic metrics and checked for what a reader needs: an accuracy axis from the plateau,
one colour per run, teachers dashed, validation apart from test, a teacher bar, an axis label that says where it
starts."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from cli_helpers import TINY, one_line_error, succeeds
from PIL import Image

from metapl.commands.plot import bars_figure, curves_figure, plateau_limits, plot_bars, plot_curves, plot_runs
from metapl.core.errors import CheckpointError
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

STEPS = [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]


def _accuracy(start: float, end: float) -> list[float]:
    """A climb from `start` that levels off near `end`."""
    return [end - (end - start) * 0.5**i for i in range(len(STEPS))]


def _synthetic_runs() -> dict:
    """Two runs' series as metrics.jsonl gives them: a supervised one, and an MPL one with its teacher."""
    supervised = {
        "train_eval/test_top1": (STEPS, _accuracy(0.3, 0.9)),
        "train_eval/val_top1": (STEPS, _accuracy(0.3, 0.92)),
        "train/loss": (STEPS, [2.0, 1.0, 0.6, 0.5, 0.45, 0.4]),
    }
    mpl = {
        "train_eval/test_top1": (STEPS, _accuracy(0.2, 0.94)),
        "train_eval/val_top1": (STEPS, _accuracy(0.2, 0.95)),
        "train_eval/teacher_test_top1": (STEPS, _accuracy(0.25, 0.88)),
        "train_eval/teacher_val_top1": (STEPS, _accuracy(0.25, 0.89)),
        "train/student_loss": (STEPS, [2.0, 1.5, 1.2, 1.0, 0.9, 0.8]),
        "train/teacher_loss": (STEPS, [2.0, 1.2, 0.9, 0.8, 0.7, 0.6]),
        "train/h": (STEPS, [0.0, 1e-3, 2e-3, 1e-3, 0.0, 1e-3]),
        "train/baseline": (STEPS, [0.0, 1e-4, 5e-4, 7e-4, 6e-4, 6e-4]),
    }
    return {"supervised": supervised, "mpl": mpl}


def _axis(fig, title: str):
    return next(ax for ax in fig.axes if ax.get_title() == title)


def test_curves_figure_reads_at_a_glance():
    fig = curves_figure(_synthetic_runs())
    try:
        for title, split in (("test accuracy", "test"), ("validation accuracy", "val")):
            ax = _axis(fig, title)  # validation and test on panels of their own: never confused
            low, high = ax.get_ylim()
            top = max(max(v) for v in (line.get_ydata() for line in ax.lines))
            assert 0.5 < low < 0.85 and top < high <= 1.0, (title, low, high)  # from the plateau, not (0, 1)
            assert "plateau" in ax.get_ylabel()  # the climb is cut: the axis says so
            lines = {(line.get_color(), line.get_linestyle()) for line in ax.lines}
            colours = {colour for colour, _ in lines}
            assert len(colours) == 2  # one colour per run
            teacher = [line for line in ax.lines if line.get_linestyle() == "--"]
            assert len(teacher) == 1  # only MPL has a teacher: dashed, in MPL's colour
            student_mpl = [line for line in ax.lines if line.get_color() == teacher[0].get_color()]
            assert {line.get_linestyle() for line in student_mpl} == {"-", "--"}
            assert list(teacher[0].get_ydata()) == _synthetic_runs()["mpl"][f"train_eval/teacher_{split}_top1"][1]
        legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert {"supervised", "mpl", "teacher"} <= {text.split(" (")[0] for text in legend}
        losses = [t.get_text() for t in _axis(fig, "losses").get_legend().get_texts()]
        assert {"loss", "student_loss", "teacher_loss"} <= set(losses)
    finally:
        plt.close(fig)


def test_curves_figure_without_a_teacher_shows_no_teacher_key():
    fig = curves_figure({"supervised": _synthetic_runs()["supervised"]})
    try:
        legend = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        assert "teacher" not in legend and "supervised" in legend
    finally:
        plt.close(fig)


def test_plateau_limits():
    limits = plateau_limits([[0.85, 0.9, 0.95]])
    assert limits is not None
    low, high = limits
    assert 0.8 < low < 0.9 and 0.95 < high <= 1.0  # not (0, 1) for data in [0.85, 0.95]
    climbing = plateau_limits([[0.1, 0.5, 0.9, 0.9]])
    assert climbing is not None and climbing[0] > 0.5  # the climb's first half does not pull the axis down
    assert plateau_limits([[]]) is None
    perfect = plateau_limits([[1.0, 1.0]])
    assert perfect is not None and perfect[1] > 1.0  # a point at 100 % is not on the frame


def test_plot_curves_writes_a_png_from_metrics_jsonl(tmp_path):
    for name, series in _synthetic_runs().items():
        (tmp_path / name).mkdir()
        records = []
        for i, step in enumerate(STEPS):
            for phase in ("train", "train_eval"):
                values = {k.split("/")[1]: v[1][i] for k, v in series.items() if k.startswith(phase + "/")}
                records.append(json.dumps({"phase": phase, "step": step, **values}))
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(records) + "\n")
    out = tmp_path / "curves.png"
    plot_curves([tmp_path / "supervised", tmp_path / "mpl"], out)
    with Image.open(out) as image:
        assert image.size[0] > 1000 and len(np.unique(np.asarray(image.convert("L")))) > 20


def test_bars_figure_has_teacher_bars_and_an_axis_that_shows_the_differences():
    fig = bars_figure(
        {"supervised": [0.86, 0.88], "uda": [0.9], "mpl": [0.92, 0.93]},
        "title",
        teachers={"mpl": [0.89, 0.9]},
        finals={"supervised": [0.85, 0.86], "uda": [0.9], "mpl": [0.91, 0.93]},
    )
    try:
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        assert 0.5 <= low < 0.85 and 0.93 < high <= 1.0  # from 0, 86 % and 93 % would look alike
        assert f"starts at {low:.0%}" in ax.get_ylabel()
        bars = ax.patches
        assert len(bars) == 4  # three methods, one teacher
        teacher = [bar for bar in bars if bar.get_hatch()]
        assert len(teacher) == 1 and teacher[0].get_height() == pytest.approx(0.895)
        mpl = [bar for bar in bars if not bar.get_hatch() and bar.get_height() == pytest.approx(0.925)]
        assert mpl[0].get_facecolor()[:3] == teacher[0].get_facecolor()[:3]  # the teacher in its method's colour
        assert len({bar.get_facecolor()[:3] for bar in bars}) == 3  # one colour per method
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "its teacher" in legend and "final step (mean)" in legend
    finally:
        plt.close(fig)


def test_bars_start_at_zero_when_the_differences_show_from_there():
    fig = bars_figure({"a": [0.2], "b": [0.9]}, "title")
    try:
        assert fig.axes[0].get_ylim()[0] == 0 and "starts" not in fig.axes[0].get_ylabel()
    finally:
        plt.close(fig)


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
    plot_bars({"a": [0.5, 0.6], "b": [0.9]}, tmp_path / "bars.png", "title", teachers={"b": [0.8]})
    assert (tmp_path / "bars.png").stat().st_size > 5_000


def test_plot_refuses_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="not a run directory"):
        plot_runs([tmp_path])


def test_an_accuracy_panel_without_data_says_so():
    fig = curves_figure({"twomoon": {"train_eval/test_top1": ([100.0, 200.0], [0.7, 0.8])}})  # no validation split
    try:
        panel = _axis(fig, "validation accuracy")
        assert not panel.lines and [t.get_text() for t in panel.texts] == ["no validation accuracy in these runs"]
    finally:
        plt.close(fig)


# ------------------------------------------------------------------------------------ bad inputs
def _metrics(digits_run_copy: Path, content: bytes) -> None:
    (digits_run_copy / "metrics.jsonl").write_bytes(content)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("out=x.unknownformat", "names no image format"),
        ("out=noext", "has no suffix"),
        ("metrics=binary", "cannot read"),
        ("metrics=odd records", None),
        ("metrics=directory", "metrics.jsonl"),
        ("config=garbage", "config.yaml"),
        ("model=architecture", "does not fit the model of"),
        ("model=missing", "model.pt"),
        ("run=file", "is not a run directory"),
    ],
)
def test_bad_plot_inputs_are_one_line(capsys, tmp_path, damage, fragment):
    digits_run_copy = tmp_path / "moon"
    succeeds(capsys, "train", "--preset", "twomoon", *TINY, "--set", "train.steps=2", "--out", digits_run_copy)
    args: list[object] = ["plot", digits_run_copy]
    what, _, how = damage.partition("=")
    if what == "out":
        args += ["--out", tmp_path / how]
    elif how == "binary":
        _metrics(digits_run_copy, b"\xff\xfe\x00garbage\n")
        args += ["--kind", "curves"]
    elif how == "odd records":
        _metrics(
            digits_run_copy,
            b'[1, 2]\n{"phase": "train"}\n{"step": "x", "loss": 1}\n{"phase": "train", "step": 1, "a": "b"}\n',
        )
        args += ["--kind", "curves", "--out", tmp_path / "c.png"]
    elif how == "directory":
        (digits_run_copy / "metrics.jsonl").unlink()
        (digits_run_copy / "metrics.jsonl").mkdir()
        args += ["--kind", "curves"]
    elif what == "config":
        (digits_run_copy / "config.yaml").write_bytes(b"\x00\x01: [")
    elif how == "architecture":
        from metapl.parts.models import create_model

        torch.save(create_model("mlp", 3, (2,), hidden=(7,)).state_dict(), digits_run_copy / "model.pt")
    elif how == "missing":
        (digits_run_copy / "model.pt").unlink()
    elif how == "file":
        args[1] = digits_run_copy / "config.yaml"
    if fragment is None:
        succeeds(capsys, *args)
        return
    assert fragment in one_line_error(capsys, *args)
