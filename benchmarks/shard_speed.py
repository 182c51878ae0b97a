"""Shard speed: unlabeled images per second from WebDataset shards against the folder reader on the same images,
and the main process's memory as the shard count grows (docs/scale.md#measured).

    python benchmarks/shard_speed.py [--images 20000] [--side 64] [--workers 2] [--shard-counts 10,100,1000,10000]

1. Writes `--images` JPEG files (photo-like noise with a bright square, `--side` pixels) into a folder, then
   `metapl shard`s them into `--shard-size`-image shards (timed).
2. Throughput, `--rounds` times, alternating (a busy spell of a shared machine then hits both): one pass over all
   images, each decoded and made into its weak and strong views (the CIFAR pipeline at the images' side,
   RandAugment and Cutout on the strong view), in `--workers` loader processes: by the folder reader
   (streaming.run_tasks on path chunks, what a run with data.unlabeled_dir does) and by the shard stream
   (ShardStream, one lane per worker, what data.unlabeled_shards does). Images per second count from the first
   batch to the last (workers' start-up included, as a run pays it once) and, separately, after the first batch;
   CPU milliseconds per image count the workers and the main process. The files are in the page cache for both.
3. Memory: for each count in `--shard-counts` the same images are sharded into that many shards, and a fresh
   process streams `--memory-steps` batches of 128 from them with `--workers` workers; its final and peak resident
   memory (VmRSS, VmHWM of the main process) are reported with glibc's default allocator and with its mmap
   threshold fixed (see memory()), beside a fresh process that holds the folder reader's list of the same images.

Writes JSON to --out (default benchmarks/results/shard_speed.json; the folder is created).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

BATCH = 128  # unlabeled images per step in the throughput runs (μB)


def _write_images(folder: Path, count: int, side: int) -> float:
    """`count` JPEG files; returns their total size in MB."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    total = 0
    for i in range(count):
        image = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)
        y, x = divmod(i % 16, 4)
        image[y * side // 4 : (y + 1) * side // 4, x * side // 4 : (x + 1) * side // 4] = 250
        path = folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(path, quality=90)
        total += path.stat().st_size
    return total / 1e6


def _pipeline(side: int):
    from metapl.parts.data.streaming import ImagePipeline

    return ImagePipeline(size=side, style="small", magnitude=16)


def folder_rate(folder: Path, side: int, workers: int) -> dict:
    """One pass over the folder's images by the folder reader: path chunks → decode + views in the workers."""
    from metapl.parts.data.folders import ImageFiles, unlabeled_source
    from metapl.parts.data.streaming import _chunks, run_tasks

    paths = np.array(unlabeled_source(folder), dtype=object)
    files = ImageFiles(paths, side, 3, workers, _pipeline(side))
    seeds = torch.randint(2**62, (len(paths),), generator=torch.Generator().manual_seed(0))
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(1)).numpy()
    tasks = (
        task
        for first in range(0, len(paths), BATCH)
        for task in _chunks("unlabeled", paths[order[first : first + BATCH]], seeds[first : first + BATCH])
    )
    return _with_cpu(_timed((len(out["weak"]) for out in run_tasks(files, tasks)), len(paths)))


