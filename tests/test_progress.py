"""What training shows while it runs: a bar on a terminal, one flushed line per evaluation in a log file."""

from __future__ import annotations

import io
import re
import subprocess
import sys

import pytest

from metapl.run.config import build_config
from metapl.run.experiment import run_experiment
from metapl.run.progress import format_duration

# "train 10/30 | student val 40.0% test 38.2% | teacher val 50.0% test 47.4% | 1,234 images/s | ETA 3s"
_LINE = re.compile(
    r"(train|finetune) (\d+)/(\d+) \| student val \d+\.\d% test \d+\.\d%"
    r"( \| teacher val \d+\.\d% test \d+\.\d%)? \| [\d,]+ images/s \| ETA \w+"
)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _train(tmp_path, monkeypatch, stream, method="mpl"):
    monkeypatch.setattr(sys, "stderr", stream)
    cfg = build_config("digits", ["train.steps=30", "train.eval_every=10", "train.checkpoint_every=0"], method)
    run_experiment(cfg, tmp_path / method, tensorboard=False)
    return stream.getvalue()


def test_a_log_file_gets_one_line_per_evaluation_with_the_teacher(tmp_path, monkeypatch):
    text = _train(tmp_path, monkeypatch, io.StringIO())
    lines = text.splitlines()
    assert len(lines) == 3, text  # evaluations at steps 10, 20, 30; no bar
    for line, step in zip(lines, (10, 20, 30)):
        found = _LINE.fullmatch(line)
        assert found, line
        assert found.group(1) == "train" and int(found.group(2)) == step and found.group(3) == "30"
        assert found.group(4), "MPL's teacher is shown"
    assert "\r" not in text


def test_a_method_without_a_teacher_shows_the_student_only(tmp_path, monkeypatch):
    lines = _train(tmp_path, monkeypatch, io.StringIO(), "supervised").splitlines()
    assert len(lines) == 3 and all(_LINE.fullmatch(line) and "teacher" not in line for line in lines)


def test_a_terminal_gets_the_bar_instead(tmp_path, monkeypatch):
    text = _train(tmp_path, monkeypatch, _Terminal())
    assert "\r" in text and "train:" in text  # tqdm's bar, redrawn in place
    assert not any(_LINE.search(line) for line in text.split("\r"))


def test_durations_read_at_a_glance():
    assert [format_duration(s) for s in (0, 44.6, 125, 3 * 3600 + 7 * 60 + 5)] == ["0s", "45s", "2m05s", "3h07m"]


@pytest.mark.slow
def test_cli_output_in_a_log_file_is_flushed_in_order(tmp_path):
    """`metapl train ... >log 2>&1`: the lines of stdout and stderr arrive in the order they were written."""
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        cmd = [sys.executable, "-m", "metapl", "train", "--preset", "digits", "--method", "uda", "--out"]
        cmd += [str(tmp_path / "run"), "--set", "train.steps=20", "--set", "train.eval_every=10", "--no-tensorboard"]
        subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT, check=True, timeout=300)
    lines = log.read_text().splitlines()
    # stdout's warning before training, stderr's evaluation lines, stdout's result: in the order written
    assert [bool(_LINE.fullmatch(line)) for line in lines] == [False, True, True, False, False], lines
    assert lines[0].startswith("metapl: warning: train.steps=20 is short")
    assert lines[3].startswith("run directory:") and lines[4].startswith("method=uda")
