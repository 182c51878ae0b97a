"""benchmarks/threads.py: it times real steps at 1 thread and at all cores, and its ratios are ratios of medians."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load

bench = load("threads")

pytestmark = pytest.mark.slow  # timed steps, and a busy-loop process in the script's run


def test_measure_times_both_counts_and_divides_medians():
    result = bench.measure("twomoon", rounds=2, seconds=0.05, cores=2)
    assert result["one_thread_s"] > 0 and result["all_cores_s"] > 0
    assert result["ratio_all_over_one"] == pytest.approx(result["all_cores_s"] / result["one_thread_s"])
    assert result["forward_flops"] == 320 and result["batch"] == "6+2x384"  # TwoMoon's MLP 8-8, B 6, μ 64


def test_the_script_writes_a_table_and_json(tmp_path):
    out = tmp_path / "threads.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "threads.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--presets", "twomoon", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert result.returncode == 0, result.stderr
    payload = json.loads(out.read_text())
    assert [r["load"] for r in payload["rows"]] == ["quiet", "busy"]
    assert "| quiet | twomoon | mlp (320) |" in result.stdout
