"""Does MPL's feedback do useful work? Reduced MPL's controls on stored distributions (issue #14, item 5).

    python benchmarks/reduced_mpl_experiment.py --preset digits --seeds 5 --jobs 2 --out runs/reduced/digits
    python benchmarks/reduced_mpl_experiment.py --preset fashion_mnist_400 --seeds 5 --jobs 2 --out runs/reduced/fm400
    python benchmarks/reduced_mpl_experiment.py --quick      # digits, 2 seeds, 300 steps: checks that it all runs
    python benchmarks/reduced_mpl_experiment.py --prepared runs/reduced/digits --stores biased --arms mpl shuffled \
        --search teacher.lr=0.05,0.2,1,5,25 --out runs/reduced/digits-search/lr    # a search, selected on validation

Per seed: a supervised teacher on the preset's labeled split (its validation-selected weights), `metapl label` of
every pool image twice, as the teacher made them ("clean") and with a known injected bias ("biased": for each
pair a→b, half of class a's probability moved to b on every image the teacher assigns to a), then four arms of
method reduced_mpl on each store, all with the same student, budget and seed:

    frozen       teacher_signal=none, supervised_weight=0: R stays the big teacher (plain Pseudo Labels)
    mpl          MPL's feedback (the preset's feedback mode, hard/dot by default)
    shuffled     h replaced by an earlier step's h: the same noise, no information
    supervised   teacher_signal=none, supervised_weight=1: R fitted to the labeled images' distributions only

Reported: the student's test accuracy, validation-selected as in docs/results.md (and at the final step), and
the reduced teacher's confusion matrix against the true labels of the validation images, before (the stored
distributions' argmax) and after training, with the biased pairs' mass a→b. Writes results.json (after every
arm) and table.md into --out.

--search KEY=V1,V2,... runs every arm once per value (into --out/KEY=V) and picks, per store and arm, the value
with the best mean validation accuracy of the student; only that value's test accuracy is the arm's result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from multiprocessing import Pool
from pathlib import Path

import torch

from metapl.config import build_config
from metapl.data import build_data
from metapl.errors import TrainingError
from metapl.experiment import run_experiment
from metapl.labeling import LabelOptions, label_pool, parse_bias
from metapl.methods.reduced_mpl import ReducedTeacher, teacher_confusion

ARMS: dict[str, list[str]] = {
    "frozen": ["method.teacher_signal=none", "method.supervised_weight=0"],
    "mpl": ["method.teacher_signal=mpl", "method.supervised_weight=0"],
    "shuffled": ["method.teacher_signal=shuffled", "method.supervised_weight=0"],
    "supervised": ["method.teacher_signal=none", "method.supervised_weight=1"],
}
STORES = ("clean", "biased")
QUICK = {"preset": "digits", "seeds": 2, "steps": 300}


def prepare(seed: int, args) -> dict[str, Path]:
    """The seed's teacher run and its two label stores (each step is skipped when its output exists)."""
    out = Path(args.prepared or args.out)
    teacher = out / f"teacher-seed{seed}"
    if not (teacher / "model.pt").is_file():
        overrides = [f"train.seed={seed}", "finetune.steps=0", *args.teacher_set]
        if args.teacher_steps:
            overrides.append(f"train.steps={args.teacher_steps}")
        run_experiment(build_config(args.preset, overrides, "supervised"), teacher, progress=False, tensorboard=False)
    stores = {}
    for store in args.stores:
        bias = parse_bias(args.bias) if store == "biased" else ()
        stores[store] = out / f"labels-{store}-seed{seed}"
        options = LabelOptions(precision="fp32", bias=bias)
        label_pool(teacher, stores[store], weights="best", options=options, progress=False)
    return {"teacher": teacher, **stores}


