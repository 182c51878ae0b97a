"""`metapl label` over WebDataset shards and Reduced MPL trained from them (docs/scale.md#recipe): the store's
shard part holds every sample's distribution keyed by (shard, key), written one store file per input shard,
resumed after a kill with the same bytes, shared by torchrun ranks; the shard stream joins each unlabeled image
with its row by key, resumes bit for bit after SIGKILL while workers prefetch, and 2 gloo ranks equal one process;
bad input (an uncovered source, a missing key, a shard changed since labeling, a damaged store) is one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from cli_helpers import (
    kill_when,
    killed_then_rerun,
    mid_train,
    one_line_error,
    saved_state,
    sets,
    shard_settings,
    snapshot,
)
from fake_datasets import write_unlabeled_folder

from metapl.commands.cli import main
from metapl.commands.shard import write_shards
from metapl.core.batch import StoredBatch
from metapl.parts.data import build_data
from metapl.parts.data.label_store import (
    FORMAT,
    MANIFEST,
    KeyStore,
    keyed_name,
    load_keyed_shard,
    read_manifest,
    save_keyed_shard,
)
from metapl.parts.data.loaders import BatchStream
from metapl.parts.data.shards import ShardReader, decode_bytes, shard_files
from metapl.run.config import build_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PRESET = "cifar10_4k"


@pytest.fixture(scope="module")
def files(shard_folder, tmp_path_factory) -> Path:
    """conftest's shard_folder (3 classes × 4 labeled 32×32 images, 30 unlabeled ones in 5 shards: 7, 7, 7, 7, 2),
    copied, with a small_cnn teacher's weights (random: what matters is that the store holds its outputs) and its
    store over pool and shards."""
    root = Path(shutil.copytree(shard_folder, tmp_path_factory.mktemp("label_shards") / "files"))
    from metapl.run.build import build_model

    torch.manual_seed(0)
    cfg = build_config(PRESET, overrides(root))
    torch.save(build_model(cfg, build_data(cfg.data, seed=0)).state_dict(), root / "teacher.pt")
    assert main(label_args(root, root / "labels")) == 0
    return root


def overrides(root: Path, *extra: str) -> list[str]:
    return shard_settings(root, "model.name=small_cnn", *extra)


def label_args(root: Path, out: Path, *extra: str) -> list[str]:
    args = ["label", "small_cnn", "--weights", str(root / "teacher.pt"), "--preset", PRESET, "--no-progress"]
    return [*args, *sets(overrides(root, *extra)), "--out", str(out)]


def _teacher_outputs(root: Path) -> dict[tuple[str, str], torch.Tensor]:
    """The teacher's softmax on the evaluation view of every shard sample, computed here: (shard file, key) →."""
    from metapl.run.build import build_model

    cfg = build_config(PRESET, overrides(root))
    data = build_data(cfg.data, seed=0)
    model = build_model(cfg, data)
    model.load_state_dict(torch.load(root / "teacher.pt", weights_only=True))
    model.eval()
    out = {}
    pipeline = data.x_labeled.pipeline
    for path in shard_files(str(root / "shards")):
        reader = ShardReader(path, 0)
        while (sample := reader.next()) is not None:
            name, raw, _ = sample
            view = pipeline.evaluate(decode_bytes(raw, 3, name))
            with torch.no_grad():
                out[(os.path.basename(path), name.split(".")[0])] = torch.softmax(model(view[None]), -1)[0]
        reader.close()
    return out


# ---------------------------------------------------------------------------------------------- labeling
def test_label_stores_every_shard_sample_by_key_beside_the_pool(files):
    manifest = read_manifest(files / "labels")
    assert manifest["format"] == FORMAT == 2 and manifest["pool_size"] == 12  # the pool part: the labeled images
    part = manifest["unlabeled_shards"]
    assert [e["input"] for e in part["files"]] == [f"shard-{n:06d}.tar" for n in range(5)]
    assert [e["count"] for e in part["files"]] == [7, 7, 7, 7, 2]
    assert [e["file"] for e in part["files"]] == [keyed_name(n) for n in range(5)]
    expected = _teacher_outputs(files)
    seen = 0
    for entry in part["files"]:
        stored = load_keyed_shard(files / "labels", files / "labels" / entry["file"], 3, 0)
        for key, row in stored.keys.items():
            torch.testing.assert_close(stored.rows.take(torch.tensor([row]))[0], expected[(entry["input"], key)],
                                       atol=2e-3, rtol=0)  # fmt: skip
            seen += 1
    assert seen == len(expected) == 30


