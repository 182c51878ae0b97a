"""Step time of a paper preset on this machine's accelerator, and the time of the whole run it implies.

    python benchmarks/gpu_step.py                          # cifar10_4k end to end + resnet50 model-only, on cuda
    python benchmarks/gpu_step.py --presets cifar10_4k --steps 300 --out benchmarks/results/gpu_step.json

Two measurements, on synthetic data of the preset's real shapes (no data set is needed):
  end to end   (in-memory presets: cifar10_4k, svhn_1k) `run_experiment` on a synthetic CIFAR-10 of the real size
               (50,000 + 10,000 images, 32×32), the preset's batch sizes, model and recipe, for --steps steps:
               the loop, the data path (batched augmentation on the CPU, or on the GPU with
               data.augment_on_device=true) and logging included. Seconds per step = the median over the logged
               intervals (every 10 steps) after the first --warmup steps.
  model only   (every preset) the method's step alone on one synthetic batch already on the device: the floor the
               data path must keep up with. --imagenet-batch (or --set data.batch_size=...) scales a batch down to
               what a quick check can afford; the preset's full step is extrapolated linearly in images, which
               overstates it (larger batches use a GPU better). Peak memory: what the step allocated on the GPU.
Each runs with the speed switches a GPU user sets: train.precision=bf16, train.channels_last=true (and, with
--compile, train.compile=true). Prints a table with the implied time of the preset's whole run
(train.steps × s/step) and writes JSON.

  --floor      MPL's floor on the device: the passes its step cannot avoid, each timed alone with the same
               switches (teacher forward + backward on B + 2μB images, student forward + backward on μB, the
               labeled forward + backward at θ'_S on B), and the step's ratio to their sum.
  --profile D  torch.profiler over a few MPL model-only steps: D/profile_mpl.txt (the operators by device time)
               and D/trace_mpl.json (a Chrome trace), for docs/performance.md's before/after.
"""

from __future__ import annotations

import argparse
import gc
import json
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from metapl.parts.methods import Batch
from metapl.run.build import build_method, resolve_device
from metapl.run.config import Config, build_config
from metapl.run.experiment import run_experiment
from metapl.run.speed import apply_switches

SPEED = ["train.precision=bf16", "train.channels_last=true"]
SHAPES = {
    "cifar10": ((3, 32, 32), 10),
    "svhn": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "imagenet": ((3, 224, 224), 1000),
}


