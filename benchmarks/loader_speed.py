"""Loader speed: images per second of the paper's augmentation (docs/method.md#augmentation) on one worker, against what a step consumes.

    python benchmarks/loader_speed.py [--seconds 2] [--cifar-step-time 0.2] [--imagenet-step-time 2.5]

Every rate is measured on one CPU thread (torch.set_num_threads(1)), as in one DataLoader worker process.
CIFAR (32×32×3): the weak view and the (weak, strong) pair, per image (batch of 1, as a per-sample worker) and
batched. ImageNet: a synthetic 375×500 photo-like image, JPEG-encoded once; decoding (torchvision.io and PIL),
then the 224 labeled view and the (weak, strong) pair, with and without decoding.

Per step (docs/method.md#presets): CIFAR-10-4K takes B = 128 labeled weak views and μB = 896 unlabeled pairs; ImageNet-10% takes
B = 1,024 labeled views and μB = 15,360 unlabeled pairs, each decoded from JPEG. Worker-seconds per step divided by
the step time gives the workers needed to keep up. The step times are assumptions, not measurements; pass your own:
  - CIFAR-10-4K, 0.2 s: MPL with WRN-28-2 runs about 3,300 image forward+backward passes per step (docs/method.md#compute-memory),
    assumed at about 16,000 images/s on one recent GPU;
  - ImageNet-10%, 2.5 s: MPL with ResNet-50 runs about 50,000 image passes per step, assumed on 8 GPUs at about
    2,500 images/s each.
Writes JSON to --out (default benchmarks/results/loader_speed.json; the folder is created).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from metapl.parts.data import randaugment as ra

PRESETS = {
    # name: (labeled per step, unlabeled per step, rate key for labeled, rate key for unlabeled)
    "cifar10_4k, per image": (128, 7 * 128, "cifar weak, per image", "cifar views, per image"),
    "cifar10_4k, batched": (128, 7 * 128, "cifar weak, batched", "cifar views, batched"),
    "imagenet_10pct": (1024, 15 * 1024, "imagenet decode + labeled", "imagenet decode + views"),
}


def _rate(fn: Callable[[], object], images_per_call: int, seconds: float) -> float:
    """Images per second of `fn` over at least `seconds`, after one warm-up call."""
    fn()
    calls, started = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls * images_per_call / elapsed


def _photo_like(height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth colour fields plus mild noise: compresses and decodes like a photo, unlike white noise."""
    coarse = torch.rand(1, 3, height // 25, width // 25, generator=generator) * 255
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noisy = smooth + torch.randn(1, 3, height, width, generator=generator) * 6
    return noisy.clamp(0, 255).to(torch.uint8)[0]


def _cycle(items: list, fn: Callable) -> Callable[[], object]:
    """A call that applies `fn` to the next item each time (so a per-image loop walks different images)."""
    state = {"i": 0}

    def call() -> object:
        item = items[state["i"] % len(items)]
        state["i"] += 1
        return fn(item)

    return call


def measure(seconds: float) -> dict[str, float]:
    """Images per second of each pipeline on one thread."""
    generator = torch.Generator().manual_seed(0)
    cifar = torch.randint(0, 256, (896, 3, 32, 32), dtype=torch.uint8, generator=generator)
    singles = [cifar[i : i + 1] for i in range(len(cifar))]
    photo = _photo_like(375, 500, generator)
    # torchvision.io's codecs are deprecated in favour of TorchCodec (not installed) but remain the fast path here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        jpeg = torchvision.io.encode_jpeg(photo, quality=90)
        buffer = io.BytesIO()
        Image.fromarray(photo.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=90)
        jpeg_bytes = buffer.getvalue()

        def decode() -> torch.Tensor:
            return torchvision.io.decode_jpeg(jpeg)

        def decode_pil() -> torch.Tensor:
            with Image.open(io.BytesIO(jpeg_bytes)) as img:
                return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)

        rates = {
            "cifar weak, per image": _rate(_cycle(singles, lambda x: ra.cifar_weak(x, generator)), 1, seconds),
            "cifar weak, batched": _rate(lambda: ra.cifar_weak(cifar[:128], generator), 128, seconds),
            "cifar views, per image": _rate(_cycle(singles, lambda x: ra.cifar_views(x, generator)), 1, seconds),
            "cifar views, batched": _rate(lambda: ra.cifar_views(cifar, generator), len(cifar), seconds),
            "imagenet decode (torchvision.io)": _rate(decode, 1, seconds),
            "imagenet decode (PIL)": _rate(decode_pil, 1, seconds),
            "imagenet labeled": _rate(lambda: ra.imagenet_labeled(photo, generator), 1, seconds),
            "imagenet views": _rate(lambda: ra.imagenet_views(photo, generator), 1, seconds),
            "imagenet decode + labeled": _rate(lambda: ra.imagenet_labeled(decode(), generator), 1, seconds),
            "imagenet decode + views": _rate(lambda: ra.imagenet_views(decode(), generator), 1, seconds),
        }
    return rates


def per_step(rates: dict[str, float], step_times: dict[str, float]) -> list[dict]:
    """Worker-seconds per step and workers needed, for each preset."""
    rows = []
    for name, (labeled, unlabeled, labeled_key, unlabeled_key) in PRESETS.items():
        worker_seconds = labeled / rates[labeled_key] + unlabeled / rates[unlabeled_key]
        step_time = step_times["imagenet" if name.startswith("imagenet") else "cifar"]
        rows.append(
            {
                "preset": name,
                "labeled_views": labeled,
                "unlabeled_pairs": unlabeled,
                "output_images": labeled + 2 * unlabeled,
                "worker_seconds_per_step": worker_seconds,
                "assumed_step_time_s": step_time,
                "workers_needed": math.ceil(worker_seconds / step_time),
            }
        )
    return rows


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(temporary, path)  # no half-written results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time spent on each measurement")
    parser.add_argument("--cifar-step-time", type=float, default=0.2, help="assumed seconds per CIFAR-10-4K step")
    parser.add_argument("--imagenet-step-time", type=float, default=2.5, help="assumed seconds per ImageNet-10%% step")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loader_speed.json"))
    args = parser.parse_args()
    if args.seconds <= 0 or args.cifar_step_time <= 0 or args.imagenet_step_time <= 0:
        parser.error("--seconds and the step times must be positive")
    torch.set_num_threads(1)  # one loader worker process

    rates = measure(args.seconds)
    steps = per_step(rates, {"cifar": args.cifar_step_time, "imagenet": args.imagenet_step_time})

    print("| pipeline (one worker, one thread) | images/s | ms/image |")
    print("|---|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} | {1000 / rate:.3f} |")
    print()
    print("| preset | labeled + unlabeled per step | worker-s per step | assumed step s | workers needed |")
    print("|---|---:|---:|---:|---:|")
    for row in steps:
        print(
            f"| {row['preset']} | {row['labeled_views']:,} + {row['unlabeled_pairs']:,} "
            f"| {row['worker_seconds_per_step']:.2f} | {row['assumed_step_time_s']} | {row['workers_needed']} |"
        )
    _write_json(
        args.out,
        {
            "rates_images_per_s": rates,
            "presets": steps,
            "settings": {
                "seconds_per_measurement": args.seconds,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "cpu": platform.processor() or platform.machine(),
                "imagenet_source": "synthetic 375x500 JPEG, quality 90",
                "note": "views = (weak, strong) pairs from one source image; step times are assumptions",
            },
        },
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
