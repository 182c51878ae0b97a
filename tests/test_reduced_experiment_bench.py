"""benchmarks/reduced_mpl_experiment.py on a tiny budget: the controls do what they claim (a frozen reduced teacher
is the stored distributions; the injected bias is measurable; fitting R to the labels moves it), and a second
search reuses the first experiment's teachers and label stores (--prepared) for one store only (--stores) and
selects its value on validation (--search)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import script

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

SCRIPT = script("reduced_mpl_experiment")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "1", "--steps", "40", "--teacher-steps", "300", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_controls_then_a_search_on_the_same_stores(tmp_path):
    first = tmp_path / "first"
    _run("--arms", "frozen", "supervised", "--set", "teacher.lr=0.5", "--out", str(first), cwd=tmp_path)
    arms = {(r["store"], r["arm"]): r for r in json.loads((first / "results.json").read_text())["records"]}
    assert set(arms) == {(s, a) for s in ("clean", "biased") for a in ("frozen", "supervised")}
    for record in arms.values():
        assert 0.0 <= record["val"] <= 1.0 and 0.0 <= record["selected"] <= 1.0
    for store in ("clean", "biased"):  # frozen: R is the big teacher's stored distributions, untouched
        frozen = arms[(store, "frozen")]
        assert frozen["teacher_val_after"] == frozen["teacher_val_before"]
        assert frozen["bias_after"] == frozen["bias_before"]
    # The injected bias shows on the validation images, and a reduced teacher fitted to the labels moves off it.
    assert arms[("biased", "frozen")]["bias_before"] > arms[("clean", "frozen")]["bias_before"] + 0.3
    assert arms[("biased", "supervised")]["bias_after"] < arms[("biased", "supervised")]["bias_before"]
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in (first / "table.md").read_text().splitlines()]
    assert any(row[0] == "biased" and row[2] == "supervised" for row in rows)  # store | margin | arm | ...

    search = tmp_path / "search"
    args = ["--prepared", str(first), "--stores", "biased", "--arms", "mpl", "--search", "teacher.lr=0.05,0.5"]
    _run(*args, "--out", str(search), cwd=tmp_path)
    assert not list(search.glob("teacher-seed*")) and not list(search.glob("labels-*"))  # reused, not redone
    records = json.loads((search / "results.json").read_text())["records"]
    assert sorted(r["setting"] for r in records) == ["teacher.lr=0.05", "teacher.lr=0.5"]
    assert all((search / r["setting"] / "mpl-biased-seed0" / "summary.json").is_file() for r in records)
    assert all((r["store"], r["arm"]) == ("biased", "mpl") for r in records)
    assert {r["bias_before"] for r in records} == {arms["biased", "frozen"]["bias_before"]}  # the same store
    table = (search / "table.md").read_text()
    assert table.count("**(selected)**") == 1  # one value per store and arm, chosen on validation
    best = max(sorted(records, key=lambda r: r["setting"]), key=lambda r: r["val"])  # ties: the first value
    assert f"| biased | mpl | {best['setting']} **(selected)** |" in table
