"""No traceback, one line each: every number of the command line at its extremes, --download
without a network, a full disk, an image that cannot be decoded, a path too long for the OS, weights with NaN or
integer parameters, and settings the chosen method does not read. Each ends in exit 2 and one line on stderr
that starts 'metapl: error:' and names the value (or file, or key) to fix."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import QUICK_DIGITS, TINY, one_line_error, snapshot, succeeds
from fake_datasets import write_class_folders

from metapl.commands.cli import build_parser, main
from metapl.core import network
from metapl.core.errors import ConfigError, DataError, disk_full, shorten
from metapl.core.settings import NAME_MAX, PATH_MAX
from metapl.parts.data import build_data
from metapl.parts.data.shards import decode_bytes
from metapl.run.config import build_config
from metapl.run.experiment import run_experiment

EXTREMES = (-1, 0, 10**30)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """A finished 2-step digits run, 4 small images, and a corrupt one."""
    root = tmp_path_factory.mktemp("one_line")
    base = ["--no-progress", "--no-tensorboard", "--set", "train.steps=2", "--set", "finetune.steps=1"]
    assert main(["train", "--preset", "digits", "--out", str(root / "run"), *base]) == 0
    write_class_folders(root / "images", ["a", "b"], per_class=2, side=8)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


# ------------------------------------------------------------------------------------------------ numbers
def _int_options() -> set[tuple[str, str]]:
    """(command, option) of every integer option of the command line."""
    commands = build_parser()._defaults["commands"]
    return {
        (name, action.option_strings[0])
        for name, sub in commands.items()
        for action in sub._actions
        if action.type is int and action.option_strings
    }


def _argv(command: str, option: str, value: int, files: Path, out: Path) -> list:
    run = files / "run"
    base = {
        "demo": ["demo", "--out", out, "--no-progress"] + (["--steps", 1] if option != "--steps" else []),
        "eval": ["eval", run],
        "label": ["label", run, "--out", out, "--no-progress"],
        "shard": ["shard", files / "images", "--out", out, "--no-progress"],
    }[command]
    return [*base, option, value]


# Values that are fine (exit 0) for these options; every other one must be refused in one line.
VALID = {("demo", "--seed", 0), ("label", "--top-k", 0), ("shard", "--seed", 0)}
VALID |= {(c, o, 10**30) for c, o in [("eval", "--batch-size"), ("label", "--top-k")]}
VALID |= {(c, o, 10**30) for c, o in [("label", "--shard-size"), ("label", "--batch-size"), ("shard", "--shard-size")]}
VALID |= {("shard", "--shuffle-buffer", 10**30)}  # a buffer beyond the source's size: one block, shuffled whole
COVERED = {
    ("demo", "--steps"),
    ("demo", "--seed"),
    ("eval", "--batch-size"),
    ("label", "--top-k"),
    ("label", "--shard-size"),
    ("label", "--batch-size"),
    ("shard", "--shard-size"),
    ("shard", "--seed"),
    ("shard", "--workers"),
    ("shard", "--shuffle-buffer"),
}


def test_every_integer_option_is_covered():
    assert _int_options() == COVERED  # a new integer option: add it to COVERED (and VALID where it is fine)


@pytest.mark.parametrize(
    "command, option, value",
    [
        pytest.param(c, o, v, marks=[pytest.mark.slow] if (c, o, v) == ("demo", "--seed", 0) else [])
        for c, o in sorted(COVERED)
        for v in EXTREMES
    ],
)
def test_integer_options_at_their_extremes(files, tmp_path, capsys, command, option, value):
    argv = _argv(command, option, value, files, tmp_path / "out")
    if (command, option, value) in VALID:
        assert main([str(a) for a in argv]) == 0
        assert "Traceback" not in capsys.readouterr().err
        return
    line = one_line_error(capsys, *argv)
    assert str(value) in line and (option in line or "train." in line)


def test_shard_seed_minus_one_is_one_line(files, tmp_path, capsys):
    line = one_line_error(capsys, *["shard", files / "images", "--out", tmp_path / "out", "--seed", "-1"])
    assert line == "metapl: error: --seed -1 is impossible; it must be in [0, 2**32)"
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ network
@pytest.fixture
def offline(monkeypatch):
    """Every connection goes through a proxy on a closed local port: refused at once, whatever the machine has."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_probe_says_why_a_server_cannot_be_reached(offline):
    reason = network.unreachable("https://example.org/file")
    assert reason is not None and reason.startswith("127.0.0.1 (")


