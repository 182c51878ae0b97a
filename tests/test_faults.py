"""Faults end cleanly and lose nothing: SIGTERM/SIGINT checkpoint and exit, a second trainer is refused, a failed
checkpoint write keeps the previous one, a diverging run keeps its last good checkpoint."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import DIGITS_TRAIN, one_line_error

from metapl.core import atomic as atomic_module
from metapl.core import checkpoint as checkpoint_module
from metapl.core.checkpoint import atomic_save
from metapl.core.errors import CheckpointError, ConfigError, TrainingError
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment
from metapl.run.run_dir import RunLock

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = [
    "train",
    "--preset",
    "digits",
    "--no-progress",
    "--set",
    "train.steps=400",
    "--set",
    "train.checkpoint_every=50",
    "--set",
    "train.eval_every=100",
]


def _start(out) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "metapl", *ARGS, "--out", str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path, process, timeout=240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_checkpoints_and_exits_cleanly_then_resumes(tmp_path, sig):
    process = _start(tmp_path)
    _wait_for(tmp_path / "checkpoint.pt", process)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=240)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "run the same command to resume" in lines[0] and "Traceback" not in stderr
    stopped_at = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"]
    assert f"after step {stopped_at};" in lines[0]
    assert not (tmp_path / ".lock").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "metapl", *ARGS, "--out", str(tmp_path)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout


def test_second_process_is_refused_while_the_first_trains(tmp_path):
    first = _start(tmp_path)
    try:
        _wait_for(tmp_path / ".lock", first)
        second = subprocess.run(
            [sys.executable, "-m", "metapl", *ARGS, "--out", str(tmp_path)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"metapl: error: {tmp_path} is in use by process {first.pid}; wait for it to end or pass another --out"
        ]
    finally:
        first.kill()
        first.wait()


def test_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".lock").write_text(dead.stdout.strip())
    lock = RunLock(tmp_path)
    lock.acquire()
    assert (tmp_path / ".lock").read_text() == f"metapl {os.getpid()}\n"
    lock.release()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("content", ["my notes", "", "metapl", "12 34"])
def test_a_lock_metapl_did_not_write_is_never_removed(tmp_path, content):
    (tmp_path / ".lock").write_text(content)
    with pytest.raises(ConfigError, match=r"\.lock was not written by metapl .*move it away"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / ".lock").read_text() == content


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"step": 1}, path)

    def disk_full(obj, handle):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="no space left on device; the previous file is intact"):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left behind


def test_diverging_run_stops_with_step_and_keeps_its_last_finite_checkpoint(tmp_path):
    cfg = build_config(
        "digits",
        [
            "teacher.lr=1e4",
            "student.lr=1e4",
            "train.steps=200",
            "train.checkpoint_every=1",
            "train.log_every=1",
            "method.sampling=argmax",
        ],
        "mpl",
    )
    with pytest.raises(TrainingError, match=r"became (nan|inf|-inf) at step \d+"):
        run_experiment(cfg, tmp_path, progress=False, tensorboard=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    tensors = [t for net in ("teacher", "student") for t in saved["method"][net].values() if t.is_floating_point()]
    assert all(torch.isfinite(t).all() for t in tensors)
    assert not (tmp_path / ".lock").exists()


# ------------------------------------------------------------- writes refused by the file system
def test_permission_denied_on_a_checkpoint_write_keeps_the_previous_one(capsys, monkeypatch, tmp_path):
    out = tmp_path / "run"
    real_mkstemp = atomic_module.tempfile.mkstemp
    writes = []

    def mkstemp_denied_after_one(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".checkpoint.pt."):
            writes.append(kwargs["prefix"])
            if len(writes) > 1:
                raise PermissionError(errno.EACCES, "Permission denied", str(out))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(atomic_module.tempfile, "mkstemp", mkstemp_denied_after_one)
    line = one_line_error(capsys, *DIGITS_TRAIN, "--out", out)
    assert f"could not write {out / 'checkpoint.pt'}: Permission denied; the previous file is intact" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not list(out.glob(".checkpoint.pt*")) and not (out / ".lock").exists()


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_an_export_refused_for_permissions_says_so_and_suggests_no_other_format(capsys, monkeypatch, digits_run, fmt,
                                                                                 tmp_path):  # fmt: skip
    pytest.importorskip("safetensors" if fmt == "safetensors" else "onnxruntime")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked" / f".m.{fmt}.tmp"))

    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", denied)
    else:
        monkeypatch.setattr(Path, "write_bytes", denied)
    line = one_line_error(capsys, "export", digits_run, "--format", fmt, "--out", tmp_path / "locked" / f"m.{fmt}")
    assert "Permission denied" in line and "check the path and its permissions" in line
    assert "--format" not in line
