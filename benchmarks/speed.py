"""Step time and peak memory of supervised, UDA and MPL (every feedback mode), measured against MPL's floor.

    python benchmarks/speed.py                 # both models, memory, compile on/off (small CNN); ~10 min on 2 cores
    python benchmarks/speed.py --quick         # a third of the rounds, no torch.compile
    python benchmarks/speed.py --compile both --models wrn28_2    # compiled WRN rows too (minutes of compiling)

Setting: labeled batch B = 16, μ = 7 (112 unlabeled images, each in two views), fp32, synthetic images, CPU with
--threads intra-op threads (2), channels_last, the CIFAR-10-4K recipe (Nesterov SGD, wd 5e-4, EMA 0.995, label
smoothing 0.15, dropout 0.2, UDA teacher losses). The data path is not timed: every step reuses one batch.

The floor is the passes an MPL step cannot avoid (docs/method.md#step-order, docs/method.md#compute-memory), each timed alone on its own networks:
    teacher fwd+bwd   forward + backward on [x_l; x_u_weak; x_u_strong], B + 2μB images     every mode
    student fwd+bwd   forward + backward on x_u_strong, μB images                         hard, soft
                      ... on [x_u_strong; x_l], μB + B images (its forward includes x_l)    official
    labeled fwd       forward on x_l at θ'_S, values only                                   taylor (twice: θ_S too), official
    labeled fwd+bwd   forward + backward on x_l at θ'_S (∇L_l(θ'_S))                        dot, cosine, soft
    student JVP       forward-mode product on x_u_strong at θ_S                             soft
UDA's floor is the teacher pass alone, supervised's the labeled forward + backward.

Time: one process per model builds every configuration and floor pass; each round runs each of them once, in a
rotating order, so that load from elsewhere on the machine hits all of them alike. Reported: the median over the
timed rounds (after warm-up rounds); ratios are ratios of medians. Memory: every configuration runs in a fresh
process (Linux); "peak Δ" is the peak RSS during the steps (VmHWM, reset just before them) minus the RSS after
building the networks and the batch: what the steps add (activations, gradients, optimiser state, allocator
caches). "peak RSS" is the whole process's peak during the steps.
Prints a Markdown table and the issue-#6 targets; writes JSON (--out). With KEK_DIR naming a checkout of
kekmodel/MPL-pytorch, it then times the peer beside metapl in alternating processes (benchmarks/peer.py).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp

from metapl.core.optim import OptimSettings
from metapl.parts.methods import (
    UDA,
    Batch,
    FeedbackSettings,
    MetaPseudoLabels,
    MPLSettings,
    ReducedTeacherLosses,
    StoredBatch,
    Supervised,
    SupervisedSettings,
    TeacherLosses,
    UDASettings,
)
from metapl.parts.methods.reduced_mpl import ReducedMetaPseudoLabels, ReducedMPLSettings, ReducedTeacher
from metapl.parts.models import compile_network, create_model

B, MU, NUM_CLASSES = 16, 7, 10
MODELS = {  # name -> (input shape, create_model options)
    "wrn28_2": ((3, 32, 32), {}),
    "small_cnn": ((1, 28, 28), {"width": 16}),  # the fashion_mnist_400 preset's network
}
ROUNDS = {"wrn28_2": 10, "small_cnn": 30}  # timed rounds; the small CNN's steps are short, so it gets more
QUICK_ROUNDS = {"wrn28_2": 3, "small_cnn": 10}
# configuration -> the floor passes its step needs
FLOORS: dict[str, list[str]] = {
    "supervised": ["labeled fwd+bwd"],
    "uda": ["teacher fwd+bwd"],
    "mpl hard/dot": ["teacher fwd+bwd", "student fwd+bwd", "labeled fwd+bwd"],
    "mpl hard/cosine": ["teacher fwd+bwd", "student fwd+bwd", "labeled fwd+bwd"],
    "mpl hard/taylor": ["teacher fwd+bwd", "student fwd+bwd", "labeled fwd", "labeled fwd"],
    "mpl soft": ["teacher fwd+bwd", "student fwd+bwd", "labeled fwd+bwd", "student JVP"],
    "mpl official": ["teacher fwd+bwd", "student+labeled fwd+bwd", "labeled fwd"],
    "mpl hard/taylor (recompute)": ["teacher fwd+bwd", "student fwd+bwd", "labeled fwd", "labeled fwd"],
    # Reduced MPL: the big teacher's stored distributions replace its passes; what is left is the student's step
    # (the MLP teacher on K-dimensional inputs costs next to nothing). Its yardstick is the student's own
    # supervised step on the same μB images.
    "supervised (μB)": ["student fwd+bwd"],
    "reduced_mpl hard/dot": ["student fwd+bwd", "labeled fwd+bwd"],
    "reduced_mpl hard/taylor": ["student fwd+bwd", "labeled fwd", "labeled fwd"],
}
COMPILABLE = ("supervised", "uda", "mpl hard/taylor", "mpl hard/dot")  # soft's JVP does not compile
REFERENCE = {"mpl_s": 3.9, "uda_s": 2.4, "peak_rss_gib": 2.3, "speedup": 1.3}  # issue #6, WRN-28-2, this machine kind


@dataclass(frozen=True)
class Row:
    """One timed configuration: a method's step or a floor pass, eager or compiled."""

    model: str
    name: str
    compiled: bool

    @property
    def label(self) -> str:
        return f"{self.name}{' [compiled]' if self.compiled else ''}"


