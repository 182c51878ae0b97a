"""Unlabeled images from WebDataset shards (docs/scale.md#shards): `metapl shard` writes them, lanes read disjoint
shards, batches depend on the lane count only (not on workers or ranks), the saved position resumes bit for bit
(also after SIGKILL while workers prefetch), 2 torchrun ranks with timm models equal one process, and bad input is
one line, exit 2."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from benchmark_scripts import load
from cli_helpers import kill_when, mid_train, saved_state, sets, shard_settings
from fake_datasets import write_unlabeled_folder

from metapl.commands.cli import main
from metapl.core.errors import CheckpointError, ConfigError, DataError
from metapl.parts.data import build_data
from metapl.parts.data.loaders import BatchStream
from metapl.parts.data.shards import (
    Position,
    ShardSet,
    _Lane,
    count_samples,
    expand_braces,
    lane_order,
    shard_files,
)
from metapl.run.config import build_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture
def files(shard_folder) -> Path:
    """conftest's shard_folder: 3 classes × 4 labeled 32×32 images, and 30 unlabeled ones in 5 shards of 7, 7, 7, 7
    and 2."""
    return shard_folder


def _data(files: Path, *extra: str):
    return build_data(build_config("cifar10_4k", shard_settings(files, *extra)).data, seed=0)


def _batches(stream: BatchStream, count: int) -> list:
    return [next(stream) for _ in range(count)]


def _same(a, b) -> bool:
    return all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("x_l", "y_l", "x_u_weak", "x_u_strong"))


# ------------------------------------------------------------------------------------------------ shard lists
def test_brace_patterns_and_folders(files, tmp_path):
    assert expand_braces("u-{008..010}.tar") == ["u-008.tar", "u-009.tar", "u-010.tar"]
    assert expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    listed = shard_files(str(files / "shards"))
    assert [Path(f).name for f in listed] == [f"shard-{i:06d}.tar" for i in range(5)]
    assert shard_files(str(files / "shards" / "shard-{000000..000004}.tar")) == listed
    assert [count_samples(f) for f in listed] == [7, 7, 7, 7, 2]
    with pytest.raises(DataError, match=r"1 of its 6 shards are missing \(first: .*shard-000005.tar\)"):
        shard_files(str(files / "shards" / "shard-{000000..000005}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="the folder holds no .tar shards; write shards with: metapl shard"):
        shard_files(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"\{1-3\} is neither a range"):
        expand_braces("u-{1-3}.tar")


def test_lanes_deal_disjoint_shards_and_read_every_image_once_per_pass(files):
    for pass_ in range(3):
        orders = [lane_order(5, 2, lane, pass_, seed=0) for lane in range(2)]
        assert sorted(orders[0] + orders[1]) == list(range(5)) and not set(orders[0]) & set(orders[1])
    assert lane_order(5, 2, 0, 0, seed=0) != lane_order(5, 2, 0, 1, seed=0) or lane_order(
        5, 2, 1, 0, seed=0
    ) != lane_order(5, 2, 1, 1, seed=0)  # each pass deals the shards anew
    shards = ShardSet("x", shard_files(str(files / "shards")), 32)
    counts = [count_samples(f) for f in shards.files]
    seen = set()
    for lane in range(2):
        reader = _Lane(shards, 2, lane, seed=0, position=Position())
        order = lane_order(5, 2, lane, 0, seed=0)
        for _ in range(sum(counts[i] for i in order)):
            reader.take()
            seen.add((order[reader.position.index], reader.position.offset - 1))
        assert reader.position.pass_ == 0  # a pass: exactly the lane's images, then the next pass begins
        reader.take()
        assert reader.position.pass_ == 1
        reader.close()
    assert seen == {(shard, offset) for shard, n in enumerate(counts) for offset in range(n)}


# ------------------------------------------------------------------------------------------------ the stream
def test_batches_depend_on_the_lanes_not_on_workers_or_ranks(files):
    """Two lanes read by the training process, by 2 workers, or by 2 ranks of one lane each: the same global
    batches; rank 0's saved positions (other ranks' lanes tracked through the headers) are the single process's."""
    single = _data(files, "data.shard_lanes=2")
    assert isinstance(single.x_unlabeled, ShardSet) and single.y_unlabeled is None
    reference = BatchStream(single, 2, 3, seed=4)
    expected = _batches(reference, 7)  # 6 images a step over 30: past the end of a pass
    assert expected[0].x_u_weak.shape == (6, 3, 32, 32) and expected[0].x_u_weak.dtype == torch.uint8
    assert not torch.equal(expected[0].x_u_weak, expected[0].x_u_strong)
    workers = BatchStream(_data(files, "data.shard_lanes=2", "data.workers=2"), 2, 3, seed=4)
    assert all(_same(a, b) for a, b in zip(expected, _batches(workers, 7)))
    workers.close()
    ranks = [BatchStream(single, 2, 3, seed=4, rank=r, world_size=2) for r in range(2)]
    for want, parts in zip(expected, zip(*(_batches(s, 7) for s in ranks))):
        assert torch.equal(want.x_u_strong, torch.cat([p.x_u_strong for p in parts]))
        assert torch.equal(want.x_l, torch.cat([p.x_l for p in parts]))
    saved, tracked = reference.state_dict()["shards"], ranks[0].state_dict()["shards"]
    assert torch.equal(saved["positions"], tracked["positions"]) and saved["step"] == tracked["step"] == 7
    assert saved["positions"][:, 0].max() >= 1  # past the end of a pass


