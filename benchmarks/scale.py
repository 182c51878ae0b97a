"""Scale, measured (docs/scale.md#measured-scale): `metapl shard` and `metapl label` against their floors, the main
process's peak memory of label and of Reduced MPL training at two pool sizes, and the label store's bytes per image,
with labeling and training reading the sharded pools (data.unlabeled_shards).

    python benchmarks/scale.py [--images 1000000] [--small 10000] [--label-images 20000] [--quick]

1. Synthetic pools: `--distinct` different 32×32 JPEGs (photo-like noise with a bright square) encoded once, then
   written under many names (1,000 per folder): the files and names are real, only their bytes repeat, so writing
   a million takes a minute or two, not an hour. Three pools: `--small` and `--images` (the memory pair) and
   `--label-images` (label's rate), and a labeled set of 20 classes × 6 PNGs.
2. `metapl shard` (the CLI, `--workers`) on each pool: images/s over the whole command and from the first shard to
   the last, and the main process's peak RSS. The decode floor: the same image files read and decoded (PIL, RGB,
   to an array) in a bare loop in one process, over the first `--floor-images`, one round before the big pool is
   sharded, one right after it and one at the end of this stage (median); × workers is what the workers could
   reach. The rate pool is sharded into shards of 1,000 so that label's store has many files to time.
3. Label's rate (the teacher: small_cnn, 2 supervised steps; its cost, not its accuracy, matters): `--rounds`
   rounds, each, for every count T of `--label-threads`, the floor then `metapl label` over the rate pool's shards
   (top-k 16 fp16, train.threads=T, data.workers=`--workers`). The floor is the teacher's forward pass alone
   (softmax included) on in-memory uint8 batches of label's batch size, in a fresh process with T threads. Label's
   images/s is timed from its store files' modification times, first to last (start-up excluded), and over the
   whole command. Medians of the rounds, and the ratio of the medians.
4. Memory (the teacher: mlp, 2 supervised steps: memory does not depend on the teacher's cost, and small_cnn would
   take about 45 minutes for a million images on 2 cores): `metapl label` over the shards of `--small` and of
   `--images` images, then Reduced MPL training for `--steps` steps from each pair of shards and store (one loader
   worker, one thread). The main process's peak RSS of each, and its largest loader worker's.
5. The label store's bytes per image (all files of the big store / images labeled), at top-k 16 fp16.

Peak RSS is VmHWM of the command's main process (loader and shard workers are other processes; their largest is
ru_maxrss of the waited-for children), with glibc's mmap threshold fixed at 128 KiB (benchmarks/shard_speed.py
explains why). The machine's 1-minute load average is recorded beside each timing. Writes JSON to --out (default
benchmarks/results/scale.json) and prints the table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIDE = 32
CLASSES = 20
TOP_K = 16
RATE_SHARD_SIZE = 1000  # the rate pool's input shards: label's store gets one file per 1,000 images to time
COMMON = [
    "data.name=folder",
    "data.labeled_selection=all",
    "data.val_per_class=1",
    "data.batch_size=16",
    "data.mu=4",
    "finetune.steps=0",
]
# Runs `metapl ARGS` in this process and writes its exit code, the main process's peak RSS and the largest
# waited-for child's (the loader workers) to a JSON file.
CHILD = r"""
import json, resource, sys
from metapl.commands.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as stop:
    code = stop.code
fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
               "children_peak_rss_mb": round(children / 1024, 1)}, handle)
