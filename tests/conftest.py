"""Shared fixtures: one CPU thread (tiny models run faster without OpenMP hand-offs), float64 on demand, and the
runs several test files read, trained once per session (copy one before changing it: `digits_run_copy`)."""

from __future__ import annotations

import os

# One intra-op thread in every test process and in every metapl the tests start (they inherit the environment):
# the tests run side by side (`make test`: pytest -n), and tiny models run faster without OpenMP hand-offs. Set
# before torch loads, so that PyTorch's own default is 1 too; tests of train.threads remove it themselves.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli_helpers import DIGITS_TRAIN, folder_train, snapshot
from fake_datasets import write_class_folders, write_unlabeled_folder

from metapl.commands.cli import main
from metapl.commands.shard import write_shards


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _processes_only_in_slow_tests(request, monkeypatch):
    """A test that starts Python (metapl, torchrun, a benchmark script) is marked slow, so that `make test-fast`
    stays fast: started from a test not marked slow, such a process fails the test and says so. Other programs
    (`mount` for a tiny disk) start in a moment and are allowed."""
    if request.node.get_closest_marker("slow") is not None:
        return
    start = subprocess.Popen.__init__

    def guarded(self, args, *rest, **options):
        program = Path(str(args[0] if isinstance(args, (list, tuple)) else str(args).split()[0])).name
        if program.startswith(("python", "metapl", "torchrun")) or program == Path(sys.executable).name:
            raise AssertionError(f"{request.node.nodeid} starts {program}; mark it @pytest.mark.slow")
        start(self, args, *rest, **options)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture
def float64():
    """float64 as the default dtype, for exact gradient comparisons on tiny models."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Iterator[Path]:
    """A finished 4-step MPL run on digits (cli_helpers.DIGITS_TRAIN) with checkpoint.pt, model.pt, best_model.pt.
    Shared by every test of the session: read it, never change it (checked when the session ends)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main([*DIGITS_TRAIN, "--out", str(out)]) == 0
    before = snapshot(out)
    yield out
    assert snapshot(out) == before, "a test changed the shared digits_run; take digits_run_copy to change a run"


@pytest.fixture
def digits_run_copy(digits_run, tmp_path) -> Path:
    """A copy of `digits_run` that a test may damage."""
    return Path(shutil.copytree(digits_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def folder_run(tmp_path_factory) -> Iterator[tuple[Path, Path]]:
    """(folder, run): a finished run on an image folder with the classes 'cat' and 'dog', 4 images each, labelled by
    a CSV with a byte-order mark (folder/labels.csv, paths relative to it); shared, never change it."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("folder")
    write_class_folders(tmp / "images", ["cat", "dog"], per_class=4, side=12)
    rows = [f"images/{name}/{i}.png,{name}" for name in ("cat", "dog") for i in range(4)]
    (tmp / "labels.csv").write_text("\ufeffpath,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    run = tmp / "run"
    assert main(folder_train(tmp / "labels.csv", run)) == 0
    before = snapshot(tmp)
    yield tmp, run
    assert snapshot(tmp) == before, "a test changed the shared folder_run"


@pytest.fixture(scope="session")
def shard_folder(tmp_path_factory) -> Iterator[Path]:
    """3 classes × 4 labeled and 2 test 32×32 images (labeled/, test/) and 30 unlabeled ones (unlabeled/), written as
    5 WebDataset shards of 7, 7, 7, 7 and 2 (shards/); cli_helpers.shard_settings trains on them. Shared, never
    change it (copy it first)."""
    root = tmp_path_factory.mktemp("shard_folder")
    write_class_folders(root / "labeled", ["a", "b", "c"], per_class=4, side=32)
    write_class_folders(root / "test", ["a", "b", "c"], per_class=2, side=32)
    write_unlabeled_folder(root / "unlabeled", 30, side=32)
    write_shards(root / "unlabeled", root / "shards", shard_size=7, progress=False)
    before = snapshot(root)
    yield root
    assert snapshot(root) == before, "a test changed the shared shard_folder; copy it to change it"
