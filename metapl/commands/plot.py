"""Plots of finished runs: metric curves from metrics.jsonl, and decision regions for 2-D data (paper Fig. 2)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from metapl.commands.finished_run import load_state  # noqa: E402
from metapl.core.atomic import atomic_write_bytes  # noqa: E402
from metapl.core.checkpoint import load_weights  # noqa: E402
from metapl.core.errors import CheckpointError, ConfigError, first_line  # noqa: E402
from metapl.parts.methods.base import top1  # noqa: E402
from metapl.run.config import load_config_file  # noqa: E402
from metapl.run.logger import read_metrics  # noqa: E402
from metapl.run.outputs import check_output_file, inputs_of_run  # noqa: E402
from metapl.run.ownership import check_replaceable, figure_metadata  # noqa: E402
from metapl.run.run_dir import with_own_split  # noqa: E402
from metapl.run.scoring import predict_proba  # noqa: E402

# The panels of curves.png: (title, {"phase/metric": line style}). One colour per run; within it the student's
# lines are solid and the teacher's dashed (other styles tell a panel's other metrics apart, in its legend).
# Validation and test accuracy have a panel each, so that they cannot be mistaken for one another.
STUDENT, TEACHER = "-", "--"
CURVE_PANELS: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "test accuracy",
        {"train_eval/test_top1": STUDENT, "finetune_eval/test_top1": STUDENT, "train_eval/teacher_test_top1": TEACHER},
    ),
    (
        "validation accuracy",
        {"train_eval/val_top1": STUDENT, "finetune_eval/val_top1": STUDENT, "train_eval/teacher_val_top1": TEACHER},
    ),
    (
        "losses",
        {
            "train/loss": STUDENT,
            "finetune/loss": STUDENT,
            "train/student_loss": STUDENT,
            "train/teacher_loss": TEACHER,
            "train/teacher_sup_loss": "-.",
            "train/teacher_uda_loss": ":",
        },
    ),
    ("teacher feedback", {"train/h": "-", "train/baseline": ":"}),
    (
        "unlabeled data",
        {"train/pseudo_label_acc": "-", "train/agreement": ":", "train/uda_mask": "-.", "train/teacher_uda_mask": "--"},
    ),
)
ACCURACY_PANELS = ("test accuracy", "validation accuracy")
Series = dict[str, tuple[list[float], list[float]]]  # {"phase/metric": (steps, values)}


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
        first = first_line(err)
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
    """curves.png: test and validation accuracy (teachers dashed), losses, h and b, and unlabeled-data
    diagnostics over steps, one colour per run."""
    save_figure(curves_figure({Path(run).name: _read_series(Path(run)) for run in runs}), out)


def run_colours(names: list[str]) -> dict[str, str]:
    """One colour per run or method, in order (the same order gives the same colours in every plot)."""
    palette = matplotlib.colormaps["tab10"].colors  # type: ignore[attr-defined]  # a ListedColormap
    return {name: matplotlib.colors.to_hex(palette[i % len(palette)]) for i, name in enumerate(names)}


def plateau_limits(series: list[list[float]], ceiling: float = 1.0) -> tuple[float, float] | None:
    """y limits for accuracy curves that start from the plateau rather than from chance: below the lowest value
    of each series' second half (the climb of the first half may fall below the axis), above the highest value;
    None for no values."""
    tails = [v for values in series if values for v in values[len(values) // 2 :]]
    every = [v for values in series for v in values]
    if not tails:
        return None
    low, high = min(tails), max(every)
    margin = max(0.01, 0.08 * (high - low))
    return max(0.0, low - margin), min(ceiling + margin / 4, high + margin)  # a point at 100 % stays visible


def curves_figure(runs: dict[str, Series]):
    """The figure of plot_curves for runs given by name and series (what metrics.jsonl holds)."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    colours = run_colours(list(runs))
    panel_axes = dict(zip((title for title, _ in CURVE_PANELS), axes.flat))
    drawn_teacher = False
    for title, styles in CURVE_PANELS:
        ax = panel_axes[title]
        keys_drawn: dict[str, str] = {}
        plotted: list[list[float]] = []
        for name, series in runs.items():
            for key, style in styles.items():
                if key in series:
                    steps, values = series[key]
                    ax.plot(steps, values, style, color=colours[name], lw=1.3, marker="." if len(steps) < 30 else None)
                    keys_drawn[key.split("/")[-1]] = style
                    plotted.append(values)
                    drawn_teacher |= style == TEACHER and title in ACCURACY_PANELS
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title in ACCURACY_PANELS and not plotted:  # e.g. TwoMoon, which has no validation split
            ax.text(0.5, 0.5, f"no {title} in these runs", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        elif title in ACCURACY_PANELS:
            ax.set_ylabel("top-1 accuracy")
            limits = plateau_limits(plotted)
            if limits is not None:
                ax.set_ylim(*limits)
                if any(v < limits[0] for values in plotted for v in values):
                    ax.set_ylabel("top-1 accuracy (axis from the plateau)")
        elif len(keys_drawn) > 1:  # which style is which metric; the colours are the runs'
            handles = [Line2D([], [], color="0.35", ls=style, label=key) for key, style in keys_drawn.items()]
            ax.legend(handles=handles, fontsize=7)
        elif keys_drawn:
            ax.set_ylabel(next(iter(keys_drawn)))
    key_ax = axes.flat[len(CURVE_PANELS)]
    key_ax.axis("off")
    handles = [Line2D([], [], color=colour, lw=3, label=name) for name, colour in colours.items()]
    handles.append(Line2D([], [], color="0.35", ls=STUDENT, label="student (the evaluated model)"))
    if drawn_teacher:
        handles.append(Line2D([], [], color="0.35", ls=TEACHER, label="teacher"))
    key_ax.legend(handles=handles, loc="center", fontsize=9, title="runs (colour) and networks (line)")
    return fig


def plot_decision_regions(runs: list[Path], configs: list, out: Path) -> None:
    """Side-by-side decision regions of each run's final model on its 2-D data, labeled points as stars."""
    from metapl.parts.data import build_data
    from metapl.run.build import build_model, method_label

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
        test_acc = top1(predict_proba(model, data.x_test), data.y_test).item()
        name = method_label(cfg)
        teacher = _summary(run).get("teacher_test_top1")  # the regions are the student's; its teacher's score beside
        teacher_text = f"\n(its teacher: {teacher:.1%})" if isinstance(teacher, float) else ""
        ax.set_title(f"{name}: test accuracy {test_acc:.1%}{teacher_text}")
        ax.set_xticks([])
        ax.set_yticks([])
    save_figure(fig, out)


def _summary(run: Path) -> dict:
    """A run's summary.json, or {} when it has none that reads (plots still draw without it)."""
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def plot_bars(
    results: dict[str, list[float]],
    out: Path,
    title: str,
    teachers: dict[str, list[float]] | None = None,
    finals: dict[str, list[float]] | None = None,
) -> None:
    """Mean ± std bars of test accuracy per method, and a hatched, lighter bar beside it for its teacher
    (`teachers`: the teacher's accuracies of the methods that have one); `finals`: the final step's accuracy
    of each method, a diamond on its bar (when `results` are validation-selected)."""
    save_figure(bars_figure(results, title, teachers, finals), out)


def bars_figure(
    results: dict[str, list[float]],
    title: str,
    teachers: dict[str, list[float]] | None = None,
    finals: dict[str, list[float]] | None = None,
):
    """The figure of plot_bars. The y axis starts above 0 when the bars differ by little against their height
    (from 0 the differences would not show), and its label says where it starts."""
    teachers = {name: values for name, values in (teachers or {}).items() if values and name in results}
    names = list(results)
    colours = run_colours(names)
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 0.8 * len(teachers) + 2.5, 4.2))
    width = 0.38 if teachers else 0.7
    tops: list[float] = []
    bars: list[tuple[float, float, float]] = []  # (x, mean, std) of every bar, for the labels
    for i, name in enumerate(names):
        groups: list[tuple[list[float], dict]] = [(results[name], {})]  # the student, then its teacher hatched
        if name in teachers:
            groups.append((teachers[name], {"hatch": "///", "alpha": 0.45, "edgecolor": colours[name]}))
        offsets = [0.0] if len(groups) == 1 else [-width / 2, width / 2]
        for (values, style), offset in zip(groups, offsets):
            mean, std = float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            ax.bar(i + offset, mean, width, yerr=std if std else None, capsize=4, color=colours[name], **style)
            bars.append((i + offset, mean, std))
            tops.append(mean + std)
        if finals and finals.get(name):
            final = float(np.mean(finals[name]))
            ax.scatter(i + offsets[0], final, color="black", marker="D", s=18, zorder=3)
            tops.append(final)
    low = min([mean - std for _, mean, std in bars] + [float(np.mean(v)) for v in (finals or {}).values() if v])
    high = max(tops)
    floor = 0.0
    if low > 0 and high - low < 0.5 * low:  # from 0 the bars would look alike: start near the lowest
        floor = max(0.0, np.floor((low - max(0.03, 0.6 * (high - low))) * 20) / 20)  # a multiple of 5 %
    headroom = max(0.02, (0.25 if teachers or finals else 0.12) * (high - floor))  # the labels, and the legend
    ax.set_ylim(floor, min(1.0 + headroom / 2, high + headroom))
    for x, mean, std in bars:
        ax.text(x, mean + std + 0.004 * (1 - floor), f"{mean:.1%}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        range(len(names)), names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center"
    )
    ax.set_ylabel("test accuracy" + (f" (axis starts at {floor:.0%})" if floor > 0 else ""))
    handles: list = []
    if teachers:
        handles += [
            Patch(facecolor="0.5", label="student (the evaluated model)"),
            Patch(facecolor="0.5", alpha=0.45, hatch="///", edgecolor="0.3", label="its teacher"),
        ]
    if finals:
        handles.append(Line2D([], [], color="black", marker="D", ls="", ms=4, label="final step (mean)"))
    if handles:
        ax.legend(
            handles=handles,
            fontsize=8,
            loc="upper center",
            ncol=2,
        )
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title)
    return fig