sys.exit(code)
"""


def load() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------------------------ the pool
def encoded_images(count: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    found = []
    for i in range(count):
        image = rng.integers(0, 120, (SIDE, SIDE, 3), dtype=np.uint8)
        y, x = divmod(i % 16, 4)
        image[y * SIDE // 4 : (y + 1) * SIDE // 4, x * SIDE // 4 : (x + 1) * SIDE // 4] = 250
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        found.append(buffer.getvalue())
    return found


def write_pool(folder: Path, count: int, images: list[bytes]) -> dict:
    started = time.perf_counter()
    for first in range(0, count, 1000):
        sub = folder / f"{first // 1000:05d}"
        sub.mkdir(parents=True)
        for i in range(first, min(first + 1000, count)):
            fd = os.open(sub / f"img{i:07d}.jpg", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, images[i % len(images)])
            os.close(fd)
    return {"images": count, "seconds": round(time.perf_counter() - started, 1)}


def write_labeled(folder: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(CLASSES):
        (folder / f"c{c:02d}").mkdir(parents=True)
        for i in range(6):
            image = rng.integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / f"c{c:02d}" / f"{i}.png")


# ------------------------------------------------------------------------------------------------ commands
def metapl(args: list[object], work: Path, code: Path | None = None) -> dict:
    """`metapl ARGS` in a fresh process (with the metapl of the checkout `code`, if given): exit code, seconds,
    peak RSS of its main process and of its largest loader worker, load average before and after."""
    report = work / f"report-{time.monotonic_ns()}.json"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    if code is not None:  # python -c puts its working folder first on the path: run there
        env["PYTHONPATH"] = str(code)
    before = load()
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *map(str, args)], env=env, capture_output=True, text=True, cwd=code
    )
    seconds = time.perf_counter() - started
    row = json.loads(report.read_text()) if report.exists() else {"code": result.returncode, "peak_rss_mb": None}
    report.unlink(missing_ok=True)
    row |= {"seconds": round(seconds, 2), "load_before": before, "load_after": load()}
    if row["code"] != 0:
        row["error"] = (result.stderr.strip().splitlines() or ["(no output)"])[-1][:500]
    return row


def pool_paths(pool: Path, count: int) -> list[Path]:
    paths: list[Path] = []
    for sub in sorted(pool.iterdir()):
        paths += sorted(sub.iterdir())
        if len(paths) >= count:
            break
    return paths[:count]


def decode_round(paths: list[Path]) -> dict:
    """One round of the decode floor: the files read and decoded in a bare loop in this process."""
    from PIL import Image

    before = load()
    started = time.perf_counter()
    for path in paths:
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            np.asarray(image.convert("RGB"))
    rate = len(paths) / (time.perf_counter() - started)
    return {"images_per_s": round(rate, 1), "load_before": before, "load_after": load()}


FORWARD = r"""
import json, sys, time, torch
from metapl.commands.finished_run import load_run
run, batch, images, threads, side = sys.argv[1], *map(int, sys.argv[2:6])
torch.set_num_threads(threads)
model = load_run(run).model.eval()
x = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
with torch.no_grad():
    torch.softmax(model(x).float(), -1)  # warm-up
    started, done = time.perf_counter(), 0
    while done < images:
        torch.softmax(model(x).float(), -1)
        done += batch
print(json.dumps(done / (time.perf_counter() - started)))
"""


def forward_round(run: Path, batch: int, images: int, threads: int) -> dict:
    """The teacher's forward pass (and softmax) alone on in-memory uint8 batches, in a fresh process as label is."""
    before = load()
    result = subprocess.run(
        [sys.executable, "-c", FORWARD, str(run), str(batch), str(images), str(threads), str(SIDE)],
        capture_output=True,
        text=True,
        check=True,
    )
    rate = json.loads(result.stdout.strip().splitlines()[-1])
    return {"images_per_s": round(rate, 1), "load_before": before, "load_after": load()}


def store_rate(store: Path, workers: int) -> float | None:
    """Images/s from the label store's files for input shards, by modification time, first to last (start-up and
    the pool part excluded). The workers read `workers` shards side by side, so the first `workers` files end
    together: the images of the files after them are what was labeled between the first file and the last."""
    part = json.loads((store / "manifest.json").read_text()).get("unlabeled_shards") or {}
    times = sorted(((store / f["file"]).stat().st_mtime, f["count"]) for f in part.get("files", []))
    skip = max(1, workers)
    if len(times) <= skip or times[-1][0] <= times[0][0]:
        return None
    return round(sum(count for _, count in times[skip:]) / (times[-1][0] - times[0][0]), 1)


