"""Memory is bounded before it is allocated, for every size setting (issue #21, item 5): a brace pattern in
data.unlabeled_shards is counted before it is expanded, an image whose header declares too many pixels is refused
before it is decoded (PIL's decompression-bomb limit as an error, not a warning), the reduced teacher's
method.hidden and method.shuffle_buffer and a big model.teacher_name are checked against the memory there is,
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
from fake_datasets import write_class_folders

from metapl.cli import main
from metapl.data import folders
from metapl.data.folders import decode
from metapl.data.shards import MAX_SHARDS, count_braces, decode_bytes, expand_braces
from metapl.engine import budget
from metapl.engine.budget import allocation_failure
from metapl.errors import ConfigError, DataError
from metapl.inference.inputs import load_image
from metapl.sharding import check_image


def refused(argv: list[str], capsys) -> str:
    """The one line `metapl ARGV` ends with: exit 2, one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("metapl: error: ") and "Traceback" not in err, err
    return lines[0]


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height pixels, with (almost) no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """A finished 2-step digits run and its label store (for reduced_mpl)."""
    root = tmp_path_factory.mktemp("bounds")
    base = ["--no-progress", "--no-tensorboard", "--set", "train.steps=2", "--set", "finetune.steps=1"]
    assert main(["train", "--preset", "digits", "--out", str(root / "run"), *base]) == 0
    assert main(["label", str(root / "run"), "--out", str(root / "labels"), "--no-progress"]) == 0
    return root


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
    line = refused(["train", "--preset", "cifar10_4k", "--out", str(tmp_path / "out")] + _sets(sets), capsys)
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
    from PIL import Image

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
    line = refused(["shard", str(source), "--out", str(tmp_path / "shards"), "--no-progress"], capsys)
    assert f"{source / 'a' / 'bomb.png'}" in line and "exceeds limit" in line
    assert not list((tmp_path / "shards").glob("*.tar*")) and not list((tmp_path / "shards").glob(".*.partial"))


def test_predict_refuses_a_bomb_naming_the_file(digits_run, tmp_path, capsys):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header(20_000, 20_000))
    line = refused(["predict", str(digits_run / "run"), str(path), "--out", str(tmp_path / "p.csv")], capsys)
    assert f"cannot read image {path}" in line and "exceeds limit" in line


def test_bomb_in_a_shard_names_the_member(tmp_path):
    from metapl.data.shards import ShardReader

    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        data = png_header(30_000, 30_000)
        info = tarfile.TarInfo("000000003.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    reader = ShardReader(str(shard), 0)
    name, data, _ = reader.next()
    reader.close()
    with pytest.raises(DataError, match=rf"000000003\.png in shard {shard} .*exceeds limit"):
        decode_bytes(data, 3, f"{name} in shard {shard}")


# ------------------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("setting", ["method.hidden", "method.shuffle_buffer"])
def test_reduced_teacher_sizes_are_checked_before_allocation(digits_run, tmp_path, capsys, setting):
    argv = ["train", "--preset", "digits", "--method", "reduced_mpl", "--out", str(tmp_path / "out")]
    argv += _sets([f"data.label_dir={digits_run / 'labels'}", f"{setting}=1000000000000", "train.steps=2"])
    line = refused(argv + ["--no-progress"], capsys)
    assert line.startswith(f"metapl: error: {setting}=1000000000000 needs at least ")
    assert f"lower {setting} (more than " in line and "data.mu" not in line
    assert not (tmp_path / "out").exists()


def test_big_teacher_name_is_checked_before_allocation(tmp_path, capsys, monkeypatch):
    # 16 MiB: the mlp student (26k parameters) fits, a wrn28_2 teacher (1.5M parameters, 3 copies) does not
    monkeypatch.setattr(budget, "host_available", lambda: 16 * 1024**2)
    argv = ["train", "--preset", "digits", "--out", str(tmp_path / "out"), "--set", "model.teacher_name=wrn28_2"]
    line = refused(argv + ["--no-progress"], capsys)
    assert "with model.teacher_name='wrn28_2' makes a student of" in line
    assert "or choose a smaller model.teacher_name" in line and not (tmp_path / "out").exists()


def test_teacher_that_cannot_take_the_inputs_is_one_line(tmp_path, capsys):
    pytest.importorskip("timm")
    argv = ["train", "--preset", "digits", "--out", str(tmp_path / "out"), "--no-progress"]
    line = refused(argv + ["--set", "model.teacher_name=timm/vit_tiny_patch16_224"], capsys)
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
