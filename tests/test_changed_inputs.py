"""Changed inputs are noticed (metapl/run/run_inputs.py): a run records fingerprints of its shards, label store,
pretrained weights and test set in inputs.json; a resumed run whose shard, store or weights changed under the same
name (and an evaluation whose test set changed) is refused in one line naming the setting and the file, with
nothing in the run directory touched. A finished run's eval, predict and export need neither its unlabeled shards
nor its label store. The fingerprint samples big files: a changed size or a change in a sampled block is seen."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from cli_helpers import kill_when, saved_state, sets, shard_settings

from metapl.commands.cli import main
from metapl.core.errors import DataError
from metapl.core.fingerprint import BLOCK, WHOLE_LIMIT, file_fingerprint, sampled_offsets
from metapl.run.config import load_config_file
from metapl.run.run_inputs import INPUTS, check, file_inputs, record

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------------------------ fingerprints
def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


def _random_file(path: Path, size: int) -> Path:
    path.write_bytes(
        torch.randint(0, 256, (size,), generator=torch.Generator().manual_seed(size)).byte().numpy().tobytes()
    )
    return path


def test_a_small_file_is_hashed_whole(tmp_path):
    path = _random_file(tmp_path / "w.pt", WHOLE_LIMIT)
    before = file_fingerprint(path)
    _flip(path, WHOLE_LIMIT // 2 + 12345)  # no block boundaries below WHOLE_LIMIT
    after = file_fingerprint(path)
    assert before is not None and after is not None
    assert after != before and after["size"] == before["size"]


def test_a_changed_byte_in_a_sampled_block_or_a_changed_size_is_noticed(tmp_path):
    size = 5 * WHOLE_LIMIT + 777
    path = _random_file(tmp_path / "shard.tar", size)
    original = path.read_bytes()
    before = file_fingerprint(path)
    offsets = sampled_offsets(size)
    assert offsets[0] == 0 and offsets[-1] == size - BLOCK and len(set(offsets)) == len(offsets)
    for offset in (0, offsets[7] + BLOCK // 2, size - 1):  # the head, a block between, the last byte
        _flip(path, offset)
        assert file_fingerprint(path) != before, offset
        path.write_bytes(original)
    assert file_fingerprint(path) == before
    with open(path, "ab") as handle:
        handle.write(b"\0")  # one more byte: the size differs, whatever the blocks hold
    grown = file_fingerprint(path)
    assert grown is not None and grown["size"] == size + 1
    path.write_bytes(original[:-1024])
    assert file_fingerprint(path) != before


def test_only_the_sampled_blocks_of_a_big_shard_are_read(tmp_path):
    """What the docstring says is sampled is what is sampled: a same-size change between blocks is not seen."""
    size = 5 * WHOLE_LIMIT
    path = _random_file(tmp_path / "big.bin", size)
    before = file_fingerprint(path)
    offsets = sampled_offsets(size)
    _flip(path, offsets[3] + BLOCK + 100)  # past block 3's end, before block 4
    assert offsets[3] + BLOCK + 100 < offsets[4]
    assert file_fingerprint(path) == before


def test_a_moved_or_renamed_identical_file_keeps_its_fingerprint(tmp_path):
    (tmp_path / "a").mkdir()
    path = _random_file(tmp_path / "a" / "w.pt", 3 * WHOLE_LIMIT)
    before = file_fingerprint(path)
    (tmp_path / "b").mkdir()
    moved = Path(shutil.copy2(path, tmp_path / "b" / "renamed.pt"))
    path.unlink()
    assert file_fingerprint(moved) == before
    assert file_fingerprint(path) is None  # gone


def _weights_cfg(path: Path, teacher: Path | None = None) -> SimpleNamespace:
    data = SimpleNamespace(unlabeled_shards="", label_dir="")
    model = SimpleNamespace(name="timm/x", teacher_name="", pretrained=str(path), teacher_pretrained=str(teacher or ""))
    return SimpleNamespace(data=data, model=model)


def test_changed_weights_under_the_same_path_are_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    weights = _random_file(tmp_path / "w.pt", 2 * WHOLE_LIMIT)
    teacher = _random_file(tmp_path / "t.pt", 1000)
    cfg = _weights_cfg(weights, teacher)
    record(run, file_inputs(cfg))
    check(run, file_inputs(cfg))  # unchanged: taken
    _flip(teacher, 10)
    with pytest.raises(DataError) as caught:
        check(run, file_inputs(cfg))
    assert str(caught.value) == (
        f"model.teacher_pretrained={str(teacher)!r} changed since {run} started: the content of t.pt changed (same "
        "size, 1000 bytes); restore it as it was when the run started to resume it, or start over with --restart "
        "(or pass another --out)"
    )
    _flip(teacher, 10)
    between = sampled_offsets(2 * WHOLE_LIMIT)[3] + BLOCK + 100  # where a shard's fingerprint would not look
    _flip(weights, between)
    with pytest.raises(DataError, match=r"model.pretrained=.* the content of w.pt changed"):  # weights: hashed whole
        check(run, file_inputs(cfg))
    _flip(weights, between)
    check(run, file_inputs(cfg))
    _random_file(weights, 2 * WHOLE_LIMIT + 1)
    with pytest.raises(DataError, match=r"model.pretrained=.* t?w.pt was 2097152 bytes and is now 2097153; restore"):
        check(run, file_inputs(cfg))
    weights.unlink()
    with pytest.raises(DataError, match=r"model.pretrained=.* w.pt is gone; restore"):
        check(run, file_inputs(cfg))


def test_another_label_store_at_the_same_label_dir_is_named(tmp_path):
    from test_damaged_label_stores import write_store

    from metapl.parts.data.registry import DATASETS
    from metapl.run.config import build_config

    cfg = build_config("digits", [f"data.label_dir={tmp_path / 'labels'}"], "reduced_mpl")
    dataset = DATASETS.get("digits").load(cfg.data, 0).dataset
    probs = torch.softmax(torch.randn(len(dataset.y_train), 10, generator=torch.Generator().manual_seed(0)), -1)
    write_store(tmp_path / "labels", dataset, probs)
    run = tmp_path / "run"
    run.mkdir()
    record(run, file_inputs(cfg))
    shutil.rmtree(tmp_path / "labels")
    write_store(tmp_path / "labels", dataset, probs.roll(1, dims=-1))  # the same manifest, other distributions
    with pytest.raises(DataError) as caught:
        check(run, file_inputs(cfg))
    assert str(caught.value).startswith(
        f"data.label_dir={str(tmp_path / 'labels')!r} changed since {run} started: the content of "
        "shard-00000.safetensors changed"
    )


def test_shards_of_one_name_in_two_folders_are_told_apart(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        _random_file(tmp_path / folder / "s.tar", 2048)
    cfg = SimpleNamespace(
        data=SimpleNamespace(unlabeled_shards=str(tmp_path / "{a,b}" / "s.tar"), label_dir=""),
        model=SimpleNamespace(pretrained="", teacher_pretrained=""),
    )
    run = tmp_path / "run"
    run.mkdir()
    record(run, file_inputs(cfg))
    assert sorted(file_inputs(cfg)["data.unlabeled_shards"]["files"]) == ["a/s.tar", "b/s.tar"]
    _flip(tmp_path / "b" / "s.tar", 5)
    with pytest.raises(DataError, match="the content of b/s.tar changed"):
        check(run, file_inputs(cfg))


def test_a_run_without_inputs_json_is_taken_as_it_is(tmp_path):
    weights = _random_file(tmp_path / "w.pt", 100)
    check(tmp_path, file_inputs(_weights_cfg(weights)))  # written by an older metapl: nothing to compare
    (tmp_path / INPUTS).write_text("{not json")
    with pytest.raises(DataError, match="cannot read .*inputs.json"):
        check(tmp_path, file_inputs(_weights_cfg(weights)))


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture
def files(shard_folder) -> Path:
    """conftest's shard_folder: 3 classes × 4 labeled and 2 test 32×32 images, 30 unlabeled ones in 5 shards."""
    return shard_folder


