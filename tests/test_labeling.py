"""`metapl label` and the label store (metapl/commands/label.py, metapl/parts/data/label_store.py): a teacher's distributions on
every pool image, stored in shards that a killed run does not redo, read back aligned with the split; label →
reduced_mpl end to end; the Reduced MPL ImageNet preset on fake folders; bad input gets one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import killed_then_rerun
from fake_datasets import write_class_folders, write_unlabeled_folder

from metapl.commands.cli import main
from metapl.commands.label import inject_bias
from metapl.core.batch import StoredBatch
from metapl.parts.data import build_data
from metapl.parts.data.label_store import MANIFEST, load_shard, read_store, shard_name
from metapl.parts.data.registry import DATASETS
from metapl.run.config import build_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TEACHER_RUN = ["--preset", "digits", "--method", "supervised", "--no-progress", "--no-tensorboard"]
TEACHER_RUN += ["--set", "train.steps=60", "--set", "train.eval_every=0"]


def make_labels(out: Path, *extra: str) -> Path:
    """A supervised digits teacher (60 steps) next to `out`, and its labels in `out`."""
    teacher = out.with_name(out.name + "-teacher")
    assert main(["train", *TEACHER_RUN, "--out", str(teacher)]) == 0
    assert main(["label", str(teacher), "--out", str(out), "--no-progress", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", *TEACHER_RUN, "--out", str(out)]) == 0
    return out


def _teacher_probs(run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's model's softmax on every pool image (digits: in memory), computed here; and the pool's labels."""
    from metapl.commands.finished_run import load_run

    loaded = load_run(run)
    dataset = DATASETS.get("digits").load(loaded.config.data, 0).dataset
    with torch.no_grad():
        return torch.softmax(loaded.model(dataset.x_train), -1), dataset.y_train


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("metapl: error: ")
    return lines[0]


# ---------------------------------------------------------------------------------------------- storing
def test_label_stores_every_pool_image_aligned_with_the_split(teacher, tmp_path, capsys):
    out = tmp_path / "labels"
    assert main(["label", str(teacher), "--out", str(out), "--shard-size", "500", "--no-progress"]) == 0
    assert f"{out} holds 1297 distributions (all of 10 classes, fp16) in 3 shards" in capsys.readouterr().out
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source"]["kind"] == "run" and manifest["source"]["weights"] == "final"
    assert manifest["num_classes"] == 10 and manifest["pool_size"] == 1297 and manifest["top_k"] == 0
    assert [s["count"] for s in manifest["shards"]] == [500, 500, 297]
    assert load_shard(out / shard_name(0))["values"].dtype == torch.float16

    probs, _ = _teacher_probs(teacher)
    cfg = build_config("digits", [f"data.label_dir={out}"], "reduced_mpl")
    data = build_data(cfg.data, seed=0)
    split = data.split
    assert data.stored is not None and data.stored.unlabeled is not None
    for stored, index in (
        (data.stored.labeled, split.labeled),
        (data.stored.unlabeled, split.unlabeled),
        (data.stored.val, split.validation),
    ):
        assert torch.allclose(stored.dense(), probs[index], atol=2e-3)  # float16
    assert torch.allclose(data.stored.unlabeled.dense().sum(-1), torch.ones(len(split.unlabeled)))

    # the batches carry the distributions of their own images: the unaugmented labeled batch matches
    from metapl.parts.data.loaders import BatchStream

    data.labeled_augment = lambda x, g: x
    batch = next(BatchStream(data, 20, 2, seed=3))
    rows = [int((data.x_labeled == x).flatten(1).all(1).nonzero()) for x in batch.x_l]
    moved = batch.to("cpu")
    assert isinstance(batch, StoredBatch) and isinstance(moved, StoredBatch)
    assert batch.p_l is not None and torch.equal(batch.p_l, data.stored.labeled.take(torch.tensor(rows)))
    assert batch.p_u is not None and batch.p_u.shape == (40, 10) and moved.p_u is not None