def run_arm(task: tuple[str, str, int, Path, Path, object, str | None]) -> dict:
    """One reduced_mpl run; its record with the student's accuracy and R's validation confusion before and after."""
    arm, store, seed, labels, teacher, args, setting = task
    torch.set_num_threads(args.threads)
    overrides = [
        *ARMS[arm],
        f"data.label_dir={labels}",
        f"data.split_file={teacher / 'splits.json'}",  # the teacher's labeled images and validation set
        f"train.seed={seed}",
        *([f"train.steps={args.steps}"] if args.steps else []),
        *args.set,
        *([setting] if setting else []),
    ]
    cfg = build_config(args.preset, overrides, "reduced_mpl")
    run_dir = Path(args.out) / (setting or "") / f"{arm}-{store}-seed{seed}"
    started = time.perf_counter()
    try:
        summary = run_experiment(cfg, run_dir, progress=False, tensorboard=False)
    except TrainingError as err:  # a diverged run is a result of the setting (e.g. a searched LR), not a crash
        print(f"{arm:10s} {store:6s} seed {seed}: diverged ({err})", flush=True)
        return {"arm": arm, "store": store, "seed": seed, "setting": setting, "diverged": True}
    data = build_data(cfg.data, seed)
    k = data.num_classes
    reduced = ReducedTeacher(k, cfg.method.settings.hidden)
    reduced.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["method"]["teacher"])
    p_val = data.p_val.dense()
    before = teacher_confusion(None, p_val, data.y_val, k)
    after = teacher_confusion(reduced, p_val, data.y_val, k)
    record = {
        "arm": arm,
        "store": store,
        "seed": seed,
        "setting": setting,
        "val": summary["train_best_val_top1"],  # the student's, at the selected step: what a search may select on
        "selected": summary["test_top1_selected"],
        "final": summary["test_top1"],
        "teacher_val_before": float(before.trace() / before.sum()),
        "teacher_val_after": float(after.trace() / after.sum()),
        "bias_before": _pair_share(before, args.bias),
        "bias_after": _pair_share(after, args.bias),
        "confusion_before": before.tolist(),
        "confusion_after": after.tolist(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"{arm:10s} {store:6s} seed {seed}: student {record['selected']:.4f} (final {record['final']:.4f}), "
        f"R val {record['teacher_val_before']:.3f} -> {record['teacher_val_after']:.3f}, "
        f"a->b {record['bias_before']:.3f} -> {record['bias_after']:.3f}",
        flush=True,
    )
    return record


def _pair_share(confusion: torch.Tensor, bias: str) -> float:
    """The share of the validation images of the biased pairs' classes a that R assigns to their b."""
    pairs = parse_bias(bias)
    moved = sum(int(confusion[a, b]) for a, b in pairs)
    total = sum(int(confusion[a].sum()) for a, _ in pairs)
    return moved / max(total, 1)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1%} ± {std:.1%}"


