"""metapl's step beside the peer kekmodel/MPL-pytorch, in one sitting, alternating process by process.

    KEK_DIR=/path/to/MPL-pytorch python benchmarks/peer.py --rounds 3          # also run by make bench-speed

The peer is timed by the harness in ../shared/peers/kek_step_bench.py (it imports the peer from the checkout
named by KEK_DIR; none of its code is copied here): its own train loop, one MPL step per iteration, and a
UDA-style teacher step. metapl is timed the same way here (`--measure`): B = 16, μ = 7, WRN-28-2 on 32×32×3
synthetic images, the CIFAR-10-4K recipe, 2 untimed steps then the median of 8, 2 threads, one fresh process
per measurement, so that each side's peak RSS is its own. Each round runs the peer's process, then metapl's
(fp32, and bf16 autocast on CPUs that have bf16 instructions), so that load from elsewhere hits both alike.
Reported: the median over rounds of each process's median step, and the ratios peer / metapl.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "shared" / "peers" / "kek_step_bench.py"
B, MU, K = 16, 7, 10


def measure(precision: str, modes: list[str], threads: int, warmup: int = 2, steps: int = 8) -> dict:
    """In this process: metapl's step times (median of `steps` after `warmup`) and the peak RSS."""
    import torch

    from metapl.core.optim import OptimSettings
    from metapl.parts.methods import (
        UDA,
        Batch,
        FeedbackSettings,
        MetaPseudoLabels,
        MPLSettings,
        TeacherLosses,
        UDASettings,
    )
    from metapl.parts.models import create_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    def net() -> torch.nn.Module:
        return create_model("wrn28_2", K, (3, 32, 32), dropout=0.2).train().to(memory_format=torch.channels_last)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, 32, 32).contiguous(memory_format=torch.channels_last)

    batch = Batch(images(B), torch.randint(0, K, (B,)), images(MU * B), images(MU * B))
    optim = OptimSettings(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, total_steps=10**6)
    losses = dict(label_smoothing=0.15, uda_ramp_steps=0)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    out: dict = {"precision": precision, "threads": threads}
    for mode in modes:
        if mode == "uda":
            method = UDA(net(), K, UDASettings(**losses), optim=optim, ema_decay=0.995)
        else:
            feedback = FeedbackSettings(mode="hard", h=mode.split("_")[1], student_label_smoothing=0.15)
            settings = MPLSettings(feedback, TeacherLosses(**losses))
            method = MetaPseudoLabels(
                net(), net(), K, settings, teacher_optim=optim, student_optim=optim, ema_decay=0.995
            )
        times = []
        for step in range(warmup + steps):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                metrics = method.step(batch, step)
            float(next(iter(metrics.values())))  # wait for the step's last value
            if step >= warmup:
                times.append(time.perf_counter() - started)
        out[f"{mode}_s"] = statistics.median(times)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def has_bf16_instructions() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _run(cmd: list[str], env: dict) -> dict:
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(kek_dir: str, rounds: int, threads: int, precisions: list[str]) -> dict:
    """Alternating fresh processes: the peer's MPL step (and its UDA step), then metapl's in each precision."""
    env = {**os.environ, "KEK_DIR": kek_dir, "OMP_NUM_THREADS": str(threads)}
    peer_mpl = [sys.executable, str(HARNESS), "--modes", "mpl", "--threads", str(threads)]
    peer_uda = [sys.executable, str(HARNESS), "--modes", "uda", "--threads", str(threads)]
    ours = {
        p: [sys.executable, __file__, "--measure", p, "--threads", str(threads), "--modes", "mpl_dot,mpl_taylor,uda"]
        for p in precisions
    }
    samples: dict[str, list[dict]] = {"peer mpl": [], "peer uda": [], **{f"metapl {p}": [] for p in precisions}}
    for r in range(rounds):
        samples["peer mpl"].append(_run(peer_mpl, env))  # its own process: the MPL step's peak RSS alone
        for p, cmd in ours.items():
            samples[f"metapl {p}"].append(_run(cmd, env))
        samples["peer uda"].append(_run(peer_uda, env))
        print(f"  peer comparison: round {r + 1}/{rounds} done", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[name])

    peer_mpl_s, peer_uda_s = med("peer mpl", "mpl_median_s"), med("peer uda", "uda_median_s")
    rows = [
        {
            "implementation": f"kekmodel/MPL-pytorch ({samples['peer mpl'][0].get('peer_commit', '?')[:7]})",
            "mpl_s": peer_mpl_s,
            "uda_s": peer_uda_s,
            "peak_rss_mib": med("peer mpl", "peak_rss_mib"),
        }
    ]
    for p in precisions:
        name = f"metapl {p}"
        dot, taylor = med(name, "mpl_dot_s"), med(name, "mpl_taylor_s")
        rows.append(
            {
                "implementation": f"metapl, {p}" + (" (train.precision=bf16)" if p == "bf16" else ""),
                "mpl_dot_s": dot,
                "mpl_taylor_s": taylor,
                "uda_s": med(name, "uda_s"),
                "peak_rss_mib": med(name, "peak_rss_mib"),
                "peer_over_dot": peer_mpl_s / dot,
                "peer_over_taylor": peer_mpl_s / taylor,
                "peer_uda_over_uda": peer_uda_s / med(name, "uda_s"),
            }
        )
    return {"rounds": rounds, "threads": threads, "rows": rows, "samples": samples}


def markdown(result: dict) -> str:
    lines = [
        "| implementation | MPL step (s) | UDA step (s) | peak RSS, MPL (MiB) | peer's MPL ÷ this |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        if "mpl_s" in r:
            lines.append(
                f"| {r['implementation']} | {r['mpl_s']:.3f} | {r['uda_s']:.3f} | {r['peak_rss_mib']:.0f} | 1.00 |"
            )
        else:
            lines.append(
                f"| {r['implementation']} | hard/dot {r['mpl_dot_s']:.3f}, hard/taylor {r['mpl_taylor_s']:.3f} | "
                f"{r['uda_s']:.3f} | {r['peak_rss_mib']:.0f} | "
                f"{r['peer_over_dot']:.2f} (dot), {r['peer_over_taylor']:.2f} (taylor) |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-peer.json"))
    parser.add_argument("--measure", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    parser.add_argument("--modes", default="mpl_dot,mpl_taylor,uda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.modes.split(","), args.threads)))
        return
    kek_dir = os.environ.get("KEK_DIR")
    if not kek_dir or not (Path(kek_dir) / "main.py").is_file():
        parser.error("set KEK_DIR to a checkout of kekmodel/MPL-pytorch (see ../shared/peers/README.md)")
    if not HARNESS.is_file():
        parser.error(f"no peer harness at {HARNESS}")
    precisions = ["fp32", "bf16"] if has_bf16_instructions() else ["fp32"]
    started = time.perf_counter()
    result = compare(kek_dir, args.rounds, args.threads, precisions)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_after"] = os.getloadavg()
    print(markdown(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
