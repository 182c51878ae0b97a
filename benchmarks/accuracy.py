"""Honest accuracy over seeds: supervised, Pseudo Labels, UDA and every MPL feedback, same budget, validation-selected.

    python benchmarks/accuracy.py --preset digits --seeds 3 --jobs 2 --out runs/accuracy/digits
    python benchmarks/accuracy.py --quick                      # digits, 2 seeds, 1,000 steps (make bench-accuracy)

Every variant runs on the preset's data, model, batch sizes (B, μB), augmentation and step budget; only the
method (and, for MPL, its feedback) changes. Each run's checkpoint is selected on the validation split and its
test accuracy reported (`test_top1_selected`), next to the final step's (`test_top1`). Prints a Markdown table
(mean ± std over seeds), writes results.json, table.md, a bar plot with error bars (bars.png) and diagnostic
curves of the first seed (curves.png: student and teacher test accuracy, h and b, pseudo-label accuracy on
unlabeled data, teacher–student agreement). results.json is rewritten after every run ("complete": false
until the end), so `--plot-only` draws what a long benchmark has finished; `--merge` adds variants to it.

A budget sweep runs the same variants at several training budgets in one command, into OUT/steps-N/ each,
and writes one OUT/sweep.json and OUT/budgets.png (test accuracy against steps, selected and final, one line
per method, the seed spread as error bars), and per budget OUT/steps-N/curves.png (test accuracy during training,
mean over seeds, teachers dashed) and the step from which each student stays above its teacher;
`STEPS:SEEDS` gives one budget fewer seeds, and `--merge` adds budgets to an earlier sweep in OUT:

    python benchmarks/accuracy.py --preset digits --budgets 2000 4000 16000 64000:3 --seeds 5 --jobs 2 \
        --variants supervised uda "mpl hard dot" "mpl hard dot + finetune" "mpl official"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import torch

from metapl.parts.data.datasets import FASHION_MNIST_ROOT
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

# name -> (method, overrides on top of the preset). Only the "+ finetune" row finetunes: the MPL (hard, dot)
# student, then trained on the labeled images alone (docs/method.md#finetuning), with the preset's finetune settings where it has
# them (cifar10_4k, svhn_1k, imagenet_10pct), else FINETUNE_FRACTION of the training steps at FINETUNE_LR, on top
# of the training budget. Its training phase is, step for step, the "mpl hard dot" run: one run gives both rows.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "supervised": ("supervised", []),
    "pseudo_label": ("pseudo_label", []),
    "uda": ("uda", []),
    "mpl hard dot": ("mpl", ["method.feedback=hard", "method.h=dot"]),
    "mpl hard cosine": ("mpl", ["method.feedback=hard", "method.h=cosine"]),
    "mpl hard taylor": ("mpl", ["method.feedback=hard", "method.h=taylor"]),
    "mpl soft": ("mpl", ["method.feedback=soft"]),
    "mpl official": ("mpl", ["method.feedback=official"]),
    "mpl hard dot + finetune": ("mpl", ["method.feedback=hard", "method.h=dot"]),
}
FINETUNE_FRACTION = 0.1
FINETUNE_LR = 0.005  # the paper's 1e-5 is for batch 512 on CIFAR after 300k steps; a tenth of the training LR here
QUICK = {"preset": "digits", "seeds": 2, "steps": 1000}
# Diagnostics read from metrics.jsonl: (panel title, phase, key) — the names metapl.parts.methods log.
# The accuracy panels draw the student solid and, where it has one, its teacher dashed, in the method's colour.
CURVES = (
    ("test accuracy: student (EMA) solid, teacher dashed", "train_eval", "test_top1"),
    ("validation accuracy: student (EMA) solid, teacher dashed", "train_eval", "val_top1"),
    ("h (teacher feedback)", "train", "h"),
    ("b (moving-average baseline)", "train", "baseline"),
    ("pseudo-label accuracy on unlabeled data", "train", "pseudo_label_acc"),
    ("teacher–student agreement", "train", "agreement"),
)


def _slug(name: str) -> str:
    return name.replace(" + ", "_").replace(" ", "_")


def _run(task: tuple[str, tuple[str, list[str]], str, int, int | None, list[str], Path, int, bool]) -> list[dict]:
    """One run; the finetune variant's training phase is also reported as plain MPL (hard, dot) when `also_plain`."""
    name, (method, variant), preset, seed, steps, extra, out, threads, also_plain = task
    torch.set_num_threads(threads)  # small models: OpenMP hand-offs across busy cores cost more than they save
    overrides = [*variant, *([f"train.steps={steps}"] if steps else []), *extra]
    base = build_config(preset, overrides, method)
    if not name.endswith("finetune"):
        overrides.append("finetune.steps=0")  # presets that finetune (cifar10_4k, ...) do it in the + finetune row only
    elif base.finetune.steps == 0:  # the CPU presets: FINETUNE_FRACTION of the budget at FINETUNE_LR
        overrides += [
            f"finetune.steps={max(1, int(base.train.steps * FINETUNE_FRACTION))}",
            f"finetune.lr={FINETUNE_LR}",
        ]
    cfg = build_config(preset, [*overrides, f"train.seed={seed}"], method)
    run_dir = out / f"{_slug(name)}-seed{seed}"
    summary = run_experiment(cfg, run_dir, progress=False, tensorboard=False)
    # The run's own time from its summary, not this call's: a finished run found again (a resumed or merged sweep)
    # returns at once.
    seconds = round(summary["train_seconds"] + summary.get("finetune_seconds", 0.0), 1)
    record = {
        "name": name,
        "seed": seed,
        "selected": summary["test_top1_selected"],
        "final": summary["test_top1"],
        "teacher_selected": summary.get("teacher_test_top1_selected"),
        "teacher_final": summary.get("teacher_test_top1"),
        "seconds": seconds,
        "overrides": overrides,
        "passes_teacher_at": passes_teacher_at(run_dir),
    }
    records = [record]
    if also_plain:  # the same seed, the same training phase: MPL (hard, dot) before finetuning, with no second run
        train_seconds = summary["train_seconds"]
        records.append(
            {
                **record,
                "name": "mpl hard dot",
                "selected": summary["train_best_test_top1"],
                "final": summary["train_final_test_top1"],
                "seconds": train_seconds,
                "overrides": [o for o in overrides if not o.startswith("finetune.")],
                "from_run": str(run_dir),
            }
        )
    for r in records:
        print(f"{r['name']} seed {seed}: selected {r['selected']:.4f} final {r['final']:.4f} ({r['seconds']:.0f} s)")
    return records