def test_dataset_download_offline_is_one_line_at_once(offline, tmp_path, capsys):
    started = time.monotonic()
    argv = ["train", "--preset", "svhn_1k", "--download", "--set", f"data.root={tmp_path / 'svhn'}"]
    line = one_line_error(capsys, *[*argv, "--out", tmp_path / "run", "--no-progress"])
    assert time.monotonic() - started < 60
    assert line.startswith("metapl: error: no network: --download cannot reach the server of svhn (")
    assert f"data.root={tmp_path / 'svhn'}" in line and not (tmp_path / "run").exists()


def test_weights_download_offline_is_one_line_at_once(offline, monkeypatch):
    pytest.importorskip("timm")
    from metapl.core.errors import ConfigError
    from metapl.parts.models import timm_models

    monkeypatch.setattr(timm_models, "cached_weights", lambda rest: None)  # as on a machine without them
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^no network: --download cannot reach 127\.0\.0\.1 \(.*timm/resnet18"):
        timm_models.download_weights("resnet18")
    assert time.monotonic() - started < 20  # the hub's client alone retries for about a minute


# ------------------------------------------------------------------------------------------------ full disk
@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only): a disk that fills up."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)  # lazy: a writer torch left open may hold it


def _fill(disk: Path, leave: int = 2048) -> None:
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("command", ["train", "label", "predict", "export", "plot", "shard"])
def test_full_disk_is_one_line_naming_the_path(files, tiny_disk, capsys, command):
    out = tiny_disk / "out"
    run = files / "run"
    argv = {
        "train": ["train", "--preset", "digits", "--out", out, "--no-progress", "--set", "train.steps=2"],
        "label": ["label", run, "--out", out, "--no-progress"],
        "predict": ["predict", run, files / "images" / "a" / "0.png", "--out", out],
        "export": ["export", run, "--format", "safetensors", "--out", out],
        "plot": ["plot", run, "--out", tiny_disk / "curves.png"],
        "shard": ["shard", files / "images", "--out", out, "--no-progress"],
    }[command]
    if command != "train":  # the run's own small files fit; its first checkpoint does not
        _fill(tiny_disk)
    line = one_line_error(capsys, *argv)
    assert "no space left on device" in line and str(tiny_disk) in line


def test_short_write_on_a_full_disk_counts_as_disk_full(tiny_disk):
    _fill(tiny_disk, leave=0)
    with pytest.raises(RuntimeError) as raised:
        torch.save({"x": torch.zeros(10_000)}, tiny_disk / "x.pt")  # torch's words: "unexpected pos"
    assert disk_full(raised.value, tiny_disk / "x.pt")
    assert not disk_full(RuntimeError("unexpected pos 1 vs 2"), Path("/"))  # a disk with room: something else


# ------------------------------------------------------------------------------------------------ images
def test_undecodable_image_names_its_file(files, tmp_path, capsys):
    line = one_line_error(capsys, *["predict", files / "run", files / "broken.png", "--out", tmp_path / "p.csv"])
    assert f"cannot read image {files / 'broken.png'}" in line
    source = tmp_path / "source"
    shutil.copytree(files / "images", source)
    shutil.copy(files / "broken.png", source / "a" / "broken.png")
    line = one_line_error(capsys, *["shard", source, "--out", tmp_path / "shards", "--no-progress"])
    assert f"cannot read image {source / 'a' / 'broken.png'}" in line


def test_undecodable_shard_member_is_named():
    with pytest.raises(DataError, match=r"cannot decode image 000000042\.jpg in shard u-3\.tar \("):
        decode_bytes(b"not an image", 3, "000000042.jpg in shard u-3.tar")


# ------------------------------------------------------------------------------------------------ long paths
LONG = "/tmp/" + "/".join(["d" * 200] * 25)  # 5,000 characters, each name within NAME_MAX
LONG_NAME = "/tmp/" + "n" * (NAME_MAX + 1)


