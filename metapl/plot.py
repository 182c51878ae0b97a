"""Plots of finished runs: metric curves from metrics.jsonl, and decision regions for 2-D data (paper Fig. 2)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from metapl.config import load_config_file  # noqa: E402
from metapl.engine.atomic import atomic_write_bytes  # noqa: E402
from metapl.engine.checkpoint import load_weights  # noqa: E402
from metapl.engine.evaluate import predict_proba  # noqa: E402
from metapl.engine.logger import read_metrics  # noqa: E402
from metapl.engine.outputs import check_output_file, inputs_of_run  # noqa: E402
from metapl.engine.ownership import check_replaceable, figure_metadata  # noqa: E402
from metapl.engine.run_dir import with_own_split  # noqa: E402
from metapl.errors import CheckpointError, ConfigError  # noqa: E402
from metapl.inference.run import load_state  # noqa: E402

CURVE_PANELS = (
    ("accuracy", ("train_eval/val_top1", "train_eval/test_top1", "finetune_eval/test_top1")),
    (
        "losses",
        ("train/loss", "train/teacher_loss", "train/student_loss", "train/teacher_sup_loss", "train/teacher_uda_loss"),
    ),
    ("teacher feedback", ("train/h", "train/baseline")),
    ("unlabeled data", ("train/uda_mask", "train/teacher_uda_mask", "train/pseudo_label_acc", "train/agreement")),
)


def plot_runs(runs: list[Path], out: Path | None = None, kind: str = "auto") -> Path:
    """Write one PNG for the runs and return its path."""
    runs = [Path(r) for r in runs]
    for run in runs:
        if not (run / "config.yaml").is_file():
            raise CheckpointError(
                f"{run} is not a run directory (no config.yaml); pass directories written by metapl train"
            )
    configs = [load_config_file(run / "config.yaml") for run in runs]
    two_d = all(c.data.name == "twomoon" for c in configs)
    if kind == "auto":
        kind = "regions" if two_d else "curves"
    if kind == "regions" and not two_d:
        raise ConfigError("--kind regions needs runs on 2-D data (the twomoon preset); use --kind curves")
    if kind == "curves":
        for run in runs:
            if not (run / "metrics.jsonl").is_file():
                raise CheckpointError(f"{run} has no metrics.jsonl; pass a run directory written by metapl train")
    out = Path(out) if out else runs[0] / f"{kind}.png"
    check_output_file(out, [input for run in runs for input in inputs_of_run(run)], runs)
    check_replaceable(out)
    check_image_name(out)
    if kind == "regions":
        plot_decision_regions(runs, configs, out)
    else:
        plot_curves(runs, out)
    return out


def check_image_name(out: Path) -> None:
    """Refuse an output name whose suffix names no format matplotlib writes (it would fail after the plot)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in formats:
        shown = ", ".join(f".{f}" for f in ("png", "pdf", "svg", "jpg"))
        what = f"the suffix .{suffix}" if suffix else "no suffix"
        raise ConfigError(f"--out {out} has {what}, which names no image format; end it in one of {shown}")


def save_figure(fig, out: Path) -> None:
    """Lay out, write atomically with metapl's mark in the file's metadata (where the format has one), close."""
    fig.tight_layout()
    fmt = Path(out).suffix.lower().lstrip(".")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120, metadata=figure_metadata(fmt))
    plt.close(fig)
    atomic_write_bytes(out, buffer.getvalue())


def _read_series(run: Path) -> dict[str, tuple[list[float], list[float]]]:
    """{'phase/metric': (steps, values)} of a run's metrics.jsonl; records that are not metapl's are skipped."""
    try:
        records = read_metrics(run)
    except (OSError, ValueError) as err:  # ValueError: bytes that are not UTF-8
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"cannot read {run / 'metrics.jsonl'}: {first[:160]}; pass a run directory written by metapl train"
        ) from None
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        if not isinstance(record, dict) or not _finite_number(record.get("step")):
            continue
        for key, value in record.items():
            if key in ("phase", "step") or not _finite_number(value):
                continue
            steps, values = series.setdefault(f"{record.get('phase')}/{key}", ([], []))
            steps.append(float(record["step"]))
            values.append(float(value))
    return series


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_curves(runs: list[Path], out: Path) -> None:
    """Accuracy, losses, h and b, and unlabeled-data diagnostics over steps, one line per run and metric."""
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(5 * len(CURVE_PANELS), 3.8))
    for run in runs:
        series = _read_series(run)
        label = run.name if len(runs) > 1 else ""
        for ax, (title, keys) in zip(axes, CURVE_PANELS):
            for key in keys:
                if key in series:
                    ax.plot(*series[key], label=f"{label} {key.split('/')[-1]}".strip(), lw=1.2)
            ax.set_title(title)
            ax.set_xlabel("step")
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_figure(fig, out)


def plot_decision_regions(runs: list[Path], configs: list, out: Path) -> None:
    """Side-by-side decision regions of each run's final model on its 2-D data, labeled points as stars."""
    from metapl.build import build_model, method_label
    from metapl.data import build_data

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 4), squeeze=False)
    for ax, run, cfg in zip(axes[0], runs, configs):
        data = build_data(with_own_split(run, cfg.data), cfg.train.seed)
        model = build_model(cfg, data)
        path = run / "model.pt"
        load_state(model, load_weights(path, fix="pass a finished run with intact weights"), path, cfg, data)
        points = torch.cat([data.x_unlabeled, data.x_labeled])
        lo, hi = points.min(0).values.numpy() - 0.5, points.max(0).values.numpy() + 0.5
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
        grid = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
        prob = predict_proba(model, grid)[:, 1].numpy().reshape(gx.shape)
        ax.contourf(gx, gy, prob > 0.5, levels=[-0.5, 0.5, 1.5], colors=["#f4c6c6", "#c6d4f4"], alpha=0.9)
        colours = data.y_unlabeled.numpy() if data.y_unlabeled is not None else None  # TwoMoon knows every label
        ax.scatter(*data.x_unlabeled.numpy().T, c=colours, cmap="coolwarm_r", s=3, alpha=0.6)
        ax.scatter(
            *data.x_labeled.numpy().T,
            c=data.y_labeled.numpy(),
            cmap="coolwarm_r",
            marker="*",
            s=320,
            edgecolors="black",
            linewidths=1.2,
        )
        test_acc = (predict_proba(model, data.x_test).argmax(1) == data.y_test).float().mean().item()
        name = method_label(cfg)
        ax.set_title(f"{name}: test accuracy {test_acc:.1%}")
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, out)


def plot_bars(results: dict[str, list[float]], out: Path, title: str) -> None:
    """Mean ± std bars of test accuracy per method."""
    names = list(results)
    means = [float(np.mean(results[n])) for n in names]
    stds = [float(np.std(results[n])) for n in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.8))
    ax.bar(names, means, yerr=stds, capsize=4, color="#5b8bd0")
    for i, mean in enumerate(means):
        ax.text(i, mean + 0.01, f"{mean:.1%}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    save_figure(fig, out)
