"""Memory is bounded before it is allocated, for every size setting: a brace pattern in
data.unlabeled_shards is counted before it is expanded, an image whose header declares too many pixels is refused
before it is decoded (PIL's decompression-bomb limit as an error, not a warning), the reduced teacher's
method.hidden and method.feedback.shuffle_buffer and a big model.teacher_name are checked against the memory there is,
and the advice names the setting that was set, not data.mu. Each refusal is one line, exit 2."""

from __future__ import annotations

import io
import struct
import tarfile
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from cli_helpers import QUICK_DIGITS, one_line_error
from fake_datasets import write_class_folders
from PIL import Image

from metapl.commands.cli import main
from metapl.commands.predict_inputs import load_image
from metapl.commands.shard import check_image
from metapl.core.errors import ConfigError, DataError
from metapl.parts.data import build_data, folders
from metapl.parts.data.folders import decode
from metapl.parts.data.shards import MAX_SHARDS, count_braces, decode_bytes, expand_braces
from metapl.parts.data.splits import Split
from metapl.run import budget
from metapl.run.budget import allocation_failure
from metapl.run.config import build_config


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height pixels, with (almost) no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def digits_store(digits_run, tmp_path_factory) -> Path:
    """The label store of the shared digits run (for reduced_mpl)."""
    labels = tmp_path_factory.mktemp("bounds") / "labels"
    assert main(["label", str(digits_run), "--out", str(labels), "--no-progress"]) == 0
    return labels


# ------------------------------------------------------------------------------------------------ shard patterns
def test_brace_patterns_are_counted_without_expanding():
    assert count_braces("u-{0..1}-{a,b,c}.tar") == 6 == len(expand_braces("u-{0..1}-{a,b,c}.tar"))
    assert count_braces("u-{009..000}.tar") == 10 and count_braces("plain.tar") == 1
    assert len(expand_braces(f"u-{{1..{MAX_SHARDS}}}.tar")) == MAX_SHARDS  # the limit itself is allowed


@pytest.mark.parametrize("pattern", ["u-{0..999999999999}.tar", "u-{0..99999}-{0..99}.tar", "{0..9}" * 40])
def test_huge_brace_pattern_is_refused_in_one_line_at_once(tmp_path, capsys, pattern):
    write_class_folders(tmp_path / "labeled", ["a", "b"], per_class=3, side=16)
    shards = str(tmp_path / pattern)
    sets = ["data.name=folder", f"data.root={tmp_path / 'labeled'}", f"data.unlabeled_shards={shards}"]
    sets += ["data.labeled_selection=all", "data.val_per_class=1", "data.batch_size=2", "data.workers=0"]
    started = time.monotonic()
    line = one_line_error(capsys, *(["train", "--preset", "cifar10_4k", "--out", str(tmp_path / "out")] + _sets(sets)))
    assert time.monotonic() - started < 30  # counted, not listed: a listing would take hours and all memory
    assert f"data.unlabeled_shards={shards!r} names {count_braces(pattern):,} shards" in line
    assert f"({MAX_SHARDS:,})" in line and not (tmp_path / "out").exists()


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# ------------------------------------------------------------------------------------------------ image headers
@pytest.mark.parametrize("side", [10_000, 100_000])  # 1.1× PIL's limit (where PIL only warns) and 112×
def test_image_declaring_too_many_pixels_is_refused_before_decoding(tmp_path, side):
    bomb = png_header(side, side)
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning may not escape as a warning either
        for read in (
            lambda: decode(str(path)),
            lambda: load_image(path, (1, 8, 8)),
            lambda: check_image(bomb, str(path)),
        ):
            with pytest.raises(DataError, match=f"{path}.*exceeds limit of .* pixels"):
                read()
        with pytest.raises(DataError, match=r"000000007\.png in shard s\.tar .*exceeds limit"):
            decode_bytes(bomb, 3, "000000007.png in shard s.tar")


