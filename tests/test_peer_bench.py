"""benchmarks/peer.py: metapl's side of the comparison measures real steps, and the alternation and the ratios are
computed right (the peer is replaced by a stand-in harness here: its checkout is not part of the tests)."""

from __future__ import annotations

import json

import pytest
from benchmark_scripts import load

peer = load("peer")

pytestmark = pytest.mark.slow  # WRN-28-2 steps in subprocesses


def test_metapl_side_times_real_steps():
    result = peer.measure("fp32", ["mpl_taylor", "uda"], threads=1, warmup=0, steps=1)
    assert result["mpl_taylor_s"] > result["uda_s"] > 0
    assert result["peak_rss_mib"] > 100


def test_compare_alternates_and_divides_medians(tmp_path, monkeypatch):
    fake = tmp_path / "kek_step_bench.py"
    fake.write_text(
        "import json, sys\n"
        "mode = sys.argv[sys.argv.index('--modes') + 1]\n"
        "print(json.dumps({f'{mode}_median_s': 3.0 if mode == 'mpl' else 2.0, 'peak_rss_mib': 2000.0,"
        " 'peer_commit': '7dc629702034'}))\n"
    )
    monkeypatch.setattr(peer, "HARNESS", fake)
    calls = []
    real_run = peer._run

    def run(cmd, env):
        calls.append("peer" if str(fake) in cmd else "metapl")
        if "metapl" == calls[-1]:  # metapl's own measurement, faked to keep the test short
            return {"mpl_dot_s": 1.5, "mpl_taylor_s": 1.2, "uda_s": 1.0, "peak_rss_mib": 1500.0}
        return real_run(cmd, env)

    monkeypatch.setattr(peer, "_run", run)
    result = peer.compare(str(tmp_path), rounds=2, threads=1, precisions=["fp32"])
    assert calls == ["peer", "metapl", "peer"] * 2  # the peer's MPL step, metapl, the peer's UDA step, per round
    ours = result["rows"][1]
    assert ours["peer_over_dot"] == pytest.approx(2.0) and ours["peer_over_taylor"] == pytest.approx(2.5)
    assert "| kekmodel/MPL-pytorch (7dc6297) | 3.000 | 2.000 | 2000 | 1.00 |" in peer.markdown(result)
    json.dumps(result)  # what make bench-speed writes
