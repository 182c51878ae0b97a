"""Reliability, second audit (issue #13): one test group per class of the audit.

1. checks run before the run directory is written, and a directory never locks its user out;
2. sizes that cannot fit are refused before allocating, and an allocation failure is one line naming the setting;
3. no traceback for numeric extremes, malformed split files or plot inputs (tests/test_fuzz.py fuzzes the rest);
4. no command writes over a file it reads;
5. a run's split records what it was drawn from, and a changed data set is one line with the choices;
6. CSVs with a byte-order mark, and class names kept in the run (classes.json) and written with predictions;
7. no accepted nonsense (fractional split indices) nor misleading words (an export's permission problem).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_helpers import cli, one_line_error, succeeds
from PIL import Image

from metapl.cli import main
from metapl.config import build_config
from metapl.data.splits import Split, check_source, pool_fingerprint
from metapl.engine import budget
from metapl.errors import ConfigError, DataError

TINY = ["--no-progress", "--no-tensorboard", "--set", "model.hidden=[16]", "--set", "train.eval_every=0"]
TRAIN = ["train", "--preset", "digits", *TINY, "--set", "train.steps=2"]


def files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-step digits run (MPL, a 16-unit MLP)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reliability2") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# ---------------------------------------------------------------------------------------------- image folders
def _images(root: Path, classes: dict[str, int], side: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


FOLDER = [
    "--preset",
    "cifar10_4k",
    "--no-progress",
    "--no-tensorboard",
    "--set",
    "data.name=folder",
    "--set",
    "data.labeled_selection=all",
    "--set",
    "data.val_per_class=1",
    "--set",
    "data.batch_size=4",
    "--set",
    "data.mu=1",
    "--set",
    "data.image_size=8",
    "--set",
    "data.workers=0",
    "--set",
    "model.name=small_cnn",
    "--set",
    "model.width=4",
    "--set",
    "train.steps=2",
    "--set",
    "train.eval_every=0",
    "--set",
    "finetune.steps=0",
]


def folder_train(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *FOLDER, "--set", f"data.root={root}", *extra, "--out", str(out)]


# ================================================================================================ class 1
def test_a_switch_this_machine_cannot_run_is_refused_before_writing_and_the_fix_is_taken(capsys, tmp_path):
    out = tmp_path / "run"
    line = one_line_error(capsys, *TRAIN, "--set", "train.precision=fp16", "--out", out)
    assert "train.precision=fp16 needs a CUDA GPU" in line
    assert not out.exists()
    succeeds(capsys, *TRAIN, "--set", "train.precision=bf16", "--out", out)


def test_a_directory_with_nothing_trained_takes_a_new_config(capsys, tmp_path):
    out = tmp_path / "run"
    succeeds(capsys, *TRAIN, "--out", out)
    for name in ("checkpoint.pt", "model.pt", "best_model.pt"):
        (out / name).unlink(missing_ok=True)  # what a run that stopped before its first checkpoint leaves
    succeeds(capsys, *TRAIN, "--set", "teacher.lr=0.01", "--out", out)
    assert yaml.safe_load((out / "config.yaml").read_text())["teacher"]["lr"] == 0.01


def test_a_trained_run_of_another_config_is_refused_with_both_ways_out(capsys, run):
    before = files(run)
    line = one_line_error(capsys, *TRAIN, "--set", "teacher.lr=0.01", "--out", run)
    assert "holds a trained run with teacher.lr=0.05, not 0.01" in line
    assert "add --restart to discard it and start over, or pass another --out" in line
    assert files(run) == before
    succeeds(capsys, *TRAIN, "--set", "teacher.lr=0.01", "--restart", "--out", run)
    assert yaml.safe_load((run / "config.yaml").read_text())["teacher"]["lr"] == 0.01


def test_after_a_divergence_the_lower_learning_rate_is_taken(capsys, tmp_path):
    out = tmp_path / "run"
    diverging = ["--set", "teacher.lr=1e4", "--set", "student.lr=1e4", "--set", "train.checkpoint_every=1"]
    args = ["train", "--preset", "digits", *TINY, "--set", "train.steps=60", "--set", "method.sampling=argmax"]
    line = one_line_error(capsys, *args, *diverging, "--out", out)
    assert "--restart" in line or "takes new settings" in line
    succeeds(capsys, *args, "--set", "train.steps=2", *(["--restart"] if "--restart" in line else []), "--out", out)


def test_a_refused_resume_prints_no_resuming_line(capsys, run):
    (run / "checkpoint.pt").write_bytes(b"garbage")
    code, lines, out = cli(capsys, *TRAIN, "--out", run)
    assert code == 2 and "resuming" not in out


# ================================================================================================ class 2
@pytest.mark.parametrize(
    "preset, settings, named",
    [
        ("digits", ["data.mu=10000000"], "data.mu=10000000"),
        ("digits", ["data.mu=1000000000000"], "data.mu=1000000000000"),
        ("digits", ["model.hidden=[1000000000]"], "model.hidden=[1000000000]"),
        ("digits", ["model.hidden=[4611686018427387904]"], "model.hidden=[4611686018427387904]"),
        ("digits", ["model.name=small_cnn", "model.width=1000000"], "model.width=1000000"),
        ("twomoon", ["data.num_points=100000000000"], "data.num_points=100000000000"),
        ("digits", ["data.workers=100000000"], "data.workers=100000000"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_before_anything_is_allocated(capsys, tmp_path, preset, settings, named):
    out = tmp_path / "run"
    sets = [item for setting in settings for item in ("--set", setting)]
    line = one_line_error(capsys, "train", "--preset", preset, "--no-progress", *sets, "--out", out)
    assert named in line and ("lower" in line or "use at most" in line)
    assert not out.exists()


def test_the_step_estimate_names_the_largest_mu_that_fits(monkeypatch):
    from metapl.data import build_data

    cfg = build_config("digits", ["data.mu=100000"])
    data = build_data(cfg.data, 0)
    monkeypatch.setattr(budget, "host_available", lambda: 2 * 1024**3)
    with pytest.raises(
        ConfigError, match=r"data.mu=100000, data.batch_size=50 and model.hidden=\[256, 256\] need at least"
    ) as refused:
        budget.check_step_memory(cfg, data, torch.device("cpu"))
    most = int(str(refused.value).split("data.mu above ")[1].split(" ")[0].replace(",", ""))
    cfg.data.mu = most
    budget.check_step_memory(cfg, data, torch.device("cpu"))  # the value it names fits
    cfg.data.mu = most + 1
    with pytest.raises(ConfigError):
        budget.check_step_memory(cfg, data, torch.device("cpu"))


def test_an_evaluation_batch_that_cannot_fit_names_train_eval_batch_size(monkeypatch):
    from metapl.data import build_data

    cfg = build_config("digits", ["model.hidden=[100000]", "data.mu=1", "train.eval_batch_size=5000"])
    data = build_data(cfg.data, 0)
    profile = budget.profile_network(cfg, data)
    weights = profile.parameters * 4 * (3 * 2 + 1)
    evaluation = weights + 500 * (64 * 4 + profile.widest_per_example * 4)  # 500: the test set, the larger
    monkeypatch.setattr(budget, "host_available", lambda: evaluation - 1)
    with pytest.raises(ConfigError, match=r"train.eval_batch_size=5000 needs at least .* lower train.eval_batch_size"):
        budget.check_step_memory(cfg, data, torch.device("cpu"))
    cfg.train.eval_batch_size = 100
    budget.check_step_memory(cfg, data, torch.device("cpu"))


def _fake_bundle(shape, dtype, classes=10, examples=1000, normalization=None):
    from metapl.data.loaders import DataBundle

    x = torch.zeros((4, *shape), dtype=dtype)
    y = torch.zeros(examples, dtype=torch.long)
    return DataBundle(x, y[:4], x, None, x, y, x, y, classes, Split([0], [0], []), normalization=normalization)


@pytest.mark.parametrize(
    "preset, shape, dtype, world, memory_gib",
    [
        ("twomoon", (2,), torch.float32, 1, 4),
        ("digits", (1, 8, 8), torch.float32, 1, 4),
        ("fashion_mnist_400", (1, 28, 28), torch.float32, 1, 4),
        ("cifar10_4k", (3, 32, 32), torch.uint8, 1, 16),
        ("cifar100_10k", (3, 32, 32), torch.uint8, 1, 16),
        ("svhn_1k", (3, 32, 32), torch.uint8, 1, 16),
        ("imagenet_10pct", (3, 224, 224), torch.uint8, 64, 80),  # the GPUs it is meant for (bf16, torchrun)
        ("resnet50_imagenet_unlabeled", (3, 224, 224), torch.uint8, 256, 80),
    ],
)
def test_no_preset_is_refused_on_the_machine_it_is_meant_for(monkeypatch, preset, shape, dtype, world, memory_gib):
    cfg = build_config(preset, ["train.precision=bf16"] if world > 1 else [])
    normalization = ((0.5,) * shape[0], (0.25,) * shape[0]) if dtype == torch.uint8 else None
    classes = 1000 if "imagenet" in preset else 100 if "100" in preset else 10
    data = _fake_bundle(shape, dtype, classes, normalization=normalization)
    monkeypatch.setattr(budget, "host_available", lambda: memory_gib * 1024**3)
    monkeypatch.setattr(budget, "device_available", lambda device: memory_gib * 1024**3)
    budget.check_step_memory(cfg, data, torch.device("cpu"), world_size=world)


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: 9 GB"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
        OSError(12, "Cannot allocate memory"),
    ],
)
def test_an_allocation_failure_anywhere_is_one_line_naming_the_setting(capsys, monkeypatch, tmp_path, error):
    from metapl.engine import loop

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(loop, "fit", fails)
    monkeypatch.setattr("metapl.experiment.fit", fails)
    line = one_line_error(capsys, *TRAIN, "--set", "data.mu=9", "--out", tmp_path / "run")
    assert line.startswith("metapl: error: out of memory") and "lower data.mu=9" in line


def test_an_allocation_failure_in_eval_names_the_batch_size(capsys, monkeypatch, finished):
    def fails(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000000 bytes")

    monkeypatch.setattr("metapl.inference.evaluation.evaluate", fails)
    line = one_line_error(capsys, "eval", finished, "--batch-size", "100000")
    assert "out of memory" in line and "--batch-size" in line


def test_other_runtime_errors_are_not_hidden(monkeypatch, tmp_path):
    def fails(*args, **kwargs):
        raise RuntimeError("a bug, not a memory problem")

    monkeypatch.setattr("metapl.experiment.fit", fails)
    with pytest.raises(RuntimeError, match="a bug"):
        main([*TRAIN, "--out", str(tmp_path / "run")])


# ================================================================================================ class 3
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", "1e39", "1" + "0" * 400])
@pytest.mark.parametrize("command", ["config", "train"])
def test_numeric_extremes_are_refused_in_one_line(capsys, tmp_path, value, command):
    out = tmp_path / "run"
    extra = [*TINY, "--out", out] if command == "train" else []
    line = one_line_error(capsys, command, "--preset", "twomoon", "--set", f"data.noise={value}", *extra)
    assert "data.noise=" in line and "finite number" in line
    assert not out.exists()


def test_a_validation_split_that_takes_every_example_is_one_line(capsys, tmp_path):
    line = one_line_error(
        capsys, "train", "--preset", "twomoon", *TINY, "--set", "data.val_per_class=1000", "--out", tmp_path / "r"
    )
    assert "data.val_per_class=1000 takes every labelable example" in line
    assert not (tmp_path / "r").exists()


def test_a_semi_supervised_run_without_unlabeled_examples_is_refused_before_writing(capsys, tmp_path):
    line = one_line_error(
        capsys, "train", "--preset", "twomoon", *TINY, "--set", "data.labeled_per_class=1000", "--out", tmp_path / "r"
    )
    assert "0 unlabeled examples" in line
    assert not (tmp_path / "r").exists()


def test_a_message_holding_a_line_break_stays_one_line(capsys, finished, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text('path\n"two\nlines.png"\n"next\x85line.png"\n')
    line = one_line_error(capsys, "predict", finished, listing, "--out", tmp_path / "p.csv")
    assert "two\\nlines.png" in line


def test_negative_zero_is_zero(capsys, tmp_path):
    succeeds(capsys, "train", "--preset", "twomoon", *TINY, "--set", "train.steps=1", "--set", "data.noise=-0.0",
             "--out", tmp_path / "run")  # fmt: skip


@pytest.mark.parametrize(
    "content, fragment",
    [
        ('{"labeled": [0, "a"], "unlabeled": [1], "validation": []}', 'labeled[1] is "a", not an integer index'),
        ('{"labeled": [0, 1.5], "unlabeled": [1], "validation": []}', "labeled[1] is 1.5, not an integer index"),
        ('{"labeled": [0, 1.0], "unlabeled": [1], "validation": []}', "labeled[1] is 1.0, not an integer index"),
        ('{"labeled": [true], "unlabeled": [1], "validation": []}', "labeled[0] is true, not an integer index"),
        ('{"labeled": [null], "unlabeled": [1], "validation": []}', "labeled[0] is null, not an integer index"),
        ('{"labeled": [[0]], "unlabeled": [1], "validation": []}', "labeled[0] is [0], not an integer index"),
        ('{"labeled": 3, "unlabeled": [1], "validation": []}', "labeled is a JSON number, not a list of indices"),
        ('{"labeled": "0,1", "unlabeled": [1], "validation": []}', "labeled is a JSON string, not a list"),
        ('{"labeled": {"0": 1}, "unlabeled": [1], "validation": []}', "labeled is a JSON object, not a list"),
        ('{"labeled": [0], "unlabeled": [1]}', "has no 'validation' list"),
        ('{"labeled": [0], "unlabeled": [1], "validation": [], "source": 3}', "'source' is not an object"),
        ("[[0], [1], []]", "holds a JSON list, not an object"),
        ('{"labeled": [0, 10000000000000000000000], "unlabeled": [1], "validation": []}', "outside the pool"),
        ("\xff\xfe", "cannot read split file"),
        ("", "cannot read split file"),
    ],
)
def test_split_files_of_the_wrong_shape_are_one_line_and_write_nothing(capsys, tmp_path, content, fragment):
    split = tmp_path / "splits.json"
    split.write_bytes(content.encode("latin-1"))
    out = tmp_path / "run"
    line = one_line_error(capsys, *TRAIN, "--set", f"data.split_file={split}", "--out", out)
    assert fragment in line and str(split) in line
    assert not out.exists()


def test_a_runs_own_split_file_of_the_wrong_shape_is_one_line_for_eval(capsys, run):
    (run / "splits.json").write_text('{"labeled": [0, 2.5], "unlabeled": [1], "validation": []}')
    assert "labeled[1] is 2.5, not an integer index" in one_line_error(capsys, "eval", run)


def _metrics(run: Path, content: bytes) -> None:
    (run / "metrics.jsonl").write_bytes(content)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("out=x.unknownformat", "names no image format"),
        ("out=noext", "has no suffix"),
        ("metrics=binary", "cannot read"),
        ("metrics=odd records", None),
        ("metrics=directory", "metrics.jsonl"),
        ("config=garbage", "config.yaml"),
        ("model=architecture", "does not fit the model of"),
        ("model=missing", "model.pt"),
        ("run=file", "is not a run directory"),
    ],
)
def test_bad_plot_inputs_are_one_line(capsys, tmp_path, damage, fragment):
    run = tmp_path / "moon"
    succeeds(capsys, "train", "--preset", "twomoon", *TINY, "--set", "train.steps=2", "--out", run)
    args: list[object] = ["plot", run]
    what, _, how = damage.partition("=")
    if what == "out":
        args += ["--out", tmp_path / how]
    elif how == "binary":
        _metrics(run, b"\xff\xfe\x00garbage\n")
        args += ["--kind", "curves"]
    elif how == "odd records":
        _metrics(
            run, b'[1, 2]\n{"phase": "train"}\n{"step": "x", "loss": 1}\n{"phase": "train", "step": 1, "a": "b"}\n'
        )
        args += ["--kind", "curves", "--out", tmp_path / "c.png"]
    elif how == "directory":
        (run / "metrics.jsonl").unlink()
        (run / "metrics.jsonl").mkdir()
        args += ["--kind", "curves"]
    elif what == "config":
        (run / "config.yaml").write_bytes(b"\x00\x01: [")
    elif how == "architecture":
        from metapl.models import create_model

        torch.save(create_model("mlp", 3, (2,), hidden=(7,)).state_dict(), run / "model.pt")
    elif how == "missing":
        (run / "model.pt").unlink()
    elif how == "file":
        args[1] = run / "config.yaml"
    if fragment is None:
        succeeds(capsys, *args)
        return
    assert fragment in one_line_error(capsys, *args)


# ================================================================================================ class 4
@pytest.fixture
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"00{i}.png")
    return folder


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("photos/000.png", "is inside the input folder"),
        ("photos/new.csv", "is inside the input folder"),
        ("photos/sub/new.csv", "is inside the input folder"),
        ("link-to-input", "is inside the input folder"),
        ("list.csv", "is the input file"),
        ("photos", "is a directory"),
        ("list.csv/p.csv", "lies under"),
    ],
)
def test_predict_never_writes_over_what_it_reads(capsys, finished, photos, target, fragment):
    tmp = photos.parent
    (tmp / "link-to-input").symlink_to(photos / "001.png")
    (tmp / "list.csv").write_text("path\nphotos/000.png\n")
    source = tmp / "list.csv" if target == "list.csv" else photos
    before = files(tmp)
    line = one_line_error(capsys, "predict", finished, source, "--out", tmp / target)
    assert fragment in line
    assert files(tmp) == before


def test_predict_never_writes_over_an_image_its_csv_names(capsys, finished, photos):
    listing = photos.parent / "list.csv"
    listing.write_text(f"path\n{photos / '000.png'}\nphotos/001.png\n")
    before = files(photos)
    elsewhere = photos.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "alias.png").symlink_to(photos / "001.png")
    for target in (photos / "000.png", elsewhere / "alias.png"):
        line = one_line_error(capsys, "predict", finished, listing, "--out", target)
        assert f"an image of the input CSV {listing}, which would be overwritten" in line
    assert files(photos) == before


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run on an image folder with the classes 'cat' and 'dog' (labels from a CSV with a BOM)."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("folder")
    _images(tmp / "images", {"cat": 4, "dog": 4})
    rows = [f"images/{name}/{i}.png,{name}" for name in ("cat", "dog") for i in range(4)]
    (tmp / "labels.csv").write_text("\ufeffpath,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    run = tmp / "run"
    assert main(folder_train(tmp / "labels.csv", run)) == 0
    return tmp, run


@pytest.mark.parametrize("command", ["predict", "export"])
def test_outputs_never_go_over_the_runs_data(capsys, folder_run, command):
    tmp, run = folder_run
    before = files(tmp / "images") | {"labels.csv": (tmp / "labels.csv").read_bytes()}
    for target, fragment in (
        (tmp / "labels.csv", "is the run's data (data.root="),
        (tmp / "images" / "cat" / "0.png", "an image of the run's data"),
    ):
        args = ["predict", run, tmp / "images" / "dog" / "1.png"] if command == "predict" else ["export", run]
        if command == "export":
            args += ["--format", "safetensors"]
        line = one_line_error(capsys, *args, "--out", target)
        assert fragment in line
    assert files(tmp / "images") | {"labels.csv": (tmp / "labels.csv").read_bytes()} == before


def test_plot_never_writes_over_another_runs_files(capsys, finished, run):
    before = files(run)
    line = one_line_error(capsys, "plot", finished, run, "--out", run / "classes.json")
    assert "would overwrite the run's own classes.json" in line
    assert files(run) == before


# ================================================================================================ class 5
def test_a_changed_data_set_is_one_line_with_the_choices_and_the_advice_works(capsys, tmp_path):
    _images(tmp_path / "images", {"a": 5, "b": 5})
    run = tmp_path / "run"
    args = folder_train(tmp_path / "images", run)
    succeeds(capsys, *args)
    saved = json.loads((run / "splits.json").read_text())
    assert saved["source"]["pool"] == 10 and "files_sha256" in saved["source"]
    moved = tmp_path / "moved.png"
    shutil.move(tmp_path / "images" / "a" / "2.png", moved)  # as "remove the file" advises
    before = files(run)
    for command in (
        args,
        ["eval", run],
        ["predict", run, tmp_path / "images" / "b" / "0.png", "--out", tmp_path / "p.csv"],
        ["export", run, "--format", "safetensors", "--out", tmp_path / "m.safetensors"],
    ):
        line = one_line_error(capsys, *command)
        assert "the data set changed since" in line and "had 10 examples and now has 9" in line, line
        assert "restore the data as it was" in line and "--restart" in line
    assert files(run) == before
    shutil.move(moved, tmp_path / "images" / "a" / "2.png")  # choice 1: restore the file
    succeeds(capsys, "eval", run)
    (tmp_path / "images" / "a" / "2.png").unlink()  # choice 2: a new run on the data as it is
    succeeds(capsys, *args, "--restart")
    assert json.loads((run / "splits.json").read_text())["source"]["pool"] == 9
    succeeds(capsys, "eval", run)


def test_an_image_that_cannot_be_decoded_names_both_ways_on(tmp_path):
    from metapl.data.folders import decode

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError) as refused:
        decode(str(tmp_path / "broken.png"))
    message = str(refused.value)
    assert "replace it with an intact copy and run the same command" in message
    assert "remove it and start the run over (metapl train --restart)" in message


def test_a_resumed_run_uses_its_saved_split_not_a_new_draw(capsys, run):
    saved = json.loads((run / "splits.json").read_text())
    saved["labeled"] = saved["labeled"][::-1]  # the same indices in another order than the seed draws
    (run / "splits.json").write_text(json.dumps(saved))
    succeeds(capsys, *TRAIN, "--set", "train.steps=2", "--out", run)
    assert json.loads((run / "splits.json").read_text())["labeled"] == saved["labeled"]


def test_old_split_files_without_a_fingerprint_still_load(capsys, run, tmp_path):
    saved = json.loads((run / "splits.json").read_text())
    del saved["source"]
    (run / "splits.json").write_text(json.dumps(saved))
    (run / "classes.json").unlink()  # and a run from before classes.json
    succeeds(capsys, "eval", run)
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    succeeds(capsys, "predict", run, rows, "--out", tmp_path / "p.csv")
    succeeds(capsys, *TRAIN, "--out", run)  # resumes from its checkpoint


def test_the_fingerprint_sees_labels_files_and_counts():
    labels = np.array([0, 1, 0, 1])
    base = pool_fingerprint(labels, ["a.png", "b.png", "c.png", "d.png"])
    check_source(base, pool_fingerprint(labels, ["a.png", "b.png", "c.png", "d.png"]), "s.json")
    check_source(None, base, "s.json")  # no fingerprint: an old file
    for changed, fragment in (
        (pool_fingerprint(labels[:3], ["a.png", "b.png", "c.png"]), "had 4 examples and now has 3"),
        (pool_fingerprint(labels, ["a.png", "b.png", "c.png", "e.png"]), "list of image files differs"),
        (pool_fingerprint(np.array([0, 1, 1, 1]), ["a.png", "b.png", "c.png", "d.png"]), "the labels differ"),
        (pool_fingerprint(labels, ["a.png", "b.png", "c.png", "d.png"], labelable=2), "2 are"),
    ):
        with pytest.raises(DataError, match=fragment):
            check_source(base, changed, "s.json")


def test_a_split_file_of_another_data_set_is_refused(capsys, finished, tmp_path):
    moon = tmp_path / "moon"
    succeeds(capsys, "train", "--preset", "twomoon", *TINY, "--set", "train.steps=1", "--out", moon)
    line = one_line_error(capsys, *TRAIN, "--set", f"data.split_file={moon / 'splits.json'}", "--out", tmp_path / "r")
    assert "the data set changed since" in line and "had 2000 examples and now has 1297" in line


# ================================================================================================ class 6
def _predictions(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return list(rows[0]), rows


def test_a_csv_with_a_byte_order_mark_trains_and_class_names_come_back(capsys, folder_run, tmp_path):
    images, run = folder_run
    assert json.loads((run / "classes.json").read_text()) == {"names": ["cat", "dog"]}
    out = tmp_path / "p.csv"
    succeeds(capsys, "predict", run, images / "images" / "dog", "--out", out)
    columns, rows = _predictions(out)
    assert columns[:3] == ["input", "class", "label"] and columns[3:] == ["prob_cat", "prob_dog"]
    assert all(r["label"] == ["cat", "dog"][int(r["class"])] for r in rows)


def test_numeric_labels_keep_their_values_as_names(capsys, tmp_path):
    _images(tmp_path / "images", {"x": 4, "y": 4})
    rows = [f"images/x/{i}.png,0" for i in range(4)] + [f"images/y/{i}.png,99" for i in range(4)]
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    succeeds(capsys, *folder_train(tmp_path / "labels.csv", run))
    assert json.loads((run / "classes.json").read_text()) == {"names": ["0", "99"]}
    succeeds(capsys, "predict", run, tmp_path / "images" / "y", "--out", tmp_path / "p.csv")
    columns, rows = _predictions(tmp_path / "p.csv")
    assert "label" in columns and {r["label"] for r in rows} <= {"0", "99"}


def test_runs_without_named_classes_keep_their_prediction_columns(capsys, finished, tmp_path):
    assert json.loads((finished / "classes.json").read_text()) == {"names": [str(k) for k in range(10)]}
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    succeeds(capsys, "predict", finished, rows, "--out", tmp_path / "p.csv")
    columns, _ = _predictions(tmp_path / "p.csv")
    assert columns == ["input", "class", *(f"prob_{k}" for k in range(10))]


def test_a_damaged_classes_json_is_one_line(capsys, run, tmp_path):
    (run / "classes.json").write_text('{"names": ["only one"]}')
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    line = one_line_error(capsys, "predict", run, rows, "--out", tmp_path / "p.csv")
    assert "classes.json does not hold the names of the run's 10 classes" in line


# ================================================================================================ class 7
def test_infinite_learning_rates_are_refused(capsys):
    for setting in ("teacher.lr=inf", "student.lr=.inf", "finetune.lr=nan", "teacher.weight_decay=1e308"):
        assert "finite number" in one_line_error(capsys, "config", "--preset", "digits", "--set", setting)


def test_config_shows_no_derived_step_counts(capsys):
    shown = yaml.safe_load(succeeds(capsys, "config", "--preset", "digits"))
    assert "total_steps" not in shown["teacher"] and "total_steps" not in shown["student"]


def test_out_naming_an_existing_file_says_so(capsys, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    assert "is an existing file, not a directory" in one_line_error(capsys, *TRAIN, "--out", existing)
    assert existing.read_text() == "mine"


@pytest.mark.parametrize("fmt", ["safetensors", "onnx"])
def test_an_export_refused_for_permissions_says_so_and_suggests_no_other_format(capsys, monkeypatch, finished, fmt,
                                                                                 tmp_path):  # fmt: skip
    pytest.importorskip("safetensors" if fmt == "safetensors" else "onnxruntime")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked" / f".m.{fmt}.tmp"))

    if fmt == "onnx":
        monkeypatch.setattr(torch.onnx, "export", denied)
    else:
        monkeypatch.setattr(Path, "write_bytes", denied)
    line = one_line_error(capsys, "export", finished, "--format", fmt, "--out", tmp_path / "locked" / f"m.{fmt}")
    assert "Permission denied" in line and "check the path and its permissions" in line
    assert "--format" not in line


def test_split_check_message_for_a_fractional_index_in_a_reused_split(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text('{"labeled": [1.25], "unlabeled": [0], "validation": []}')
    with pytest.raises(DataError, match=r"labeled\[0\] is 1.25, not an integer index"):
        Split.load(path)
