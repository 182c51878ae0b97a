#!/usr/bin/env bash
# Issue #16's GPU measurements in one short run on a lent accelerator (the device tool's `run`, from the repo root):
#   bash benchmarks/gpu_check.sh            # writes into $OUT (or runs/gpu-check) the files docs/performance.md quotes
# 1. MPL's model-only step against its floor passes on the device (goal: ≤ 1.15×), cifar10_4k, bf16, channels_last;
# 2. model-only and end-to-end steps of supervised, UDA and MPL (goals: MPL / UDA ≤ 1.7, end to end ≤ 1.05× model-only);
# 3. a torch.profiler table and trace of the MPL step (the "before" of docs/performance.md's profile).
set -euo pipefail
out="${OUT:-runs/gpu-check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$py" benchmarks/gpu_step.py --presets cifar10_4k --floor --model-steps 30 --out "$out/floor.json" | tee "$out/floor.txt"
"$py" benchmarks/gpu_step.py --presets cifar10_4k --profile "$out/profile" | tee -a "$out/floor.txt"
"$py" benchmarks/gpu_step.py --presets cifar10_4k --steps 200 --warmup 40 --out "$out/gpu_step.json" | tee "$out/steps.txt"