def test_image_size_is_bounded_even_when_pil_limit_is_off(tmp_path, monkeypatch):

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # another library turned PIL's check off
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(100_000, 100_000))
    with pytest.raises(DataError, match=r"bomb\.png .*declares 100000x100000 = 10,000,000,000 pixels"):
        decode(str(path))
    assert folders.MAX_IMAGE_PIXELS == 89_478_485  # PIL's own default


def test_shard_command_refuses_a_bomb_naming_the_file(tmp_path, capsys):
    source = tmp_path / "images"
    write_class_folders(source, ["a"], per_class=2, side=8)
    (source / "a" / "bomb.png").write_bytes(png_header(50_000, 50_000))
    line = one_line_error(capsys, *["shard", str(source), "--out", str(tmp_path / "shards"), "--no-progress"])
    assert f"{source / 'a' / 'bomb.png'}" in line and "exceeds limit" in line
    assert not list((tmp_path / "shards").glob("*.tar*")) and not list((tmp_path / "shards").glob(".*.partial"))


def test_predict_refuses_a_bomb_naming_the_file(digits_run, tmp_path, capsys):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20_000, 20_000))
    line = one_line_error(capsys, *["predict", str(digits_run), str(path), "--out", str(tmp_path / "p.csv")])
    assert f"cannot read image {path}" in line and "exceeds limit" in line


def test_bomb_in_a_shard_names_the_member(tmp_path):
    from metapl.parts.data.shards import ShardReader

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        data = png_header(30_000, 30_000)
        info = tarfile.TarInfo("000000003.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    reader = ShardReader(str(shard), 0)
    sample = reader.next()
    assert sample is not None  # the shard's one sample
    name, data, _ = sample
    reader.close()
    with pytest.raises(DataError, match=rf"000000003\.png in shard {shard} .*exceeds limit"):
        decode_bytes(data, 3, f"{name} in shard {shard}")


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "method, setting",
    [
        ("reduced_mpl", "method.hidden"),
        ("reduced_mpl", "method.feedback.shuffle_buffer"),
        ("mpl", "method.feedback.shuffle_buffer"),  # the feedback's: every teacher's
    ],
)
def test_reduced_teacher_sizes_are_checked_before_allocation(digits_store, tmp_path, capsys, method, setting):
    argv = ["train", "--preset", "digits", "--method", method, "--out", str(tmp_path / "out")]
    stored = [f"data.label_dir={digits_store}"] if method == "reduced_mpl" else []
    argv += _sets([*stored, f"{setting}=1000000000000", "train.steps=2"])
    line = one_line_error(capsys, *(argv + ["--no-progress"]))
    assert line.startswith(f"metapl: error: {setting}=1000000000000 needs at least ")
    assert f"lower {setting} (more than " in line and "data.mu" not in line
    assert not (tmp_path / "out").exists()


def test_big_teacher_name_is_checked_before_allocation(tmp_path, capsys, monkeypatch):
    # 16 MiB: the mlp student (26k parameters) fits, a wrn28_2 teacher (1.5M parameters, 3 copies) does not
    monkeypatch.setattr(budget, "host_available", lambda: 16 * 1024**2)
    argv = ["train", "--preset", "digits", "--out", str(tmp_path / "out"), "--set", "model.teacher_name=wrn28_2"]
    line = one_line_error(capsys, *(argv + ["--no-progress"]))
    assert "with model.teacher_name='wrn28_2' makes a student of" in line
    assert "or choose a smaller model.teacher_name" in line and not (tmp_path / "out").exists()


def test_teacher_that_cannot_take_the_inputs_is_one_line(tmp_path, capsys):
    pytest.importorskip("timm")
    argv = ["train", "--preset", "digits", "--out", str(tmp_path / "out"), "--no-progress"]
    line = one_line_error(capsys, *(argv + ["--set", "model.teacher_name=timm/vit_tiny_patch16_224"]))
    assert "model.teacher_name='timm/vit_tiny_patch16_224' does not fit data.name='digits'" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["method.hidden=4096"], "lower method.hidden=4096"),
        (["method.shuffle_buffer=9", "train.steps=3"], "lower method.shuffle_buffer=9"),
        (["model.teacher_name=wrn28_2"], "lower model.teacher_name=wrn28_2"),
        (["data.mu=70"], "lower data.mu=70"),
    ],
)
def test_allocation_failure_names_the_setting_that_was_set(overrides, named):
    line = allocation_failure(MemoryError("can't allocate memory"), "train", overrides)
    assert line is not None and named in line
    if "data.mu" not in named:
        assert "data.mu" not in line