def shards_rate(folder: Path) -> float | None:
    """Images/s of metapl shard from its shards' modification times, first to last (start-up excluded)."""
    from metapl.commands.shard import MANIFEST, SHARD_NAME

    records = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()[1:]]
    times = sorted(
        ((folder / SHARD_NAME.format(r["shard"])).stat().st_mtime, r["count"]) for r in records if "shard" in r
    )
    if len(times) < 2 or times[-1][0] <= times[0][0]:
        return None
    return round(sum(count for _, count in times[1:]) / (times[-1][0] - times[0][0]), 1)


def store_images(store: Path) -> int:
    """Images a finished store holds: its pool part and every input shard's samples."""
    manifest = json.loads((store / "manifest.json").read_text())
    part = manifest.get("unlabeled_shards") or {}
    return int(manifest["pool_size"]) + sum(int(f["count"]) for f in part.get("files", []))


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


def median(rows: list[dict], key: str = "images_per_s") -> float:
    return round(statistics.median(row[key] for row in rows), 1)


def checked(row: dict, what: str) -> dict:
    if row["code"] != 0:
        raise RuntimeError(f"{what} failed: {row}")
    return row


# ------------------------------------------------------------------------------------------------ the benchmark
def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    results: dict = {
        "images": args.images,
        "small": args.small,
        "label_images": args.label_images,
        "steps": args.steps,
        "workers": args.workers,
        "side": SIDE,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_start": load(),
    }
    distinct = encoded_images(args.distinct)
    results["jpeg_bytes_mean"] = round(sum(map(len, distinct)) / len(distinct), 1)
    sizes = {"small": args.small, "rate": args.label_images, "big": args.images}
    pools = {name: work / f"pool-{name}" for name in sizes}
    shards = {name: work / f"shards-{name}" for name in sizes}
    results["write_pool"] = {name: write_pool(pools[name], size, distinct) for name, size in sizes.items()}
    write_labeled(work / "labeled")
    say(f"pools written: {sizes} images of {SIDE}x{SIDE} ({results['jpeg_bytes_mean']:.0f} B each)")

    # 2. metapl shard against the decode floor (rounds around the big pool's shard run)
    floor_paths = pool_paths(pools["big"], min(args.floor_images, args.images))
    floor = [decode_round(floor_paths)]
    results["shard"] = {}
    for name in ("big", "small", "rate"):
        size = ["--shard-size", RATE_SHARD_SIZE] if name == "rate" else []
        command = ["shard", pools[name], "--out", shards[name], "--no-progress", "--workers", args.workers, *size]
        row = checked(metapl(command, work), f"metapl shard {name}")
        row["images_per_s"] = round(sizes[name] / row["seconds"], 1)
        row["images_per_s_steady"] = shards_rate(shards[name])
        results["shard"][name] = row
        say(f"shard {name}: {row}")
        if name in ("big", "rate"):
            floor.append(decode_round(floor_paths))
    results["decode_floor"] = {"images": len(floor_paths), "rounds": floor, "median": median(floor)}
    say(f"decode floor: {results['decode_floor']}")

    # 3. label's rate against the forward floor, interleaved
    base = ["--preset", "cifar10_4k", "--no-progress"]
    sets = [item for key in [f"data.root={work / 'labeled'}", *COMMON] for item in ("--set", key)]
    teachers = {}
    for model in ("small_cnn", "mlp"):
        run_dir = work / f"teacher-{model}"
        model_sets = [*sets, "--set", f"model.name={model}", "--set", "train.threads=1", "--set", "data.workers=1"]
        checked(metapl(["train", *base, "--method", "supervised", "--out", run_dir, "--no-tensorboard", *model_sets,
                        "--set", "train.steps=2"], work), f"the {model} teacher")  # fmt: skip
        weights = work / f"teacher-{model}.safetensors"
        checked(metapl(["export", run_dir, "--format", "safetensors", "--out", weights], work), "export")
        teachers[model] = (run_dir, weights)

    def label(model: str, pool: str, out: Path, threads: int, workers: int, code: Path | None = None) -> dict:
        command = ["label", model, "--weights", teachers[model][1], *base, *sets, "--set", f"model.name={model}",
                   "--out", out, "--top-k", TOP_K, "--set", "data.unlabeled_dir=",
                   "--set", f"data.unlabeled_shards={shards[pool]}", "--set", f"train.threads={threads}",
                   "--set", f"data.workers={workers}"]  # fmt: skip
        row = checked(metapl(command, work, code), f"metapl label {model} {pool}")
        row["images_per_s_whole_command"] = round(sizes[pool] / row["seconds"], 1)
        row["images_per_s"] = store_rate(out, workers)
        row["store_bytes"], row["store_images"] = store_bytes(out), store_images(out)
        return row

    from metapl.run.config import load_config_file

    batch = load_config_file(teachers["small_cnn"][0] / "config.yaml").train.eval_batch_size
    rate: dict = {str(t): {"forward": [], "label": [], "baseline": []} for t in args.label_threads}
    for number in range(args.rounds):
        for threads in args.label_threads:
            forward = forward_round(teachers["small_cnn"][0], batch, args.forward_images, threads)
            rate[str(threads)]["forward"].append(forward)
            out = work / f"labels-rate-{threads}-{number}"
            row = label("small_cnn", "rate", out, threads, args.workers)
            rate[str(threads)]["label"].append(row)
            shutil.rmtree(out)
            if args.baseline is not None:  # the same, with another checkout's metapl (before a change)
                rate[str(threads)]["baseline"].append(
                    label("small_cnn", "rate", out, threads, args.workers, args.baseline)
                )
                shutil.rmtree(out)
            say(f"round {number}, {threads} threads: forward {forward}, label {row}")
    for rows in rate.values():
        rows["forward_median"] = median(rows["forward"])
        rows["label_median"] = median(rows["label"])
        rows["label_whole_command_median"] = median(rows["label"], "images_per_s_whole_command")
        rows["ratio"] = round(rows["label_median"] / rows["forward_median"], 2)
        if rows["baseline"]:
            rows["baseline_median"] = median(rows["baseline"])
            rows["baseline_ratio"] = round(rows["baseline_median"] / rows["forward_median"], 2)
    results["label_rate"] = {"teacher": "small_cnn", "batch": batch, "forward_images": args.forward_images, **rate}
    results["label_rate"]["baseline"] = str(args.baseline) if args.baseline else None

    # 4. memory: label (mlp teacher) and Reduced MPL training on the small and the big pool's shards
    results["label"], results["train"] = {}, {}
    for name in ("small", "big"):
        store = work / f"labels-{name}"
        results["label"][name] = label("mlp", name, store, 1, 1)
        say(f"label {name}: {results['label'][name]}")
        train = ["train", *base, "--method", "reduced_mpl", "--no-tensorboard", *sets, "--set", "model.name=small_cnn",
                 "--set", f"data.label_dir={store}", "--set", f"train.steps={args.steps}", "--set", "train.eval_every=0",
                 "--set", "data.unlabeled_dir=", "--set", f"data.unlabeled_shards={shards[name]}",
                 "--set", "train.threads=1", "--set", "data.workers=1", "--out", work / f"student-{name}"]  # fmt: skip
        results["train"][name] = checked(metapl(train, work), f"reduced_mpl {name}")
        say(f"train {name}: {results['train'][name]}")
    big = results["label"]["big"]
    results["store_bytes_per_image"] = round(big["store_bytes"] / big["store_images"], 1)
    results["load_end"] = load()
    return results


