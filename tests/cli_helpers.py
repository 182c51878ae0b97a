"""The command line as the tests run it: in this process (exit code, stderr lines, stdout), the argument lists of
the shared runs (conftest.py trains them once per session), and a process killed at a chosen moment."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metapl.commands.cli import main

# The run of conftest.py's `digits_run`: MPL on digits, 4 steps, evaluated and checkpointed every 2, so that it holds
# checkpoint.pt, model.pt and best_model.pt. Its command line resumes (or, when finished, re-opens) that run.
DIGITS_TRAIN = [
    "train",
    "--preset",
    "digits",
    "--no-progress",
    "--no-tensorboard",
    *("--set", "train.steps=4", "--set", "train.eval_every=2"),
    *("--set", "train.log_every=2", "--set", "train.checkpoint_every=2"),
]
# A run as small as a command's checks need: a 16-unit MLP, never evaluated; QUICK_DIGITS trains it 2 steps on digits.
TINY = ["--no-progress", "--no-tensorboard", "--set", "model.hidden=[16]", "--set", "train.eval_every=0"]
QUICK_DIGITS = ["train", "--preset", "digits", *TINY, "--set", "train.steps=2"]
# A 2-step run on an image folder (data.root added by folder_train): a 4-channel small CNN on 8×8 inputs.
FOLDER = [
    "--preset",
    "cifar10_4k",
    "--no-progress",
    "--no-tensorboard",
    *("--set", "data.name=folder", "--set", "data.labeled_selection=all", "--set", "data.val_per_class=1"),
    *("--set", "data.batch_size=4", "--set", "data.mu=1", "--set", "data.image_size=8", "--set", "data.workers=0"),
    *("--set", "model.name=small_cnn", "--set", "model.width=4"),
    *("--set", "train.steps=2", "--set", "train.eval_every=0", "--set", "finetune.steps=0"),
]


def folder_train(root: Path, out: Path, *extra: str) -> list[str]:
    """`metapl train` arguments of the FOLDER run on the images (or labels CSV) at `root`, into `out`."""
    return ["train", *FOLDER, "--set", f"data.root={root}", *extra, "--out", str(out)]


def shard_settings(root: Path, *extra: str) -> list[str]:
    """The settings of a run on conftest's shard_folder at `root`: its labeled folder (every image labeled, one per
    class for validation), its unlabeled images streamed from the shards, batches of 2 labeled and 6 unlabeled."""
    return [
        "data.name=folder",
        f"data.root={root / 'labeled'}",
        f"data.unlabeled_shards={root / 'shards'}",
        "data.labeled_selection=all",
        "data.val_per_class=1",
        "data.batch_size=2",
        "data.mu=3",
        "data.workers=0",
        *extra,
    ]


def sets(settings: list[str]) -> list[str]:
    """--set before each setting."""
    return [part for setting in settings for part in ("--set", setting)]


def cli(capsys, *args: object) -> tuple[int, list[str], str]:
    """(exit code, the lines written to stderr, stdout) of `metapl ARGS`; a traceback fails the test."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse exits by itself, always with an int code
        assert isinstance(stop.code, int), stop.code
        code = stop.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err.strip().splitlines(), captured.out


def one_line_error(capsys, *args: object) -> str:
    """The one `metapl: error:` line of a command that must fail with exit code 2."""
    code, lines, out = cli(capsys, *args)
    assert code == 2, (lines, out)
    assert len(lines) == 1 and lines[0].startswith("metapl: error: "), lines
    return lines[0]


def succeeds(capsys, *args: object) -> str:
    code, lines, out = cli(capsys, *args)
    assert code == 0, lines
    return out


def snapshot(directory: Path) -> dict[str, object]:
    """Every entry under `directory` (links not followed): a file's bytes, a link's target, a folder's marker."""
    found: dict[str, object] = {}
    for root, folders, names in os.walk(directory):
        for name in folders + names:
            path = Path(root) / name
            key = str(path.relative_to(directory))
            if path.is_symlink():
                found[key] = ("link", os.readlink(path))
            elif path.is_dir():
                found[key] = ("folder",)
            else:
                found[key] = path.read_bytes()
    return found


def kill_when(command: list[str], ready: Callable[[], Any], env=None, timeout: float = 300, poll: float = 0.02) -> Any:
    """Start `command` (its output discarded), call `ready()` every `poll` seconds and SIGKILL the process as soon as
    it returns anything but None or False; returns that value, or None when the process ended by itself (or
    `timeout` passed) before it could be killed."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            found = ready()
            if found is not None and found is not False:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return found if process.returncode == -signal.SIGKILL else None
            time.sleep(poll)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return None


def killed_then_rerun(
    command: list[str], out: Path, pattern: str, at_least: int, env=None, timeout: float = 300, poll: float = 0.01
) -> tuple[dict[str, int], subprocess.CompletedProcess]:
    """`command OUT` (a labeling command whose --out comes last) SIGKILLed as soon as `at_least` files in OUT match
    `pattern`, then run again to its end: (the modification times of the files the killed run had written, by
    name; the second run's result). The killed run finished nothing: OUT has no manifest yet."""
    stopped = kill_when(
        [*command, str(out)], lambda: out.is_dir() and len(list(out.glob(pattern))) >= at_least, env, timeout, poll
    )
    assert stopped, "the run ended before it could be killed"
    from metapl.parts.data.label_store import MANIFEST

    assert not (out / MANIFEST).exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob(pattern)}
    result = subprocess.run([*command, str(out)], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    assert all((out / name).stat().st_mtime_ns == mtime for name, mtime in before.items()), "a finished file changed"
    return before, result


def saved_state(out: Path) -> dict | None:
    """The training state in OUT/checkpoint.pt, or None while there is none or it is being written."""
    import torch

    try:
        return torch.load(out / "checkpoint.pt", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def mid_train(state: dict | None, first: int, before: int | None = None) -> dict | None:
    """A checkpoint's state when it holds the training phase at a step in [first, before), else None."""
    if state is None or state["phase"] != "train" or state["step"] < first:
        return None
    return state if before is None or state["step"] < before else None
