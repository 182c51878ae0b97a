"""benchmarks/scale.py (make bench-scale) end to end on a few hundred images: every command it times succeeds, the
floors and ratios are computed, label and training fall back to the folder only where this metapl cannot read
shards (and say so), and the table names what was measured."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load

scale = load("scale")

pytestmark = pytest.mark.slow  # metapl shard, train, label and Reduced MPL in subprocesses


def test_the_scale_benchmark_runs_shrunk(tmp_path):
    out = tmp_path / "scale.json"
    args = ["--images", "600", "--small", "100", "--label-images", "300", "--floor-images", "200", "--rounds", "1"]
    args += ["--forward-images", "1024"]
    results = scale.main([*args, "--steps", "2", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text())["table"] == results["table"]
    assert all(row["code"] == 0 and row["peak_rss_mb"] > 100 for row in results["shard"].values())
    assert len(list((tmp_path / "work" / "shards-big").glob("*.tar"))) == 1  # 600 images < --shard-size 5,000
    assert results["decode_floor"]["images"] == 200 and results["forward_floor"]["median"] > 0
    for kind in ("label", "train"):
        assert set(results[kind]) == {"small", "label"} and all(r["code"] == 0 for r in results[kind].values())
        assert all(v == "shards" or v.startswith("folder (") for v in results[f"{kind}_input"].values())
    assert results["label"]["label"]["store_images"] == 300 + 120  # the unlabeled pool and the labeled 20 × 6
    assert 2 * scale.TOP_K < results["store_bytes_per_image"] < 400  # top-16 fp16 values and their classes
    assert "`metapl shard`, images/s" in results["table"] and "load average" in results["table"]