def table(r: dict) -> str:
    """The markdown table of docs/scale.md#measured-scale."""
    small, big, mid = f"{r['small']:,}", f"{r['images']:,}", f"{r['label_images']:,}"
    shard, floor, workers = r["shard"]["big"], r["decode_floor"], r["workers"]

    def rss(kind: str) -> str:
        a, b = r[kind]["small"]["peak_rss_mb"], r[kind]["big"]["peak_rss_mb"]
        return f"{a:,.0f} → {b:,.0f} MB ({(b - a) / a:+.1%})"

    def workers_rss(kind: str) -> str:
        a, b = r[kind]["small"]["children_peak_rss_mb"], r[kind]["big"]["children_peak_rss_mb"]
        return f"largest loader worker {a:,.0f} → {b:,.0f} MB"

    rows = [
        ("`metapl shard`, images/s", f"{shard['images_per_s']:,.0f} ({workers} workers, {big} images; first to "
         f"last shard: {shard['images_per_s_steady'] or float('nan'):,.0f})",
         f"decode floor {floor['median']:,.0f}/s per process × {workers} = {floor['median'] * workers:,.0f}; "
         f"ratio {shard['images_per_s'] / (floor['median'] * workers):.2f} (1 process: "
         f"{shard['images_per_s'] / floor['median']:.2f})"),
        ("`metapl shard`, main process peak RSS", f"{r['shard']['small']['peak_rss_mb']:,.0f} → "
         f"{shard['peak_rss_mb']:,.0f} MB", f"{small} → {big} images"),
    ]  # fmt: skip
    rate = r["label_rate"]
    for threads in (k for k in rate if k.isdigit()):
        t = rate[threads]
        rows.append((f"`metapl label` from shards, small_cnn, {mid} images, {threads} thread(s), {workers} workers, "
                     "images/s", f"{t['label_median']:,.0f} (whole command: {t['label_whole_command_median']:,.0f})",
                     f"forward floor {t['forward_median']:,.0f}/s ({threads} thread(s), batch {rate['batch']}); "
                     f"ratio **{t['ratio']:.2f}**" + (f"; before (--baseline): {t['baseline_median']:,.0f}/s, "
                     f"ratio {t['baseline_ratio']:.2f}" if t.get("baseline_median") else "")))  # fmt: skip
    rows += [
        ("`metapl label` from shards (mlp teacher), main process peak RSS", rss("label"),
         f"{small} → {big} images; {workers_rss('label')}"),
        (f"Reduced MPL from shards, {r['steps']} steps, main process peak RSS", rss("train"),
         f"{small} → {big} images in the store; {workers_rss('train')}"),
        (f"label store, top-{TOP_K} fp16", f"{r['store_bytes_per_image']} bytes per image",
         f"{r['label']['big']['store_bytes']:,} bytes / {r['label']['big']['store_images']:,} images"),
    ]  # fmt: skip
    lines = ["| quantity | measured | beside |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines.append(f"\nload average (1 min): {r['load_start']} at the start, {r['load_end']} at the end; "
                 f"{r['cpu_count']} cores")  # fmt: skip
    return "\n".join(lines)


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1_000_000, help="the big pool (default 1,000,000)")
    parser.add_argument("--small", type=int, default=10_000, help="the small pool (default 10,000)")
    parser.add_argument(
        "--label-images",
        type=int,
        default=20_000,
        help="the pool label's rate is timed on (default 20,000: label runs at the small CNN's pace)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--images 20000 --small 2000 --label-images 3000 --floor-images 5000 --forward-images 2048 --rounds 1",
    )
    parser.add_argument("--distinct", type=int, default=256, help="distinct encoded images in the pools")
    parser.add_argument("--floor-images", type=int, default=50_000, help="images per decode-floor round")
    parser.add_argument("--forward-images", type=int, default=8192, help="images per forward-floor round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of label's rate and its floor (median)")
    parser.add_argument("--workers", type=int, default=2, help="shard and label workers of the timed runs")
    parser.add_argument(
        "--label-threads", type=int, nargs="+", default=[1, 2], help="label's train.threads (and the floor's)"
    )
    parser.add_argument(
        "--baseline", type=Path, help="a metapl checkout whose label is timed too, in the same rounds (before a change)"
    )
    parser.add_argument("--steps", type=int, default=20, help="Reduced MPL steps per training run")
    parser.add_argument("--work", type=Path, help="a new folder for the pools, shards and runs (default: temporary)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.small, args.label_images, args.floor_images = 20_000, 2_000, 3_000, 5_000
        args.forward_images, args.rounds = 2048, 1
    work = (args.work or Path(tempfile.mkdtemp(prefix="scale_"))).resolve()  # commands may run in another folder
    args.baseline = args.baseline and args.baseline.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    results["table"] = table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(results["table"])
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
