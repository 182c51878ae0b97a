"""metapl deletes or overwrites only what metapl wrote: a folder is a run directory only when it carries metapl's
marker (metapl.json), `--restart` removes only metapl's names after checking every one of them, and a stale lock is
taken over only when metapl wrote it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import DIGITS_TRAIN, QUICK_DIGITS, TINY, cli, one_line_error, snapshot, succeeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metapl.commands.cli import main
from metapl.run import ownership
from metapl.run.config import build_config, save_config
from metapl.run.run_dir import COMMAND_OUTPUTS, RUN_OUTPUTS, is_run_file

TRAIN = ["train", "--preset", "twomoon", "--no-progress", "--set", "train.steps=2", "--set", "train.eval_every=2"]
A_CONFIG = build_config("twomoon", ["train.steps=2", "train.eval_every=2"])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-step twomoon run, with TensorBoard events; copy it before changing it."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("ownership") / "run"

    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, symlinks=True)
    return to


# ---------------------------------------------------------------------------------------------- whose folder
@pytest.mark.parametrize(
    "entries",
    [
        {".lock": "12"},  # dot-files are content
        {".git": None},
        {"config.yaml": "A_CONFIG"},  # a readable metapl config proves nothing
        {"config.yaml": "A_CONFIG", "model.pt": "mine", "metrics.jsonl": "{}\n", "tensorboard": None},
        {"checkpoint_mine.pt": "mine"},
        {"metapl.json": '{"writer": "someone else", "kind": "run", "format": 1}'},
        {"metapl.json": "not json"},
    ],
)
def test_a_folder_that_is_not_metapls_is_refused_and_left_as_it_was(capsys, tmp_path, entries):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in entries.items():
        if text is None:
            (out / name).mkdir()
        elif text == "A_CONFIG":
            save_config(A_CONFIG, out / name)
        else:
            (out / name).write_text(text)
    before = snapshot(out)
    for restart in ([], ["--restart"]):
        line = one_line_error(capsys, *TRAIN, *restart, "--out", out)
        assert "is not a metapl run directory" in line and "pass a new or empty directory" in line
        assert snapshot(out) == before


def test_an_empty_folder_is_claimed_and_marked(capsys, tmp_path):
    succeeds(capsys, *TRAIN, "--out", tmp_path)
    assert ownership.marker_kind(tmp_path) == "run"
    assert json.loads((tmp_path / "metapl.json").read_text())["writer"] == "metapl"


def test_a_demo_folder_is_not_a_run_folder(capsys, tmp_path):
    ownership.claim(tmp_path, "demo")
    line = one_line_error(capsys, *TRAIN, "--out", tmp_path)
    assert "is a metapl demo directory, not a run directory" in line


def test_a_folder_of_the_users_is_refused_by_demo_before_any_training(capsys, tmp_path):
    (tmp_path / "table.md").write_text("my table")
    line = one_line_error(capsys, "demo", "--out", tmp_path, "--steps", "2", "--no-progress")
    assert "is not a metapl demo directory" in line
    assert snapshot(tmp_path) == {"table.md": b"my table"}


def test_a_run_from_before_the_marker_is_recognised_by_its_content_and_resumed(capsys, tmp_path, finished):
    run = _copy(finished, tmp_path / "old")
    (run / "metapl.json").unlink()  # as metapl 0.2.0 and earlier left it
    notes = run / "notes.txt"
    notes.write_text("mine")
    succeeds(capsys, *TRAIN, "--out", run)
    assert ownership.marker_kind(run) == "run" and notes.read_text() == "mine"
    # A look-alike without a metapl checkpoint is not a run.
    fake = tmp_path / "fake"
    fake.mkdir()
    save_config(A_CONFIG, fake / "config.yaml")
    (fake / "checkpoint.pt").write_bytes(b"my own file")
    before = snapshot(fake)
    assert "is not a metapl run directory" in one_line_error(capsys, *TRAIN, "--out", fake)
    assert snapshot(fake) == before


# ---------------------------------------------------------------------------------------------- --restart
def test_restart_removes_metapls_files_and_keeps_every_other(capsys, tmp_path, finished):
    run = _copy(finished, tmp_path / "run")
    mine = {
        "notes.txt": b"mine",
        ".hidden": b"mine too",
        "checkpoint_mine.pt": b"a name like a checkpoint's",
        "model.pt.bak": b"a backup",
        "sub/predictions.csv": b"input,class\n",  # a metapl name, but not in the run's own folder
    }
    for name, data in mine.items():
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(data)
    (run / "checkpoint-00000001.pt").write_bytes((run / "checkpoint.pt").read_bytes())  # a numbered copy
    (run / ".model.pt.a1b2c3d4.tmp").write_bytes(b"left by a killed write")
    old_events = sorted((run / "tensorboard").iterdir())
    succeeds(capsys, *TRAIN, "--set", "train.seed=1", "--restart", "--out", run)
    assert {name: (run / name).read_bytes() for name in mine} == mine
    assert not (run / "checkpoint-00000001.pt").exists() and not (run / ".model.pt.a1b2c3d4.tmp").exists()
    assert not any(path.exists() for path in old_events)
    assert build_config("twomoon", []).train.seed != 1 and "seed: 1" in (run / "config.yaml").read_text()


@pytest.mark.parametrize(
    "change",
    ["model.pt is a link", "tensorboard is a link", "a file of mine in tensorboard", "summary.json is a folder"],
)
def test_restart_refuses_before_removing_anything_when_one_name_is_not_metapls(capsys, tmp_path, finished, change):
    run = _copy(finished, tmp_path / "run")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.pt").write_bytes(b"precious")
    if change == "model.pt is a link":
        (run / "model.pt").unlink()
        (run / "model.pt").symlink_to(outside / "precious.pt")
        stop = run / "model.pt"
    elif change == "tensorboard is a link":
        shutil.rmtree(run / "tensorboard")
        (run / "tensorboard").symlink_to(outside)
        stop = run / "tensorboard"
    elif change == "a file of mine in tensorboard":
        stop = run / "tensorboard" / "my-notes.txt"
        stop.write_text("mine")
    else:
        (run / "summary.json").unlink()
        (run / "summary.json").mkdir()
        (run / "summary.json" / "mine.txt").write_text("mine")
        stop = run / "summary.json"
    before, outside_before = snapshot(run), snapshot(outside)
    line = one_line_error(capsys, *TRAIN, "--restart", "--out", run)
    assert line.startswith(f"metapl: error: {stop} ") and "nothing was changed" in line
    assert snapshot(run) == before and snapshot(outside) == outside_before


# ---------------------------------------------------------------------------------------------- the property
# Names a user might have: familiar ones (metapl's own among them), dot-files, and plain ones.
_NAMES = [
    "notes.txt",
    ".hidden",
    ".lock",
    "checkpoint_mine.pt",
    "data",
    "metapl.json",
    *RUN_OUTPUTS,
    *COMMAND_OUTPUTS,
    "checkpoint.pt",
    "checkpoint-00000002.pt",
]
_KINDS = ["file", "folder", "link to a file", "link to a folder", "dangling link"]


def _plant(folder: Path, outside: Path, name: str, kind: str, data: bytes) -> None:
    path = folder / name
    if os.path.lexists(path):
        return
    if kind == "file":
        path.write_bytes(data)
    elif kind == "folder":
        path.mkdir()
        (path / "inside.bin").write_bytes(data)
    elif kind == "link to a file":
        target = outside / f"{name}.target"
        target.write_bytes(data)
        path.symlink_to(target)
    elif kind == "link to a folder":
        target = outside / f"{name}.folder"
        target.mkdir(exist_ok=True)
        (target / "inside.bin").write_bytes(data)
        path.symlink_to(target)
    else:
        path.symlink_to(outside / "nothing-here")


_ENTRIES = st.lists(
    st.tuples(st.sampled_from(_NAMES), st.sampled_from(_KINDS), st.binary(max_size=40)), min_size=1, max_size=5
)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=_ENTRIES, into_run=st.booleans(), restart=st.booleans(), other_config=st.booleans())
def test_every_user_file_survives_any_train_or_restart(
    capsys, tmp_path_factory, finished, entries, into_run, restart, other_config
):
    """Random user files, dot-files, links and familiar names in a new folder or in a finished run (there only
    under names that are not metapl's, or as links and folders under metapl's names): whatever train or --restart
    does, refuses or succeeds, every one of them is left as it was, links' targets too."""
    root = tmp_path_factory.mktemp("property")
    outside = root / "outside"
    outside.mkdir()
    if into_run:
        folder = _copy(finished, root / "run")
        # In a run directory metapl's names are metapl's; a user's file there may only be a link or a folder.
        entries = [(n, k, d) for n, k, d in entries if not is_run_file(n) or k != "file"]
        for name in {n for n, _, _ in entries}:
            if os.path.lexists(folder / name):
                target = folder / name
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    else:
        folder = root / "mine"
        folder.mkdir()
    for name, kind, data in entries:
        _plant(folder, outside, name, kind, data)
    users = {k: v for k, v in snapshot(folder).items() if not into_run or k.split("/")[0] in {n for n, _, _ in entries}}
    everything, outside_before = snapshot(folder), snapshot(outside)
    extra = ["--set", "train.seed=3"] if other_config else []
    code, lines, _ = cli(capsys, *TRAIN, *extra, *(["--restart"] if restart else []), "--out", folder)
    after = snapshot(folder)
    assert {k: after.get(k) for k in users} == users
    assert snapshot(outside) == outside_before
    if code != 0:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("metapl: error: "), lines
        assert after == everything  # a refusal changes nothing at all


