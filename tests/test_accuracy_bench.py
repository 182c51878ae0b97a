"""benchmarks/accuracy.py: the quick path, with tiny step counts, writes its table, JSON and plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load, script

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

SCRIPT = script("accuracy")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_quick_path_writes_table_json_and_plots(tmp_path):
    out, docs = tmp_path / "bench", tmp_path / "docs"
    args = ["--quick", "--seeds", "2", "--steps", "12", "--set", "train.eval_every=6", "--set", "train.log_every=2"]
    args += ["--out", str(out), "--docs", str(docs), "--docs-name", "tiny"]
    args += ["--add", "mpl sign -1=mpl:method.h_sign=-1"]
    args += ["--variants", "supervised", "mpl hard dot", "mpl hard dot + finetune", "mpl sign -1"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| mpl hard dot + finetune |" in result.stdout

    record = json.loads((out / "results.json").read_text())
    assert record["preset"] == "digits" and record["steps"] == 12 and record["seeds"] == [0, 1]
    names = ["supervised", "mpl hard dot", "mpl hard dot + finetune", "mpl sign -1"]
    assert list(record["results"]) == names
    for name in names:
        runs = record["results"][name]
        assert [r["seed"] for r in runs] == [0, 1]
        assert all(0.0 <= r["selected"] <= 1.0 and 0.0 <= r["final"] <= 1.0 for r in runs)
    # The plain MPL rows come from the finetune runs' training phase: one run, two rows.
    plain, tuned = record["results"]["mpl hard dot"][0], record["results"]["mpl hard dot + finetune"][0]
    assert plain["from_run"].endswith("mpl_hard_dot_finetune-seed0")
    summary = json.loads((Path(plain["from_run"]) / "summary.json").read_text())
    assert plain["selected"] == summary["train_best_test_top1"] and tuned["selected"] == summary["test_top1_selected"]
    assert summary["finetune_steps"] == 1
    assert not (out / "mpl_hard_dot-seed0").exists()
    assert "method.h_sign=-1" in record["results"]["mpl sign -1"][0]["overrides"]
    assert record["results"]["supervised"][0]["teacher_final"] is None

    for path in (out / "bars.png", out / "curves.png", docs / "accuracy_tiny.png", docs / "curves_tiny.png"):
        assert path.stat().st_size > 1000
    assert (out / "table.md").read_text().startswith("| method |")


def test_budget_sweep_writes_one_file_and_the_budget_plot(tmp_path):
    """Two budgets, the second with fewer seeds: one sweep.json holding both, each budget's runs in its own
    folder, and the plot of accuracy against budget."""
    out = tmp_path / "sweep"
    args = ["--preset", "digits", "--budgets", "6", "12:1", "--seeds", "2", "--jobs", "2", "--out", str(out)]
    args += ["--variants", "supervised", "mpl official", "--set", "train.eval_every=3", "--set", "train.log_every=3"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["complete"] and sweep["seeds"] == {"6": 2, "12": 1}
    assert [r["seed"] for r in sweep["budgets"]["6"]["mpl official"]] == [0, 1]
    assert [r["seed"] for r in sweep["budgets"]["12"]["supervised"]] == [0]
    summary = json.loads((out / "steps-12" / "supervised-seed0" / "summary.json").read_text())
    assert summary["train_steps"] == 12 and sweep["budgets"]["12"]["supervised"][0]["final"] == summary["test_top1"]
    assert (out / "budgets.png").stat().st_size > 1000
    assert (out / "steps-6" / "curves.png").stat().st_size > 1000
    assert all("passes_teacher_at" in r for r in sweep["budgets"]["6"]["mpl official"])
    assert "stays at or above its teacher" in result.stdout

    # A longer budget added later with --merge joins the same sweep.json; the earlier budgets and their command
    # stay, and a budget run again replaces its old records instead of adding to them.
    first = sweep["command"]
    more = ["--preset", "digits", "--budgets", "12:1", "18:1", "--merge", "--out", str(out), "--variants", "supervised"]
    more += ["--set", "train.eval_every=3", "--set", "train.log_every=3"]
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *more], capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    merged = json.loads((out / "sweep.json").read_text())
    assert merged["seeds"] == {"6": 2, "12": 1, "18": 1}
    assert merged["budgets"]["6"] == sweep["budgets"]["6"] and merged["commands"]["6"] == first
    assert "--merge" in merged["commands"]["18"] and merged["commands"]["12"] == merged["commands"]["18"]
    assert [r["seed"] for r in merged["budgets"]["12"]["supervised"]] == [0]
    assert merged["budgets"]["12"]["supervised"] == sweep["budgets"]["12"]["supervised"]  # resumed, not retrained
    assert "mpl official" not in merged["budgets"]["12"]
    assert json.loads((out / "steps-18" / "supervised-seed0" / "summary.json").read_text())["train_steps"] == 18
    # A sweep.json this script did not write, or one of another preset, is refused before anything runs or changes.
    for text, message in (("{not json", "is not a sweep.json this script wrote"), (None, "is a sweep of preset")):
        target = tmp_path / ("broken" if text else "other")
        target.mkdir()
        if text:
            (target / "sweep.json").write_text(text)
        else:
            (target / "sweep.json").write_text((out / "sweep.json").read_text())
        before = (target / "sweep.json").read_text()
        refused = subprocess.run(
            [sys.executable, str(SCRIPT), "--preset", "twomoon", "--budgets", "6", "--merge", "--out", str(target)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
        assert sorted(p.name for p in target.iterdir()) == ["sweep.json"]
        assert (target / "sweep.json").read_text() == before
    bad = subprocess.run([sys.executable, str(SCRIPT), "--budgets", "2k"], capture_output=True, text=True, env=ENV)
    assert bad.returncode == 2 and "write STEPS or STEPS:SEEDS" in bad.stderr


def test_passes_teacher_at_is_the_step_from_which_the_student_stays_above(tmp_path):
    bench = load("accuracy")

    def run(pairs: list[tuple[float, float]]) -> Path:
        lines = [{"phase": "train", "step": 1, "h": 0.0}]
        lines += [
            {"phase": "train_eval", "step": 10 * (i + 1), "test_top1": s, "teacher_test_top1": t}
            for i, (s, t) in enumerate(pairs)
        ]
        lines.append({"phase": "finetune_eval", "step": 99, "test_top1": 0.0})  # finetuning does not count
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        run.mkdir()
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
        return run

    # Crosses at 20, falls back at 30, passes for good at 40 (equal counts as staying).
    assert bench.passes_teacher_at(run([(0.5, 0.9), (0.9, 0.8), (0.7, 0.8), (0.8, 0.8), (0.9, 0.7)])) == 40
    assert bench.passes_teacher_at(run([(0.9, 0.5), (0.95, 0.6)])) == 10
    assert bench.passes_teacher_at(run([(0.9, 0.5), (0.5, 0.6)])) is None  # ends below
    no_teacher = tmp_path / "uda"
    no_teacher.mkdir()
    (no_teacher / "metrics.jsonl").write_text(json.dumps({"phase": "train_eval", "step": 10, "test_top1": 0.9}))
    assert bench.passes_teacher_at(no_teacher) is None


def test_first_seed_starts_the_seeds_there():
    """--first-seed N runs seeds N .. N+seeds-1 (a claim checked on seeds it was not tuned on)."""
    from types import SimpleNamespace

    bench = load("accuracy")
    args = SimpleNamespace(preset="digits", overrides=[], threads=1, first_seed=100)
    tasks = bench._tasks(args, ["supervised", "uda"], 10, 2, Path("out"), False)
    assert [(task[0], task[3]) for task in tasks] == [
        ("supervised", 100),
        ("uda", 100),
        ("supervised", 101),
        ("uda", 101),
    ]