def make_table(records: list[dict]) -> str:
    rows = [
        "| store | arm | student val acc. | student test acc., selected on val | final step | "
        "R val acc. before → after | biased pairs a→b before → after | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for store in STORES:
        for arm in ARMS:
            runs = [r for r in records if r["arm"] == arm and r["store"] == store]
            group = [r for r in runs if not r.get("diverged")]
            diverged = len(runs) - len(group)
            if not runs:
                continue
            rows.append(
                f"| {store} | {arm} | {_mean_std([r['val'] for r in group if 'val' in r])} | "
                f"{_mean_std([r['selected'] for r in group])} | "
                f"{_mean_std([r['final'] for r in group])} | {_mean_std([r['teacher_val_before'] for r in group])} → "
                f"{_mean_std([r['teacher_val_after'] for r in group])} | "
                f"{_mean_std([r['bias_before'] for r in group])} → {_mean_std([r['bias_after'] for r in group])} | "
                f"{len(group)}{f' ({diverged} diverged)' if diverged else ''} |"
            )
    return "\n".join(rows)


def _mean(values: list[float]) -> float:
    return statistics.mean(values) if values else float("-inf")


def make_search_table(records: list[dict], settings: list[str]) -> str:
    """Per store and arm, one row per searched value; the value with the best mean student validation accuracy is
    selected (a diverged seed counts as 0: a setting that diverges is not one to recommend)."""
    rows = [
        "| store | arm | setting | student val acc. | student test acc. | R val acc. after | biased pairs after | "
        "seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for store in STORES:
        for arm in ARMS:
            by_setting = {
                v: [r for r in records if (r["store"], r["arm"], r.get("setting")) == (store, arm, v)] for v in settings
            }
            if not any(by_setting.values()):
                continue
            score = {v: _mean([r.get("val", 0.0) for r in runs]) for v, runs in by_setting.items() if runs}
            best = max(score, key=lambda v: score[v])
            for value, runs in by_setting.items():
                done = [r for r in runs if not r.get("diverged")]
                mark = " **(selected)**" if value == best else ""
                rows.append(
                    f"| {store} | {arm} | {value}{mark} | {_mean_std([r['val'] for r in done])} | "
                    f"{_mean_std([r['selected'] for r in done])} | {_mean_std([r['teacher_val_after'] for r in done])} | "
                    f"{_mean_std([r['bias_after'] for r in done])} | {len(done)}"
                    f"{f' ({len(runs) - len(done)} diverged)' if len(runs) > len(done) else ''} |"
                )
    return "\n".join(rows)


def _search_settings(search: str | None) -> list[str | None]:
    """`KEY=V1,V2` as the overrides KEY=V1, KEY=V2; [None] without a search."""
    if not search:
        return [None]
    key, _, values = search.partition("=")
    if not key or not values:
        raise SystemExit(f"--search {search!r}: write KEY=V1,V2,...")
    return [f"{key}={value}" for value in values.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="reduced_mpl steps (default: the preset's)")
    parser.add_argument("--teacher-steps", type=int, default=None, help="the teacher's steps (default: the preset's)")
    parser.add_argument("--bias", default="3:8,4:9", help="the injected bias's pairs a:b (default 3:8,4:9)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--set", action="append", default=[], help="a config override for every reduced_mpl run")
    parser.add_argument("--teacher-set", action="append", default=[], help="a config override for the teacher")
    parser.add_argument("--stores", nargs="+", choices=STORES, default=list(STORES))
    parser.add_argument(
        "--prepared", type=Path, default=None, help="take the teachers and label stores from this earlier --out"
    )
    parser.add_argument("--search", default=None, help="KEY=V1,V2,...: every arm per value, selected on validation")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="digits, 2 seeds, 300 steps")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.seeds, args.steps = QUICK["preset"], QUICK["seeds"], QUICK["steps"]
        args.teacher_steps = args.teacher_steps or 1000
    args.out = args.out or Path("runs/reduced") / args.preset
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    torch.set_num_threads(args.threads)
    prepared = {seed: prepare(seed, args) for seed in seeds}
    settings = _search_settings(args.search)
    tasks = [
        (arm, store, seed, prepared[seed][store], prepared[seed]["teacher"], args, setting)
        for setting in settings
        for seed in seeds
        for store in args.stores
        for arm in args.arms
    ]
    records: list[dict] = []
    started = time.perf_counter()

    def save(complete: bool) -> None:
        record = {"preset": args.preset, "args": {k: str(v) for k, v in vars(args).items()}, "complete": complete}
        record.update(seconds=round(time.perf_counter() - started), records=records)
        (args.out / "results.json").write_text(json.dumps(record, indent=1))

    if args.jobs > 1:
        with Pool(args.jobs) as pool:
            for record in pool.imap_unordered(run_arm, tasks):
                records.append(record)
                save(False)
    else:
        for task in tasks:
            records.append(run_arm(task))
            save(False)
    save(True)
    if args.search:
        tables = [f"{value}:\n\n{make_table([r for r in records if r['setting'] == value])}" for value in settings]
        table = "\n\n".join([make_search_table(records, [str(v) for v in settings]), *tables])
    else:
        table = make_table(records)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