# ---------------------------------------------------------------------------------------------- building blocks
def make_net(model: str, channels_last: bool) -> nn.Module:
    shape, options = MODELS[model]
    net = create_model(model, NUM_CLASSES, shape, dropout=0.2, **options).train()
    return net.to(memory_format=torch.channels_last) if channels_last else net


def make_batch(model: str, channels_last: bool) -> Batch:
    shape, _ = MODELS[model]
    g = torch.Generator().manual_seed(0)

    def images(n: int) -> torch.Tensor:
        x = torch.randn(n, *shape, generator=g)
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    def stored(n: int) -> torch.Tensor:  # a big teacher's stored class distributions (Reduced MPL)
        return torch.softmax(3 * torch.randn(n, NUM_CLASSES, generator=g), dim=-1)

    x_l, y_l, weak, strong = images(B), torch.randint(0, NUM_CLASSES, (B,), generator=g), images(MU * B), images(MU * B)
    return StoredBatch(x_l, y_l, weak, strong, p_l=stored(B), p_u=stored(MU * B))


def step_batch(name: str, batch: Batch) -> Batch:
    """The batch a configuration steps on: 'supervised (μB)' learns the μB strong-view images as labeled data."""
    if name == "supervised (μB)":
        return Batch(batch.x_u_strong, torch.randint(0, NUM_CLASSES, (batch.x_u_strong.shape[0],)))
    return batch


def optim() -> OptimSettings:
    return OptimSettings(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, total_steps=10**6)


def make_method(name: str, model: str, channels_last: bool):
    """The configuration's method, with the CIFAR-10-4K recipe's settings (docs/method.md#preset-cifar10)."""
    losses = dict(label_smoothing=0.15, uda_ramp_steps=0)  # full UDA weight from the first step
    if name.startswith("reduced_mpl"):
        feedback, _, h = name.removeprefix("reduced_mpl ").partition("/")
        settings = ReducedMPLSettings(
            FeedbackSettings(mode=feedback, h=h, student_label_smoothing=0.15), ReducedTeacherLosses()
        )
        return ReducedMetaPseudoLabels(
            ReducedTeacher(NUM_CLASSES),
            make_net(model, channels_last),
            NUM_CLASSES,
            settings,
            teacher_optim=optim(),
            student_optim=optim(),
            ema_decay=0.995,
        )
    if name in ("supervised", "supervised (μB)"):
        return Supervised(
            make_net(model, channels_last), NUM_CLASSES, SupervisedSettings(0.15), optim=optim(), ema_decay=0.995
        )
    if name == "uda":
        return UDA(make_net(model, channels_last), NUM_CLASSES, UDASettings(**losses), optim=optim(), ema_decay=0.995)
    mode, _, schedule = name.removeprefix("mpl ").partition(" (")
    feedback, _, h = mode.partition("/")
    settings = MPLSettings(
        FeedbackSettings(mode=feedback, h=h or "dot", student_label_smoothing=0.15),
        TeacherLosses(**losses),
        teacher_graph="recompute" if schedule == "recompute)" else "keep",
    )
    return MetaPseudoLabels(
        make_net(model, channels_last),
        make_net(model, channels_last),
        NUM_CLASSES,
        settings,
        teacher_optim=optim(),
        student_optim=optim(),
        ema_decay=0.995,
    )


def networks(method) -> list[nn.Module]:
    return list(method.networks().values())