@pytest.mark.parametrize("path", [LONG, LONG_NAME])
@pytest.mark.parametrize("command", ["train", "label", "shard", "predict", "export", "plot", "demo"])
def test_too_long_out_names_the_option_shortened(files, capsys, command, path):
    run = files / "run"
    argv = {
        "train": ["train", "--preset", "digits"],
        "label": ["label", run],
        "shard": ["shard", files / "images"],
        "predict": ["predict", run, files / "images" / "a" / "0.png"],
        "export": ["export", run, "--format", "safetensors"],
        "plot": ["plot", run],
        "demo": ["demo"],
    }[command]
    line = one_line_error(capsys, *[*argv, "--out", path])
    assert line.startswith(f"metapl: error: --out={shorten(path)!r} is too long for the file system")
    assert len(line) < 400 and not os.path.exists(path)


@pytest.mark.parametrize("key", ["data.root", "data.split_file", "data.test_dir", "data.label_dir"])
def test_too_long_path_setting_names_its_key(tmp_path, capsys, key):
    folder = ["--set", "data.name=folder"] if key == "data.test_dir" else []  # a key of the folder data set's own
    line = one_line_error(
        capsys, *["train", "--preset", "digits", "--out", tmp_path / "run", *folder, "--set", f"{key}={LONG}"]
    )
    assert line.startswith(f"metapl: error: {key}={shorten(LONG)!r} is too long") and len(line) < 400
    assert f"at most {PATH_MAX - 1:,}" in line


def test_too_long_positional_path_names_it(capsys):
    line = one_line_error(capsys, *["eval", LONG])
    assert line.startswith("metapl: error: RUN=") and "too long" in line


# ------------------------------------------------------------------------------------------------ weights
def _poisoned(files: Path, tmp_path: Path, key: str, value: torch.Tensor) -> Path:
    state = torch.load(files / "run" / "model.pt", weights_only=True)
    state[key] = value
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_weights_are_blamed_on_the_file(files, tmp_path, capsys, bad):
    weight = torch.zeros(256, 64)
    weight[3, 5] = bad
    path = _poisoned(files, tmp_path, "net.1.weight", weight)
    argv = ["label", "mlp", "--preset", "digits", "--weights", path, "--out", tmp_path / "labels", "--no-progress"]
    line = one_line_error(capsys, *argv)
    assert f"{path}: net.1.weight holds 1 NaN or infinite value" in line
    assert "teacher.lr" not in line and "student.lr" not in line and not (tmp_path / "labels").exists()


def test_nonfinite_weights_of_a_run_are_blamed_on_its_file(files, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(files / "run", run)
    weight = torch.full((10,), float("nan"))
    torch.save({**torch.load(run / "model.pt", weights_only=True), "net.6.bias": weight}, run / "model.pt")
    line = one_line_error(capsys, *["eval", run])
    assert f"{run / 'model.pt'}: net.6.bias holds 10 NaN or infinite values" in line


def test_integer_weights_are_refused_naming_file_and_key(files, tmp_path, capsys):
    path = _poisoned(files, tmp_path, "net.3.weight", torch.ones(256, 256, dtype=torch.int64))
    argv = ["label", "mlp", "--preset", "digits", "--weights", path, "--out", tmp_path / "labels", "--no-progress"]
    line = one_line_error(capsys, *argv)
    assert f"{path}: net.3.weight is stored as int64" in line


def test_integer_weights_are_refused_by_the_model_check():
    from metapl.core.checkpoint import state_mismatch

    model = torch.nn.BatchNorm1d(3)  # running_mean is a buffer, not named weight/bias: the model knows its type
    state = {**model.state_dict(), "running_mean": torch.zeros(3, dtype=torch.int32)}
    assert state_mismatch(model, state) == "running_mean is stored as int32 where the model needs floating point"


# ------------------------------------------------------------------------------------------------ unread settings
@pytest.mark.parametrize(
    "method, key",
    [("mpl", "data.label_dir"), ("uda", "data.label_dir"), ("supervised", "data.unlabeled_dir")],
)
def test_setting_the_method_does_not_read_is_refused(tmp_path, capsys, method, key):
    argv = ["train", "--preset", "digits", "--method", method, "--out", tmp_path / "run"]
    line = one_line_error(capsys, *[*argv, "--set", f"{key}={tmp_path}"])
    assert line.startswith(f"metapl: error: {key}={str(tmp_path)!r} is not read by method.name={method}, which ")
    assert not (tmp_path / "run").exists()


def test_preset_inputs_of_another_method_are_dropped(capsys):
    assert main(["config", "--preset", "reduced_mpl_imagenet", "--method", "mpl"]) == 0
    assert "label_dir: ''" in capsys.readouterr().out
    assert main(["config", "--preset", "reduced_mpl_imagenet"]) == 0  # its own method reads them
    assert "label_dir: labels/imagenet-teacher" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["predict", "shard"])
