"""Step time with one intra-op thread against all cores, per preset, on a quiet and on a busy machine.

    python benchmarks/threads.py            # twomoon, digits, fashion_mnist_400, folder_small, cifar10_4k; ~4 min
    python benchmarks/threads.py --quick    # fewer, shorter rounds (about 2 min on 2 cores)

Each preset's method (MPL) is built with the preset's model, labeled batch B and μ on synthetic inputs of its data's
shape (no data files are read; the data path is not timed: every step reuses one batch), on the CPU. cifar10_4k's
WRN-28-2 runs at B = 8 instead of 128 (its full step takes tens of seconds on a laptop CPU); the others at their
preset's B. Each round times about --seconds of steps (at least one) at 1 thread and at all cores (os.cpu_count()),
alternating, after a warm-up step at each (WRN: 3 rounds); reported: the median seconds per step over the rounds and all-cores / 1-thread (a ratio
above 1: one thread is faster). "busy": the same while one process burns a core (a Python busy loop), as another
job or agent would. The "auto" column is what train.threads=0 would have picked for that model at that
moment (metapl/run/threads.py: the load average measured after the preset's timings). "quiet" means no burner of ours: on a shared machine other work may still run, so the
1-minute load average before each part is recorded.
Prints a Markdown table; writes JSON (--out, default benchmarks/results/threads.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from metapl.parts.methods import Batch
from metapl.run.build import build_method
from metapl.run.config import build_config
from metapl.run.threads import automatic_threads, forward_flops, machine_busy

PRESETS = ("twomoon", "digits", "fashion_mnist_400", "folder_small", "cifar10_4k")
INPUTS = {"twomoon": (2,), "digits": (64,), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
BATCH = {"cifar10_4k": 8}  # B for presets whose full step is too slow for a CPU benchmark


def _setup(preset: str):
    cfg = build_config(preset, [f"data.batch_size={BATCH[preset]}"] if preset in BATCH else [])
    if cfg.data.name == "folder":
        shape: tuple[int, ...] = (3, cfg.data.settings.image_size, cfg.data.settings.image_size)
    else:
        shape = INPUTS[cfg.data.name]
    data = SimpleNamespace(num_classes=10, input_shape=shape, normalization=None)
    torch.manual_seed(0)
    method = build_method(cfg, data, torch.device("cpu"))  # type: ignore[arg-type]  # only these fields are read
    b, u = cfg.data.batch_size, cfg.data.batch_size * cfg.data.mu
    batch = Batch(
        x_l=torch.rand(b, *shape),
        y_l=torch.randint(0, 10, (b,)),
        x_u_weak=torch.rand(u, *shape),
        x_u_strong=torch.rand(u, *shape),
    )
    flops = max(forward_flops(n, shape) for n in method.networks().values())
    return method, batch, flops, cfg


def _time(method, batch, steps: int, first: int) -> float:
    start = time.perf_counter()
    for step in range(first, first + steps):
        method.step(batch, step)
    return (time.perf_counter() - start) / steps


def measure(preset: str, rounds: int, seconds: float, cores: int) -> dict:
    method, batch, flops, cfg = _setup(preset)
    counts = (1, cores)
    times: dict[int, list[float]] = {n: [] for n in counts}
    step, first = 0, 0.0
    for n in counts:  # warm-up: allocator and kernels at each thread count
        torch.set_num_threads(n)
        first = max(first, _time(method, batch, 1, step))
        step += 1
    steps = max(1, min(100, round(seconds / first)))
    for r in range(rounds):
        for n in counts if r % 2 == 0 else counts[::-1]:
            torch.set_num_threads(n)
            times[n].append(_time(method, batch, steps, step))
            step += steps
    one, all_ = statistics.median(times[1]), statistics.median(times[cores])
    return {
        "preset": preset,
        "model": cfg.model.name,
        "forward_flops": flops,
        "batch": f"{cfg.data.batch_size}+2x{cfg.data.batch_size * cfg.data.mu}",
        "one_thread_s": one,
        "all_cores_s": all_,
        "ratio_all_over_one": all_ / one,
        "load_average": os.getloadavg()[0],
        "auto_threads": automatic_threads(flops, torch.device("cpu"), cores, machine_busy(cores)),
    }


def _burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/threads.json"))
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rounds, seconds = (3, 0.3) if args.quick else (5, 1.0)
    rows = []
    loads = {}
    for load in ("quiet", "busy"):
        burner = _burner() if load == "busy" else None
        loads[load] = os.getloadavg()[0]
        try:
            for preset in args.presets:
                slow = preset == "cifar10_4k"  # seconds per step: fewer rounds
                result = measure(preset, min(rounds, 3) if slow else rounds, seconds, cores)
                rows.append({"load": load, **result})
                print(f"{load} {preset}: {result['one_thread_s']:.4f} s vs {result['all_cores_s']:.4f} s", flush=True)
        finally:
            if burner is not None:
                burner.kill()
                burner.wait()
    table = [
        f"CPU: {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}; 1-minute load "
        f"average before each part (other work on the machine): quiet {loads['quiet']:.2f}, busy {loads['busy']:.2f}",
        "",
        "| machine | preset | model (forward FLOPs per example) | batch | 1 thread (s/step) | "
        f"{cores} threads (s/step) | {cores} threads / 1 | auto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        table.append(
            f"| {r['load']} | {r['preset']} | {r['model']} ({r['forward_flops']:,}) | {r['batch']} | "
            f"{r['one_thread_s']:.4f} | {r['all_cores_s']:.4f} | {r['ratio_all_over_one']:.2f} | {r['auto_threads']} |"
        )
    print("\n".join(table))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "cores": cores,
        "torch": torch.__version__,
        "rounds": rounds,
        "seconds": seconds,
        "load_before": loads,
        "rows": rows,
    }
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