def floor_passes(model: str, channels_last: bool, compiled: bool) -> dict[str, Callable[[], object]]:
    """Each pass an MPL step needs, alone, on a teacher-like and a student-like network of its own."""
    teacher, student = make_net(model, channels_last), make_net(model, channels_last)
    if compiled:
        compile_network(teacher)
        compile_network(student)
    batch = make_batch(model, channels_last)
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    names = [n for n, _ in student.named_parameters()]
    teacher_input = torch.cat([batch.x_l, batch.x_u_weak, batch.x_u_strong])
    student_and_labeled = torch.cat([batch.x_u_strong, batch.x_l])
    y_all = torch.randint(0, NUM_CLASSES, (teacher_input.shape[0],))
    y_u = torch.randint(0, NUM_CLASSES, (MU * B,))
    y_ul = torch.randint(0, NUM_CLASSES, (MU * B + B,))
    tangents = tuple(torch.randn_like(p) for p in s_params)

    def fwd_bwd(net: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
        return lambda: torch.autograd.grad(F.cross_entropy(net(x), y), params)

    def labeled_fwd() -> torch.Tensor:
        with torch.no_grad():
            return student(batch.x_l)

    def student_jvp() -> torch.Tensor:
        def log_probs(*params: torch.Tensor) -> torch.Tensor:
            # buffer copies made inside the transform, as MetaPseudoLabels does: BN may update them
            state = {**dict(zip(names, params)), **{n: b.clone() for n, b in student.named_buffers()}}
            return F.log_softmax(functional_call(student, state, (batch.x_u_strong,)), dim=-1)

        return jvp(log_probs, tuple(p.detach() for p in s_params), tangents)[1]

    passes = {
        "teacher fwd+bwd": fwd_bwd(teacher, t_params, teacher_input, y_all),
        "student fwd+bwd": fwd_bwd(student, s_params, batch.x_u_strong, y_u),
        "student+labeled fwd+bwd": fwd_bwd(student, s_params, student_and_labeled, y_ul),
        "labeled fwd": labeled_fwd,
        "labeled fwd+bwd": fwd_bwd(student, s_params, batch.x_l, batch.y_l),
    }
    if not compiled:
        passes["student JVP"] = student_jvp
    return passes


# ---------------------------------------------------------------------------------------------- timing
def time_model(
    model: str, configs: list[str], compile_modes: list[bool], rounds: int, warmup: int
) -> dict[Row, list[float]]:
    """Seconds per call of every configuration and floor pass in each timed round, interleaved round by round."""
    channels_last = len(MODELS[model][0]) == 3
    batch = make_batch(model, channels_last)
    calls: dict[Row, Callable[[], object]] = {}
    for compiled in compile_modes:
        wanted = [c for c in configs if not compiled or c in COMPILABLE]
        for name in wanted:
            method = make_method(name, model, channels_last)
            if compiled:
                for net in networks(method):
                    compile_network(net)
            counter = iter(range(10**9))
            own = step_batch(name, batch)
            calls[Row(model, name, compiled)] = lambda m=method, c=counter, b=own: m.step(b, next(c))
        needed = {p for name in wanted for p in FLOORS[name]}
        for pass_name, fn in floor_passes(model, channels_last, compiled).items():
            if pass_name in needed:
                calls[Row(model, f"floor: {pass_name}", compiled)] = fn

    times: dict[Row, list[float]] = {row: [] for row in calls}
    rows = list(calls)
    for r in range(warmup + rounds):
        shift = r % len(rows)
        for row in rows[shift:] + rows[:shift]:  # rotate, so no configuration always runs right after another
            started = time.perf_counter()
            calls[row]()
            elapsed = time.perf_counter() - started
            if r >= warmup:
                times[row].append(elapsed)
        print(f"  {model}: round {r + 1}/{warmup + rounds} done{' (warm-up)' if r < warmup else ''}", flush=True)
    return times


# ---------------------------------------------------------------------------------------------- memory
def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def probe_memory(model: str, name: str, steps: int) -> dict:
    """In this (fresh) process: build one configuration, run `steps` steps, report what they added to the peak RSS.

    The peak is the kernel's high-water mark VmHWM, reset to the current RSS just before the steps (clear_refs 5);
    ru_maxrss would not do, since a child starts with its parent's high-water mark."""
    channels_last = len(MODELS[model][0]) == 3
    method = make_method(name, model, channels_last)
    batch = make_batch(model, channels_last)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_mib("VmRSS")
    batch = step_batch(name, batch)
    for step in range(steps):
        method.step(batch, step)
    peak = _status_mib("VmHWM")
    return {"peak_delta_mib": peak - base, "peak_rss_mib": peak}


def measure_memory(model: str, name: str, steps: int, threads: int) -> dict:
    """probe_memory in a fresh process, so that no other configuration's high-water mark is counted."""
    # A fixed glibc mmap threshold: freed activations leave the RSS at once instead of lingering in a fragmented
    # heap, so that the peak is the memory the step holds rather than what the allocator kept.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
    cmd = [sys.executable, __file__, "--probe", model, name, "--probe-steps", str(steps), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- report
def build_rows(
    model: str, times: dict[Row, list[float]], memory: dict, compile_modes: list[bool], configs: list[str]
) -> list[dict]:
    """One result per configuration: median step time, its floor, the ratios, and memory when measured."""
    rows = []
    for compiled in compile_modes:

        def median(name: str, compiled: bool = compiled) -> float | None:
            ts = times.get(Row(model, name, compiled))
            return statistics.median(ts) if ts else None

        uda, sup = median("uda"), median("supervised")
        for name in configs:
            step = median(name)
            if step is None:
                continue
            floor = sum(median(f"floor: {p}") for p in FLOORS[name])
            mem = memory.get(name, {}) if not compiled else {}
            rows.append(
                {
                    "model": model,
                    "method": name,
                    "compiled": compiled,
                    "step_s": step,
                    "floor_s": floor,
                    "floor_passes": FLOORS[name],
                    "x_floor": step / floor,
                    "x_uda": step / uda if uda else None,
                    "x_supervised": step / sup if sup else None,
                    "times_s": times[Row(model, name, compiled)],
                    **mem,
                }
            )
    return rows


def markdown_table(rows: list[dict]) -> str:
    def num(v: float | None, fmt: str) -> str:
        return "–" if v is None else format(v, fmt)

    lines = [
        "| model | method | compile | step (s) | floor (s) | × floor | × UDA | × supervised | peak Δ (MiB) | peak RSS (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {'on' if r['compiled'] else 'off'} | {r['step_s']:.3f} | "
            f"{r['floor_s']:.3f} | {r['x_floor']:.3f} | {num(r['x_uda'], '.3f')} | {num(r['x_supervised'], '.1f')} | "
            f"{num(r.get('peak_delta_mib'), '.0f')} | {num(r.get('peak_rss_mib'), '.0f')} |"
        )
    return "\n".join(lines)


def check_targets(rows: list[dict], threads: int = 2) -> list[dict]:
    """Issue #6's targets, on every model and compile setting in this run (the reference's only at its 2 threads)."""
    targets = []

    def add(text: str, value: float | None, limit: float, holds: bool | None) -> None:
        targets.append({"target": text, "value": value, "limit": limit, "holds": holds})

    by_key = {(r["model"], r["method"], r["compiled"]): r for r in rows}
    for (model, method, compiled), r in by_key.items():
        tag = f"{model}{', compiled' if compiled else ''}: {method}"
        if method in ("mpl hard/taylor", "mpl hard/taylor (recompute)"):
            add(f"{tag} ≤ 1.05 × floor", r["x_floor"], 1.05, r["x_floor"] <= 1.05)
            if r["x_uda"] is not None:
                add(f"{tag} ≤ 1.55 × UDA", r["x_uda"], 1.55, r["x_uda"] <= 1.55)
        if method == "mpl hard/dot":
            add(f"{tag} ≤ 1.10 × floor", r["x_floor"], 1.10, r["x_floor"] <= 1.10)
        own = by_key.get((model, "supervised (μB)", compiled))
        if method.startswith("reduced_mpl") and own:
            ratio = r["step_s"] / own["step_s"]
            add(f"{tag} ≤ 1.6 × the student's supervised step on μB images", ratio, 1.6, ratio <= 1.6)
            if "peak_delta_mib" in r and "peak_delta_mib" in own:
                limit = 1.1 * own["peak_delta_mib"]  # the student alone plus the MLP (a few MiB) and its state
                add(
                    f"{tag}: peak Δ ≤ 1.1 × the student's supervised step's",
                    r["peak_delta_mib"],
                    limit,
                    r["peak_delta_mib"] <= limit,
                )
        uda, sup = by_key.get((model, "uda", compiled)), by_key.get((model, "supervised", compiled))
        if method.startswith("mpl hard/taylor") and "peak_delta_mib" in r and uda and sup and "peak_delta_mib" in uda:
            limit = uda["peak_delta_mib"] + sup["peak_delta_mib"]
            add(f"{tag}: peak Δ < UDA's + supervised's", r["peak_delta_mib"], limit, r["peak_delta_mib"] < limit)
        if model == "wrn28_2" and method.startswith("mpl hard/taylor") and not compiled and threads == 2:
            limit = REFERENCE["mpl_s"] / REFERENCE["speedup"]
            add(f"{tag} ≥ 1.3× faster than the reference's 3.9 s", r["step_s"], limit, r["step_s"] <= limit)
            if "peak_rss_mib" in r:
                rss_gib = r["peak_rss_mib"] / 1024
                add(f"{tag}: peak RSS < the reference's 2.3 GiB", rss_gib, 2.3, rss_gib < 2.3)
    return targets


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a third of the rounds, 2-step memory probes, no compile")
    parser.add_argument("--models", default="wrn28_2,small_cnn", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--configs", default=",".join(FLOORS), help="comma-separated subset of: " + ", ".join(FLOORS))
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: WRN 10, small CNN 30)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--compile",
        choices=("off", "on", "both", "small"),
        default=None,
        help="torch.compile rows: off, on, both (eager and compiled), small (both, for small_cnn only; the default)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory processes")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-speed.json"))
    parser.add_argument("--peer-rounds", type=int, default=3, help="with KEK_DIR set: alternating peer/metapl rounds")
    parser.add_argument("--probe", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    parser.add_argument("--probe-steps", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.probe:
        print(json.dumps(probe_memory(*args.probe, args.probe_steps)))
        return

    compile_setting = args.compile or ("off" if args.quick else "small")
    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    for name in configs:
        if name not in FLOORS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(FLOORS)}")
    started, load_before = time.perf_counter(), os.getloadavg()
    all_rows, all_passes, rounds_used = [], [], {}
    for model in models:
        if model not in MODELS:
            parser.error(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
        compile_modes = {
            "off": [False],
            "on": [True],
            "both": [False, True],
            "small": [False, True] if model == "small_cnn" else [False],
        }[compile_setting]
        rounds = args.rounds or (QUICK_ROUNDS if args.quick else ROUNDS)[model]
        rounds_used[model] = rounds
        print(f"{model}: timing {len(configs)} configurations and their floor passes, {rounds} rounds", flush=True)
        times = time_model(model, configs, compile_modes, rounds, args.warmup)
        memory = {}
        if not args.no_memory:
            for name in configs:
                memory[name] = measure_memory(model, name, 2 if args.quick else 3, args.threads)
                print(f"  {model}: memory of {name}: {memory[name]['peak_delta_mib']:.0f} MiB", flush=True)
        all_rows += build_rows(model, times, memory, compile_modes, configs)
        all_passes += [
            {
                "model": model,
                "pass": row.name.removeprefix("floor: "),
                "compiled": row.compiled,
                "median_s": statistics.median(ts),
                "times_s": ts,
            }
            for row, ts in times.items()
            if row.name.startswith("floor: ")
        ]

    table = markdown_table(all_rows)
    targets = check_targets(all_rows, args.threads)
    info = machine()
    load_after = os.getloadavg()
    rounds_text = ", ".join(f"{n} ({m})" for m, n in rounds_used.items())
    print()
    print(table)
    print()
    print(
        f"{info['cpu']}, {info['logical_cpus']} logical CPUs, {args.threads} threads, torch {info['torch']}; "
        f"B = {B}, μ = {MU}, fp32; medians of {rounds_text} interleaved rounds; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after; {time.perf_counter() - started:.0f} s"
    )
    print()
    for t in targets:
        mark = "holds" if t["holds"] else "MISSED"
        print(f"- {t['target']}: {t['value']:.3f} (limit {t['limit']:.3f}) {mark}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": info,
        "settings": {"B": B, "mu": MU, "rounds": rounds_used, "warmup": args.warmup, "threads": args.threads},
        "load_average": {"before": load_before, "after": load_after},
        "floors": FLOORS,
        "reference": REFERENCE,
        "rows": all_rows,
        "floor_passes": all_passes,
        "targets": targets,
        "table_markdown": table,
    }
    if os.environ.get("KEK_DIR"):  # the peer beside us, in the same sitting (benchmarks/peer.py)
        import peer

        precisions = ["fp32", "bf16"] if peer.has_bf16_instructions() else ["fp32"]
        print("\nkekmodel/MPL-pytorch side by side (KEK_DIR is set):", flush=True)
        payload["peer"] = peer.compare(os.environ["KEK_DIR"], args.peer_rounds, args.threads, precisions)
        print(peer.markdown(payload["peer"]))
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