def test_model_source_stores_what_the_run_source_stores(teacher, tmp_path):
    """SOURCE = a registered model with a weights file and a preset: the same distributions as the run it came from."""
    from_run, from_model = tmp_path / "run-labels", tmp_path / "model-labels"
    assert main(["label", str(teacher), "--out", str(from_run), "--no-progress", "--precision", "fp32"]) == 0
    weights = str(teacher / "model.pt")
    args = ["label", "mlp", "--weights", weights, "--preset", "digits", "--out", str(from_model), "--no-progress"]
    assert main([*args, "--precision", "fp32"]) == 0
    manifest = json.loads((from_model / MANIFEST).read_text())
    assert manifest["source"]["kind"] == "model" and manifest["source"]["model"] == "mlp"
    assert torch.equal(load_shard(from_run / shard_name(0))["values"], load_shard(from_model / shard_name(0))["values"])


def test_top_k_and_injected_bias(teacher, tmp_path):
    out = tmp_path / "labels"
    args = ["label", str(teacher), "--out", str(out), "--no-progress", "--top-k", "3", "--precision", "fp32"]
    assert main([*args, "--bias", "1:7,4:9"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["top_k"] == 3 and manifest["bias"] == [[1, 7], [4, 9]]
    probs, _ = _teacher_probs(teacher)
    biased = inject_bias(probs, [(1, 7), (4, 9)])
    on_one = probs.argmax(-1) == 1
    assert on_one.any()
    assert torch.allclose(biased[on_one, 1], probs[on_one, 1] / 2)
    assert torch.allclose(biased[on_one, 7], probs[on_one, 7] + probs[on_one, 1] / 2)
    assert torch.allclose(biased.sum(-1), torch.ones(len(probs)))

    dataset = DATASETS.get("digits").load(build_config("digits").data, 0).dataset
    store = read_store(out, dataset)
    assert store.values.shape == (1297, 3) and store.classes is not None and store.classes.dtype == torch.int16
    top = biased.topk(3, dim=-1)
    assert torch.allclose(store.values, top.values, atol=1e-6) and torch.equal(store.classes.long(), top.indices)
    dense = store.dense()
    assert torch.allclose(dense.sum(-1), torch.ones(1297), atol=1e-6)
    rest = (1 - top.values.sum(-1)) / 7  # the leftover spread evenly over the other 7 classes
    others = torch.ones_like(dense, dtype=torch.bool).scatter_(1, top.indices, False)
    assert torch.allclose(dense[others].view(1297, 7), rest[:, None].expand(1297, 7), atol=1e-6)


# ---------------------------------------------------------------------------------------------- resuming
def test_rerun_skips_finished_shards_and_refuses_other_settings(teacher, tmp_path, capsys):
    out = tmp_path / "labels"
    args = ["label", str(teacher), "--out", str(out), "--shard-size", "100", "--no-progress"]
    assert main(args) == 0
    first = {n: load_shard(out / shard_name(n))["values"] for n in range(13)}
    # What a kill leaves: some shards written, one temporary file, no manifest.
    (out / MANIFEST).unlink()
    for n in range(5, 13):
        (out / shard_name(n)).unlink()
    (out / f".{shard_name(5)}.tmp").write_bytes(b"half a shard")
    kept = {n: (out / shard_name(n)).stat().st_mtime_ns for n in range(5)}
    capsys.readouterr()
    train = ["train", "--preset", "digits", "--method", "reduced_mpl", "--set", f"data.label_dir={out}"]
    assert main([*train, "--out", str(tmp_path / "run")]) == 2  # the store is unfinished: training says what to do
    assert "is unfinished (no manifest.json)" in _error(capsys)
    time.sleep(0.01)
    assert main(args) == 0
    assert "resuming: 5 of 13 shards" in capsys.readouterr().out
    assert {n: (out / shard_name(n)).stat().st_mtime_ns for n in range(5)} == kept  # not rewritten
    assert all(torch.equal(first[n], load_shard(out / shard_name(n))["values"]) for n in range(13))
    assert (out / MANIFEST).is_file()

    assert main(args) == 0  # finished: nothing to do
    assert "already holds these labels" in capsys.readouterr().out
    assert main([*args, "--top-k", "2"]) == 2
    assert _error(capsys) == (
        f"metapl: error: {out} holds labels made with top_k=0, not 2; pass a new --out, or delete {out} to label again"
    )


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_same_shards(teacher, tmp_path):
    """A label run killed with SIGKILL and started again ends with the shards of a run never interrupted, and keeps the
    shards it had written."""
    command = [sys.executable, "-m", "metapl", "label", str(teacher), "--shard-size", "1", "--no-progress", "--out"]
    done, killed = tmp_path / "done", tmp_path / "killed"
    subprocess.run([*command, str(done)], env=ENV, check=True, capture_output=True, timeout=300)
    before, result = killed_then_rerun(command, killed, "shard-*", 200, ENV)
    assert 200 <= len(before) < 1297
    assert f"resuming: {len(before)} of 1297 shards" in result.stdout
    for n in range(1297):
        assert (done / shard_name(n)).read_bytes() == (killed / shard_name(n)).read_bytes(), n


@pytest.mark.slow
def test_torchrun_ranks_share_the_shards(teacher, tmp_path):
    """Under torchrun each rank labels its own shards (i % world = rank) and rank 0 writes the manifest: the same
    store as one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["label", str(teacher), "--out", str(one), "--shard-size", "300", "--no-progress"]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "metapl"]
    command += ["label", str(teacher), "--out", str(two), "--shard-size", "300", "--no-progress"]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("holds 1297 distributions") == 1  # rank 0 alone speaks
    manifest = json.loads((two / MANIFEST).read_text())
    assert manifest == json.loads((one / MANIFEST).read_text())
    for entry in manifest["shards"]:
        assert (one / entry["file"]).read_bytes() == (two / entry["file"]).read_bytes()


# ---------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_label_then_reduced_mpl_end_to_end(teacher, tmp_path, capsys):
    labels = tmp_path / "labels"
    assert main(["label", str(teacher), "--out", str(labels), "--no-progress"]) == 0
    for feedback in ("hard", "soft"):
        out = tmp_path / f"reduced-{feedback}"
        args = ["train", "--preset", "digits", "--method", "reduced_mpl", "--no-progress", "--no-tensorboard"]
        args += ["--set", f"data.label_dir={labels}", "--set", f"method.feedback={feedback}"]
        args += ["--set", "train.steps=12", "--set", "train.eval_every=6", "--set", "train.log_every=3"]
        args += ["--set", "finetune.steps=3", "--set", "finetune.batch_size=16", "--out", str(out)]
        assert main(args) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["method"] == "reduced_mpl" and 0 <= summary["test_top1"] <= 1
        assert summary["method_label"] == f"reduced_mpl ({'hard/dot' if feedback == 'hard' else 'soft'})"
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if r["phase"] == "train"]
        assert "teacher_grad_norm" in train[-1] and "pseudo_label_acc" in train[-1]
        assert not any(k.startswith("teacher_val") for r in records for k in r)  # R takes no images
        assert any(r["phase"] == "finetune" for r in records)
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        assert set(state["method"]["teacher"]) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}


@pytest.mark.slow
def test_reduced_mpl_imagenet_preset_runs_on_fake_folders(tmp_path, capsys):
    """The paper-scale preset, on fake ImageNet folders with a small CNN standing in: a registered model with a weights
    file labels the images (loader workers, the evaluation view), then two steps and one finetuning step run."""
    from metapl.run.build import build_model

    classes = ["n01440764", "n01443537", "n01484850"]
    write_class_folders(tmp_path / "imnet" / "train", classes, per_class=4, side=40)
    write_class_folders(tmp_path / "imnet" / "val", classes, per_class=1, side=40)
    write_unlabeled_folder(tmp_path / "unlabeled", 6, side=40)
    overrides = [
        f"data.root={tmp_path / 'imnet'}",
        f"data.unlabeled_dir={tmp_path / 'unlabeled'}",
        "data.val_per_class=1",
        "data.image_size=32",
        "data.batch_size=3",
        "data.mu=2",
        "data.workers=1",
        "model.name=small_cnn",
    ]
    cfg = build_config("reduced_mpl_imagenet", overrides)
    assert cfg.method.name == "reduced_mpl" and cfg.method.settings.hidden == 512
    data = build_data(build_config("reduced_mpl_imagenet", [*overrides, "data.label_dir="], "mpl").data, seed=0)
    torch.save(build_model(cfg, data).state_dict(), tmp_path / "teacher.pt")
    sets = [item for o in overrides for item in ("--set", o)]
    labels = tmp_path / "labels"
    assert main(["label", "small_cnn", "--weights", str(tmp_path / "teacher.pt"), "--preset", "reduced_mpl_imagenet",
                 *sets, "--out", str(labels), "--no-progress"]) == 0  # fmt: skip
    assert json.loads((labels / MANIFEST).read_text())["pool_size"] == 12 + 6
    run = ["train", "--preset", "reduced_mpl_imagenet", *sets, "--set", f"data.label_dir={labels}", "--no-progress"]
    run += ["--set", "train.steps=2", "--set", "train.eval_every=0", "--set", "finetune.steps=1"]
    run += ["--set", "finetune.batch_size=4", "--set", "train.eval_batch_size=8", "--out", str(tmp_path / "run")]
    assert main(run) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["train_steps"] == 2


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_gets_one_line_and_exit_2(teacher, tmp_path, capsys):
    out = str(tmp_path / "labels")

    def refused(*args: str) -> str:
        assert main(list(args)) == 2
        return _error(capsys)

    assert "SOURCE 'mpl' is neither a run directory nor a registered model (did you mean 'mlp'?)" in refused(
        "label", "mpl", "--out", out
    )
    assert "give its pretrained weights with --weights FILE" in refused(
        "label", "mlp", "--preset", "digits", "--out", out
    )
    assert "--preset P" in refused("label", "mlp", "--weights", "w.pt", "--out", out)
    # a timm/<architecture> SOURCE is a model (the family's names), checked against timm's own list
    assert "did you mean 'timm/resnet18'" in refused(
        "label", "timm/resnet18x", "--weights", "w.pt", "--preset", "digits", "--out", out
    )
    assert "no weights file at" in refused(
        "label", "timm/resnet18", "--weights", "w.pt", "--preset", "digits", "--out", out
    )
    assert "no weights file at" in refused("label", "mlp", "--weights", "w.pt", "--preset", "digits", "--out", out)
    assert "--bias '1-2': '1-2' is not A:B" in refused("label", str(teacher), "--out", out, "--bias", "1-2")
    assert "--bias 3:10 is impossible" in refused("label", str(teacher), "--out", out, "--bias", "3:10")
    assert "--top-k -1 is impossible" in refused("label", str(teacher), "--out", out, "--top-k", "-1")
    assert "only data.* keys" in refused("label", str(teacher), "--out", out, "--set", "model.hidden=[3]")
    assert "--preset is for a registered model" in refused("label", str(teacher), "--out", out, "--preset", "digits")
    assert "holds the teacher's weights" in refused("label", str(teacher), "--out", str(teacher))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert "is not a label directory" in refused("label", str(teacher), "--out", str(mine))
    torch.save({"net.0.weight": torch.zeros(2)}, tmp_path / "bad.pt")
    assert "does not fit model.name=mlp with 10 classes" in refused(
        "label", "mlp", "--weights", str(tmp_path / "bad.pt"), "--preset", "digits", "--out", out
    )
    assert not (tmp_path / "labels").exists()  # nothing was written for refused input

    assert main(["label", str(teacher), "--out", out, "--no-progress"]) == 0
    capsys.readouterr()
    train = ["train", "--preset", "twomoon", "--method", "reduced_mpl", "--set", f"data.label_dir={out}"]
    assert "holds distributions of another data set" in refused(*train, "--out", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()

    # a damaged store: non-finite values in a shard, then a manifest edited by hand
    from metapl.parts.data.label_store import save_shard

    train = ["train", "--preset", "digits", "--method", "reduced_mpl", "--set", f"data.label_dir={out}"]
    shard = load_shard(Path(out) / shard_name(0))
    save_shard(Path(out) / shard_name(0), shard["index"], torch.full_like(shard["values"], float("nan")), None)
    assert "shard-00000.safetensors row 0 (image 0 of the pool) holds NaN" in refused(
        *train, "--out", str(tmp_path / "r")
    )
    manifest = json.loads((Path(out) / MANIFEST).read_text())
    (Path(out) / MANIFEST).write_text(json.dumps({**manifest, "shards": [1]}))
    assert "is damaged (TypeError" in refused(*train, "--out", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