def test_a_rerun_skips_intact_store_files_relabels_a_damaged_one_and_gives_the_same_bytes(files, tmp_path, capsys):
    out = tmp_path / "labels"
    assert main(label_args(files, out)) == 0
    original = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / MANIFEST).unlink()  # as if killed before the end
    (out / keyed_name(3)).unlink()
    (out / keyed_name(1)).write_bytes(b"damaged")
    (out / f".{keyed_name(3)}.a1b2c3d4.tmp").write_bytes(b"half")  # what a kill inside atomic_write leaves
    kept = (out / keyed_name(0)).stat().st_mtime_ns
    capsys.readouterr()
    assert main(label_args(files, out)) == 0
    assert "resuming: 3 input shards" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in out.iterdir()} == original
    assert (out / keyed_name(0)).stat().st_mtime_ns == kept


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_store(files, tmp_path):
    """`metapl label` over 120 input shards of one image, SIGKILLed once 20 store files exist, then run again:
    the store files it wrote are kept (untouched), and the store equals an uninterrupted run's byte for byte."""
    write_unlabeled_folder(tmp_path / "many", 120, side=32)
    write_shards(tmp_path / "many", tmp_path / "shards", shard_size=1, progress=False)
    command = [
        sys.executable,
        "-m",
        "metapl",
        *label_args(files, tmp_path / "x", f"data.unlabeled_shards={tmp_path / 'shards'}"),
    ]
    command = command[:-1]  # --out last: each run its own
    done, killed = tmp_path / "done", tmp_path / "killed"
    subprocess.run([*command, str(done)], env=ENV, check=True, capture_output=True, timeout=600)
    before, result = killed_then_rerun(command, killed, "unlabeled-*", 20, ENV, timeout=600, poll=0.005)
    assert 20 <= len(before) < 120
    assert f"resuming: {len(before)} input shards" in result.stdout
    assert "and 120 of 120 input shards by key" in result.stdout
    assert sorted(p.name for p in done.iterdir()) == sorted(p.name for p in killed.iterdir())
    for path in done.iterdir():
        assert path.read_bytes() == (killed / path.name).read_bytes(), path.name


def test_the_teacher_sees_whole_batches_from_each_shard_start_whatever_pieces_the_workers_hand_over(
    files, tmp_path, monkeypatch
):
    """Loader workers hand over pieces of streaming.CHUNK images; the teacher's forward pass gets --batch-size
    images at a time (it is much faster per image on whole batches: docs/scale.md#measured-scale), cut from each
    input shard's first sample and from the pool's first image, so the store does not depend on the piece size."""
    import metapl.commands.label as labeling
    import metapl.parts.data.streaming as streaming

    build = labeling._build_teacher
    seen: list[int] = []

    def recording(*args, **kwargs):
        model = build(*args, **kwargs)
        model.register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
        return model

    monkeypatch.setattr(labeling, "_build_teacher", recording)
    assert main([*label_args(files, tmp_path / "whole", "train.threads=1"), "--batch-size", "5"]) == 0
    monkeypatch.setattr(streaming, "CHUNK", 2)  # the workers' pieces: 2 images
    for workers in (0, 2):
        seen.clear()
        out = tmp_path / f"pieces-{workers}"
        assert main([*label_args(files, out, "train.threads=1", f"data.workers={workers}"), "--batch-size", "5"]) == 0
        pool, shards = seen[:3], seen[3:]
        assert pool == [5, 5, 2]  # 12 labeled images
        assert sorted(shards) == sorted([5, 2] * 4 + [2])  # shards of 7, 7, 7, 7 and 2 samples
        stored = {p.name: p.read_bytes() for p in out.glob("*.safetensors")}  # the manifests name the overrides
        assert stored == {p.name: p.read_bytes() for p in (tmp_path / "whole").glob("*.safetensors")}
        assert len(stored) == 6


