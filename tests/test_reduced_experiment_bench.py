"""benchmarks/reduced_mpl_experiment.py on a tiny budget: the controls do what they claim (a frozen reduced teacher
is the stored distributions; the injected bias is measurable; fitting R to the labels moves it), and a second
experiment reuses the first one's teachers and label stores (--prepared) for one store only (--stores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reduced_mpl_experiment.py"
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


def test_controls_and_a_second_experiment_on_the_first_ones_stores(tmp_path):
    first = tmp_path / "first"
    _run("--arms", "frozen", "supervised", "--set", "teacher.lr=0.5", "--out", str(first), cwd=tmp_path)
    records = {(r["store"], r["arm"]): r for r in json.loads((first / "results.json").read_text())["records"]}
    assert set(records) == {(s, a) for s in ("clean", "biased") for a in ("frozen", "supervised")}
    for record in records.values():
        assert 0.0 <= record["val"] <= 1.0 and 0.0 <= record["selected"] <= 1.0
    for store in ("clean", "biased"):  # frozen: R is the big teacher's stored distributions, untouched
        frozen = records[(store, "frozen")]
        assert frozen["teacher_val_after"] == frozen["teacher_val_before"]
        assert frozen["bias_after"] == frozen["bias_before"]
    # The injected bias shows on the validation images, and a reduced teacher fitted to the labels moves off it.
    assert records[("biased", "frozen")]["bias_before"] > records[("clean", "frozen")]["bias_before"] + 0.3
    assert records[("biased", "supervised")]["bias_after"] < records[("biased", "supervised")]["bias_before"]
    assert "| biased | supervised |" in (first / "table.md").read_text()

    second = tmp_path / "second"
    _run("--prepared", str(first), "--stores", "biased", "--arms", "mpl", "--out", str(second), cwd=tmp_path)
    assert not list(second.glob("teacher-seed*")) and not list(second.glob("labels-*"))  # reused, not redone
    (record,) = json.loads((second / "results.json").read_text())["records"]
    assert (record["store"], record["arm"]) == ("biased", "mpl")
    assert record["bias_before"] == records[("biased", "frozen")]["bias_before"]  # the same store
