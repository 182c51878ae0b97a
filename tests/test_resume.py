"""Exact resume: a run killed with SIGKILL and restarted ends with the same weights, bit for bit, as one that was
never interrupted; a run directory is never resumed with a different config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import kill_when, saved_state

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = [
    "train",
    "--preset",
    "digits",
    "--method",
    "mpl",
    "--no-progress",
    "--set",
    "train.steps=240",
    "--set",
    "train.checkpoint_every=20",
    "--set",
    "train.eval_every=40",
    "--set",
    "train.log_every=10",
    "--set",
    "model.batch_norm=true",
    "--set",
    "finetune.steps=60",
    "--set",
    "finetune.lr=0.01",
    "--set",
    "finetune.batch_size=32",
]


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "metapl", *ARGS, *extra, "--out", str(out)]


def _kill_when(out: Path, reached) -> int:
    """Start a run and SIGKILL it as soon as its checkpoint satisfies `reached`; returns the step it had saved."""
    state = kill_when(
        _command(out), lambda: (found := saved_state(out)) is not None and reached(found) and found, ENV, 240
    )
    if state is None:
        pytest.fail("the run ended before it could be killed mid-run")
    return state["step"] if state["phase"] == "train" else 240 + state["step"]


def _finish(out: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(_command(out), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result


def _tensors(tree, prefix=""):
    """Every tensor of a nested state, by path."""
    if isinstance(tree, torch.Tensor):
        yield prefix, tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            yield from _tensors(value, f"{prefix}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _tensors(value, f"{prefix}/{i}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    _finish(out)
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    final_a, final_b = saved_state(a), saved_state(b)
    assert final_a is not None and final_b is not None  # both runs finished and saved
    tensors_a, tensors_b = dict(_tensors(final_a["method"])), dict(_tensors(final_b["method"]))
    tensors_a.update(_tensors(final_a["finetune"], "ft"))
    tensors_b.update(_tensors(final_b["finetune"], "ft"))
    assert tensors_a.keys() == tensors_b.keys()
    different = [k for k in tensors_a if not torch.equal(tensors_a[k], tensors_b[k])]
    assert not different, different[:5]
    model_a, model_b = torch.load(a / "model.pt", weights_only=True), torch.load(b / "model.pt", weights_only=True)
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert summary_a["test_top1"] == summary_b["test_top1"]
    assert summary_a["test_top1_selected"] == summary_b["test_top1_selected"]


def test_sigkill_in_training_then_resume_is_bit_identical(uninterrupted, tmp_path):
    saved_step = _kill_when(tmp_path, lambda s: s["phase"] == "train" and s["step"] >= 60)
    assert 60 <= saved_step < 240
    result = _finish(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved_step, result.stdout
    _assert_same_run(uninterrupted, tmp_path)
    steps = [
        r["step"]
        for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if r["phase"] == "train"
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 240  # no record twice after the resume


def test_sigkill_in_finetuning_then_resume_is_bit_identical(uninterrupted, tmp_path):
    saved_step = _kill_when(tmp_path, lambda s: s["phase"] == "finetune" and s["step"] >= 20)
    assert saved_step >= 260
    _finish(tmp_path)
    _assert_same_run(uninterrupted, tmp_path)


def test_resume_with_another_config_is_refused(uninterrupted):
    before = (uninterrupted / "checkpoint.pt").read_bytes()
    result = subprocess.run(
        _command(uninterrupted, "--set", "teacher.lr=0.2"), env=ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"metapl: error: {uninterrupted} holds a trained run with teacher.lr=0.05, not 0.2; "
        "resume with the same settings, add --restart to discard it and start over, or pass another --out"
    ]
    assert (uninterrupted / "checkpoint.pt").read_bytes() == before


def test_keep_last_k_checkpoints(tmp_path):
    from metapl.run.config import build_config
    from metapl.run.experiment import run_experiment

    cfg = build_config(
        "twomoon", ["train.steps=50", "train.checkpoint_every=10", "train.keep_checkpoints=2"], "supervised"
    )
    run_experiment(cfg, tmp_path, progress=False, tensorboard=False)
    assert sorted(p.name for p in tmp_path.glob("checkpoint*.pt")) == [
        "checkpoint-00000040.pt",
        "checkpoint-00000050.pt",
        "checkpoint.pt",
    ]
    assert torch.load(tmp_path / "checkpoint-00000040.pt", weights_only=True)["step"] == 40


# ---------------------------------------------------------------------------------------------- MPL's shuffled-h control
# with an Adam teacher: its moments resume as the h buffer does
SHUFFLED = [*ARGS, "--set", "method.feedback.teacher_signal=shuffled", "--set", "method.feedback.shuffle_buffer=16"]
SHUFFLED += ["--set", "teacher.optimizer=adam", "--set", "teacher.lr=0.001"]


def _shuffled_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "metapl", *SHUFFLED, "--out", str(out)]


def test_mpl_shuffled_h_adam_teacher_sigkill_then_resume_is_bit_identical(tmp_path):
    """Full MPL with the shuffled-h control and an Adam teacher: the h buffer, its count, the draws' RNG and Adam's
    moments resume bit for bit."""
    done = tmp_path / "uninterrupted"
    result = subprocess.run(_shuffled_command(done), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    killed = tmp_path / "killed"
    reached = lambda: (s := saved_state(killed)) is not None and s["phase"] == "train" and s["step"] >= 60 and s  # noqa: E731
    state = kill_when(_shuffled_command(killed), reached, ENV, 240)
    assert state is not None and 60 <= state["step"] < 240, "the run ended before it could be killed mid-run"
    result = subprocess.run(_shuffled_command(killed), env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert json.loads((killed / "summary.json").read_text())["resumed_from_step"] == state["step"]
    final = saved_state(done)
    assert final is not None and final["method"]["h_seen"] == 240 and final["method"]["h_buffer"].abs().sum() > 0
    assert "exp_avg_sq" in final["method"]["teacher_optimizer"]["optimizer"]["state"][0]
    _assert_same_run(done, killed)


# ---------------------------------------------------------------------------------------------- runs of metapl 0.2
def test_format_2_run_resumes_and_evaluates(tmp_path):
    """A run directory of metapl 0.2 (config.yaml format 2 with the flat method section, an MPL checkpoint without the
    shuffled control's h buffer) is trained longer exactly as the same run written by this metapl, and evaluates."""
    import shutil

    import yaml
    from test_config import _flat_method

    from metapl.commands.cli import main
    from metapl.core.checkpoint import atomic_save

    short = ["--set", "train.steps=40", "--set", "finetune.steps=0"]
    longer = ["--set", "train.steps=60", "--set", "finetune.steps=0"]
    new, old = tmp_path / "new", tmp_path / "old"
    assert subprocess.run([*_command(new), *short], env=ENV, capture_output=True, timeout=600).returncode == 0
    shutil.copytree(new, old)
    raw = yaml.safe_load((old / "config.yaml").read_text())
    assert raw["config_format"] == 3 and isinstance(raw["method"]["feedback"], dict)
    raw.update(config_format=2, method=_flat_method(raw["method"]))
    (old / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    state = torch.load(old / "checkpoint.pt", weights_only=True)
    del state["method"]["h_buffer"], state["method"]["h_seen"]
    atomic_save(state, old / "checkpoint.pt")

    for run in (new, old):
        result = subprocess.run([*_command(run), *longer], env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == 40
    _assert_same_run(new, old)
    assert yaml.safe_load((old / "config.yaml").read_text())["config_format"] == 3  # written anew by this metapl
    assert main(["eval", str(old)]) == 0
