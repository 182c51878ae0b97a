"""The paper's data sets in their standard on-disk layouts (fake files in the real formats): they load, split as
the presets say, and a few training steps run on each; damaged files end in one DataError naming the file."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_datasets import (
    write_cifar10,
    write_cifar100,
    write_class_folders,
    write_svhn,
    write_unlabeled_folder,
)

from metapl.core.errors import DataError
from metapl.parts.data import build_data
from metapl.parts.data.cifar import load_cifar
from metapl.parts.data.svhn import load_svhn
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

TINY_RUN = ["train.steps=2", "train.eval_every=0", "train.log_every=1", "finetune.steps=1", "finetune.batch_size=4"]


def _train(preset: str, out, overrides: list[str]) -> dict:
    cfg = build_config(preset, overrides + TINY_RUN)
    return run_experiment(cfg, out, progress=False)


def test_cifar10_batches_load_as_uint8_images(tmp_path):
    write_cifar10(tmp_path)
    data = load_cifar("cifar10", str(tmp_path))
    assert data.x_train.shape == (100, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (20, 3, 32, 32) and data.num_classes == 10
    assert load_cifar("cifar10", str(tmp_path / "cifar-10-batches-py")).x_train.shape == (100, 3, 32, 32)
    assert data.class_names == [f"class{k}" for k in range(10)]  # from batches.meta, for predictions and plots


def test_cifar_class_names_are_optional_but_never_wrong(tmp_path):
    write_cifar100(tmp_path)
    assert load_cifar("cifar100", str(tmp_path)).class_names is None  # no meta file: labels stay numbers
    folder = write_cifar10(tmp_path / "ten")
    (folder / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"batches.meta is not a readable CIFAR meta file .* download again"):
        load_cifar("cifar10", str(folder))


def test_cifar10_preset_splits_and_trains(tmp_path):
    write_cifar10(tmp_path)
    overrides = [
        f"data.root={tmp_path}",
        "data.labeled_per_class=2",
        "data.val_per_class=1",
        "data.batch_size=4",
        "data.mu=2",
    ]
    data = build_data(build_config("cifar10_4k", overrides).data, seed=0)
    assert len(data.y_labeled) == 20 and len(data.y_val) == 10
    assert sorted(np.bincount(data.y_labeled.numpy()).tolist()) == [2] * 10
    assert len(data.x_unlabeled) == 90  # the pool minus validation; labeled images included (docs/method.md#splits)
    assert data.normalization is not None and data.x_unlabeled.dtype == torch.uint8
    summary = _train("cifar10_4k", tmp_path / "run", overrides)
    assert (tmp_path / "run" / "splits.json").is_file() and (tmp_path / "run" / "model.pt").is_file()
    assert np.isfinite(summary["test_top1"])


def test_first_n_selection_takes_file_order_and_exclusion_removes_labeled(tmp_path):
    write_cifar10(tmp_path)
    overrides = [f"data.root={tmp_path}", "data.labeled_per_class=2", "data.val_per_class=0"]
    first = build_data(build_config("cifar10_4k", overrides + ["data.labeled_selection=first"]).data, seed=0)
    assert first.split.labeled == list(range(20))
    excluded = build_data(build_config("cifar10_4k", overrides + ["data.unlabeled_includes_labeled=false"]).data, 0)
    assert not set(excluded.split.labeled) & set(excluded.split.unlabeled) and len(excluded.split.unlabeled) == 80


def test_saved_split_is_reused(tmp_path):
    write_cifar10(tmp_path)
    overrides = [f"data.root={tmp_path}", "data.labeled_per_class=2", "data.val_per_class=1"]
    data = build_data(build_config("cifar10_4k", overrides).data, seed=0)
    data.split.save(tmp_path / "splits.json")
    again = build_data(build_config("cifar10_4k", overrides + [f"data.split_file={tmp_path / 'splits.json'}"]).data, 7)
    assert again.split == data.split and torch.equal(again.x_labeled, data.x_labeled)


def test_cifar100_preset_trains(tmp_path):
    write_cifar100(tmp_path)
    overrides = [
        f"data.root={tmp_path}",
        "data.labeled_per_class=1",
        "data.val_per_class=0",
        "data.batch_size=4",
        "data.mu=1",
    ]
    summary = _train("cifar100_10k", tmp_path / "run", overrides)
    assert np.isfinite(summary["test_top1"])


def test_svhn_train_plus_extra_only_unlabeled(tmp_path):
    write_svhn(tmp_path / "svhn")
    dataset, labelable = load_svhn(str(tmp_path / "svhn"), extra=True)
    assert labelable == 40 and len(dataset.y_train) == 70 and set(dataset.y_train.tolist()) == set(range(10))
    overrides = [
        f"data.root={tmp_path / 'svhn'}",
        "data.labeled_per_class=2",
        "data.val_per_class=1",
        "data.batch_size=4",
        "data.mu=2",
    ]
    data = build_data(build_config("svhn_1k", overrides).data, seed=0)
    assert max(data.split.labeled + data.split.validation) < 40  # labels and validation come from train only
    assert len(data.split.unlabeled) == 70 - 10  # train + extra, minus validation
    summary = _train("svhn_1k", tmp_path / "run", overrides)
    assert np.isfinite(summary["test_top1"])


def test_imagenet_folders_stream_through_workers(tmp_path):
    classes = ["n01440764", "n01443537", "n01484850"]
    write_class_folders(tmp_path / "imnet" / "train", classes, per_class=6, side=90, fmt="jpg")
    write_class_folders(tmp_path / "imnet" / "val", classes, per_class=2, side=90, fmt="jpg")
    write_unlabeled_folder(tmp_path / "unlabeled", 8, side=90)
    overrides = [
        f"data.root={tmp_path / 'imnet'}",
        f"data.unlabeled_dir={tmp_path / 'unlabeled'}",
        "data.labeled_per_class=2",
        "data.val_per_class=1",
        "data.image_size=72",
        "data.batch_size=3",
        "data.mu=2",
        "data.workers=1",
        "model.name=small_cnn",  # ResNet-50 works the same way but costs seconds per step on a CPU
    ]
    data = build_data(build_config("imagenet_10pct", overrides).data, seed=0)
    assert data.input_shape == (3, 72, 72) and data.num_classes == 3
    assert len(data.x_unlabeled) == 18 - 3 + 8 and data.y_unlabeled is None  # folder images have no label
    summary = _train("imagenet_10pct", tmp_path / "run", overrides)
    assert np.isfinite(summary["test_top1"])

    # predict crops a photo exactly as evaluation does (the centre crop), not by squashing the whole image
    from metapl.commands.finished_run import load_run
    from metapl.commands.predict_inputs import load_image
    from metapl.parts.data.folders import decode

    photo = tmp_path / "imnet" / "val" / classes[0] / "0.jpg"
    pipeline = load_run(tmp_path / "run").data.x_labeled.pipeline
    expected = pipeline.evaluate(decode(str(photo))).float() / 255
    assert torch.equal(load_image(photo, (3, 72, 72), pipeline=pipeline), expected)
    assert not torch.allclose(load_image(photo, (3, 72, 72)), expected, atol=0.02)


def test_resnet50_preset_reads_an_unlabeled_folder(tmp_path):
    classes = ["a", "b"]
    write_class_folders(tmp_path / "imnet" / "train", classes, per_class=4, side=40)
    write_class_folders(tmp_path / "imnet" / "val", classes, per_class=1, side=40)
    write_unlabeled_folder(tmp_path / "u", 5)
    cfg = build_config(
        "resnet50_imagenet_unlabeled",
        [
            f"data.root={tmp_path / 'imnet'}",
            f"data.unlabeled_dir={tmp_path / 'u'}",
            "data.val_per_class=1",
            "data.image_size=32",
        ],
    )
    data = build_data(cfg.data, seed=0)
    assert len(data.y_labeled) == 6 and len(data.x_unlabeled) == 5  # all labeled but validation; the folder only


def test_custom_folder_csv_and_unlabeled(tmp_path):
    write_class_folders(tmp_path / "labeled", ["cat", "dog"], per_class=6)
    write_class_folders(tmp_path / "test", ["cat", "dog"], per_class=2)
    write_unlabeled_folder(tmp_path / "unlabeled", 6)
    rows = ["path,label"] + [f"test/{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(2)]
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    overrides = [
        "data.name=folder",
        f"data.root={tmp_path / 'labeled'}",
        f"data.unlabeled_dir={tmp_path / 'unlabeled'}",
        f"data.test_dir={tmp_path / 'test.csv'}",
        "data.labeled_selection=all",
        "data.val_per_class=1",
        "data.batch_size=4",
        "data.mu=2",
        "data.workers=0",
        "model.name=small_cnn",
    ]
    data = build_data(build_config("cifar10_4k", overrides).data, seed=0)
    assert data.input_shape == (3, 32, 32) and len(data.y_labeled) == 10 and len(data.y_test) == 4
    summary = _train("cifar10_4k", tmp_path / "run", overrides)
    assert np.isfinite(summary["test_top1"])


def test_file_stream_resumes_where_it_was_saved(tmp_path):
    """With workers prefetching ahead, the saved state is that of the last batch the trainer received."""
    from metapl.parts.data.loaders import BatchStream

    write_class_folders(tmp_path / "l", ["a", "b"], per_class=5)
    cfg = build_config(
        "cifar10_4k",
        [
            "data.name=folder",
            f"data.root={tmp_path / 'l'}",
            "data.labeled_selection=all",
            "data.val_per_class=0",
            "data.workers=2",
        ],
    )
    data = build_data(cfg.data, seed=0)
    stream = BatchStream(data, batch_size=2, mu=2, seed=5)
    for _ in range(3):
        next(stream)
    state = stream.state_dict()
    expected = [next(stream) for _ in range(3)]
    resumed = BatchStream(data, batch_size=2, mu=2, seed=123)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (next(resumed) for _ in range(3))):
        assert torch.equal(want.x_l, got.x_l) and torch.equal(want.unlabeled()[1], got.unlabeled()[1])
        assert torch.equal(want.y_l, got.y_l)


# ------------------------------------------------------------------------------------------------ bad files
def test_missing_cifar_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match=r"no cifar10 at .*cifar-10-batches-py.*--download"):
        load_cifar("cifar10", str(tmp_path))


def test_truncated_cifar_batch_names_the_file(tmp_path):
    folder = write_cifar10(tmp_path)
    raw = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="data_batch_3 is not a readable CIFAR batch"):
        load_cifar("cifar10", str(tmp_path))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_tampered_cifar_pickle_is_refused_without_running_code(tmp_path):
    folder = write_cifar10(tmp_path)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": _Payload(), b"labels": []}, handle)
    with pytest.raises(DataError, match="refusing to load posix.system|refusing to load os.system"):
        load_cifar("cifar10", str(tmp_path))
    assert not (tmp_path / "PWNED").exists() and not os.path.exists("PWNED")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_svhn_mat_names_the_file(tmp_path, damage):
    write_svhn(tmp_path, {"train": 20, "test": 10})
    path = tmp_path / "test_32x32.mat"
    raw = path.read_bytes()
    path.write_bytes(b"MATLAB 5.0 MAT-file, garbage" if damage == "garbage" else raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match="test_32x32.mat is not a readable SVHN .mat file"):
        load_svhn(str(tmp_path))


def test_csv_errors_name_the_row_or_column(tmp_path):
    write_class_folders(tmp_path / "imgs", ["a"], per_class=1)
    base = ["data.name=folder", "data.labeled_selection=all"]
    (tmp_path / "nolabel.csv").write_text("path\nimgs/a/0.png\n")
    with pytest.raises(DataError, match="has no column 'label'.*path,label"):
        build_data(build_config("cifar10_4k", base + [f"data.root={tmp_path / 'nolabel.csv'}"]).data, 0)
    (tmp_path / "missing.csv").write_text("path,label\nimgs/a/0.png,a\nimgs/a/9.png,a\n")
    with pytest.raises(DataError, match=r"missing.csv line 3: image 'imgs/a/9.png' does not exist"):
        build_data(build_config("cifar10_4k", base + [f"data.root={tmp_path / 'missing.csv'}"]).data, 0)


def test_empty_class_folder_and_missing_directory(tmp_path):
    write_class_folders(tmp_path / "l", ["a", "b"], per_class=2)
    (tmp_path / "l" / "empty").mkdir()
    base = ["data.name=folder", "data.labeled_selection=all"]
    with pytest.raises(DataError, match=r"class folder .*empty holds no images"):
        build_data(build_config("cifar10_4k", base + [f"data.root={tmp_path / 'l'}"]).data, 0)
    with pytest.raises(DataError, match=r"no folder .*nowhere; expected one sub-folder of images per class"):
        build_data(build_config("cifar10_4k", base + [f"data.root={tmp_path / 'nowhere'}"]).data, 0)


def test_corrupt_image_stops_training_with_its_name(tmp_path):
    write_class_folders(tmp_path / "l", ["a", "b"], per_class=4)
    (tmp_path / "l" / "b" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "metapl",
            "train",
            "--preset",
            "cifar10_4k",
            "--out",
            str(tmp_path / "run"),
            "--set",
            "data.name=folder",
            "--set",
            f"data.root={tmp_path / 'l'}",
            "--set",
            "data.labeled_selection=all",
            "--set",
            "data.val_per_class=0",
            "--set",
            "data.batch_size=8",
            "--set",
            "data.workers=1",
            "--set",
            "model.name=small_cnn",
            "--set",
            "train.steps=3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot decode image" in lines[0] and "2.png" in lines[0], result.stderr


def test_labeled_set_smaller_than_the_batch(tmp_path):
    write_cifar10(tmp_path)
    cfg = build_config(
        "cifar10_4k",
        [f"data.root={tmp_path}", "data.labeled_per_class=1", "data.val_per_class=0", "data.batch_size=16"],
    )
    with pytest.raises(DataError, match="labeled set has 10 examples, fewer than data.batch_size=16"):
        run_experiment(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cifar_run_evaluates_predicts_and_exports(tmp_path):
    """A run on uint8 images: the model standardises inside, so eval, predict and export take plain images."""
    from PIL import Image

    from metapl.commands.evaluate import evaluate_run
    from metapl.commands.export import export_run
    from metapl.commands.predict import predict_run

    write_cifar10(tmp_path)
    overrides = [
        f"data.root={tmp_path}",
        "data.labeled_per_class=2",
        "data.val_per_class=1",
        "data.batch_size=4",
        "data.mu=1",
    ]
    cfg = build_config("cifar10_4k", overrides + TINY_RUN + ["model.name=small_cnn"])
    run_experiment(cfg, tmp_path / "run", progress=False)
    scores = evaluate_run(tmp_path / "run")
    assert scores["test_examples"] == 20 and 0 <= scores["test_top1"] <= 1
    Image.fromarray(np.full((50, 40, 3), 200, np.uint8)).save(tmp_path / "x.png")
    _, count = predict_run(tmp_path / "run", tmp_path / "x.png", out=tmp_path / "pred.csv")
    assert count == 1 and (tmp_path / "pred.csv").is_file()
    result = export_run(tmp_path / "run", "safetensors")
    assert result.max_abs_diff < 1e-4


def test_download_goes_through_torchvision_and_only_when_missing(tmp_path, monkeypatch):
    import torchvision.datasets

    from metapl.parts.data import download_dataset

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            if not (Path(root) / "cifar-10-batches-py").exists():
                write_cifar10(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    cfg = build_config("cifar10_4k", [f"data.root={tmp_path}"]).data
    download_dataset(cfg)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    download_dataset(cfg)  # the files are there: nothing fetched
    assert len(calls) == 2 and load_cifar("cifar10", str(tmp_path)).x_train.shape[0] == 100
    with pytest.raises(DataError, match="cannot fetch imagenet: it has no public download"):
        download_dataset(build_config("imagenet_10pct").data)


def test_augment_on_device_gives_the_same_batches(tmp_path):
    """The batched pipeline run where the model is (here the CPU) draws the same numbers as the default path."""
    from metapl.parts.data.loaders import BatchStream

    write_cifar10(tmp_path)
    data = build_data(
        build_config("cifar10_4k", [f"data.root={tmp_path}", "data.labeled_per_class=2", "data.val_per_class=0"]).data,
        0,
    )
    plain = next(BatchStream(data, batch_size=4, mu=2, seed=3))
    moved = next(BatchStream(data, batch_size=4, mu=2, seed=3, augment_device="cpu"))
    plain_weak, plain_strong = plain.unlabeled()
    assert torch.equal(plain_strong, moved.unlabeled()[1]) and torch.equal(plain.x_l, moved.x_l)
    assert not torch.equal(plain_weak, plain_strong)


def test_sigterm_to_the_process_group_checkpoints_a_run_with_loader_workers(tmp_path):
    """A scheduler signals the whole process group: the workers must not die under the trainer, which
    checkpoints and exits 143 as without workers."""
    import signal
    import time

    write_class_folders(tmp_path / "l", ["a", "b"], per_class=8)
    args = ["--preset", "cifar10_4k", "--out", str(tmp_path / "run")]
    for setting in (
        "data.name=folder",
        f"data.root={tmp_path / 'l'}",
        "data.labeled_selection=all",
        "data.val_per_class=0",
        "data.batch_size=4",
        "data.mu=2",
        "data.workers=2",
        "model.name=small_cnn",
        "train.steps=100000",
        "train.checkpoint_every=5",
        "train.eval_every=0",
    ):
        args += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "metapl", "train", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not (tmp_path / "run" / "checkpoint.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr and "run the same command to resume" in stderr


def test_image_file_pipeline_switches():
    """data.augment=false makes every view the evaluation view; data.flip=false never mirrors (large images)."""
    from metapl.parts.data.streaming import ImagePipeline

    image = torch.zeros(3, 90, 120, dtype=torch.uint8)
    image[:, :, :60] = 255  # left half white: a mirrored crop has its white part on the right
    plain = ImagePipeline(size=72, augment=False)
    weak, strong = plain.views(image, torch.Generator().manual_seed(0))
    assert torch.equal(weak, plain.evaluate(image)) and torch.equal(strong, weak)
    unflipped = ImagePipeline(size=72, flip=False, magnitude=0)
    for seed in range(20):
        crop = unflipped.labeled(image, torch.Generator().manual_seed(seed)).float()
        assert crop[:, :, 0].mean() >= crop[:, :, -1].mean()  # white never ends up on the right only


def test_reused_split_file_cannot_label_unlabeled_only_images(tmp_path):
    from metapl.parts.data.splits import Split

    write_svhn(tmp_path)
    Split(labeled=[0, 50], unlabeled=list(range(60)), validation=[]).save(tmp_path / "splits.json")
    overrides = [f"data.root={tmp_path}", f"data.split_file={tmp_path / 'splits.json'}"]
    with pytest.raises(DataError, match="labeled index 50 is outside the pool of 40"):
        build_data(build_config("svhn_1k", overrides).data, 0)