@pytest.mark.parametrize("workers", [0, 2])
def test_a_saved_stream_resumes_exactly(files, workers):
    data = _data(files, f"data.workers={workers}")  # lanes: 1 (in the process) or 2 (one per worker)
    stream = BatchStream(data, 2, 3, seed=9)
    _batches(stream, 4)
    state = stream.state_dict()
    expected = _batches(stream, 6)  # workers were prefetching past the saved step
    stream.close()
    resumed = BatchStream(data, 2, 3, seed=123)
    resumed.load_state_dict(state)
    assert all(_same(a, b) for a, b in zip(expected, _batches(resumed, 6)))
    resumed.close()


def test_changed_shards_or_an_impossible_plan_are_one_line(files, tmp_path):
    data = _data(files)
    state = BatchStream(data, 2, 3, seed=0).state_dict()
    (tmp_path / "fewer").mkdir()
    for name in sorted(os.listdir(files / "shards"))[:4]:
        (tmp_path / "fewer" / name).write_bytes((files / "shards" / name).read_bytes())
    other = _data(files, f"data.unlabeled_shards={tmp_path / 'fewer'}")
    with pytest.raises(CheckpointError, match="now lists other shards .* than the checkpoint's stream read"):
        BatchStream(other, 2, 3, seed=0).load_state_dict(state)
    with pytest.raises(DataError, match="has 5 shards for 6 readers"):
        _data(files, "data.shard_lanes=6")
    with pytest.raises(ConfigError, match="data.shard_lanes=4 must divide the unlabeled batch"):
        _data(files, "data.shard_lanes=4")
    with pytest.raises(ConfigError, match="data.unlabeled_dir and data.unlabeled_shards both name"):
        _data(files, f"data.unlabeled_dir={files / 'unlabeled'}")
    with pytest.raises(ConfigError, match="data.unlabeled_shards is for image files"):
        build_data(build_config("digits", [f"data.unlabeled_shards={files / 'shards'}"]).data, 0)


def _tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_shards_name_the_shard_and_the_sample(files, tmp_path):
    good = (files / "unlabeled" / "u0.jpg").read_bytes()
    cases = {
        "noimage": ({"000.jpg": good, "001.txt": b"caption"}, r"sample '001' \(001.txt\) has no image"),
        "undecodable": ({"000.jpg": good, "001.jpg": b"not a jpeg"}, r"cannot decode image 001.jpg in shard .*bad"),
    }
    for name, (members, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        _tar(folder / "bad.tar", members)
        for workers in (0, 1):  # raised in the training process, or sent back by a loader worker
            stream = BatchStream(_data(files, f"data.unlabeled_shards={folder}", f"data.workers={workers}"), 2, 1, 0)
            with pytest.raises(DataError, match=message):
                next(stream)
            stream.close()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "x.tar").write_bytes(b"\x00" * 100 + b"garbage" * 50)
    with pytest.raises(DataError, match=r"cannot read shard .*x.tar .*write it again \(metapl shard\)"):
        next(BatchStream(_data(files, f"data.unlabeled_shards={tmp_path / 'garbage'}"), 2, 1, seed=0))


