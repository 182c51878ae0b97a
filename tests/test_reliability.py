"""Reliability (issue #7): every mistake a user can make with the config, the command line or the files of a run
ends in one line and exit code 2 without touching the run's files; a non-finite step can be skipped and counted."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from metapl.cli import main
from metapl.config import build_config
from metapl.engine import atomic as atomic_module
from metapl.engine.loop import fit
from metapl.errors import TrainingError
from metapl.experiment import run_experiment
from metapl.methods import Supervised
from metapl.methods.base import Batch
from metapl.optim import OptimSettings

TRAIN = [
    "train",
    "--preset",
    "digits",
    "--no-progress",
    "--no-tensorboard",
    "--set",
    "train.steps=4",
    "--set",
    "train.eval_every=2",
    "--set",
    "train.log_every=2",
    "--set",
    "train.checkpoint_every=2",
]


def cli(capsys, *args: object) -> tuple[int, list[str]]:
    """Run the command line in this process: (exit code, the lines it wrote to stderr)."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse exits by itself
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()


def one_line_error(capsys, *args: object) -> str:
    code, lines = cli(capsys, *args)
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("metapl: error: "), lines
    return lines[0]


def files(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` and its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


class RunsCode:
    """Pickles as a call to open(marker, 'w'): loading it unsafely would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 4-step MPL run on digits with checkpoint.pt, model.pt and best_model.pt."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reliability") / "run"
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run that a test may damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


# ---------------------------------------------------------------------------------------------- config
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
    from metapl.build import build_model
    from metapl.data import build_data

    assert build_model(cfg, build_data(cfg.data, 0))(torch.zeros(1, 2)).shape == (1, 2)


# ---------------------------------------------------------------------------------------------- command line
@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "the following arguments are required: COMMAND"),
        (["trian", "--preset", "digits"], "invalid choice: 'trian' (did you mean 'train'?)"),
        (["train"], "the following arguments are required: --preset"),
        (["train", "--preset", "digits", "--steps", "5"], "--steps 5 (a config value: use --set train.steps=...)"),
        (["train", "--preset", "digits", "--bogus"], "unrecognized arguments: --bogus; see 'metapl train --help'"),
        (["eval", "RUN", "--weigths", "best"], "--weigths best (did you mean --weights?)"),
        (["export", "RUN", "--format", "pt"], "argument --format: invalid choice: 'pt'"),
        (["export", "RUN"], "the following arguments are required: --format"),
        (["eval", "RUN", "--batch-size", "0"], "--batch-size 0 is impossible"),
        (["train", "--preset", "digits", "--method", "uda", "--set", "method.name=mpl"], "disagree"),
        (["config", "--preset", "digits", "--method", "uda", "--set", "method.name=mpl"], "disagree"),
    ],
)
def test_bad_command_lines_are_one_line_exit_2(capsys, tmp_path, finished, args, fragment):
    args = [str(finished) if a == "RUN" else a for a in args]
    before = files(finished)
    line = one_line_error(capsys, *args)
    assert fragment in line
    assert files(finished) == before


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


@pytest.mark.parametrize(
    "command, fragment",
    [
        (["predict", "RUN", "INPUT", "--out", "INPUT"], "is the input file"),
        (["predict", "RUN", "INPUT", "--out", "RUN/model.pt"], "would overwrite the run's own model.pt"),
        (["predict", "RUN", "INPUT", "--out", "RUN"], "is a directory"),
        (["predict", "RUN", "INPUT", "--invert"], "--invert maps image pixels"),
        (
            ["export", "RUN", "--format", "safetensors", "--out", "RUN/model.pt"],
            "would overwrite the run's own model.pt",
        ),
        (["export", "RUN", "--format", "onnx", "--out", "RUN/checkpoint.pt"], "own checkpoint.pt"),
        (["plot", "RUN", "--out", "RUN/config.yaml"], "would overwrite the run's own config.yaml"),
        (["eval", "RUN", "--weights", "best"], "the run kept no best-on-validation weights; use --weights final"),
    ],
)
def test_conflicting_options_are_refused_and_destroy_nothing(capsys, run, tmp_path, command, fragment):
    rows = tmp_path / "rows.csv"
    rows.write_text(",".join(["0.5"] * 64) + "\n")
    (run / "best_model.pt").unlink()  # a run without best weights (interrupted before its first evaluation)
    args = [a.replace("RUN", str(run)).replace("INPUT", str(rows)) for a in command]
    before, rows_before = files(run), rows.read_bytes()
    line = one_line_error(capsys, *args)
    assert fragment in line
    assert files(run) == before and rows.read_bytes() == rows_before


# ---------------------------------------------------------------------------------------------- weights of a run
def _damage(path: Path, how: str, marker: Path) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif how == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif how == "pickled code":
        torch.save({"weight": RunsCode(marker)}, path)
    elif how == "architecture":  # a small CNN's weights where the config builds an MLP
        from metapl.models import create_model

        torch.save(create_model("small_cnn", 10, (1, 8, 8)).state_dict(), path)
    elif how == "classes":  # the network of a 3-class dataset
        state = torch.load(path, weights_only=True)
        for key in [k for k in state if k.endswith(("weight", "bias"))][-2:]:
            state[key] = state[key][:3]
        torch.save(state, path)


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
@pytest.mark.parametrize(
    "how, fragment",
    [
        ("missing", "the run's training has not finished; run the same metapl train command again"),
        ("truncated", "model.pt: it is truncated or not a checkpoint"),
        ("garbage", "model.pt: it is truncated or not a checkpoint"),
        ("pickled code", "model.pt holds pickled Python objects (io.open), not only tensors, and was refused unread"),
        ("architecture", "does not fit the model of"),
        ("classes", "where the model needs (10, 256)"),
    ],
)
def test_bad_weights_file_is_named_with_the_fix(capsys, run, tmp_path, command, how, fragment):
    marker = tmp_path / "code-ran"
    _damage(run / "model.pt", how, marker)
    image_rows = tmp_path / "rows.csv"
    image_rows.write_text(",".join(["0.5"] * 64) + "\n")
    args = {
        "eval": ["eval", run],
        "predict": ["predict", run, image_rows, "--out", tmp_path / "p.csv"],
        "export": ["export", run, "--format", "safetensors", "--out", tmp_path / "m.safetensors"],
    }[command]
    before = files(run)
    line = one_line_error(capsys, *args)
    assert fragment in line
    assert str(run / "model.pt") in line or how == "missing"
    assert not marker.exists(), "the pickled code ran"
    assert files(run) == before
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "m.safetensors").exists()


def test_pickled_code_is_refused_by_a_process_without_running(run, tmp_path):
    marker = tmp_path / "code-ran"
    _damage(run / "model.pt", "pickled code", marker)
    result = subprocess.run(
        [sys.executable, "-m", "metapl", "eval", str(run)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "refused unread" in line and "pass a run whose weights are intact, or train this one again" in line
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- resuming
def _damage_checkpoint(path: Path, how: str, marker: Path) -> None:
    if how in ("truncated", "garbage", "pickled code"):
        _damage(path, how, marker)
        return
    state = torch.load(path, weights_only=True)
    if how == "not metapl's":
        state = state["method"]["student"]
    elif how == "architecture":
        from metapl.models import create_model

        for net in ("teacher", "student"):
            state["method"][net] = create_model("small_cnn", 10, (1, 8, 8)).state_dict()
    elif how == "classes":
        for net in ("teacher", "student"):
            weights = state["method"][net]
            for key in [k for k in weights if k.endswith(("weight", "bias"))][-2:]:
                weights[key] = weights[key][:3]
    elif how == "no optimizer":
        del state["method"]["teacher_optimizer"]
    torch.save(state, path)


@pytest.mark.parametrize(
    "how, fragment",
    [
        ("truncated", "checkpoint.pt: it is truncated or not a checkpoint"),
        ("garbage", "checkpoint.pt: it is truncated or not a checkpoint"),
        ("pickled code", "checkpoint.pt holds pickled Python objects"),
        ("not metapl's", "checkpoint.pt is not a checkpoint written by metapl train"),
        ("architecture", "checkpoint.pt does not fit the models of"),
        ("classes", "size mismatch for"),
        ("no optimizer", "it lacks the entry 'teacher_optimizer'"),
    ],
)
def test_resume_from_a_bad_checkpoint_is_refused_and_destroys_nothing(capsys, run, tmp_path, how, fragment):
    marker = tmp_path / "code-ran"
    _damage_checkpoint(run / "checkpoint.pt", how, marker)
    before = files(run)
    line = one_line_error(capsys, *TRAIN, "--out", run)
    assert fragment in line
    assert f"move {run / 'checkpoint.pt'} away to train this run from step 0, or add --restart" in line
    assert line.endswith("or pass another --out")
    assert not marker.exists(), "the pickled code ran"
    assert files(run) == before


def test_moving_a_bad_checkpoint_away_starts_the_run_over_with_clean_logs(capsys, run):
    (run / "checkpoint.pt").write_bytes(b"garbage")
    one_line_error(capsys, *TRAIN, "--out", run)
    (run / "checkpoint.pt").rename(run / "broken-checkpoint.pt")
    code, lines = cli(capsys, *TRAIN, "--out", run)
    assert code == 0, lines
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 2, 4, 4]  # train and train_eval records once each: the first attempt's were dropped
    assert (run / "broken-checkpoint.pt").read_bytes() == b"garbage"


def test_a_run_without_checkpoint_is_not_overwritten_by_another_config(capsys, run):
    (run / "checkpoint.pt").unlink()  # e.g. deleted to save disk once the run had finished
    before = files(run)
    line = one_line_error(capsys, "train", "--preset", "twomoon", "--set", "train.steps=2", "--out", run)
    assert "holds a trained run with" in line and "add --restart to discard it" in line
    assert files(run) == before


@pytest.mark.parametrize("content", [{"notes.txt": "mine"}, {"config.yaml": "project: mine\n", "src": None}])
def test_train_into_a_directory_of_other_files_is_refused(capsys, tmp_path, content):
    out = tmp_path / "project"
    out.mkdir()
    for name, text in content.items():
        if text is None:
            (out / name).mkdir()
        else:
            (out / name).write_text(text)
    before = files(out)
    line = one_line_error(capsys, *TRAIN, "--out", out)
    assert "is not a metapl run directory" in line and "pass a new or empty directory" in line
    assert files(out) == before and sorted(p.name for p in out.iterdir()) == sorted(content)


# ---------------------------------------------------------------------------------------------- non-finite steps
def _batches(xs: list[torch.Tensor]):
    y = torch.tensor([0, 1, 0, 1])
    return iter([Batch(x, y) for x in xs])


def _supervised() -> Supervised:
    torch.manual_seed(0)
    settings = OptimSettings(lr=0.1, momentum=0.9, schedule="constant", total_steps=10)
    return Supervised(nn.Linear(3, 2), 2, optim=settings)


def _no_eval(method) -> dict[str, float]:
    return {}


def test_skip_undoes_a_nonfinite_step_exactly():
    torch.manual_seed(1)
    good = [torch.randn(4, 3) for _ in range(3)]
    bad = torch.full((4, 3), math.nan)
    reference = _supervised()
    fit(reference, _batches(good), 3, evaluate=_no_eval, progress=False)
    skipping = _supervised()
    result = fit(
        skipping, _batches([good[0], good[1], bad, good[2]]), 4, evaluate=_no_eval, progress=False, nonfinite="skip"
    )
    assert result.skipped_steps == 1 and result.skipped_in_a_row == 0
    # Parameters and the momentum buffers are those of a run that never saw the bad batch.
    for (key, want), (_, got) in zip(reference.state_dict()["model"].items(), skipping.state_dict()["model"].items()):
        assert torch.equal(want, got), key
    momentum = [s["momentum_buffer"] for s in skipping.updater.optimizer.state.values()]
    expected = [s["momentum_buffer"] for s in reference.updater.optimizer.state.values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum, expected))


class _Counter:
    """A method with one parameter that each step adds 1 to; its metrics are scripted per step."""

    def __init__(self, metrics):
        self.value = torch.zeros(())
        self.metrics = metrics

    def step(self, batch, step):
        self.value += 1
        return self.metrics(step)

    def eval_model(self):
        return nn.Identity()

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value.copy_(state["value"])


def test_skip_also_undoes_a_step_whose_gradient_alone_is_not_finite():
    method = _Counter(lambda step: {"loss": torch.tensor(1.0), "grad_norm": torch.tensor(math.inf if step == 1 else 1)})
    result = fit(method, _batches([torch.zeros(4, 3)] * 3), 3, evaluate=_no_eval, progress=False, nonfinite="skip")
    assert method.value.item() == 2 and result.skipped_steps == 1


def test_too_many_skipped_steps_in_a_row_stop_the_run():
    method = _Counter(lambda step: {"loss": torch.tensor(math.nan if step >= 2 else 1.0)})
    with pytest.raises(TrainingError, match=r"loss was nan at step 6, after 3 skipped steps in a row .*=3\)"):
        fit(
            method,
            _batches([torch.zeros(4, 3)] * 10),
            10,
            evaluate=_no_eval,
            progress=False,
            nonfinite="skip",
            max_skipped_in_a_row=3,
        )
    assert method.value.item() == 2  # the state before the first bad step


def _poison(monkeypatch, steps: set[int]) -> None:
    """Feed NaN inputs to the supervised method at the given steps."""
    original = Supervised.step

    def step(self, batch, step):
        if step in steps:
            batch = dataclasses.replace(batch, x_l=torch.full_like(batch.x_l, math.nan))
        return original(self, batch, step)

    monkeypatch.setattr(Supervised, "step", step)


def test_skipped_steps_are_counted_in_metrics_and_summary(monkeypatch, tmp_path):
    _poison(monkeypatch, {3, 5})
    settings = ["train.steps=8", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=2"]
    cfg = build_config("digits", [*settings, "train.nonfinite=skip"], "supervised")
    summary = run_experiment(cfg, tmp_path / "skip", progress=False, tensorboard=False)
    assert summary["train_skipped_steps"] == 2
    assert json.loads((tmp_path / "skip" / "summary.json").read_text())["train_skipped_steps"] == 2
    records = [json.loads(x) for x in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if r["phase"] == "train"] == [0, 0, 0, 1, 1, 2, 2, 2]
    weights = torch.load(tmp_path / "skip" / "model.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    # The default stops at the first non-finite loss instead.
    with pytest.raises(TrainingError, match="loss became nan at step 4"):
        run_experiment(build_config("digits", settings, "supervised"), tmp_path / "stop", False, False)


# ---------------------------------------------------------------------------------------------- checkpoint writes
def test_permission_denied_on_a_checkpoint_write_keeps_the_previous_one(capsys, monkeypatch, tmp_path):
    out = tmp_path / "run"
    real_mkstemp = atomic_module.tempfile.mkstemp
    writes = []

    def mkstemp_denied_after_one(*args, **kwargs):
        if kwargs.get("prefix", "").startswith(".checkpoint.pt."):
            writes.append(kwargs["prefix"])
            if len(writes) > 1:
                raise PermissionError(errno.EACCES, "Permission denied", str(out))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(atomic_module.tempfile, "mkstemp", mkstemp_denied_after_one)
    line = one_line_error(capsys, *TRAIN, "--out", out)
    assert f"could not write {out / 'checkpoint.pt'}: Permission denied; the previous file is intact" in line
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 2
    assert not list(out.glob(".checkpoint.pt*")) and not (out / ".lock").exists()


def test_a_diverging_mpl_run_with_skip_stops_after_the_bound_with_a_finite_checkpoint(tmp_path):
    settings = ["teacher.lr=1e4", "student.lr=1e4", "train.steps=200", "train.checkpoint_every=1"]
    settings += ["train.log_every=1", "method.sampling=argmax", "train.nonfinite=skip", "train.max_skipped_in_a_row=5"]
    with pytest.raises(TrainingError, match=r"after 5 skipped steps in a row"):
        run_experiment(build_config("digits", settings, "mpl"), tmp_path, progress=False, tensorboard=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["results"]["train"]["skipped_steps"] == saved["results"]["train"]["skipped_in_a_row"] == 5
    states = [saved["method"][net] for net in ("teacher", "student")] + [saved["method"]["ema"]]
    assert all(torch.isfinite(t).all() for state in states for t in _tensors(state) if t.is_floating_point())


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)
