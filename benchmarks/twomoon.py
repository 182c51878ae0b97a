"""TwoMoon over many seeds: test accuracy of supervised, Pseudo Labels, UDA and MPL (paper §3.1, Fig. 2).

    python benchmarks/twomoon.py --seeds 10 --jobs 2 --out runs/twomoon-bench

Prints a Markdown table (mean, std, seeds reaching 95 %), writes results.json and table.md, and draws
the decision regions of the first seed side by side (twomoon.png).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from multiprocessing import Pool
from pathlib import Path

import torch

from metapl.commands.plot import plot_runs
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

# name -> (method, overrides on top of the twomoon preset)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "supervised": ("supervised", []),
    "pseudo_label": ("pseudo_label", []),
    "uda": ("uda", []),
    "mpl (no teacher UDA)": ("mpl", ["method.uda=false"]),
    "mpl": ("mpl", []),
}


def _run(task: tuple[str, int, list[str], Path]) -> tuple[str, int, float]:
    name, seed, extra, out = task
    torch.set_num_threads(1)  # a 2-8-8-2 network: OpenMP hand-offs cost more than they save
    method, overrides = VARIANTS[name]
    cfg = build_config("twomoon", [*overrides, *extra, f"train.seed={seed}"], method)
    summary = run_experiment(cfg, out / f"{_slug(name)}-seed{seed}", progress=False, tensorboard=False)
    print(f"{name} seed {seed}: {summary['test_top1']:.4f}", flush=True)
    return name, seed, summary["test_top1"]


def _slug(name: str) -> str:
    return name.replace(" ", "_").replace("(", "").replace(")", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one CPU thread each)")
    parser.add_argument("--out", type=Path, default=Path("runs/twomoon-bench"))
    args = parser.parse_args()

    tasks = [(name, seed, args.overrides, args.out) for name in args.variants for seed in range(args.seeds)]
    started = time.perf_counter()
    with Pool(args.jobs) as pool:
        finished = pool.map(_run, tasks, chunksize=1)
    elapsed = time.perf_counter() - started
    results: dict[str, list[float]] = {name: [] for name in args.variants}
    for name, _, acc in sorted(finished, key=lambda r: (args.variants.index(r[0]), r[1])):
        results[name].append(acc)

    rows = ["| method | test accuracy, mean ± std | seeds ≥ 95 % | per seed (0, 1, ...) |", "|---|---|---|---|"]
    for name, accs in results.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        per_seed = " ".join(f"{a:.3f}" for a in accs)
        rows.append(
            f"| {name} | {statistics.mean(accs):.1%} ± {std:.1%} | {sum(a >= 0.95 for a in accs)}/{len(accs)} | {per_seed} |"
        )
    table = "\n".join(rows)
    print(table)
    print(f"total time: {elapsed:.0f} s with {args.jobs} job(s)")
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"accuracy": results, "seconds": elapsed, "jobs": args.jobs, "overrides": args.overrides}
    (args.out / "results.json").write_text(json.dumps(record, indent=2))
    (args.out / "table.md").write_text(table + "\n")
    figure = plot_runs([args.out / f"{_slug(n)}-seed0" for n in args.variants], args.out / "twomoon.png", "regions")
    print(f"wrote {figure}")


if __name__ == "__main__":
    main()
