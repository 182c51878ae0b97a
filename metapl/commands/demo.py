"""`make demo`: supervised vs UDA vs MPL on scikit-learn's 8×8 digits with 5 labels per class, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from metapl.commands.plot import plot_bars, plot_curves
from metapl.core.atomic import atomic_write_json, atomic_write_text
from metapl.run import ownership
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

DEMO_METHODS = ("supervised", "uda", "mpl")


def run_demo(out: Path, steps: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """Train each method on the `digits` preset, print the comparison table, write table.json and demo.png."""
    out = Path(out)
    # A new or empty folder, or an earlier demo's: never a folder of the user's.
    ownership.check_folder(out, "demo", adopt=_earlier_demo(out))
    overrides = [f"train.seed={seed}"] + ([f"train.steps={steps}"] if steps is not None else [])
    configs = {method: build_config("digits", overrides, method) for method in DEMO_METHODS}  # checked first
    out.mkdir(parents=True, exist_ok=True)
    ownership.claim(out, "demo")
    summaries = {}
    for method, cfg in configs.items():
        print(f"training {method} ({cfg.train.steps} steps) ...", flush=True)
        summaries[method] = run_experiment(cfg, out / method, progress=progress, announce=print)
    table = format_table(summaries)
    print(table)
    atomic_write_text(out / "table.md", table + "\n")
    atomic_write_json(summaries, out / "table.json")
    plot_bars(
        {m: [s["test_top1_selected"]] for m, s in summaries.items()},
        out / "demo_accuracy.png",
        "digits, 5 labels/class: validation-selected test accuracy",
        teachers={
            m: [s["teacher_test_top1_selected"]] for m, s in summaries.items() if "teacher_test_top1_selected" in s
        },
    )
    plot_curves([out / m for m in DEMO_METHODS], out / "demo_curves.png")
    print(f"wrote {out / 'table.md'}, {out / 'demo_accuracy.png'} and {out / 'demo_curves.png'}")
    return summaries


def _earlier_demo(out: Path) -> bool:
    """A demo folder of a metapl from before metapl.json, recognised by its table.json."""
    try:
        table = json.loads((out / "table.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(table, dict) and bool(table) and set(table) <= set(DEMO_METHODS)


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