def test_keeping_k_checkpoints_removes_only_metapls_numbered_copies(tmp_path):
    from metapl.core.checkpoint import CheckpointKeeper

    (tmp_path / "checkpoint-mine.pt").write_bytes(b"mine")
    (tmp_path / "checkpoint-1.pt").write_bytes(b"mine too")
    keeper = CheckpointKeeper(tmp_path / "checkpoint.pt", keep=1)
    for step in range(3):
        keeper.save({"step": step}, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-00000002.pt",
        "checkpoint-1.pt",
        "checkpoint-mine.pt",
        "checkpoint.pt",
    ]


# ---------------------------------------------------------- which settings a run directory takes
def test_a_run_without_checkpoint_is_not_overwritten_by_another_config(capsys, digits_run_copy):
    (digits_run_copy / "checkpoint.pt").unlink()  # e.g. deleted to save disk once the run had finished
    before = snapshot(digits_run_copy)
    line = one_line_error(capsys, "train", "--preset", "twomoon", "--set", "train.steps=2", "--out", digits_run_copy)
    assert "holds a trained run with" in line and "add --restart to discard it" in line
    assert snapshot(digits_run_copy) == before


@pytest.mark.parametrize("content", [{"notes.txt": "mine"}, {"config.yaml": "project: mine\n", "src": None}])
def test_train_into_a_directory_of_other_files_is_refused(capsys, tmp_path, content):
    out = tmp_path / "project"
    out.mkdir()
    for name, text in content.items():
        if text is None:
            (out / name).mkdir()
        else:
            (out / name).write_text(text)
    before = snapshot(out)
    line = one_line_error(capsys, *DIGITS_TRAIN, "--out", out)
    assert "is not a metapl run directory" in line and "pass a new or empty directory" in line
    assert snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(content)


