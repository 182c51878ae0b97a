"""Does MPL's feedback do useful work? Reduced MPL's controls on stored distributions (issues #14 item 5, #23).

    python benchmarks/reduced_mpl_experiment.py --preset digits --seeds 5 --jobs 2 --out runs/reduced/digits
    python benchmarks/reduced_mpl_experiment.py --preset fashion_mnist_400 --seeds 5 --jobs 2 --out runs/reduced/fm400
    python benchmarks/reduced_mpl_experiment.py --quick      # digits, 2 seeds, 300 steps: checks that it all runs
    python benchmarks/reduced_mpl_experiment.py --prepared runs/reduced/digits --stores biased --arms mpl shuffled \
        --search teacher.lr=0.05,0.2,1,5,25 --out runs/reduced/digits-search/lr    # a search, selected on validation

The bias map (issue #23): stores of a known margin and natural errors, arms with their own settings, one call:

    python benchmarks/reduced_mpl_experiment.py --preset digits --seeds 3 --first-seed 100 --steps 2000 \
        --stores d0.05=shift:3>8,4>9:delta=0.05 d2=shift:3>8,4>9:delta=2 few2=few:2 cnn=model:small_cnn \
        --arm frozen frozen --arm mpl-sum mpl method.feedback.reinforce_reduction=sum \
        --arm shuffled-sum shuffled method.feedback.reinforce_reduction=sum --arm supervised supervised \
        --out runs/reduced/bias-map --json benchmarks/results/bias_map_digits.json

Per seed: a supervised teacher on the preset's labeled split (its validation-selected weights), `metapl label` of
every pool image into each store of --stores, then every arm on every store, all with the same student, budget,
seed, labeled images and validation images (the main teacher's split). A store is

    clean                 the teacher's distributions as it made them
    biased                with --bias injected (default 3:8,4:9: half of a's probability moved to b)
    NAME=SPEC             with the bias SPEC injected (metapl/commands/label.py parse_bias): 3:8, half:3>8,4>9, or
                          shift:3>8,4>9:delta=2:fraction=0.5 (b's logit δ nats above a's: a bias of known margin)
    NAME=few:N            natural errors: a teacher trained on only the first N labeled images per class of the split
    NAME=model:M[,K=V]    natural errors: a teacher of another model (model.name=M, overrides K=V), the same split

The arms (--arms picks among the four; --arm LABEL BASE [KEY=V ...] adds one with its own overrides, repeatable):

    frozen       teacher_signal=none, supervised_weight=0: R stays the big teacher (plain Pseudo Labels)
    mpl          MPL's feedback (the preset's feedback mode, hard/dot by default)
    shuffled     h replaced by an earlier step's h: the same noise, no information
    supervised   teacher_signal=none, supervised_weight=1: R fitted to the labeled images' distributions only

Reported per store: the margin the bias realised (the median over the affected pool images, those of a true class a
that the injection made wrong, of log p_b − log p_a; for a natural store the teacher's two most frequent confusions
a→b on validation and the images of class a it assigns to b), and per arm the student's test accuracy,
validation-selected as in docs/results.md (and at the final step), the reduced teacher's accuracy on the validation
images before (the stored argmax) and after training, and the affected pairs' share a→b before and after, with the
per-seed differences of the student against its control (control_of: a feedback arm against the shuffled arm of
the same overrides, else the frozen arm; the supervised arm against the frozen arm). Writes results.json (after
every arm) and table.md into --out, and with --json a copy of results.json (e.g. under benchmarks/results/).
--prepare-only makes the teachers and stores and stops.

--search KEY=V1,V2,... runs every arm once per value (into --out/KEY=V) and picks, per store and arm, the value
with the best mean validation accuracy of the student; only that value's test accuracy is the arm's result.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import torch

from metapl.commands.label import Bias, LabelOptions, label_pool, parse_bias
from metapl.core.errors import MetaplError, TrainingError
from metapl.parts.data import build_data
from metapl.parts.data.label_store import read_store
from metapl.parts.data.registry import DATASETS
from metapl.parts.data.splits import Split
from metapl.parts.methods.reduced_mpl import ReducedTeacher, teacher_confusion
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

ARMS: dict[str, list[str]] = {
    "frozen": ["method.feedback.teacher_signal=none", "method.teacher_losses.supervised_weight=0"],
    "mpl": ["method.feedback.teacher_signal=mpl", "method.teacher_losses.supervised_weight=0"],
    "shuffled": ["method.feedback.teacher_signal=shuffled", "method.teacher_losses.supervised_weight=0"],
    "supervised": ["method.feedback.teacher_signal=none", "method.teacher_losses.supervised_weight=1"],
}
STORES = ("clean", "biased")
QUICK = {"preset": "digits", "seeds": 2, "steps": 300}
NATURAL_PAIRS = 2  # a natural store's affected pairs: the teacher's most frequent confusions on validation


@dataclass
class Store:
    """One label store of the experiment (see the module's docstring)."""

    name: str
    kind: str  # clean, injected, few, model
    bias: Bias = field(default_factory=Bias)
    spec: str = ""
    per_class: int = 0  # few
    model: list[str] = field(default_factory=list)  # model: the teacher's model.* overrides

    def teacher_name(self) -> str:
        return {"few": f"teacher-few{self.per_class}", "model": f"teacher-{self.name}"}.get(self.kind, "teacher")


@dataclass
class Arm:
    """An arm: a base arm of ARMS and its own overrides, shown under `label`."""

    label: str
    base: str
    overrides: list[str] = field(default_factory=list)

    def settings(self) -> list[str]:
        return [*ARMS[self.base], *self.overrides]


def parse_store(text: str, bias: str) -> Store:
    """clean, biased (with --bias), NAME=SPEC, NAME=few:N or NAME=model:M[,K=V...]; one line for anything else."""
    if text == "clean":
        return Store("clean", "clean")
    if text == "biased":
        return Store("biased", "injected", parse_bias(bias), bias)
    name, sep, spec = text.partition("=")
    if not sep or not name or "/" in name:
        raise SystemExit(
            f"--stores {text!r}: write clean, biased, NAME=SPEC (a bias: 3:8, shift:3>8:delta=2), NAME=few:N "
            "or NAME=model:M"
        )
    kind, _, rest = spec.partition(":")
    if kind == "few":
        if not rest.isdigit() or int(rest) < 1:
            raise SystemExit(f"--stores {text!r}: few:N needs N, labeled images per class, 1 or more")
        return Store(name, "few", per_class=int(rest), spec=spec)
    if kind == "model":
        model, *overrides = rest.split(",")
        if not model:
            raise SystemExit(f"--stores {text!r}: model:M needs a model name, e.g. model:small_cnn")
        return Store(name, "model", model=[f"model.name={model}", *(f"model.{o}" for o in overrides)], spec=spec)
    return Store(name, "injected", parse_bias(spec), spec)


def _teacher(seed: int, store: Store, main: Path, out: Path, args) -> Path:
    """The seed's teacher for `store` (the main one for clean and injected stores), trained unless done."""
    if store.kind in ("clean", "injected"):
        return main
    teacher = out / f"{store.teacher_name()}-seed{seed}"
    if (teacher / "model.pt").is_file():
        return teacher
    overrides = [f"train.seed={seed}", "finetune.steps=0", *args.teacher_set]
    if args.teacher_steps:
        overrides.append(f"train.steps={args.teacher_steps}")
    if store.kind == "few":
        split = Split.load(main / "splits.json")
        pool = build_config(args.preset, [], "supervised").data
        y = DATASETS.get(pool.name).load(pool, seed).dataset.y_train
        kept: dict[int, int] = {}
        labeled = []
        for i in split.labeled:  # the first N of each class, in the split's order
            c = int(y[i])
            if kept.get(c, 0) < store.per_class:
                kept[c] = kept.get(c, 0) + 1
                labeled.append(i)
        moved = [i for i in split.labeled if i not in set(labeled)]
        few = Split(labeled, [*split.unlabeled, *(i for i in moved if i not in set(split.unlabeled))], split.validation)
        few.source = split.source
        out.mkdir(parents=True, exist_ok=True)
        few.save(out / f"split-few{store.per_class}-seed{seed}.json")
        overrides.append(f"data.split_file={out / f'split-few{store.per_class}-seed{seed}.json'}")
        if len(labeled) < pool.batch_size:  # the labeled batch cannot exceed the labeled set
            overrides.append(f"data.batch_size={len(labeled)}")
    else:
        overrides += [f"data.split_file={main / 'splits.json'}", *store.model]
    run_experiment(build_config(args.preset, overrides, "supervised"), teacher, progress=False, tensorboard=False)
    return teacher


def prepare(seed: int, stores: list[Store], args) -> dict[str, Path]:
    """The seed's teachers and label stores (each step is skipped when its output exists)."""
    out = Path(args.prepared or args.out)
    main = out / f"teacher-seed{seed}"
    if not (main / "model.pt").is_file():
        overrides = [f"train.seed={seed}", "finetune.steps=0", *args.teacher_set]
        if args.teacher_steps:
            overrides.append(f"train.steps={args.teacher_steps}")
        run_experiment(build_config(args.preset, overrides, "supervised"), main, progress=False, tensorboard=False)
    paths = {"teacher": main}
    reference = [Store("clean", "clean")] if any(s.kind == "injected" for s in stores) else []
    for store in [*reference, *(s for s in stores if s.name != "clean" or not reference)]:
        teacher = _teacher(seed, store, main, out, args)
        paths[store.name] = out / f"labels-{store.name}-seed{seed}"
        options = LabelOptions(precision="fp32", bias=store.bias)
        label_pool(teacher, paths[store.name], weights="best", options=options, progress=False)
    return paths


def describe_store(store: Store, labels: Path, clean: Path, main: Path, seed: int, preset: str) -> dict:
    """The store's affected pairs, how many pool images they cover and the margin the error realised there: the
    median of log p_b − log p_a over the pool images of true class a that the bias made wrong (injected: rows the
    injection changed among those the clean teacher assigns to a) or that the teacher assigns to b (natural, with
    the teacher's most frequent confusions a→b on the validation images as the pairs)."""
    data_cfg = build_config(preset, [], "supervised").data
    dataset = DATASETS.get(data_cfg.name).load(data_cfg, seed).dataset
    y = dataset.y_train.long()
    p = read_store(labels, dataset).dense().double()
    logp = p.clamp_min(1e-30).log()
    k = p.shape[1]
    if store.kind == "injected":
        pairs = [list(pair) for pair in store.bias.pairs]
        base = read_store(clean, dataset).dense().double()
        assigned, changed = base.argmax(-1), (p - base).abs().sum(-1) > 1e-6
    else:
        val = torch.tensor(Split.load(main / "splits.json").validation)
        counts = torch.bincount(y[val] * k + p[val].argmax(-1), minlength=k * k).view(k, k).fill_diagonal_(0)
        top = counts.flatten().argsort(descending=True)[:NATURAL_PAIRS]
        pairs = [[int(i) // k, int(i) % k] for i in top if counts.flatten()[i] > 0]
    margins: list[float] = []
    affected = 0
    for a, b in pairs:
        rows = (y == a) & ((assigned == a) & changed if store.kind == "injected" else p.argmax(-1) == b)
        affected += int(rows.sum())
        margins += (logp[rows, b] - logp[rows, a]).tolist()
    return {
        "store": store.name,
        "seed": seed,
        "kind": store.kind,
        "spec": store.spec,
        "pairs": pairs,
        "affected_images": affected,
        "margin_median": statistics.median(margins) if margins else None,
    }


def run_arm(task: tuple) -> dict:
    """One reduced_mpl run; its record with the student's accuracy and R's validation confusion before and after."""
    arm, store, seed, labels, teacher, args, setting, pairs = task
    torch.set_num_threads(args.threads)
    overrides = [
        *arm.settings(),
        f"data.label_dir={labels}",
        f"data.split_file={teacher / 'splits.json'}",  # the teacher's labeled images and validation set
        f"train.seed={seed}",
        *([f"train.steps={args.steps}"] if args.steps else []),
        *args.set,
        *([setting] if setting else []),
    ]
    cfg = build_config(args.preset, overrides, "reduced_mpl")
    run_dir = Path(args.out) / (setting or "") / f"{arm.label}-{store}-seed{seed}"
    shown = " ".join([*arm.overrides, *args.set, *([setting] if setting else [])]) or "the preset's settings"
    started = time.perf_counter()
    try:
        summary = run_experiment(cfg, run_dir, progress=False, tensorboard=False)
    except TrainingError as err:  # a diverged run is a result of the setting (e.g. a searched LR), not a crash
        print(f"{arm.label:12s} {store:8s} seed {seed} [{shown}]: diverged ({err})", flush=True)
        return {"arm": arm.label, "store": store, "seed": seed, "setting": setting, "diverged": True}
    data = build_data(cfg.data, seed)
    k = data.num_classes
    reduced = ReducedTeacher(k, cfg.method.settings.hidden)
    reduced.load_state_dict(torch.load(run_dir / "checkpoint.pt", weights_only=True)["method"]["teacher"])
    assert data.stored is not None  # reduced_mpl's config needs data.label_dir
    p_val = data.stored.val.dense()
    before = teacher_confusion(None, p_val, data.y_val, k)
    after = teacher_confusion(reduced, p_val, data.y_val, k)
    record = {
        "arm": arm.label,
        "base_arm": arm.base,
        "overrides": arm.overrides,
        "store": store,
        "seed": seed,
        "setting": setting,
        "val": summary["train_best_val_top1"],  # the student's, at the selected step: what a search may select on
        "selected": summary["test_top1_selected"],
        "final": summary["test_top1"],
        "teacher_val_before": float(before.trace() / before.sum()),
        "teacher_val_after": float(after.trace() / after.sum()),
        "pairs": pairs,
        "bias_before": _pair_share(before, pairs),
        "bias_after": _pair_share(after, pairs),
        "confusion_before": before.tolist(),
        "confusion_after": after.tolist(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(
        f"{arm.label:12s} {store:8s} seed {seed} [{shown}]: student {record['selected']:.4f} "
        f"(final {record['final']:.4f}), R val {record['teacher_val_before']:.3f} -> {record['teacher_val_after']:.3f}, "
        f"a->b {record['bias_before']:.3f} -> {record['bias_after']:.3f} ({record['seconds']:.0f} s)",
        flush=True,
    )
    return record


def _pair_share(confusion: torch.Tensor, pairs: list[list[int]]) -> float:
    """The share of the validation images of the affected pairs' classes a that are assigned to their b."""
    moved = sum(int(confusion[a, b]) for a, b in pairs)
    total = sum(int(confusion[a].sum()) for a, _ in pairs)
    return moved / max(total, 1)


def _pct(values: list[float]) -> str:
    """'81.0 ± 1.2' (percent, mean ± std over seeds)."""
    if not values:
        return "—"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def make_table(records: list[dict], stores: list[dict] | None = None) -> str:
    """One row per store and arm; beside each arm but the controls, its student's difference against its control
    (control_of), seed by seed."""
    rows = [
        "| store | margin (median, nats) | arm | student val acc. | student test acc., selected on val | final step | "
        "R val acc. before → after | affected pairs a→b before → after | paired Δ student vs control (per seed) | "
        "seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    store_names = list(dict.fromkeys(r["store"] for r in records))
    arm_names = list(dict.fromkeys(r["arm"] for r in records))
    for store in store_names:
        info = [d for d in stores or [] if d["store"] == store and d.get("margin_median") is not None]
        margin = f"{statistics.median(d['margin_median'] for d in info):.2f}" if info else "—"
        for arm in arm_names:
            runs = [r for r in records if r["arm"] == arm and r["store"] == store]
            group = [r for r in runs if not r.get("diverged")]
            diverged = len(runs) - len(group)
            if not runs:
                continue
            rows.append(
                f"| {store} | {margin} | {arm} | {_pct([r['val'] for r in group if 'val' in r])} | "
                f"{_pct([r['selected'] for r in group])} | {_pct([r['final'] for r in group])} | "
                f"{_pct([r['teacher_val_before'] for r in group])} → {_pct([r['teacher_val_after'] for r in group])} | "
                f"{_pct([r['bias_before'] for r in group])} → {_pct([r['bias_after'] for r in group])} | "
                f"{_paired(records, group)} | {len(group)}{f' ({diverged} diverged)' if diverged else ''} |"
            )
    return "\n".join(rows)


def control_of(record: dict, records: list[dict]) -> str | None:
    """The arm a record is compared with: for a feedback arm (mpl) the shuffled arm with the same overrides (scale
    without information), else the frozen arm; the frozen arm for the supervised one; None for the controls."""
    if record.get("base_arm") in ("shuffled", "frozen"):
        return None
    same = [r["arm"] for r in records if r.get("base_arm") == "shuffled" and r.get("overrides") == record["overrides"]]
    if same and record.get("base_arm") == "mpl":
        return same[0]
    frozen = [r["arm"] for r in records if r.get("base_arm") == "frozen"]
    return frozen[0] if frozen else None


def paired_differences(records: list[dict], group: list[dict]) -> tuple[str | None, list[float]]:
    """(the control's arm, the student's test accuracy minus the control's, seed by seed) for one store and arm."""
    if not group:
        return None, []
    control = control_of(group[0], records)
    if control is None:
        return None, []
    by_seed = {
        r["seed"]: r["selected"]
        for r in records
        if r["arm"] == control and r["store"] == group[0]["store"] and not r.get("diverged")
    }
    return control, [r["selected"] - by_seed[r["seed"]] for r in group if r["seed"] in by_seed]


def _paired(records: list[dict], group: list[dict]) -> str:
    control, diffs = paired_differences(records, group)
    if control is None or not diffs:
        return "—"
    seeds = " ".join(f"{100 * d:+.1f}" for d in diffs)
    return f"vs {control}: {_pct(diffs)} ({seeds})"


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
    for store in dict.fromkeys(r["store"] for r in records):
        for arm in dict.fromkeys(r["arm"] for r in records):
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
                    f"| {store} | {arm} | {value}{mark} | {_pct([r['val'] for r in done])} | "
                    f"{_pct([r['selected'] for r in done])} | {_pct([r['teacher_val_after'] for r in done])} | "
                    f"{_pct([r['bias_after'] for r in done])} | {len(done)}"
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
    parser.add_argument("--bias", default="3:8,4:9", help="the bias of the store `biased` (default 3:8,4:9)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=None, help="base arms (default: all four)")
    parser.add_argument(
        "--arm",
        nargs="+",
        action="append",
        default=[],
        metavar="LABEL BASE [KEY=V",
        help="an arm with its own overrides: LABEL BASE [KEY=V ...], BASE one of " + ", ".join(ARMS),
    )
    parser.add_argument("--set", action="append", default=[], help="a config override for every reduced_mpl run")
    parser.add_argument("--teacher-set", action="append", default=[], help="a config override for the teacher")
    parser.add_argument(
        "--stores", nargs="+", default=list(STORES), help="clean, biased, NAME=SPEC, NAME=few:N, NAME=model:M"
    )
    parser.add_argument(
        "--prepared", type=Path, default=None, help="take the teachers and label stores from this earlier --out"
    )
    parser.add_argument("--prepare-only", action="store_true", help="make the teachers and label stores, then stop")
    parser.add_argument("--search", default=None, help="KEY=V1,V2,...: every arm per value, selected on validation")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the results here (e.g. benchmarks/results/)"
    )
    parser.add_argument("--quick", action="store_true", help="digits, 2 seeds, 300 steps")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.seeds, args.steps = QUICK["preset"], QUICK["seeds"], QUICK["steps"]
        args.teacher_steps = args.teacher_steps or 1000
    arms = [Arm(name, name) for name in args.arms or ([] if args.arm else ARMS)]
    for label, *rest in args.arm:
        if not rest or rest[0] not in ARMS or any("=" not in item for item in rest[1:]):
            raise SystemExit(
                f"--arm {' '.join([label, *rest])!r}: write LABEL BASE [KEY=V ...], BASE one of {list(ARMS)}"
            )
        arms.append(Arm(label, rest[0], rest[1:]))
    if len({a.label for a in arms}) < len(arms):
        raise SystemExit("two arms share a label; give each --arm its own LABEL")
    try:
        stores = [parse_store(text, args.bias) for text in args.stores]
    except MetaplError as err:
        raise SystemExit(f"metapl: error: {err}") from None
    if len({s.name for s in stores}) < len(stores):
        raise SystemExit("two stores share a name; give each NAME=SPEC its own NAME")
    args.out = args.out or Path("runs/reduced") / args.preset
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    prepared = {}
    described: list[dict] = []
    for seed in seeds:
        prepared[seed] = prepare(seed, stores, args)
        for store in stores:
            clean = prepared[seed].get("clean", prepared[seed][store.name])
            info = describe_store(
                store, prepared[seed][store.name], clean, prepared[seed]["teacher"], seed, args.preset
            )
            described.append(info)
            margin = "—" if info["margin_median"] is None else f"{info['margin_median']:.3f}"
            print(
                f"store {store.name} seed {seed}: pairs {info['pairs']}, {info['affected_images']} affected "
                f"pool images, median margin {margin} nats",
                flush=True,
            )
    if args.prepare_only:
        print(
            f"prepared {len(stores)} stores for seeds {list(seeds)} in {args.prepared or args.out} ({time.perf_counter() - started:.0f} s)"
        )
        return
    pairs = {(d["store"], d["seed"]): d["pairs"] for d in described}
    settings = _search_settings(args.search)
    tasks = [
        (
            arm,
            store.name,
            seed,
            prepared[seed][store.name],
            prepared[seed]["teacher"],
            args,
            setting,
            pairs[(store.name, seed)],
        )
        for setting in settings
        for seed in seeds
        for store in stores
        for arm in arms
    ]
    records: list[dict] = []

    def save(complete: bool) -> None:
        record = {"preset": args.preset, "args": {k: str(v) for k, v in vars(args).items()}, "complete": complete}
        record.update(
            command=" ".join(["python", "benchmarks/reduced_mpl_experiment.py", *sys.argv[1:]]),
            seconds=round(time.perf_counter() - started),
            stores=described,
            records=records,
        )
        (args.out / "results.json").write_text(json.dumps(record, indent=1))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(record, indent=1) + "\n")

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
        tables = [
            f"{value}:\n\n{make_table([r for r in records if r['setting'] == value], described)}" for value in settings
        ]
        table = "\n\n".join([make_search_table(records, [str(v) for v in settings]), *tables])
    else:
        table = make_table(records, described)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