def test_too_long_path_in_a_csv_names_its_row(files, tmp_path, capsys, command):
    rows = tmp_path / "rows.csv"
    rows.write_text(f"path\n{LONG}.png\n")
    argv = {
        "predict": ["predict", files / "run", rows, "--out", tmp_path / "p.csv"],
        "shard": ["shard", rows, "--out", tmp_path / "shards", "--no-progress"],
    }[command]
    line = one_line_error(capsys, *argv)
    assert str(rows) in line and ("line 2" in line or "row 2" in line)
    assert f"{shorten(LONG + '.png')!r} is too long for the file system" in line and len(line) < 400


# ----------------------------------------------------------------------- config and command line
@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("train.stepz=3", "did you mean 'train.steps'"),
        ("trian.steps=3", "did you mean 'train.steps'"),
        ("train.steps=ten", "train.steps='ten' must be an integer"),
        ("method.baseline=maybe", "method.baseline='maybe' must be true or false"),
        ("teacher.lr=0", "teacher.lr=0.0 is impossible; it must be above 0"),
        ("teacher.lr=-0.1", "teacher.lr=-0.1 is impossible"),
        ("student.lr=0", "student.lr=0.0 is impossible; it must be above 0"),
        ("student.lr=-1", "student.lr=-1.0 is impossible"),
        ("data.mu=0", "data.mu=0 is impossible; it must be at least 1"),
        ("data.batch_size=0", "data.batch_size=0 is impossible; it must be at least 1"),
        ("method.uda_threshold=1.5", "method.uda_threshold=1.5 is impossible; it must be in [0, 1]"),
        ("method.uda_threshold=-0.1", "method.uda_threshold=-0.1 is impossible"),
        ("method.label_smoothing=1", "method.label_smoothing=1.0 is impossible; it must be in [0, 1)"),
        ("method.label_smoothing=-0.1", "method.label_smoothing=-0.1 is impossible"),
        ("method.student_label_smoothing=1.5", "method.student_label_smoothing=1.5 is impossible"),
        ("finetune.label_smoothing=1", "finetune.label_smoothing=1.0 is impossible"),
        ("train.ema_decay=1", "train.ema_decay=1.0 is impossible; it must be in [0, 1)"),
        ("train.ema_decay=-0.5", "train.ema_decay=-0.5 is impossible"),
        ("train.steps=0", "train.steps=0 is impossible; it must be at least 1"),
        ("train.steps=-5", "train.steps=-5 is impossible"),
        ("model.num_classes=-1", "model.num_classes=-1 is impossible"),
        ("model.num_classes=3", "model.num_classes=3 but data.name='digits' has 10 classes"),
        ("data.labeled_per_class=500", "fewer than the 500 requested"),
        ("train.nonfinite=skp", "train.nonfinite='skp' is not allowed (did you mean 'skip'?)"),
        ("train.max_skipped_in_a_row=0", "train.max_skipped_in_a_row=0 is impossible"),
        (
            "train.threads=2147483648",
            "train.threads=2147483648 is impossible; it must be from 0 to 4096 (0: automatic)",
        ),
    ],
)
def test_bad_config_is_one_line_and_writes_nothing(capsys, tmp_path, setting, fragment):
    out = tmp_path / "run"
    line = one_line_error(capsys, "train", "--preset", "digits", "--set", setting, "--out", out)
    assert fragment in line
    assert not out.exists()


def test_unknown_preset_suggests_one(capsys, tmp_path):
    line = one_line_error(capsys, "train", "--preset", "digit", "--out", tmp_path / "run")
    assert "unknown preset 'digit' (did you mean 'digits'?)" in line