def write_synthetic_cifar10(root: Path, per_batch: int = 10_000) -> None:
    """cifar-10-batches-py of the real size (by default): 5 × 10,000 training and 10,000 test images of noise."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({b"batch_label": b"synthetic", b"labels": labels.tolist(), b"data": data}, handle, protocol=2)


def end_to_end(preset: str, method: str, steps: int, warmup: int, extra: list[str], root: Path, out: Path) -> dict:
    overrides = [
        *SPEED,
        *extra,
        "data.name=cifar10",
        f"data.root={root}",
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        "train.log_every=10",
        f"train.checkpoint_every={steps}",
        "finetune.steps=0",
    ]
    cfg = build_config(preset, overrides, method)
    started = time.perf_counter()
    run_experiment(cfg, out, progress=False, tensorboard=False)
    wall = time.perf_counter() - started
    images = images_per_step(cfg, method)
    rates = [
        r["images_per_s"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r.get("phase") == "train" and "images_per_s" in r and r["step"] > warmup
    ]
    return {"s_per_step": images / statistics.median(rates), "images_per_step": images, "wall_s": round(wall, 1)}


def model_only(preset: str, method: str, steps: int, warmup: int, extra: list[str], device: torch.device) -> dict:
    baseline = 0
    if device.type == "cuda":  # what earlier rows left allocated is not this step's
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    cfg = build_config(preset, [*SPEED, *extra], method)
    shape, classes = SHAPES[cfg.data.name]
    data = SimpleNamespace(num_classes=classes, input_shape=shape, normalization=None)
    step_method = build_method(cfg, data, device)
    apply_switches(cfg.train, step_method, image_inputs=len(shape) == 3)
    b, mu = cfg.data.batch_size, cfg.data.mu
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, *shape, device=device).contiguous(memory_format=fmt)

    labels = torch.randint(0, classes, (b,), device=device)
    batch = (
        Batch(images(b), labels) if method == "supervised" else Batch(images(b), labels, images(mu * b), images(mu * b))
    )
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
    times, middle = [], cfg.train.steps // 2  # mid-run: past every warm-up and wait, every loss term on
    for i in range(warmup + steps):
        sync(device)
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            step_method.step(batch, middle + i)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**30 if device.type == "cuda" else None
    return {"s_per_step": statistics.median(times), "images_per_step": images_per_step(cfg, method), "peak_gib": peak}


def _model_batch(cfg: Config, method: str, device: torch.device) -> tuple[Batch, tuple[int, ...], int]:
    shape, classes = SHAPES[cfg.data.name]
    b, mu = cfg.data.batch_size, cfg.data.mu
    fmt = torch.channels_last if cfg.train.channels_last else torch.contiguous_format

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, *shape, device=device).contiguous(memory_format=fmt)

    labels = torch.randint(0, classes, (b,), device=device)
    if method == "supervised":
        return Batch(images(b), labels), shape, classes
    return Batch(images(b), labels, images(mu * b), images(mu * b)), shape, classes


def mpl_floor(preset: str, steps: int, warmup: int, extra: list[str], device: torch.device) -> dict:
    """The MPL step (hard, dot) against its floor passes, each timed alone on the device: medians, and the ratio."""
    import torch.nn.functional as F

    cfg = build_config(preset, [*SPEED, *extra], "mpl")
    batch, shape, classes = _model_batch(cfg, "mpl", device)
    data = SimpleNamespace(num_classes=classes, input_shape=shape, normalization=None)
    method = build_method(cfg, data, device)
    apply_switches(cfg.train, method, image_inputs=len(shape) == 3)
    teacher, student = method.networks()["teacher"], method.networks()["student"]
    x_u_weak, x_u_strong = batch.unlabeled()
    teacher_input = torch.cat([batch.x_l, x_u_weak, x_u_strong])
    y_all = torch.randint(0, classes, (teacher_input.shape[0],), device=device)
    y_u = torch.randint(0, classes, (x_u_strong.shape[0],), device=device)

    def fwd_bwd(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
        params = [p for p in net.parameters() if p.requires_grad]
        return lambda: torch.autograd.grad(F.cross_entropy(net(x), y), params)

    calls = {
        "step": lambda i: method.step(batch, cfg.train.steps // 2 + i),
        "teacher fwd+bwd": lambda i: fwd_bwd(teacher, teacher_input, y_all)(),
        "student fwd+bwd": lambda i: fwd_bwd(student, x_u_strong, y_u)(),
        "labeled fwd+bwd": lambda i: fwd_bwd(student, batch.x_l, batch.y_l)(),
    }
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
    times: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(warmup + steps):
        for name, call in calls.items():  # interleaved, so that clocks and load hit all alike
            sync(device)
            started = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                call(i)
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    floor = sum(v for k, v in medians.items() if k != "step")
    return {"step_s": medians["step"], "floor_s": floor, "x_floor": medians["step"] / floor, "passes_s": medians}


def profile_mpl(preset: str, steps: int, extra: list[str], device: torch.device, out: Path) -> Path:
    """torch.profiler over `steps` MPL model-only steps (after 3 untimed ones): an operator table and a trace."""
    from torch.profiler import ProfilerActivity, profile

    cfg = build_config(preset, [*SPEED, *extra], "mpl")
    batch, shape, classes = _model_batch(cfg, "mpl", device)
    data = SimpleNamespace(num_classes=classes, input_shape=shape, normalization=None)
    method = build_method(cfg, data, device)
    apply_switches(cfg.train, method, image_inputs=len(shape) == 3)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def run(i: int) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            method.step(batch, cfg.train.steps // 2 + i)

    for i in range(3):
        run(i)
    sync(device)
    with profile(activities=activities) as prof:
        for i in range(steps):
            run(3 + i)
        sync(device)
    out.mkdir(parents=True, exist_ok=True)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = out / "profile_mpl.txt"
    table.write_text(prof.key_averages().table(sort_by=sort, row_limit=40))
    prof.export_chrome_trace(str(out / "trace_mpl.json"))
    return table


def images_per_step(cfg: Config, method: str) -> int:
    """Images one step passes in: B labeled, plus μB unlabeled in two views for every method but supervised."""
    b, mu = cfg.data.batch_size, cfg.data.mu
    return b + (2 * mu * b if method != "supervised" else 0)


def full_batch_seconds(seconds: float, images: int, preset_cfg: Config, method: str) -> float:
    """A step measured on `images` images, scaled linearly to the preset's own batch (B and μ)."""
    return seconds * images_per_step(preset_cfg, method) / images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["cifar10_4k", "imagenet_10pct"])
    parser.add_argument("--methods", nargs="+", default=["supervised", "uda", "mpl"])
    parser.add_argument("--steps", type=int, default=80, help="end to end: the whole run's steps")
    parser.add_argument("--model-steps", type=int, default=20, help="model only: timed steps after 3 warm-up steps")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--imagenet-batch", type=int, default=16, help="B for the ImageNet model-only step (μ stays)")
    parser.add_argument(
        "--compile", action="store_true", help="also time train.compile=true (model only, in-memory presets)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_step.json"))
    parser.add_argument("--floor", action="store_true", help="only MPL's step against its floor passes, per preset")
    parser.add_argument("--profile", type=Path, default=None, help="only a torch.profiler run of MPL into this folder")
    args = parser.parse_args()
    device = resolve_device("auto")
    if args.floor or args.profile:
        for preset in args.presets:
            overrides = list(args.overrides)
            if args.floor:
                r = mpl_floor(preset, args.model_steps, 3, overrides, device)
                passes = ", ".join(f"{k} {v:.4f}" for k, v in r["passes_s"].items() if k != "step")
                print(
                    f"{preset}: MPL step {r['step_s']:.4f} s, floor {r['floor_s']:.4f} s ({passes}): {r['x_floor']:.2f}×"
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"device": str(device), "preset": preset, **r}, indent=1))
            if args.profile:
                print(f"{preset}: wrote {profile_mpl(preset, 5, overrides, device, args.profile / preset)}")
        return
    gpu = device.type == "cuda"
    # Most telling rows first (the JSON is rewritten after each row, so a time limit keeps what finished):
    # model-only steps, then the in-memory presets end to end with GPU augmentation, then MPL end to end with
    # CPU augmentation, then the MPL step compiled (its compilation takes the longest).
    tasks: list[tuple[str, str, str, list[str]]] = []
    for preset in args.presets:
        in_memory = build_config(preset, []).data.name in ("cifar10", "cifar100", "svhn")
        scale = [] if in_memory else [f"data.batch_size={args.imagenet_batch}"]
        tasks += [(preset, method, "model only", scale) for method in args.methods]
        if in_memory:
            tasks += [
                (preset, m, "end to end, GPU augmentation", ["data.augment_on_device=true"])
                for m in args.methods
                if gpu
            ]
            if args.compile and "mpl" in args.methods:
                tasks.append((preset, "mpl", "model only, compiled", ["train.compile=true"]))
            if "mpl" in args.methods:
                tasks.append((preset, "mpl", "end to end, CPU augmentation", []))
    tasks.sort(key=lambda t: ("model only" != t[2], "GPU" not in t[2], "compiled" in t[2]))
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for preset, method, measure, extra in tasks:
            overrides = [*extra, *args.overrides]
            if measure.startswith("end to end"):
                if not (tmp / "cifar-10-batches-py").is_dir():
                    write_synthetic_cifar10(tmp)
                r = end_to_end(preset, method, args.steps, args.warmup, overrides, tmp, tmp / f"run{len(rows)}")
            else:
                r = model_only(preset, method, args.model_steps, 3, overrides, device)
            preset_cfg, cfg = build_config(preset, []), build_config(preset, overrides)
            full_step = full_batch_seconds(r["s_per_step"], r["images_per_step"], preset_cfg, method)
            rows.append(
                {
                    "preset": preset,
                    "method": method,
                    "measure": measure,
                    "batch": cfg.data.batch_size,
                    **r,
                    "full_batch_s_per_step": full_step,
                    "preset_steps": preset_cfg.train.steps,
                    "implied_run_hours": full_step * preset_cfg.train.steps / 3600,
                }
            )
            print(
                f"{preset:15} {method:10} {measure:30} B={cfg.data.batch_size:<5} {r['s_per_step']:.4f} s/step "
                f"{r['images_per_step'] / r['s_per_step']:9.0f} img/s  full run ≈ "
                f"{rows[-1]['implied_run_hours']:.1f} h",
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
    print(
        "| preset | method | measure | B | s / step | images / s | preset's run at this speed |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['preset']} | {r['method']} | {r['measure']} | {r['batch']} | {r['s_per_step']:.3f} | "
            f"{r['images_per_step'] / r['s_per_step']:,.0f} | {r['implied_run_hours']:.1f} h |"
        )
    print(f"device: {name}; wrote {args.out}")


if __name__ == "__main__":
    main()