def passes_teacher_at(run: Path) -> int | None:
    """The first evaluation step from which the student's test accuracy stays at or above its teacher's until the
    end of training (finetuning aside), or None: a student that ends below, or a method without a teacher. "Stays"
    rather than "first exceeds", so that two curves crossing back and forth within the test set's noise do not
    count as passing."""
    evals = [r for r in _read(run) if r.get("phase") == "train_eval" and "teacher_test_top1" in r]
    step = None
    for r in reversed(evals):
        if r["test_top1"] < r["teacher_test_top1"]:
            break
        step = r["step"]
    return step


def _mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1%} ± {std:.1%}"


def make_table(results: dict[str, list[dict]]) -> str:
    """Markdown: test accuracy of the validation-selected checkpoint and of the final step, mean ± std over seeds."""
    rows = [
        "| method | test acc., selected on val (mean ± std) | test acc., final step | teacher, final | "
        "per seed (selected) | s / run |",
        "|---|---|---|---|---|---|",
    ]
    for name, records in results.items():
        per_seed = " ".join(f"{r['selected']:.3f}" for r in records)
        seconds = statistics.mean(r["seconds"] for r in records)
        rows.append(
            f"| {name} | {_mean_std([r['selected'] for r in records])} | {_mean_std([r['final'] for r in records])} | "
            f"{_mean_std([r['teacher_final'] for r in records])} | {per_seed} | {seconds:.0f} |"
        )
    return "\n".join(rows)


def _run_dir(out: Path, record: dict) -> Path:
    return Path(record["from_run"]) if record.get("from_run") else out / f"{_slug(record['name'])}-seed{record['seed']}"