def test_model_num_classes_equal_to_the_datas_is_accepted():
    cfg = build_config("twomoon", ["model.num_classes=2", "train.steps=1"], "supervised")
    from metapl.run.build import build_model

    assert build_model(cfg, build_data(cfg.data, 0))(torch.zeros(1, 2)).shape == (1, 2)


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "the following arguments are required: COMMAND"),
        (["trian", "--preset", "digits"], "invalid choice: 'trian' (did you mean 'train'?)"),
        (["train"], "the following arguments are required: --preset"),
        (["train", "--preset", "digits", "--steps", "5"], "--steps 5 (a config value: use --set train.steps=...)"),
        (["train", "--preset", "digits", "--feedback", "soft"], "(a config value: use --set method.feedback.mode=...)"),
        (["train", "--preset", "digits", "--bogus"], "unrecognized arguments: --bogus; see 'metapl train --help'"),
        (["eval", "RUN", "--weigths", "best"], "--weigths best (did you mean --weights?)"),
        (["export", "RUN", "--format", "pt"], "argument --format: invalid choice: 'pt'"),
        (["export", "RUN"], "the following arguments are required: --format"),
        (["eval", "RUN", "--batch-size", "0"], "--batch-size 0 is impossible"),
        (["train", "--preset", "digits", "--method", "uda", "--set", "method.name=mpl"], "disagree"),
        (["config", "--preset", "digits", "--method", "uda", "--set", "method.name=mpl"], "disagree"),
    ],
)
def test_bad_command_lines_are_one_line_exit_2(capsys, tmp_path, digits_run, args, fragment):
    args = [str(digits_run) if a == "RUN" else a for a in args]
    before = snapshot(digits_run)
    line = one_line_error(capsys, *args)
    assert fragment in line
    assert snapshot(digits_run) == before


@pytest.mark.slow
def test_bad_command_line_exits_2_from_a_process():
    result = subprocess.run(
        [sys.executable, "-m", "metapl", "trian"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "metapl: error: argument COMMAND: invalid choice: 'trian' (did you mean 'train'?); see 'metapl --help'"
    ]


def test_a_switch_this_machine_cannot_run_is_refused_before_writing_and_the_fix_is_taken(capsys, tmp_path):
    out = tmp_path / "run"
    line = one_line_error(capsys, *QUICK_DIGITS, "--set", "train.precision=fp16", "--out", out)
    assert "train.precision=fp16 needs a CUDA GPU" in line
    assert not out.exists()
    succeeds(capsys, *QUICK_DIGITS, "--set", "train.precision=bf16", "--out", out)


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", ".inf", "1e39", "1" + "0" * 400])
@pytest.mark.parametrize("command", ["config", "train"])
def test_numeric_extremes_are_refused_in_one_line(capsys, tmp_path, value, command):
    out = tmp_path / "run"
    extra = [*TINY, "--out", out] if command == "train" else []
    line = one_line_error(capsys, command, "--preset", "twomoon", "--set", f"data.noise={value}", *extra)
    assert "data.noise=" in line and "finite number" in line
    assert not out.exists()


def test_infinite_learning_rates_are_refused(capsys):
    for setting in ("teacher.lr=inf", "student.lr=.inf", "finetune.lr=nan", "teacher.weight_decay=1e308"):
        assert "finite number" in one_line_error(capsys, "config", "--preset", "digits", "--set", setting)


def test_negative_zero_is_zero(capsys, tmp_path):
    succeeds(capsys, "train", "--preset", "twomoon", *TINY, "--set", "train.steps=1", "--set", "data.noise=-0.0",
             "--out", tmp_path / "run")  # fmt: skip


def test_config_shows_no_derived_step_counts(capsys):
    shown = yaml.safe_load(succeeds(capsys, "config", "--preset", "digits"))
    assert "total_steps" not in shown["teacher"] and "total_steps" not in shown["student"]


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


def test_a_message_holding_a_line_break_stays_one_line(capsys, digits_run, tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text('path\n"two\nlines.png"\n"next\x85line.png"\n')
    line = one_line_error(capsys, "predict", digits_run, listing, "--out", tmp_path / "p.csv")
    assert "two\\nlines.png" in line


def test_an_image_that_cannot_be_decoded_names_both_ways_on(tmp_path):
    from metapl.parts.data.folders import decode

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError) as refused:
        decode(str(tmp_path / "broken.png"))
    message = str(refused.value)
    assert "replace it with an intact copy and run the same command" in message
    assert "remove it and start the run over (metapl train --restart)" in message


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.precision=fp16", "needs a CUDA GPU"),
        ("train.sync_bn=true", "needs torchrun with several CUDA processes"),
    ],
)
def test_switches_that_need_a_gpu_are_refused_on_cpu(tmp_path, override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        run_experiment(
            build_config("twomoon", ["train.steps=2", override]), tmp_path, progress=False, tensorboard=False
        )
