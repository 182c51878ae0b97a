"""benchmarks/scale.py (make bench-scale) end to end on a few hundred images: every command it times succeeds,
label and Reduced MPL training read the shards, the floors and ratios are computed and the table names what was
measured."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load

scale = load("scale")

pytestmark = pytest.mark.slow  # metapl shard, train, label and Reduced MPL in subprocesses


def test_the_scale_benchmark_runs_shrunk(tmp_path):
    out = tmp_path / "scale.json"
    args = ["--images", "600", "--small", "100", "--label-images", "2000", "--floor-images", "200", "--rounds", "1"]
    args += ["--forward-images", "1024", "--label-threads", "1", "--workers", "1"]
    results = scale.main([*args, "--steps", "2", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text())["table"] == results["table"]
    assert all(row["code"] == 0 and row["peak_rss_mb"] > 100 for row in results["shard"].values())
    assert len(list((tmp_path / "work" / "shards-big").glob("*.tar"))) == 1  # 600 images < --shard-size 5,000
    assert len(list((tmp_path / "work" / "shards-rate").glob("*.tar"))) == 2  # shards of 1,000 for label's rate
    assert results["decode_floor"]["images"] == 200 and len(results["decode_floor"]["rounds"]) == 3
    timed = results["label_rate"]["1"]
    assert timed["forward_median"] > 0 and timed["label_median"] > 0 and timed["ratio"] > 0
    assert timed["label"][0]["store_images"] == 2000 + 120  # the sharded pool and the labeled 20 × 6
    for kind in ("label", "train"):
        assert set(results[kind]) == {"small", "big"} and all(r["code"] == 0 for r in results[kind].values())
        assert all(r["children_peak_rss_mb"] > 0 for r in results[kind].values())  # the loader worker
    assert results["label"]["big"]["store_images"] == 600 + 120
    assert 2 * scale.TOP_K < results["store_bytes_per_image"] < 400  # top-16 fp16 values and their classes
    assert "`metapl shard`, images/s" in results["table"] and "load average" in results["table"]