def diagnostics(out: Path, results: dict[str, list[dict]]) -> str:
    """Markdown: what the teacher's feedback looked like over the last quarter of training, mean over seeds.

    |h| median, the share of steps with h > 0 (the step on ŷ lowered the student's labeled loss), the MPL term
    relative to the teacher's whole loss (how much the feedback weighs against L_sup + λ·L_UDA), the accuracy of
    the pseudo labels the student learned from, and the teacher–student agreement, on unlabeled batches."""
    rows = [
        "| method | median abs(h) | share h > 0 | abs(MPL term) / teacher loss | pseudo-label acc. | agreement |",
        "|---|---|---|---|---|---|",
    ]
    for name, records in results.items():
        cells: dict[str, list[float]] = {}
        for record in records:
            train = [r for r in _read(_run_dir(out, record)) if r.get("phase") == "train"]
            if not train:
                continue
            last = train[-max(1, len(train) // 4) :]
            for key, fn in (
                ("h", lambda rs: statistics.median(abs(r["h"]) for r in rs)),
                ("h>0", lambda rs: sum(r["h"] > 0 for r in rs) / len(rs)),
                (
                    "ratio",
                    lambda rs: statistics.median(
                        abs(r["teacher_mpl_loss"]) / max(abs(r["teacher_loss"]), 1e-12) for r in rs
                    ),
                ),
                ("pl", lambda rs: statistics.mean(r["pseudo_label_acc"] for r in rs)),
                ("agree", lambda rs: statistics.mean(r["agreement"] for r in rs)),
            ):
                try:
                    value = fn(last)
                except (KeyError, statistics.StatisticsError):  # a method that does not log this
                    continue
                cells.setdefault(key, []).append(value)
        if not cells:
            continue
        cell = partial(_cell, cells)
        rows.append(
            f"| {name} | {cell('h', '.1e')} | {cell('h>0', '.0%')} | {cell('ratio', '.1e')} | {cell('pl', '.1%')} | "
            f"{cell('agree', '.1%')} |"
        )
    return "\n".join(rows)


def _cell(cells: dict[str, list[float]], key: str, fmt: str) -> str:
    return format(statistics.mean(cells[key]), fmt) if key in cells else "—"


def _read(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def plot_bars(results: dict[str, list[dict]], path: Path, title: str) -> None:
    """Mean ± std (error bars) of the selected checkpoints' test accuracy, hatched beside it the teacher's
    (selected on its own validation accuracy), the final-step mean as a diamond (metapl.commands.plot.bars_figure)."""
    import matplotlib.pyplot as plt

    from metapl.commands.plot import bars_figure

    selected = {name: [r["selected"] for r in records] for name, records in results.items()}
    finals = {name: [r["final"] for r in records] for name, records in results.items()}
    teachers = {
        name: [r["teacher_selected"] for r in records if r.get("teacher_selected") is not None]
        for name, records in results.items()
    }
    fig = bars_figure(selected, title, teachers, finals)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _series(run: Path, phase: str, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    path = run / "metrics.jsonl"
    if not path.is_file():
        return steps, values
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("phase") == phase and isinstance(record.get(key), (int, float)):
            steps.append(record["step"])
            values.append(record[key])
    return steps, values


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(out: Path, names: list[str], seed: int, path: Path, title: str) -> None:
    """Diagnostics of one seed, one colour per method: test and validation accuracy (teachers dashed, the axis
    from the plateau), h and b (smoothed), pseudo labels, agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metapl.commands.plot import plateau_limits, run_colours

    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    colours = run_colours(names)
    for ax, (panel, phase, key) in zip(axes.flat, CURVES):
        plotted = []
        for name in names:
            run = out / f"{_slug(name)}-seed{seed}"
            lines = [(key, "-", name)]
            if phase == "train_eval":
                lines.append((f"teacher_{key}", "--", f"{name}: teacher"))
            for series_key, style, label in lines:
                steps, values = _series(run, phase, series_key)
                if not steps:
                    continue
                if phase == "train":
                    values = _smooth(values, 10)
                ax.plot(steps, values, style, lw=1.1, color=colours[name], label=label)
                plotted.append(values)
        ax.set_title(panel + (" (moving average of 10 logs)" if phase == "train" else ""), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key in ("h", "baseline"):
            ax.set_yscale("symlog", linthresh=1e-5)
        if phase == "train_eval" and (limits := plateau_limits(plotted)) is not None:
            ax.set_ylim(*limits)
            ax.set_ylabel("top-1 accuracy (axis from the plateau)")
        if ax.lines:
            ax.legend(fontsize=6)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_budget_curves(out: Path, results: dict[str, list[dict]], path: Path, title: str) -> None:
    """One budget's test accuracy against the step, mean over seeds (the band: ± std): each method's evaluated
    model (solid) and, where it has one, its teacher (dashed), one colour per method. Shows where a student passes
    its teacher and how a model that over-trains declines, which the budget plot's end points cannot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from metapl.commands.plot import plateau_limits, run_colours

    fig, ax = plt.subplots(figsize=(9, 5))
    colours = run_colours(list(results))
    drawn: set[Path] = set()
    means: list[list[float]] = []  # the y axis starts from the plateau (the climb from chance may fall below)
    for name, records in results.items():
        runs = [_run_dir(out, r) for r in records]
        if not runs or runs[0] in drawn:  # "mpl hard dot" is the "+ finetune" run's training phase: drawn once
            continue
        drawn.update(runs)
        label = name.removesuffix(" + finetune")  # the curves are the training phase's
        for key, style, suffix in (("test_top1", "-", ""), ("teacher_test_top1", "--", ": its teacher")):
            series = [_series(run, "train_eval", key) for run in runs]
            series = [s for s in series if s[0]]
            if not series:
                continue
            length = min(len(steps) for steps, _ in series)
            steps = np.array(series[0][0][:length])
            values = np.array([v[:length] for _, v in series])
            mean, std = values.mean(axis=0), values.std(axis=0)
            means.append([float(m) for m in mean])
            ax.plot(steps, mean, style, color=colours[name], lw=1.1, label=f"{label}{suffix} ({len(series)} seeds)")
            ax.fill_between(steps, mean - std, mean + std, color=colours[name], alpha=0.12, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy (mean over seeds; axis from the plateau)")
    if (limits := plateau_limits(means)) is not None:
        ax.set_ylim(*limits)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def ensure_fashion_mnist() -> None:
    """Install Debian's dataset-fashion-mnist when its files are missing (needs root and apt-get)."""
    if Path(FASHION_MNIST_ROOT).is_dir() and any(Path(FASHION_MNIST_ROOT).iterdir()):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SystemExit(f"{FASHION_MNIST_ROOT} is missing: run `sudo apt-get install -y dataset-fashion-mnist`")
    print("installing dataset-fashion-mnist with apt-get", flush=True)
    subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, Python {platform.python_version()}"


def _record(args, results: dict[str, list[dict]], elapsed: float, complete: bool) -> dict:
    return {
        "preset": args.preset,
        "steps": args.steps,
        "overrides": args.overrides,
        "seeds": sorted({r["seed"] for records in results.values() for r in records}),
        "jobs": args.jobs,
        "threads_per_job": args.threads,
        "seconds": round(elapsed, 1),
        "complete": complete,
        "machine": machine(),
        "command": args.command,
        "results": results,
    }


def write_outputs(args, results: dict[str, list[dict]], record: dict | None) -> None:
    """Table, plots and (unless redrawing) results.json; the plots also into --docs."""
    results = {name: records for name, records in results.items() if records}
    table = make_table(results) + "\n\nDiagnostics, last quarter of training (mean over seeds):\n\n"
    table += diagnostics(args.out, results)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    title = f"{args.preset}: test accuracy over {max(len(r) for r in results.values())} seeds"
    bars = args.out / "bars.png"
    plot_bars(results, bars, title)
    curves = args.out / "curves.png"
    seed = min(r["seed"] for records in results.values() for r in records)
    plot_curves(args.out, list(results), seed, curves, f"{args.preset}, seed {seed}: diagnostics")
    if record is not None:
        _write_json(args.out / "results.json", record)
        print(f"total time: {record['seconds']:.0f} s with {args.jobs} job(s) of {args.threads} thread(s)")
    (args.out / "table.md").write_text(table + "\n")
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        stem = args.docs_name or args.preset
        shutil.copyfile(bars, args.docs / f"accuracy_{stem}.png")
        shutil.copyfile(curves, args.docs / f"curves_{stem}.png")
        print(f"copied the plots to {args.docs}/accuracy_{stem}.png and curves_{stem}.png")
    print(f"wrote {args.out}/results.json, table.md, bars.png, curves.png")


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)


def _collect(names: list[str], finished: list[dict], earlier: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Records by variant in the order asked, seeds ascending; variants not rerun are kept from `earlier`."""
    order = [*[n for n in earlier if n not in names], *names]
    results: dict[str, list[dict]] = {n: list(earlier.get(n, [])) if n not in names else [] for n in order}
    for record in sorted(finished, key=lambda r: r["seed"]):
        results[record["name"]].append(record)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--seeds", type=int, default=3, help="N seeds from --first-seed (each draws its own split)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="the first seed (a claim is checked on seeds it was not tuned on)"
    )
    parser.add_argument("--steps", type=int, default=None, help="train.steps for every variant (default: the preset's)")
    parser.add_argument("--variants", nargs="+", default=None, help=f"a subset of: {', '.join(VARIANTS)}")
    parser.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="NAME=METHOD[:KEY=VALUE,...]",
        help="an extra variant for ablations, e.g. 'mpl sign -1=mpl:method.h_sign=-1'",
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=None, help="default runs/accuracy/PRESET")
    parser.add_argument("--quick", action="store_true", help="digits, 2 seeds, 1,000 steps: a few minutes on 2 cores")
    parser.add_argument("--docs", type=Path, default=None, help="also copy the plots into this folder (docs)")
    parser.add_argument("--docs-name", default=None, help="file stem of the copied plots (default: the preset)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep OUT/results.json's other variants (with --budgets: OUT/sweep.json's other budgets)",
    )
    parser.add_argument("--plot-only", action="store_true", help="redraw table and plots from OUT/results.json")
    parser.add_argument(
        "--budgets",
        nargs="+",
        default=None,
        metavar="STEPS[:SEEDS]",
        help="a budget sweep: train.steps values (each with its own seed count after ':', else --seeds)",
    )
    args = parser.parse_args()
    args.command = "python benchmarks/" + " ".join([Path(__file__).name, *os.sys.argv[1:]])
    if args.quick:
        args.preset, args.seeds = QUICK["preset"], min(args.seeds, QUICK["seeds"])
        args.steps = args.steps or QUICK["steps"]
    for spec in args.add:
        head, _, keys = spec.partition(":")
        name, _, method = head.rpartition("=")  # the name may hold '=': the method follows the last one
        VARIANTS[name.strip()] = (method.strip(), [k.strip() for k in keys.split(",") if k.strip()])
    if args.variants is None:
        args.variants = (
            [*VARIANTS] if not args.add else [s.partition(":")[0].rpartition("=")[0].strip() for s in args.add]
        )
    unknown = [n for n in args.variants if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    args.out = args.out or Path("runs/accuracy") / (args.preset + ("-quick" if args.quick else ""))
    cfg = build_config(args.preset, list(args.overrides))
    if cfg.data.name == "fashion_mnist" and not cfg.data.root and not args.plot_only:
        ensure_fashion_mnist()
    if args.budgets:
        budgets = [_budget(spec, args.seeds, parser) for spec in args.budgets]
        if args.plot_only:
            sweep = json.loads((args.out / "sweep.json").read_text())
            plot_budgets(sweep, args.out / "budgets.png", f"{sweep['preset']}: test accuracy against training budget")
            return
        run_sweep(args, budgets, earlier_sweep(args, parser))
        return

    if args.plot_only:
        saved = json.loads((args.out / "results.json").read_text())
        args.preset = saved["preset"]
        write_outputs(args, saved["results"], None)
        return

    earlier: dict[str, list[dict]] = {}
    if args.merge and (args.out / "results.json").is_file():
        earlier = json.loads((args.out / "results.json").read_text())["results"]
    # Longest runs first within a seed, so that parallel jobs finish together; seed by seed, so that a partial
    # results.json (written after every run) already holds whole seeds.
    names, shared = _ordered_names(args.variants)
    tasks = _tasks(args, names, args.steps, args.seeds, args.out, shared)
    started = time.perf_counter()
    finished: list[dict] = []
    with Pool(args.jobs) as pool:
        for records in pool.imap_unordered(_run, tasks, chunksize=1):
            finished += records
            partial = _collect(args.variants, finished, earlier)
            _write_json(args.out / "results.json", _record(args, partial, time.perf_counter() - started, False))
    results = _collect(args.variants, finished, earlier)
    write_outputs(args, results, _record(args, results, time.perf_counter() - started, True))


def _ordered_names(variants: list[str]) -> tuple[list[str], bool]:
    """The variants to run (the '+ finetune' run also gives 'mpl hard dot'), longest first."""
    shared = "mpl hard dot" in variants and "mpl hard dot + finetune" in variants
    names = [n for n in variants if not (shared and n == "mpl hard dot")]
    names.sort(key=lambda n: ("soft" not in n, "finetune" not in n, VARIANTS[n][0] != "mpl"))
    return names, shared


def _tasks(args, names: list[str], steps: int | None, seeds: int, out: Path, shared: bool) -> list[tuple]:
    return [
        (
            name,
            VARIANTS[name],
            args.preset,
            seed,
            steps,
            args.overrides,
            out,
            args.threads,
            shared and "finetune" in name,
        )
        for seed in range(args.first_seed, args.first_seed + seeds)
        for name in names
    ]


def _budget(spec: str, default_seeds: int, parser: argparse.ArgumentParser) -> tuple[int, int]:
    steps, _, seeds = spec.partition(":")
    try:
        budget = (int(steps), int(seeds) if seeds else default_seeds)
    except ValueError:
        parser.error(f"--budgets {spec!r}: write STEPS or STEPS:SEEDS, e.g. 16000 or 64000:3")
    if budget[0] < 1 or budget[1] < 1:
        parser.error(f"--budgets {spec!r}: steps and seeds must be at least 1")
    return budget


def run_sweep(args, budgets: list[tuple[int, int]], earlier: dict) -> None:
    """Every variant at every budget, all runs in one pool (short budgets first), into OUT/steps-N/; the table
    of each budget as in a single run, then OUT/sweep.json (rewritten after every run) and OUT/budgets.png."""
    names, shared = _ordered_names(args.variants)
    tasks = [
        t for steps, seeds in budgets for t in _tasks(args, names, steps, seeds, args.out / f"steps-{steps}", shared)
    ]
    started = time.perf_counter()
    finished: dict[int, list[dict]] = {steps: [] for steps, _ in budgets}
    ran = {str(steps): seeds for steps, seeds in budgets}
    seeds = {**earlier["seeds"], **ran}  # a budget run again replaces its earlier records
    everything = sorted(seeds, key=int)

    def sweep_record(complete: bool) -> dict:
        return {
            "preset": args.preset,
            "budgets": {
                b: _collect(args.variants, finished[int(b)], {}) if b in ran else earlier["budgets"][b]
                for b in everything
            },
            "seeds": {b: seeds[b] for b in everything},
            "commands": {b: args.command if b in ran else earlier["commands"][b] for b in everything},
            "variants": args.variants,
            "overrides": args.overrides,
            "seconds": round(time.perf_counter() - started, 1),
            "complete": complete,
            "machine": machine(),
            "command": args.command,
        }

    with Pool(args.jobs) as pool:
        for records in pool.imap_unordered(_run_budget, tasks, chunksize=1):
            steps, records = records
            finished[steps] += records
            _write_json(args.out / "sweep.json", sweep_record(False))
    record = sweep_record(True)
    _write_json(args.out / "sweep.json", record)
    for steps, results in record["budgets"].items():
        passing = {  # records from before passes_teacher_at existed say so rather than "None"
            name: [r.get("passes_teacher_at", "not recorded") for r in records]
            for name, records in results.items()
            if any(r.get("teacher_final") is not None for r in records)
        }
        print(f"\n### {steps} steps\n\n{make_table(results)}")
        print("\nthe student stays at or above its teacher from step (per seed; None: ends below it):")
        print("\n".join(f"- {name}: {at}" for name, at in passing.items()))
        if (args.out / f"steps-{steps}").is_dir():
            plot_budget_curves(
                args.out / f"steps-{steps}",
                results,
                args.out / f"steps-{steps}" / "curves.png",
                f"{args.preset}, {int(steps):,} steps: test accuracy during training",
            )
    plot_budgets(record, args.out / "budgets.png", f"{args.preset}: test accuracy against training budget")
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.out / "budgets.png", args.docs / f"budgets_{args.docs_name or args.preset}.png")
    print(f"wrote {args.out}/sweep.json and budgets.png ({record['seconds']:.0f} s)")


def earlier_sweep(args, parser: argparse.ArgumentParser) -> dict:
    """What --merge keeps: the budgets, seed counts and commands of the sweep.json an earlier sweep wrote into OUT
    (a longer budget added later, with fewer seeds, joins the same file and plot; each budget keeps the command
    that ran it; files written before --merge existed hold one command for all). Empty without --merge or a file;
    a file this script did not write, or a sweep of another preset, is refused in one line before anything runs."""
    path = args.out / "sweep.json"
    if not args.merge or not path.is_file():
        return {"budgets": {}, "seeds": {}, "commands": {}}
    try:
        sweep = json.loads(path.read_text())
        budgets, seeds = dict(sweep["budgets"]), {str(b): int(n) for b, n in sweep["seeds"].items()}
        commands = dict(sweep.get("commands") or {b: sweep.get("command") for b in budgets})
        if set(budgets) != set(seeds) or not set(budgets) <= set(commands) or not all(b.isdigit() for b in budgets):
            raise ValueError("its budgets, seeds and commands disagree")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        parser.error(f"--merge: {path} is not a sweep.json this script wrote ({err}); move it away or drop --merge")
    if sweep.get("preset") != args.preset:
        parser.error(
            f"--merge: {path} is a sweep of preset {sweep.get('preset')!r}, not {args.preset!r}; pass another --out"
        )
    return {"budgets": budgets, "seeds": seeds, "commands": commands}


def _run_budget(task: tuple) -> tuple[int, list[dict]]:
    return task[4], _run(task)


def plot_budgets(sweep: dict, path: Path, title: str) -> None:
    """Test accuracy against the training budget (log scale), one colour per method: the validation-selected
    checkpoint (solid) and the final step (dashed), mean over seeds with the standard deviation as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    budgets = sorted(int(b) for b in sweep["budgets"])
    names = list(dict.fromkeys(n for b in budgets for n in sweep["budgets"][str(b)] if sweep["budgets"][str(b)][n]))
    from metapl.commands.plot import plateau_limits, run_colours

    colours = run_colours(names)
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn: list[list[float]] = []
    for name in names:
        for key, style in (("selected", "-"), ("final", "--")):
            xs, means, stds = [], [], []
            for b in budgets:
                values = [r[key] for r in sweep["budgets"][str(b)].get(name, []) if r.get(key) is not None]
                if values:
                    xs.append(b)
                    means.append(float(np.mean(values)))
                    stds.append(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
            if xs:
                label = f"{name} ({'selected on val' if key == 'selected' else 'final step'})"
                ax.errorbar(
                    xs,
                    means,
                    yerr=stds,
                    fmt="o" + style,
                    color=colours[name],
                    capsize=3,
                    lw=1.2,
                    ms=4,
                    label=label,
                    alpha=1.0 if key == "selected" else 0.6,
                )
                drawn.append(means)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
    ax.set_xlabel("training steps")
    ax.set_ylabel("test accuracy")
    limits = plateau_limits([[v] for values in drawn for v in values])  # every point: few budgets, each one counts
    if limits is not None and limits[0] > 0:
        ax.set_ylim(*limits)
        ax.set_ylabel(f"test accuracy (axis starts at {limits[0]:.0%})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
