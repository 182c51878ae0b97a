"""Fuzz tests: extreme and ill-typed values for every config key, and malformed user files
(split files, predict CSVs, weights files), through the command line in this process. Whatever the input, a
command ends with exit code 0 or 2, never a traceback, and a refused `metapl train` writes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from metapl.commands.cli import main
from metapl.parts.methods import METHODS
from metapl.run.config import build_config
from metapl.run.values import flatten

FUZZ = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Values a user might type after KEY=: huge, tiny, negative, zero, infinite, NaN, empty, and of the wrong type.
EXTREMES = [
    "0",
    "-1",
    "1",
    "-0.0",
    "0.5",
    "1.5",
    "2147483648",
    "1000000000000000000000000000000",
    "-1000000000000000000000000000000",
    "1" + "0" * 400,
    "3.5e38",
    "1e308",
    "-1e308",
    "1e-308",
    "5e-324",
    "1e400",
    "inf",
    "-inf",
    ".inf",
    "-.inf",
    "nan",
    ".nan",
    "",
    " ",
    "abc",
    "true",
    "false",
    "null",
    "~",
    "[]",
    "[0]",
    "[-1]",
    "[1e400]",
    "[1, abc]",
    "{}",
    "{a: 1}",
    "'1'",
    "0x10",
    "1_000",
    "é\u0000",
]


# The presets whose keys are fuzzed: digits, and twomoon for its data set's own keys (data.num_points, ...).
PRESETS = ("digits", "twomoon")


def _keys() -> list[tuple[str, str | None, str]]:
    """(key, method, preset) for every key of the presets under every method that builds without extra files: the
    first preset that has the key (a data set's or model's own key is only a key of the presets that choose it)."""
    keys: dict[str, tuple[str | None, str]] = {}
    for preset in PRESETS:
        for method in METHODS.names():
            try:
                cfg = build_config(preset, method=method)
            except Exception:  # noqa: BLE001 - a method that needs files (reduced_mpl: data.label_dir)
                continue
            for key, _ in flatten(cfg.to_dict()):
                if key != "preset":
                    keys.setdefault(key, (method if key.startswith("method.") else None, preset))
    return sorted(((key, method, preset) for key, (method, preset) in keys.items()), key=lambda item: item[0])


KEYS = _keys()
# Keys whose large values are valid and only make a run long or slow: train takes them small only.
SLOW_WHEN_LARGE = {"train.steps", "finetune.steps", "data.num_points"}


def run_cli(*args: object) -> tuple[int, str]:
    """(exit code, stderr) of the command line in this process; no exception may escape it."""
    err, out = io.StringIO(), io.StringIO()
    with (
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(out),
        warnings.catch_warnings(record=True) as shown,
    ):
        warnings.resetwarnings()  # Python's own defaults, not pytest's: what a user of the command would see
        warnings.simplefilter("default")
        for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.simplefilter("ignore", hidden)
        try:
            code = main([str(a) for a in args])
        except SystemExit as stop:  # argparse exits by itself, with 2
            assert isinstance(stop.code, int), stop.code
            code = stop.code
    text = err.getvalue() + "".join(f"{w.category.__name__}: {w.message}\n" for w in shown)
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, text)
    if code == 2:
        lines = text.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("metapl: error: "), text
    return code, text


def _method_args(method: str | None) -> list[str]:
    return ["--method", method] if method else []


def _is_large(value: str) -> bool:
    try:
        return float(value) > 100
    except ValueError:
        return value in ("inf", ".inf")


# ---------------------------------------------------------------------------------------------- config values
@pytest.mark.slow  # hundreds of commands run in this process
@settings(FUZZ, max_examples=300)
@given(key=st.sampled_from(KEYS), value=st.sampled_from(EXTREMES) | st.text(max_size=12))
def test_config_values_end_in_exit_0_or_one_line(key, value):
    (name, method, preset) = key
    run_cli("config", "--preset", preset, *_method_args(method), "--set", f"{name}={value}")


TRAIN_BASE = [
    "--no-progress",
    "--no-tensorboard",
    "--set",
    "train.steps=1",
    "--set",
    "model.hidden=[8]",
    "--set",
    "train.eval_every=0",
]


@pytest.mark.slow  # hundreds of commands run in this process
@settings(FUZZ, max_examples=120)
@given(
    preset=st.sampled_from(PRESETS),
    key=st.sampled_from(KEYS),
    value=st.sampled_from(EXTREMES),
)
def test_one_step_train_ends_in_exit_0_or_one_line_and_a_refusal_writes_nothing(preset, key, value):
    (name, method, owner) = key
    assume(owner == "digits" or preset == owner)  # a key only twomoon's data set has: with twomoon
    assume(not (name in SLOW_WHEN_LARGE and _is_large(value)))
    assume(not (name == "train.compile" and value == "true"))  # valid; compiling takes a minute on a CPU
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code, err = run_cli(
            "train", "--preset", preset, *_method_args(method), *TRAIN_BASE, "--set", f"{name}={value}", "--out", out
        )
        if code == 2 and out.exists():
            # Only a run that stopped in training (its loss not finite) leaves files, and says the same --out
            # takes new settings.
            assert "--restart" in err or "takes new settings" in err, err
            assert not (out / "checkpoint.pt").exists() or "--restart" in err


# ---------------------------------------------------------------------------------------------- user files
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-step digits run with a tiny network."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fuzz") / "run"
    code, err = run_cli("train", "--preset", "digits", *TRAIN_BASE, "--set", "train.steps=2", "--out", out)
    assert code == 0, err
    return out


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
index_lists = st.lists(
    st.integers(-5, 2000) | st.floats(allow_nan=True) | st.text(max_size=3) | st.booleans() | st.none(), max_size=6
)
split_files = (
    st.fixed_dictionaries(
        {"labeled": index_lists | json_values, "unlabeled": index_lists | json_values},
        optional={"validation": index_lists | json_values, "source": json_values},
    )
    | json_values
)


def _split_text(split, raw: bytes | None) -> bytes:
    if raw is not None:
        return raw
    return json.dumps(split, allow_nan=True).encode()


@pytest.mark.slow  # hundreds of commands run in this process
@settings(FUZZ, max_examples=60)
@given(split=split_files, raw=st.none() | st.binary(max_size=40))
def test_split_files_end_in_exit_0_or_one_line(finished, split, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "splits.json"
        path.write_bytes(_split_text(split, raw))
        out = Path(tmp) / "run"
        code, _ = run_cli("train", "--preset", "digits", *TRAIN_BASE, "--set", f"data.split_file={path}", "--out", out)
        assert code == 0 or not out.exists()
        # The same file as a run's own splits.json, read back by eval.
        run = Path(tmp) / "copy"
        shutil.copytree(finished, run)
        shutil.copy(path, run / "splits.json")
        run_cli("eval", run)


cells = st.sampled_from(["0.5", "1", "-1", "nan", "inf", "1e400", "", "abc", "path", "x.png", '"', "\ufeff0"])
csv_rows = st.lists(st.lists(cells | st.text(max_size=4), max_size=66), max_size=4)


@pytest.mark.slow  # hundreds of commands run in this process
@settings(FUZZ, max_examples=60)
@given(rows=csv_rows, bom=st.booleans(), raw=st.none() | st.binary(max_size=60))
def test_predict_csvs_end_in_exit_0_or_one_line(finished, rows, bom, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inputs.csv"
        text = "\n".join(",".join(row) for row in rows)
        path.write_bytes(raw if raw is not None else (("\ufeff" if bom else "") + text).encode("utf-8", "replace"))
        out = Path(tmp) / "predictions.csv"
        code, _ = run_cli("predict", finished, path, "--out", out)
        assert out.exists() == (code == 0)


tensors = st.builds(
    lambda shape, fill: torch.full(shape, fill, dtype=torch.float64),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
    st.floats(allow_nan=True, allow_infinity=True),
)
weights_objects = st.recursive(
    tensors | st.integers() | st.text(max_size=4) | st.none(),
    lambda inner: st.dictionaries(st.text(max_size=12), inner, max_size=3) | st.lists(inner, max_size=3),
    max_leaves=6,
)


@pytest.mark.slow  # hundreds of commands run in this process
@settings(FUZZ, max_examples=40)
@given(state=weights_objects, raw=st.none() | st.binary(max_size=80), command=st.sampled_from(["eval", "predict"]))
def test_weights_files_end_in_exit_0_or_one_line(finished, state, raw, command):
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(finished, run)
        if raw is not None:
            (run / "model.pt").write_bytes(raw)
        else:
            torch.save(state, run / "model.pt")
        rows = Path(tmp) / "rows.csv"
        rows.write_text(",".join(["0.5"] * 64) + "\n")
        if command == "eval":
            run_cli("eval", run)
        else:
            run_cli("predict", run, rows, "--out", Path(tmp) / "p.csv")


def test_every_config_key_is_fuzzed():
    fuzzed = {name for name, _, _ in KEYS}
    assert {"data.mu", "data.noise", "teacher.lr", "model.hidden", "train.eval_batch_size"} <= fuzzed
    assert any(name.startswith("method.") for name in fuzzed)