def test_shards_written_by_webdataset_are_read(files, tmp_path):
    """Interchange: webdataset's ShardWriter's shards stream here, and webdataset reads metapl shard's."""
    webdataset = pytest.importorskip("webdataset")
    (tmp_path / "wds").mkdir()
    images = sorted((files / "unlabeled").rglob("*.jpg"))
    with webdataset.ShardWriter(str(tmp_path / "wds" / "w-%06d.tar"), maxcount=10, verbose=0) as sink:
        for i, path in enumerate(images):
            sink.write({"__key__": f"s{i:04d}", "jpg": path.read_bytes(), "cls": str(i % 3).encode()})
    batch = next(BatchStream(_data(files, f"data.unlabeled_shards={tmp_path / 'wds'}"), 2, 3, seed=0))
    assert batch.x_u_weak is not None and batch.x_u_weak.shape == (6, 3, 32, 32)
    pattern = str(files / "shards" / "shard-{000000..000004}.tar")
    keys = [sample["__key__"] for sample in webdataset.WebDataset(pattern, shardshuffle=False)]
    assert len(keys) == 30 and len(set(keys)) == 30


# ------------------------------------------------------------------------------------------------ metapl shard
def test_metapl_shard_writes_deterministic_shards_with_a_progress_bar(files, tmp_path, capsys):
    rows = ["path"] + [str(p) for p in sorted((files / "unlabeled").rglob("*.jpg"))]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    assert main(["shard", str(tmp_path / "list.csv"), "--out", str(tmp_path / "a"), "--shard-size", "7"]) == 0
    captured = capsys.readouterr()
    assert "wrote 30 images in 5 shards" in captured.out and "shard-{000000..000004}.tar" in captured.out
    assert "30img" in captured.err  # the progress bar (the source is streamed: no total)
    again = ["shard", str(tmp_path / "list.csv"), "--out", str(tmp_path / "b"), "--shard-size", "7", "--no-progress"]
    assert main(again) == 0
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / "shard-000004.tar") as tar:
        assert [m.name for m in tar.getmembers()] == ["000000028.jpg", "000000029.jpg"]
    ordered = ["shard", str(tmp_path / "list.csv"), "--out", str(tmp_path / "c"), "--no-shuffle", "--no-progress"]
    assert main(ordered) == 0
    with tarfile.open(tmp_path / "c" / "shard-000000.tar") as tar:
        first = tar.extractfile(tar.getmembers()[0])
        assert first is not None and first.read() == Path(rows[1]).read_bytes()