def _train(files: Path, shards: Path, out: Path, steps: int) -> list[str]:
    """A run on conftest's shard_folder `files` (with its test images) whose unlabeled images stream from `shards`."""
    settings = shard_settings(
        files,
        f"data.test_dir={files / 'test'}",
        f"data.unlabeled_shards={shards}",
        "model.name=small_cnn",
        f"train.steps={steps}",
        "train.checkpoint_every=5",
        "train.eval_every=0",
        "finetune.steps=0",
    )
    return ["train", "--preset", "cifar10_4k", "--out", str(out), "--no-progress", "--no-tensorboard", *sets(settings)]


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder`: its content's hash and modification time."""
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _drop_last_sample(shard: Path) -> None:
    """Write the shard again under its name without its last sample (the members that share the last key)."""
    with tarfile.open(shard) as tar:
        members = []
        for member in tar.getmembers():
            if member.isreg():
                contents = tar.extractfile(member)
                assert contents is not None  # a regular file's member has contents
                members.append((member, contents.read()))
    last = os.path.basename(members[-1][0].name).split(".")[0]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            if os.path.basename(member.name).split(".")[0] != last:
                tar.addfile(member, io.BytesIO(data))


def _checkpoint_step(out: Path) -> int | None:
    state = saved_state(out)
    return None if state is None or "step" not in state else int(state["step"])


@pytest.mark.slow  # subprocesses
def test_sigkill_then_a_shard_changed_under_its_name_is_refused_and_the_run_untouched(files, tmp_path):
    shards = Path(shutil.copytree(files / "shards", tmp_path / "shards"))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "metapl", *_train(files, shards, out, steps=2000)]
    killed_at = kill_when(command, lambda: (step := _checkpoint_step(out)) is not None and step >= 5 and step, ENV)
    assert killed_at is not None, "the run ended before it could be killed"
    assert (out / INPUTS).is_file()
    first = sorted(shards.glob("*.tar"))[0]
    original = first.read_bytes()
    _drop_last_sample(first)  # 7 samples become 6, under the same name
    before = _snapshot(out)
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"metapl: error: data.unlabeled_shards={str(shards)!r} changed since {out} started: ")
    assert f" {first.name} " in lines[0] and lines[0].endswith("or start over with --restart (or pass another --out)")
    assert _snapshot(out) == before  # nothing in the run directory changed
    first.write_bytes(original)  # the fix the line names: with the shard restored, the run's inputs are its own
    check(out, file_inputs(load_config_file(out / "config.yaml")))


@pytest.mark.slow  # trains
def test_a_finished_run_needs_neither_its_shards_nor_its_label_store(files, tmp_path, capsys):
    shards = Path(shutil.copytree(files / "shards", tmp_path / "shards"))
    run = tmp_path / "run"
    assert main(_train(files, shards, run, steps=3)) == 0
    first = sorted(shards.glob("*.tar"))[0]
    original = first.read_bytes()
    assert main(["predict", str(run), str(files / "test" / "a"), "--out", str(first)]) == 2  # never read, still spared
    assert first.read_bytes() == original and "the run's data.unlabeled_shards=" in capsys.readouterr().err
    shutil.rmtree(shards)
    assert main(["eval", str(run)]) == 0
    assert main(["predict", str(run), str(files / "test" / "a"), "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "m.safetensors")]) == 0
    capsys.readouterr()

    from test_damaged_label_stores import write_store

    from metapl.parts.data.registry import DATASETS
    from metapl.run.config import build_config

    labels = tmp_path / "labels"
    cfg = build_config("digits", [f"data.label_dir={labels}"], "reduced_mpl")
    dataset = DATASETS.get("digits").load(cfg.data, 0).dataset
    write_store(labels, dataset, torch.softmax(torch.randn(len(dataset.y_train), 10), -1))
    reduced = tmp_path / "reduced"
    args = ["train", "--preset", "digits", "--method", "reduced_mpl", "--out", str(reduced), "--no-progress"]
    settings = [f"data.label_dir={labels}", "train.steps=3", "finetune.steps=2", "train.eval_every=0"]
    assert main([*args, *[p for s in settings for p in ("--set", s)], "--no-tensorboard"]) == 0
    values = tmp_path / "values.csv"
    values.write_text("\n".join(",".join(["0.5"] * 64) for _ in range(3)) + "\n")
    # the same store, other distributions: training again from the checkpoint is refused, naming the setting
    write_store(tmp_path / "other", dataset, torch.softmax(torch.randn(len(dataset.y_train), 10), -1))
    shutil.rmtree(labels)
    os.replace(tmp_path / "other", labels)
    before = _snapshot(reduced)
    capsys.readouterr()
    assert main([*args, *[p for s in settings for p in ("--set", s)], "--no-tensorboard"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"metapl: error: data.label_dir={str(labels)!r} changed since ")
    assert _snapshot(reduced) == before
    shutil.rmtree(labels)
    assert main(["eval", str(reduced)]) == 0
    assert main(["predict", str(reduced), str(values), "--out", str(tmp_path / "q.csv")]) == 0
    assert main(["export", str(reduced), "--format", "safetensors", "--out", str(tmp_path / "r.safetensors")]) == 0


@pytest.mark.slow  # trains
def test_eval_notices_a_changed_test_set_and_predict_does_not_need_it(files, tmp_path, capsys):
    test = Path(shutil.copytree(files / "test", tmp_path / "test"))
    run = tmp_path / "run"
    args = _train(files, files / "shards", run, steps=2)
    args[args.index(f"data.test_dir={files / 'test'}")] = f"data.test_dir={test}"
    assert main(args) == 0
    assert main(["eval", str(run)]) == 0
    (test / "b" / "1.png").unlink()
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"metapl: error: the test set changed since {run} started: it had 6 examples and now has 5; restore it as it "
        "was when the run trained, or train a new run on the data as it is"
    ]
    assert main(["predict", str(run), str(test / "a"), "--out", str(tmp_path / "p.csv")]) == 0


@pytest.mark.slow  # trains a timm network
def test_pretrained_weights_changed_under_the_same_path_are_refused_on_resume(files, tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(123)
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    weights = tmp_path / "weights.safetensors"
    save_file(state, str(weights))
    run = tmp_path / "run"
    args = _train(files, files / "shards", run, steps=2)
    args[args.index("model.name=small_cnn")] = "model.name=timm/test_resnet"
    args += ["--method", "supervised", "--set", f"model.pretrained={weights}", "--set", "data.image_size=32"]
    args += ["--set", "data.unlabeled_shards="]
    assert main(args) == 0
    assert main(args) == 0  # unchanged: the finished run resumes from its checkpoint
    save_file({**state, "fc.bias": state["fc.bias"] + 1}, str(weights))  # other weights, the same size
    before = _snapshot(run)
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"metapl: error: model.pretrained={str(weights)!r} changed since {run} started: the content of "
        f"weights.safetensors changed (same size, {weights.stat().st_size} bytes); restore it as it was when the run "
        "started to resume it, or start over with --restart (or pass another --out)"
    ]
    assert _snapshot(run) == before