def test_refusals_are_config_errors():
    with pytest.raises(ConfigError, match="names 10,000,000 shards"):
        expand_braces("x-{0..9999999}.tar")


# ----------------------------------------------------------------------------------- step memory
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


@pytest.mark.parametrize("network", ["teacher", "student"])
def test_an_adam_network_is_counted_with_its_second_moment(monkeypatch, network):
    """Adam keeps two moments per weight where SGD keeps one momentum: the estimate grows by one copy of the
    network that uses it."""
    weights: dict[str, tuple[int, int]] = {}

    def refuse(cfg, profile, teacher, need, available, device):
        net = teacher if network == "teacher" else profile
        weights[getattr(cfg, network).optimizer] = (need, net.parameters)
        raise ConfigError("refused")

    monkeypatch.setattr(budget, "host_available", lambda: 100 * 1024)  # room for the h buffer, not the networks
    monkeypatch.setattr(budget, "_refuse_network", refuse)
    signal = [] if network == "teacher" else ["method.feedback.teacher_signal=none"]
    for optimizer in ("sgd", "adam"):
        cfg = build_config("digits", [*signal, f"{network}.optimizer={optimizer}"], "mpl")
        with pytest.raises(ConfigError, match="refused"):
            budget.check_step_memory(cfg, build_data(cfg.data, 0), torch.device("cpu"))
    (sgd, parameters), (adam, _) = weights["sgd"], weights["adam"]
    assert adam - sgd == 4 * parameters > 0  # float32


def test_an_evaluation_batch_that_cannot_fit_names_train_eval_batch_size(monkeypatch):

    cfg = build_config("digits", ["model.hidden=[100000]", "data.mu=1", "train.eval_batch_size=5000"])
    data = build_data(cfg.data, 0)
    profile = budget.profile_network(cfg, data)
    assert profile is not None  # an MLP builds on the meta device
    weights = profile.parameters * 4 * (3 * 2 + 1)
    evaluation = weights + 500 * (64 * 4 + profile.widest_per_example * 4)  # 500: the test set, the larger
    monkeypatch.setattr(budget, "host_available", lambda: evaluation - 1)
    with pytest.raises(ConfigError, match=r"train.eval_batch_size=5000 needs at least .* lower train.eval_batch_size"):
        budget.check_step_memory(cfg, data, torch.device("cpu"))
    cfg.train.eval_batch_size = 100
    budget.check_step_memory(cfg, data, torch.device("cpu"))


def _fake_bundle(shape, dtype, classes=10, examples=1000, normalization=None):
    from metapl.parts.data.loaders import DataBundle

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
    from metapl.run import loop

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(loop, "fit", fails)
    monkeypatch.setattr("metapl.run.experiment.fit", fails)
    line = one_line_error(capsys, *QUICK_DIGITS, "--set", "data.mu=9", "--out", tmp_path / "run")
    assert line.startswith("metapl: error: out of memory") and "lower data.mu=9" in line


def test_an_allocation_failure_in_eval_names_the_batch_size(capsys, monkeypatch, digits_run):
    def fails(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1000000 bytes")

    monkeypatch.setattr("metapl.commands.evaluate.evaluate", fails)
    line = one_line_error(capsys, "eval", digits_run, "--batch-size", "100000")
    assert "out of memory" in line and "--batch-size" in line


def test_other_runtime_errors_are_not_hidden(monkeypatch, tmp_path):
    def fails(*args, **kwargs):
        raise RuntimeError("a bug, not a memory problem")

    monkeypatch.setattr("metapl.run.experiment.fit", fails)
    with pytest.raises(RuntimeError, match="a bug"):
        main([*QUICK_DIGITS, "--out", str(tmp_path / "run")])
