"""Scale, measured (docs/scale.md#measured-scale): `metapl shard` and `metapl label` against their floors, the main
process's peak memory of label and of Reduced MPL training at two pool sizes, and the label store's bytes per image.

    python benchmarks/scale.py [--images 1000000] [--small 10000] [--label-images 50000] [--quick]

1. Synthetic pools: `--distinct` different 32×32 JPEGs (photo-like noise with a bright square) encoded once, then
   written under many names (1,000 per folder): the files and names are real, only their bytes repeat, so writing
   a million takes a minute or two, not an hour. Three pools: `--images` (sharded only), `--small` and
   `--label-images` (sharded, labeled and trained on), and a labeled set of 20 classes × 6 PNGs.
2. `metapl shard` (the CLI, default workers) on each pool: images/s over the whole command, and the main process's
   peak RSS. The decode floor: the same image files read and decoded (PIL, RGB, to an array) in a bare loop in one
   process, over the first `--floor-images`, `--rounds` times (median); × workers is what the workers could reach.
3. A teacher (small_cnn, 2 supervised steps: its cost, not its accuracy, matters) and `metapl label` with it on
   the small and label pools, top-k 16 fp16. Label reads the sharded pool (data.unlabeled_shards) when this metapl
   can label shards, else the pool's folder (data.unlabeled_dir); the JSON and the table say which. Images/s from
   the label store's shard files' times, first to last (start-up excluded), and over the whole command; the floor:
   the teacher's forward pass alone (softmax included) on in-memory uint8 batches of label's batch size, in a fresh
   process with the same threads. Label runs at the teacher's pace (about 400 images/s on 2 cores), which is why
   its pool is smaller than the sharded one.
4. Reduced MPL training for `--steps` steps on each labeled pool: the main process's peak RSS (from the shards
   when this metapl can, else from the folder).
5. The label store's bytes per image (all files of the store / images labeled).

Peak RSS is VmHWM of the command's main process (loader and shard workers are other processes), with glibc's mmap
threshold fixed at 128 KiB (benchmarks/shard_speed.py explains why). The machine's load average is recorded beside
each timing. Writes JSON to --out (default benchmarks/results/scale.json) and prints the table.
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
COMMON = [
    "data.name=folder",
    "model.name=small_cnn",
    "data.labeled_selection=all",
    "data.val_per_class=1",
    "data.batch_size=16",
    "data.mu=4",
    "finetune.steps=0",
]
# Runs `metapl ARGS` in this process and writes its exit code and the main process's peak RSS to a JSON file.
CHILD = r"""
import json, sys
from metapl.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as stop:
    code = stop.code
fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
with open(sys.argv[1], "w") as handle:
    json.dump({"code": code, "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1)}, handle)
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
def metapl(args: list[object], work: Path, env_extra: dict | None = None) -> dict:
    """`metapl ARGS` in a fresh process: exit code, seconds, peak RSS of its main process, load average."""
    report = work / f"report-{time.monotonic_ns()}.json"
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", **(env_extra or {})}
    before = load()
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(report), *map(str, args)], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    row = json.loads(report.read_text()) if report.exists() else {"code": result.returncode, "peak_rss_mb": None}
    report.unlink(missing_ok=True)
    row |= {"seconds": round(seconds, 2), "load_before": before, "load_after": load()}
    if row["code"] != 0:
        row["error"] = (result.stderr.strip().splitlines() or ["(no output)"])[-1][:500]
    return row


def decode_floor(pool: Path, count: int, rounds: int) -> dict:
    """The first `count` images of the pool read and decoded in a bare loop in this process: images/s per round."""
    from PIL import Image

    paths = []
    for sub in sorted(pool.iterdir()):
        paths += sorted(sub.iterdir())
        if len(paths) >= count:
            break
    paths = paths[:count]
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for path in paths:
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                np.asarray(image.convert("RGB"))
        rates.append(len(paths) / (time.perf_counter() - started))
    return {"images": len(paths), "rounds": [round(r, 1) for r in rates], "median": round(statistics.median(rates), 1)}


FORWARD = r"""
import json, sys, time, torch
from metapl.inference import load_run
run, batch, images, rounds, side = sys.argv[1], *map(int, sys.argv[2:6])
model = load_run(run).model.eval()
x = torch.randint(0, 256, (batch, 3, side, side), dtype=torch.uint8)
rates = []
with torch.no_grad():
    torch.softmax(model(x).float(), -1)  # warm-up
    for _ in range(rounds):
        started, done = time.perf_counter(), 0
        while done < images:
            torch.softmax(model(x).float(), -1)
            done += batch
        rates.append(done / (time.perf_counter() - started))
print(json.dumps(rates))
"""


def forward_floor(run: Path, batch: int, images: int, rounds: int) -> dict:
    """The teacher's forward pass (and softmax) alone on in-memory uint8 batches, in a fresh process as label is."""
    result = subprocess.run(
        [sys.executable, "-c", FORWARD, str(run), str(batch), str(images), str(rounds), str(SIDE)],
        capture_output=True,
        text=True,
        check=True,
    )
    rates = json.loads(result.stdout.strip().splitlines()[-1])
    return {"batch": batch, "rounds": [round(r, 1) for r in rates], "median": round(statistics.median(rates), 1)}


def store_rate(store: Path) -> dict:
    """Images/s from the label store's shard files' modification times, first to last (start-up excluded)."""
    try:  # the store's layout of this metapl (a store over shards may record its files otherwise)
        manifest = json.loads((store / "manifest.json").read_text())
        times = sorted(((store / s["file"]).stat().st_mtime, s["count"]) for s in manifest.get("shards", []))
    except (OSError, ValueError, KeyError, TypeError):
        times = []
    if len(times) < 2:
        return {"images_per_s": None}
    images = sum(count for _, count in times[1:])
    return {"images_per_s": round(images / (times[-1][0] - times[0][0]), 1), "shards": len(times)}


def shards_rate(folder: Path) -> float | None:
    """Images/s of metapl shard from its shards' modification times, first to last (start-up excluded)."""
    from metapl.sharding import MANIFEST, SHARD_NAME

    records = [json.loads(line) for line in (folder / MANIFEST).read_text().splitlines()[1:]]
    times = sorted(
        ((folder / SHARD_NAME.format(r["shard"])).stat().st_mtime, r["count"]) for r in records if "shard" in r
    )
    if len(times) < 2 or times[-1][0] <= times[0][0]:
        return None
    return round(sum(count for _, count in times[1:]) / (times[-1][0] - times[0][0]), 1)


def covers(store: Path, stored: int, pool: int) -> bool:
    """Whether a label store holds a distribution for every image of the pool and the labeled set: by its manifest's
    pool size where it has one, else by its bytes (top-16 fp16: at least 32 bytes of values and 32 of classes)."""
    images = pool + CLASSES * 6
    try:
        return int(json.loads((store / "manifest.json").read_text())["pool_size"]) >= images
    except (OSError, ValueError, KeyError, TypeError):
        return stored >= images * 4 * TOP_K


def store_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------------------ the benchmark
def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    results: dict = {
        "images": args.images,
        "small": args.small,
        "label_images": args.label_images,
        "steps": args.steps,
        "side": SIDE,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_start": load(),
    }
    distinct = encoded_images(args.distinct)
    results["jpeg_bytes_mean"] = round(sum(map(len, distinct)) / len(distinct), 1)
    sizes = {"small": args.small, "label": args.label_images, "big": args.images}
    pools = {name: work / f"pool-{name}" for name in sizes}
    results["write_pool"] = {name: write_pool(pools[name], size, distinct) for name, size in sizes.items()}
    write_labeled(work / "labeled")
    say(f"pools written: {sizes} images of {SIDE}x{SIDE} ({results['jpeg_bytes_mean']:.0f} B each)")

    # 2. metapl shard against the decode floor
    results["shard"] = {}
    for name, pool in pools.items():
        row = metapl(["shard", pool, "--out", work / f"shards-{name}", "--no-progress"], work)
        row["images_per_s"] = round(sizes[name] / row["seconds"], 1) if row["code"] == 0 else None
        row["images_per_s_steady"] = shards_rate(work / f"shards-{name}") if row["code"] == 0 else None
        results["shard"][name] = row
        say(f"shard {name}: {row}")
    from metapl.sharding import default_workers

    floor = decode_floor(pools["big"], min(args.floor_images, args.images), args.rounds)
    results["decode_floor"] = floor | {"workers": default_workers(), "load": load()}
    say(f"decode floor: {results['decode_floor']}")

    # 3. the teacher, label and its floor
    teacher = work / "teacher"
    base = ["--preset", "cifar10_4k", "--no-progress"]
    data = [f"data.root={work / 'labeled'}", *COMMON]
    sets = [item for key in data for item in ("--set", key)]
    row = metapl(["train", *base, "--method", "supervised", "--out", teacher, "--no-tensorboard", *sets,
                  "--set", "train.steps=2"], work)  # fmt: skip
    if row["code"] == 0:  # the weights as a file: label takes a model name with the preset's (mpl's) data
        row = metapl(["export", teacher, "--format", "safetensors", "--out", work / "teacher.safetensors"], work)
    if row["code"] != 0:
        raise RuntimeError(f"the teacher run failed: {row}")
    results["label"], results["label_input"] = {}, {}
    labeled_pools = {name: pools[name] for name in ("small", "label")}  # the big pool is only sharded (see --help)
    for name, pool in labeled_pools.items():
        store = work / f"labels-{name}"
        label = ["label", "small_cnn", "--weights", work / "teacher.safetensors", *base, *sets, "--out", store,
                 "--top-k", TOP_K, "--shard-size", max(1000, sizes[name] // 50)]  # fmt: skip
        shards = ["--set", "data.unlabeled_dir=", "--set", f"data.unlabeled_shards={work / f'shards-{name}'}"]
        row = metapl([*label, *shards], work)
        stored = store_bytes(store) if store.exists() else 0
        labeled = row["code"] == 0 and covers(store, stored, sizes[name])
        why = row.get("error") or f"exit 0, but {stored:,} bytes stored: the sharded images were not labeled"
        results["label_input"][name] = "shards" if labeled else f"folder (label over shards: {why})"
        if not labeled:
            shutil.rmtree(store, ignore_errors=True)
            row = metapl([*label, "--set", f"data.unlabeled_dir={pool}"], work)
        if row["code"] != 0:
            raise RuntimeError(f"metapl label failed: {row}")
        row |= {"images_per_s_whole_command": round(sizes[name] / row["seconds"], 1), **store_rate(store)}
        row["store_bytes"] = store_bytes(store)
        try:
            row["store_images"] = int(json.loads((store / "manifest.json").read_text())["pool_size"])
        except (OSError, ValueError, KeyError, TypeError):  # a store over shards: the pool and the labeled set
            row["store_images"] = sizes[name] + CLASSES * 6
        results["label"][name] = row
        say(f"label {name} ({results['label_input'][name][:6]}): {row}")
    from metapl.config import load_config_file

    batch = load_config_file(teacher / "config.yaml").train.eval_batch_size
    results["forward_floor"] = forward_floor(teacher, batch, args.forward_images, args.rounds) | {"load": load()}
    say(f"forward floor: {results['forward_floor']}")
    big = results["label"]["label"]
    results["store_bytes_per_image"] = round(big["store_bytes"] / big["store_images"], 1)

    # 4. Reduced MPL training, fixed steps, on each pool's labels
    results["train"], results["train_input"] = {}, {}
    for name, pool in labeled_pools.items():
        train = ["train", *base, "--method", "reduced_mpl", "--no-tensorboard", *sets,
                 "--set", f"data.label_dir={work / f'labels-{name}'}", "--set", f"train.steps={args.steps}",
                 "--set", "train.eval_every=0"]  # fmt: skip
        row = metapl([*train, "--out", work / f"student-{name}-shards", "--set", "data.unlabeled_dir=",
                      "--set", f"data.unlabeled_shards={work / f'shards-{name}'}"], work)  # fmt: skip
        results["train_input"][name] = "shards" if row["code"] == 0 else f"folder (from shards: {row.get('error')})"
        if row["code"] != 0:
            row = metapl([*train, "--out", work / f"student-{name}", "--set", f"data.unlabeled_dir={pool}"], work)
        if row["code"] != 0:
            raise RuntimeError(f"reduced_mpl training failed: {row}")
        results["train"][name] = row
        say(f"train {name} ({results['train_input'][name][:6]}): {row}")
    results["load_end"] = load()
    return results


def table(r: dict) -> str:
    """The markdown table of docs/scale.md#measured-scale."""
    small, big, mid = f"{r['small']:,}", f"{r['images']:,}", f"{r['label_images']:,}"
    shard, floor = r["shard"]["big"], r["decode_floor"]
    label, forward = r["label"]["label"], r["forward_floor"]
    rate = label.get("images_per_s") or label["images_per_s_whole_command"]
    workers = floor["workers"]

    def rss(kind: str) -> str:
        a, b = r[kind]["small"]["peak_rss_mb"], r[kind]["label"]["peak_rss_mb"]
        return f"{a:,.0f} → {b:,.0f} MB ({(b - a) / a:+.1%})"

    rows = [
        ("`metapl shard`, images/s", f"{shard['images_per_s']:,.0f} ({workers} workers, {big} images; first to "
         f"last shard: {shard['images_per_s_steady'] or float('nan'):,.0f})",
         f"decode floor {floor['median']:,.0f}/s per process × {workers} = {floor['median'] * workers:,.0f}; "
         f"ratio {shard['images_per_s'] / (floor['median'] * workers):.2f} (1 process: "
         f"{shard['images_per_s'] / floor['median']:.2f})"),
        ("`metapl shard`, main process peak RSS", f"{r['shard']['small']['peak_rss_mb']:,.0f} → "
         f"{shard['peak_rss_mb']:,.0f} MB", f"{small} → {big} images"),
        (f"`metapl label` ({r['label_input']['label'].split(' ')[0]}, {mid} images), images/s", f"{rate:,.0f} (whole command: "
         f"{label['images_per_s_whole_command']:,.0f})", f"forward floor {forward['median']:,.0f}/s (batch "
         f"{forward['batch']}); ratio {rate / forward['median']:.2f}"),
        ("`metapl label`, main process peak RSS", rss("label"), f"{small} → {mid} images"),
        (f"Reduced MPL, {r['steps']} steps, main process peak RSS ({r['train_input']['label'].split(' ')[0]})",
         rss("train"), f"{small} → {mid} images"),
        (f"label store, top-{TOP_K} fp16", f"{r['store_bytes_per_image']} bytes per image",
         f"{label['store_bytes']:,} bytes / {label['store_images']:,} images"),
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
        default=50_000,
        help="the pool labeled and trained on beside --small (default 50,000: label runs at the teacher's pace)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="--images 20000 --small 2000 --label-images 5000 --floor-images 5000 --forward-images 4096",
    )
    parser.add_argument("--distinct", type=int, default=256, help="distinct encoded images in the pools")
    parser.add_argument("--floor-images", type=int, default=50_000, help="images per floor round")
    parser.add_argument("--forward-images", type=int, default=10_240, help="images per forward-floor round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each floor (median)")
    parser.add_argument("--steps", type=int, default=20, help="Reduced MPL steps per training run")
    parser.add_argument("--work", type=Path, help="a folder for the pools, shards and runs (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.small, args.label_images, args.floor_images = 20_000, 2_000, 5_000, 5_000
        args.forward_images = 4096
    work = args.work or Path(tempfile.mkdtemp(prefix="scale_"))
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
