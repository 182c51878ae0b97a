"""`make demo`: supervised vs UDA vs MPL on scikit-learn's 8×8 digits with 5 labels per class, on the CPU."""

from __future__ import annotations

from pathlib import Path

from metapl.config import build_config
from metapl.engine.checkpoint import atomic_write_json
from metapl.experiment import run_experiment
from metapl.plot import plot_bars, plot_curves

DEMO_METHODS = ("supervised", "uda", "mpl")


def run_demo(out: Path, steps: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """Train each method on the `digits` preset, print the comparison table, write table.json and demo.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for method in DEMO_METHODS:
        overrides = [f"train.seed={seed}"] + ([f"train.steps={steps}"] if steps is not None else [])
        cfg = build_config("digits", overrides, method)
        print(f"training {method} ({cfg.train.steps} steps) ...", flush=True)
        summaries[method] = run_experiment(cfg, out / method, progress=progress)
    table = format_table(summaries)
    print(table)
    (out / "table.md").write_text(table + "\n")
    atomic_write_json(summaries, out / "table.json")
    plot_bars(
        {m: [s["test_top1_selected"]] for m, s in summaries.items()},
        out / "demo_accuracy.png",
        "digits, 5 labels/class: validation-selected test accuracy",
    )
    plot_curves([out / m for m in DEMO_METHODS], out / "demo_curves.png")
    print(f"wrote {out / 'table.md'}, {out / 'demo_accuracy.png'} and {out / 'demo_curves.png'}")
    return summaries


def format_table(summaries: dict[str, dict]) -> str:
    """A Markdown table per method: validation-selected and final test accuracy (the student's for MPL), the
    MPL teacher's final test accuracy, and training time."""
    rows = [
        "| method | test acc. (selected on val) | test acc. (final) | MPL teacher, test acc. (final) | train time (s) |",
        "|---|---|---|---|---|",
    ]
    for method, s in summaries.items():
        teacher = s.get("train_final_teacher_test_top1")
        teacher_text = f"{teacher:.1%}" if teacher is not None else "–"
        rows.append(
            f"| {method} | {s['test_top1_selected']:.1%} | {s['test_top1']:.1%} | {teacher_text} | {s['train_seconds']:.0f} |"
        )
    return "\n".join(rows)