def test_metapl_shard_bad_input_is_one_line_and_leaves_no_partial_shard(files, tmp_path, capsys):
    write_unlabeled_folder(tmp_path / "src", 12)
    (tmp_path / "src" / "u7.jpg").write_bytes(b"\xff\xd8 broken")
    bad = ["shard", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--shard-size", "3", "--workers", "1"]
    assert main([*bad, "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metapl: error: cannot read image") and "u7.jpg" in lines[0]
    assert not list((tmp_path / "out").glob(".*.partial"))  # finished shards stay (tests/test_sharding.py)
    assert main(bad) == 2  # with the progress bar: it is cleared, the error stays
    assert capsys.readouterr().err.split("\r")[-1].startswith("metapl: error: cannot read image")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["shard", str(files / "unlabeled"), "--out", str(tmp_path / "full"), "--no-progress"]) == 2
    assert "is not a metapl shards directory" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert main(["shard", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "no folder" in capsys.readouterr().err and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------ end to end
def _train_args(files: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--preset", "cifar10_4k", "--out", str(out), "--no-progress", "--no-tensorboard"]
    return args + sets(shard_settings(files, *extra))


RESUME_RUN = [
    "data.workers=2",
    "model.name=small_cnn",
    "train.steps=40",
    "train.checkpoint_every=5",
    "train.eval_every=0",
    "train.log_every=5",
    "finetune.steps=0",
]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["shards", "folder"])
def test_sigkill_while_workers_prefetch_then_resume_is_bit_identical(files, tmp_path, source):
    """Killed while the loader workers read ahead, the run resumes from its checkpoint and ends with the weights of
    a run never killed. `folder` reads the unlabeled images as files (the labeled ones always are): it pins that
    starting the workers takes nothing from the global RNG, whose draws (dropout, sampling) the checkpoint holds."""
    run = [
        *RESUME_RUN,
        *([f"data.unlabeled_dir={files / 'unlabeled'}", "data.unlabeled_shards="] * (source == "folder")),
    ]
    whole = [sys.executable, "-m", "metapl", *_train_args(files, tmp_path / "whole", *run)]
    uninterrupted = subprocess.run(whole, env=ENV, capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    killed = [sys.executable, "-m", "metapl", *_train_args(files, tmp_path / "killed", *run)]
    saved = kill_when(killed, lambda: mid_train(saved_state(tmp_path / "killed"), 15, 40), ENV)
    assert saved is not None, "the run ended before it could be killed"
    if source == "shards":
        assert saved["stream"]["shards"]["positions"].shape == (2, 3)  # two lanes: one per loader worker
    resumed = subprocess.run(killed, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["resumed_from_step"] == saved["step"]
    whole, again = (torch.load(tmp_path / d / "model.pt", weights_only=True) for d in ("whole", "killed"))
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    whole_state, killed_state = saved_state(tmp_path / "whole"), saved_state(tmp_path / "killed")
    assert whole_state is not None and killed_state is not None  # both runs finished and saved
    final = [whole_state["method"], killed_state["method"]]
    for net in ("teacher", "student"):
        a, b = final[0][net], final[1][net]
        assert all(torch.equal(a[k], b[k]) for k in a), net


@pytest.mark.slow
def test_two_torchrun_ranks_with_timm_models_and_shards_equal_one_process(files, tmp_path):
    """Each rank reads its own lane's shards with its own loader worker; the single process reads both lanes
    in-process. BatchNorm-free timm networks and argmax pseudo labels: the runs differ by float order only."""
    pytest.importorskip("timm")
    settings = [
        "data.shard_lanes=2",
        "data.batch_size=4",
        "data.mu=2",
        "model.name=timm/test_vit",
        "model.teacher_name=timm/test_convnext",
        "model.dropout=0",
        "method.sampling=argmax",
        "student.wait_steps=0",
        "teacher.warmup_steps=0",
        "student.warmup_steps=0",
        "train.steps=4",
        "train.eval_every=0",
        "train.log_every=1",
        "finetune.steps=0",
    ]
    one = main(_train_args(files, tmp_path / "one", *settings))
    assert one == 0
    ranked = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "metapl"]
        + _train_args(files, tmp_path / "two", *settings, "data.workers=1"),
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ranked.returncode == 0, ranked.stderr[-3000:]
    saved_one, saved_two = saved_state(tmp_path / "one"), saved_state(tmp_path / "two")
    assert saved_one is not None and saved_two is not None  # both runs finished and saved
    single, double = saved_one["method"], saved_two["method"]
    for net in ("teacher", "student"):
        for key, value in single[net].items():
            torch.testing.assert_close(double[net][key], value, rtol=1e-4, atol=1e-5, msg=f"{net} {key}")
    logged = [
        [r["h"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines()) if "h" in r]
        for d in ("one", "two")
    ]
    assert len(logged[0]) == 4 and any(abs(h) > 0 for h in logged[0])  # the teacher got feedback every step
    torch.testing.assert_close(torch.tensor(logged[1]), torch.tensor(logged[0]), rtol=1e-3, atol=1e-6)


@pytest.mark.slow
def test_the_shard_speed_benchmark_runs_shrunk(tmp_path):
    """benchmarks/shard_speed.py end to end on 300 images: both readers stream every image, and the memory runs
    report one row per shard count."""
    bench = load("shard_speed")
    out = tmp_path / "result.json"
    args = ["--images", "300", "--shard-size", "50", "--shard-counts", "3,30", "--memory-steps", "2", "--rounds", "1"]
    results = bench.main([*args, "--work", str(tmp_path / "work"), "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["folder"]["rounds"][0]["images"] == 300 and results["shards"]["rounds"][0]["images"] == 256
    assert results["shards"]["rounds"][0]["lanes"] == 2 and results["shards"]["best_images_per_s"] > 0
    assert [(row["kind"], row["held"]) for row in results["memory"]] == [
        ("folder paths", 300),
        ("shards", 3),
        ("shards", 30),
    ]
    assert all(row["rss_mb"] > 0 and row["rss_mb_fixed_mmap_threshold"] > 0 for row in results["memory"])