def test_the_progress_bar_counts_pool_and_shard_images_per_second(files, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm shows its bar on a terminal
    args = [a for a in label_args(files, tmp_path / "labels") if a != "--no-progress"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "label: " in err and "42img" in err and "img/s" in err  # 12 pool images + 30 shard samples


def test_a_store_file_holds_the_keys_in_order_and_refuses_damage(tmp_path):
    path = tmp_path / keyed_name(0)
    save_keyed_shard(path, ["a/b", "ünï", "c"], torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]), None)
    loaded = load_keyed_shard(tmp_path, path, 2, 0)
    assert loaded.keys == {"a/b": 0, "ünï": 1, "c": 2}
    store = KeyStore(tmp_path, {"s.tar": (path.name, 3)}, 2, 0)
    torch.testing.assert_close(store.lookup("s.tar", ["c", "a/b"]), torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    with pytest.raises(Exception, match=r"shard s.tar: sample 'zz' has no stored distribution"):
        store.lookup("s.tar", ["zz"])
    save_keyed_shard(path, ["a", "b"], torch.tensor([[0.5, 0.5], [0.9, 0.9]]), None)
    with pytest.raises(Exception, match=r"unlabeled-000000.safetensors row 1 \(key 'b'\) sums to 1.8"):
        load_keyed_shard(tmp_path, path, 2, 0)
    save_keyed_shard(path, ["a", "a"], torch.tensor([[0.5, 0.5], [0.5, 0.5]]), None)
    with pytest.raises(Exception, match="holds key 'a' twice"):
        load_keyed_shard(tmp_path, path, 2, 0)


def test_sources_the_store_cannot_cover_are_one_line(files, tmp_path, capsys):
    out = tmp_path / "labels"
    error = one_line_error(capsys, *label_args(files, out, f"data.unlabeled_shards={tmp_path}/s-{{0..1}}.tar"))
    assert "2 of its 2 shards are missing" in error
    digits = ["label", "mlp", "--weights", str(files / "teacher.pt"), "--preset", "digits", "--out", str(out)]
    error = one_line_error(capsys, *digits, "--set", f"data.unlabeled_shards={files / 'shards'}")
    assert "data.unlabeled_shards is for image files" in error
    twice = tmp_path / "twice"
    twice.mkdir()
    image = sorted(p for p in (files / "unlabeled").rglob("*") if p.is_file())[0]
    with tarfile.open(twice / "t.tar", "w") as tar:
        for name in ("k.png", "other.png", "k.png"):
            tar.add(image, arcname=name)
    error = one_line_error(capsys, *label_args(files, out, f"data.unlabeled_shards={twice}"))
    assert "the key 'k' names two samples" in error
    assert not (out / MANIFEST).exists()


# ---------------------------------------------------------------------------------------------- training
def _stream(files: Path, *extra: str) -> BatchStream:
    cfg = build_config(PRESET, overrides(files, f"data.label_dir={files / 'labels'}", *extra), "reduced_mpl")
    data = build_data(cfg.data, seed=0)
    return BatchStream(data, cfg.data.batch_size, cfg.data.mu, seed=0)


@pytest.mark.parametrize("workers", [0, 2])
def test_the_shard_stream_joins_every_image_with_its_stored_distribution(files, workers):
    """Each unlabeled image's p_u is the store's row for its (shard, key); checked against the teacher's output on
    the same sample by reading every lane's position back from the stream."""
    stream = _stream(files, f"data.workers={workers}")
    try:
        batches = [next(stream) for _ in range(6)]
    finally:
        stream.close()
    store = stream.data.x_unlabeled.store
    assert isinstance(store, KeyStore)
    for batch in batches:
        assert isinstance(batch, StoredBatch)
        assert batch.p_u is not None and batch.p_u.shape == (6, 3)
        assert batch.p_l is not None and batch.p_l.shape == (2, 3)
        torch.testing.assert_close(batch.p_u.sum(-1), torch.ones(6), atol=2e-3, rtol=0)
    # the same stream in-process, image by image: the p_u rows follow the images' (shard, key)
    expected = _teacher_outputs(files)
    assert stream._shards is not None  # the unlabeled images come from shards
    lanes = stream._shards.lanes
    from metapl.parts.data.shards import Position, _Lane

    readers = [_Lane(stream.data.x_unlabeled, lanes, lane, 0, Position()) for lane in range(lanes)]
    per_lane = 6 // lanes
    for batch in batches:
        assert isinstance(batch, StoredBatch)
        rows = []
        for reader in readers:
            for _ in range(per_lane):
                _, _, shard, key = reader.take()
                rows.append(expected[(os.path.basename(shard), key)])
        torch.testing.assert_close(batch.p_u, torch.stack(rows), atol=2e-3, rtol=0)


def _train_args(files: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--preset", PRESET, "--method", "reduced_mpl", "--out", str(out), "--no-progress"]
    return [*args, "--no-tensorboard", *sets(overrides(files, f"data.label_dir={files / 'labels'}", *extra))]


def test_training_refuses_a_store_without_the_shards_or_a_shard_changed_since(files, tmp_path, capsys):
    pool_only = tmp_path / "pool_only"
    assert main(label_args(files, pool_only, "data.unlabeled_shards=")) == 0
    manifest = json.loads((pool_only / MANIFEST).read_text())
    assert "unlabeled_shards" not in manifest
    (pool_only / MANIFEST).write_text(json.dumps({**manifest, "format": 1}))  # format 1 stores are still read
    capsys.readouterr()
    run = tmp_path / "run"
    error = one_line_error(capsys, *_train_args(files, run, f"data.label_dir={pool_only}"))
    assert "holds distributions of the pool's images only" in error and "data.unlabeled_shards" in error
    copy = tmp_path / "shards"
    copy.mkdir()
    for path in (files / "shards").iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / "shard-000004.tar").write_bytes((copy / "shard-000003.tar").read_bytes())
    error = one_line_error(capsys, *_train_args(files, run, f"data.unlabeled_shards={copy}"))
    assert f"shard {copy / 'shard-000004.tar'} changed since data.label_dir=" in error
    (copy / "shard-000005.tar").write_bytes((copy / "shard-000003.tar").read_bytes())
    error = one_line_error(capsys, *_train_args(files, run, f"data.unlabeled_shards={copy}/shard-{{000005..000005}}.tar"))  # fmt: skip
    assert "holds no distributions of the shard" in error
    assert not run.exists()


def test_a_streamed_sample_missing_from_the_store_is_one_line_naming_shard_and_key(files, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in (files / "labels").iterdir():
        (labels / path.name).write_bytes(path.read_bytes())
    for number in range(5):  # every store file without its first key, the manifest's counts to match
        stored = load_keyed_shard(labels, labels / keyed_name(number), 3, 0)
        keys = sorted(stored.keys, key=stored.keys.__getitem__)
        save_keyed_shard(labels / keyed_name(number), keys[1:], stored.rows.values[1:], None)
    manifest = json.loads((labels / MANIFEST).read_text())
    for entry in manifest["unlabeled_shards"]["files"]:
        entry["count"] -= 1
    (labels / MANIFEST).write_text(json.dumps(manifest))
    args = _train_args(files, tmp_path / "run", f"data.label_dir={labels}", "train.steps=4", "train.eval_every=0")
    error = one_line_error(capsys, *args, "--set", "finetune.steps=0")
    assert re.search(r"shard .*shard-00000\d\.tar: sample '\d+' has no stored distribution in data.label_dir=", error)


@pytest.mark.slow
def test_reduced_mpl_trains_from_shards_and_names_a_changed_store_on_resume(files, tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    for path in (files / "labels").iterdir():
        (labels / path.name).write_bytes(path.read_bytes())
    run = tmp_path / "run"
    args = _train_args(files, run, f"data.label_dir={labels}", "train.steps=4", "train.eval_every=0")
    assert main([*args, "--set", "finetune.steps=0"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("teacher_grad_norm" in r for r in records)
    inputs = json.loads((run / "inputs.json").read_text())["inputs"]
    assert keyed_name(4) in inputs["data.label_dir"]["files"]
    # a store file rewritten under the run (unfinished: no summary.json): the resume names it, the run untouched
    (run / "summary.json").unlink()
    tensors = load_keyed_shard(labels, labels / keyed_name(2), 3, 0)
    keys = sorted(tensors.keys, key=tensors.keys.__getitem__)
    save_keyed_shard(labels / keyed_name(2), keys, torch.full((len(keys), 3), 1 / 3).half(), None)
    before = snapshot(run)
    error = one_line_error(capsys, *args, "--set", "finetune.steps=0")
    assert f"data.label_dir={str(labels)!r} changed since" in error and keyed_name(2) in error
    assert snapshot(run) == before


RESUME_RUN = [
    "data.workers=2",
    "train.steps=40",
    "train.checkpoint_every=5",
    "train.eval_every=0",
    "train.log_every=5",
    "finetune.steps=0",
]


@pytest.mark.slow
def test_sigkill_while_workers_prefetch_then_resume_is_bit_identical(files, tmp_path):
    whole = [sys.executable, "-m", "metapl", *_train_args(files, tmp_path / "whole", *RESUME_RUN)]
    uninterrupted = subprocess.run(whole, env=ENV, capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    killed = [sys.executable, "-m", "metapl", *_train_args(files, tmp_path / "killed", *RESUME_RUN)]
    saved = kill_when(killed, lambda: mid_train(saved_state(tmp_path / "killed"), 15, 40), ENV)
    assert saved is not None, "the run ended before it could be killed"
    assert saved["stream"]["shards"]["positions"].shape == (2, 3)  # two lanes, one per loader worker
    resumed = subprocess.run(killed, env=ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "killed" / "summary.json").read_text())["resumed_from_step"] == saved["step"]
    whole_state, killed_state = saved_state(tmp_path / "whole"), saved_state(tmp_path / "killed")
    assert whole_state is not None and killed_state is not None  # both runs finished and saved
    final = [whole_state["method"], killed_state["method"]]
    for net in ("teacher", "student"):
        a, b = final[0][net], final[1][net]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), net


@pytest.mark.slow
def test_two_gloo_ranks_label_and_train_as_one_process(files, tmp_path):
    """torchrun with 2 ranks: labeling writes the store of one process byte for byte; Reduced MPL from the shards
    (each rank its own lane, one loader worker; a BatchNorm-free timm student, argmax pseudo labels) ends with one
    process's weights (float order aside) and the same h every step."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "metapl"]
    labeled = subprocess.run(
        [*torchrun, *label_args(files, tmp_path / "labels")], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert labeled.returncode == 0, labeled.stderr[-3000:]
    one, two = files / "labels", tmp_path / "labels"
    assert json.loads((one / MANIFEST).read_text()) == json.loads((two / MANIFEST).read_text())
    assert {p.name: p.read_bytes() for p in one.iterdir()} == {p.name: p.read_bytes() for p in two.iterdir()}
    pytest.importorskip("timm")
    settings = [
        "model.name=timm/test_vit",  # no BatchNorm: each rank's statistics would be of its half batch
        "data.shard_lanes=2",
        "data.batch_size=4",
        "data.mu=2",
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
    assert main(_train_args(files, tmp_path / "one", *settings)) == 0
    ranked = subprocess.run(
        [*torchrun, *_train_args(files, tmp_path / "two", *settings, "data.workers=1")],
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
    assert len(logged[0]) == 4 and any(abs(h) > 0 for h in logged[0])
    torch.testing.assert_close(torch.tensor(logged[1]), torch.tensor(logged[0]), rtol=1e-3, atol=1e-6)