def test_a_directory_with_nothing_trained_takes_a_new_config(capsys, tmp_path):
    out = tmp_path / "run"
    succeeds(capsys, *QUICK_DIGITS, "--out", out)
    for name in ("checkpoint.pt", "model.pt", "best_model.pt"):
        (out / name).unlink(missing_ok=True)  # what a run that stopped before its first checkpoint leaves
    succeeds(capsys, *QUICK_DIGITS, "--set", "teacher.lr=0.01", "--out", out)
    assert yaml.safe_load((out / "config.yaml").read_text())["teacher"]["lr"] == 0.01


def test_a_trained_run_of_another_config_is_refused_with_both_ways_out(capsys, digits_run_copy):
    before = snapshot(digits_run_copy)
    line = one_line_error(capsys, *DIGITS_TRAIN, "--set", "teacher.lr=0.01", "--out", digits_run_copy)
    assert "holds a trained run with teacher.lr=0.05, not 0.01" in line
    assert "add --restart to discard it and start over, or pass another --out" in line
    assert snapshot(digits_run_copy) == before
    succeeds(capsys, *DIGITS_TRAIN, "--set", "teacher.lr=0.01", "--restart", "--out", digits_run_copy)
    assert yaml.safe_load((digits_run_copy / "config.yaml").read_text())["teacher"]["lr"] == 0.01


def test_after_a_divergence_the_lower_learning_rate_is_taken(capsys, tmp_path):
    out = tmp_path / "run"
    diverging = ["--set", "teacher.lr=1e4", "--set", "student.lr=1e4", "--set", "train.checkpoint_every=1"]
    args = ["train", "--preset", "digits", *TINY, "--set", "train.steps=60", "--set", "method.sampling=argmax"]
    line = one_line_error(capsys, *args, *diverging, "--out", out)
    assert "--restart" in line or "takes new settings" in line
    succeeds(capsys, *args, "--set", "train.steps=2", *(["--restart"] if "--restart" in line else []), "--out", out)


def test_out_naming_an_existing_file_says_so(capsys, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert "is an existing file, not a directory" in one_line_error(capsys, *QUICK_DIGITS, "--out", existing)
    assert existing.read_text() == "mine"