def shard_rate(shards: Path, side: int, workers: int, images: int) -> dict:
    """One pass's worth of images from the shards: ShardStream, one lane per worker."""
    from metapl.core.batch import Batch
    from metapl.parts.data.shards import ShardSet, ShardStream, shard_files

    shard_set = ShardSet(str(shards), shard_files(str(shards)), side, 3, workers, _pipeline(side))
    stream = ShardStream(shard_set, BATCH, seed=0)
    empty = Batch(torch.zeros(0), torch.zeros(0))

    def counts():
        for _ in range(images // BATCH):
            yield len(stream.attach(empty).x_u_weak)

    try:
        result = _timed(counts(), images // BATCH * BATCH) | {"lanes": stream.lanes, "workers": stream.workers}
    finally:
        stream.close()
    return _with_cpu(result)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader workers, once shut down)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(counts, expected: int) -> dict:
    started, cpu = time.perf_counter(), _cpu_seconds()
    first_done, first_count, done = 0.0, 0, 0
    for count in counts:
        done += count
        if not first_done:
            first_done, first_count = time.perf_counter(), done
    ended = time.perf_counter()
    assert done == expected, (done, expected)
    steady = (done - first_count) / (ended - first_done) if ended > first_done else float("nan")
    return {
        "images": done,
        "seconds": round(ended - started, 2),
        "images_per_s": round(done / (ended - started), 1),
        "images_per_s_after_first_batch": round(steady, 1),
        "_cpu_start": cpu,
    }


def _with_cpu(result: dict) -> dict:
    """The CPU milliseconds per image, counted once the workers have exited (their time joins the children's)."""
    cpu = _cpu_seconds() - result.pop("_cpu_start")
    return result | {"cpu_ms_per_image": round(1000 * cpu / result["images"], 3)}


# ------------------------------------------------------------------------------------------------ memory
MEMORY_CHILD = r"""
import json, sys, torch
from metapl.parts.data.shards import ShardSet, ShardStream, shard_files
from metapl.parts.data.streaming import ImagePipeline
from metapl.core.batch import Batch

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

kind, source, side, workers, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(1)
before = status()["VmRSS"]
if kind == "shards":
    shards = ShardSet(source, shard_files(source), side, 3, workers, ImagePipeline(size=side, style="small"))
    stream = ShardStream(shards, 128, seed=0)
    empty = Batch(torch.zeros(0), torch.zeros(0))
    for _ in range(steps):
        stream.attach(empty)
    state = stream.state_dict()
    stream.close()
    held = len(shards.files)
else:
    from metapl.parts.data.folders import unlabeled_source
    import numpy as np
    paths = np.array(unlabeled_source(__import__("pathlib").Path(source)), dtype=object)
    held = len(paths)
after = status()
print(json.dumps({"held": held, "rss_before_mb": round(before, 1), "rss_mb": round(after["VmRSS"], 1),
                  "peak_rss_mb": round(after["VmHWM"], 1)}))
"""


def memory(kind: str, source: Path, side: int, workers: int, steps: int) -> dict:
    """The child's memory with glibc's default allocator, and with its mmap threshold fixed at 128 KiB: by default
    glibc raises the threshold once large blocks are freed, and later batch buffers then stay in its heap after
    they are freed, which shows as tens of MB of RSS that depend on timing, not on what the process holds."""
    out: dict = {}
    for suffix, extra in (("", {}), ("_fixed_mmap_threshold", {"MALLOC_MMAP_THRESHOLD_": "131072"})):
        env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
        args = [sys.executable, "-c", MEMORY_CHILD, kind, str(source), str(side), str(workers), str(steps)]
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        row = json.loads(result.stdout.strip().splitlines()[-1])
        out["held"] = row.pop("held")
        out.update({f"{key}{suffix}": value for key, value in row.items()})
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--side", type=int, default=64, help="image side in pixels (the CIFAR pipeline at that side)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=1000, help="images per shard for the throughput run")
    parser.add_argument("--shard-counts", default="10,100,1000,10000", help="shard counts for the memory runs")
    parser.add_argument("--rounds", type=int, default=3, help="alternating throughput rounds per reader (0: none)")
    parser.add_argument("--memory-steps", type=int, default=40, help="batches of 128 streamed per memory run")
    parser.add_argument("--work", type=Path, help="a folder for the images and shards (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/shard_speed.json"))
    args = parser.parse_args(argv)
    from metapl.commands.shard import write_shards

    torch.set_num_threads(1)
    work = args.work or Path(tempfile.mkdtemp(prefix="shard_speed_"))
    try:
        megabytes = _write_images(work / "images", args.images, args.side)
        started = time.perf_counter()
        write_shards(work / "images", work / "shards", shard_size=args.shard_size, progress=False)
        shard_seconds = time.perf_counter() - started
        results: dict = {
            "images": args.images,
            "side": args.side,
            "megabytes": round(megabytes, 1),
            "workers": args.workers,
            "metapl_shard_images_per_s": round(args.images / shard_seconds, 1),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        }
        rounds: dict[str, list[dict]] = {"folder": [], "shards": []} if args.rounds else {}
        for _ in range(args.rounds):  # alternating, so that a busy spell of a shared machine hits both
            rounds["folder"].append(folder_rate(work / "images", args.side, args.workers))
            rounds["shards"].append(shard_rate(work / "shards", args.side, args.workers, args.images))
        print(
            f"{args.images} images of {args.side}² ({megabytes:.0f} MB), decode + weak + strong, {args.workers} workers"
        )
        for name, runs in rounds.items():
            rates = sorted(r["images_per_s"] for r in runs)
            cpu = sorted(r["cpu_ms_per_image"] for r in runs)
            results[name] = {
                "rounds": runs,
                "best_images_per_s": rates[-1],
                "median_images_per_s": rates[len(rates) // 2],
                "median_cpu_ms_per_image": cpu[len(cpu) // 2],
            }
            print(
                f"  {name:>6}: best {rates[-1]:,.0f} img/s, median {rates[len(rates) // 2]:,.0f} img/s over "
                f"{len(runs)} rounds; {cpu[len(cpu) // 2]:.2f} CPU-ms per image (workers and main process)"
            )
        rows = [{"kind": "folder paths", "count": args.images, **memory("folder", work / "images", args.side, 0, 0)}]
        for count in (int(c) for c in args.shard_counts.split(",") if c):
            folder = work / f"shards-{count}"
            write_shards(work / "images", folder, shard_size=max(1, -(-args.images // count)), progress=False)
            row = memory("shards", folder, args.side, args.workers, args.memory_steps)
            rows.append({"kind": "shards", "count": row["held"], **row})
            shutil.rmtree(folder)
        results["memory"] = rows
        print("main process memory (MB): what it holds, RSS before → after (peak); with a fixed mmap threshold")
        for row in rows:
            print(
                f"  {row['kind']:>12} {row['count']:>6}: {row['rss_before_mb']:.0f} → {row['rss_mb']:.0f} "
                f"({row['peak_rss_mb']:.0f}); {row['rss_before_mb_fixed_mmap_threshold']:.0f} → "
                f"{row['rss_mb_fixed_mmap_threshold']:.0f} ({row['peak_rss_mb_fixed_mmap_threshold']:.0f})"
            )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
