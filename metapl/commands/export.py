"""`metapl export`: a run's model as safetensors or ONNX, checked against PyTorch on test inputs."""

from __future__ import annotations

import importlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from metapl.commands.finished_run import WEIGHTS, LoadedRun, data_files, load_run, output_name
from metapl.commands.predict_inputs import preprocessing
from metapl.core.errors import ConfigError, ExportError, first_line
from metapl.parts.data import example_inputs
from metapl.run.build import build_model
from metapl.run.outputs import check_not_among, check_output_file, inputs_of_run
from metapl.run.ownership import check_replaceable, mark

EXPORT_FORMATS = ("safetensors", "onnx")
ONNX_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and PyTorch that an export may show
CHECK_EXAMPLES = 16  # test inputs an export is checked on


@dataclass
class ExportResult:
    """Where an export went, and how far the exported file's outputs are from the PyTorch model's."""

    path: Path
    format: str
    max_abs_diff: float
    checked_examples: int


def export_run(
    run: Path, fmt: str, out: Path | None = None, weights: str = "final", network: str = "student"
) -> ExportResult:
    """Write the run's model (the student, or with network="teacher" the teacher's final weights) as
    safetensors or ONNX, then check that the file reproduces the model's outputs."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format {fmt!r} is not allowed; use one of: {', '.join(EXPORT_FORMATS)}")
    stem = WEIGHTS.get(weights, WEIGHTS["final"]).removesuffix(".pt")
    default = Path(run) / output_name(f"{stem}.{fmt}", network)  # model.onnx, best_model.onnx, teacher_model.onnx
    out = Path(out) if out is not None else default
    check_output_file(out, inputs_of_run(Path(run)), [Path(run)])
    loaded = load_run(
        run, weights, "cpu", network
    )  # CPU: onnxruntime's check runs there, and the files hold CPU tensors
    check_not_among(out, data_files(loaded.data), "the run's data")
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = loaded.data.x_test if len(loaded.data.x_test) else loaded.data.x_labeled  # a folder may lack a test set
    x = example_inputs(source, CHECK_EXAMPLES)  # what predict feeds: floats in [0, 1]
    # Written and checked under a fresh temporary name, renamed only when the check passed: a failed check leaves
    # no file that looks like a good export.
    with tempfile.TemporaryDirectory(prefix=f".{out.name[:100]}.", dir=out.parent) as folder:
        tmp = Path(folder) / f"export.{fmt}"
        if fmt == "safetensors":
            diff = _export_safetensors(loaded, tmp, x)
        else:
            diff = _export_onnx(loaded, tmp, x)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        tmp.replace(out)
    return ExportResult(out, fmt, diff, len(x))


def _require(module: str, fmt: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(
            f"--format {fmt} needs the Python package {module.split('.')[0]!r}; "
            "install it with: pip install 'metapl[export]'"
        ) from None


def _export_safetensors(loaded: LoadedRun, path: Path, x: torch.Tensor) -> float:
    safetensors_torch = _require("safetensors.torch", "safetensors")
    model, data = loaded.model, loaded.data
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Metadata holds strings only; with these a reader can rebuild the network without the run directory.
    metadata = mark({"format": "pt", **_description(loaded), "config": json.dumps(loaded.config.to_dict())})
    # save() to bytes rather than save_file(): save_file creates the file with mode 0600, unlike every other output.
    path.write_bytes(safetensors_torch.save(state, metadata=metadata))
    fresh = build_model(loaded.config, data, role=loaded.network)
    fresh.load_state_dict(safetensors_torch.load_file(str(path)))
    fresh.eval()
    with torch.no_grad():
        expected, got = model(x), fresh(x)
    diff = (expected - got).abs().max().item()
    if not torch.equal(expected, got):
        raise ExportError(
            f"the safetensors file reloaded gives outputs up to {diff:.3g} away from the model; re-run the export"
        )
    return diff


def _description(loaded: LoadedRun) -> dict[str, str]:
    """What an exported file says of its network (strings only, as both formats' metadata hold)."""
    data = loaded.data
    return {
        "num_classes": str(data.num_classes),
        "classes": json.dumps(loaded.class_names),
        "input_shape": json.dumps(list(data.input_shape)),
        "model": loaded.config.model.of(loaded.network).name,
        "network": loaded.network,
        "weights": loaded.weights_path.name,
        # how predict turns an image file into the input, to be repeated outside metapl (docs/cli.md#preprocessing)
        **{f"preprocessing_{k}": v for k, v in preprocessing(data.input_shape, _pipeline(data), loaded.model).items()},
    }


def _pipeline(data):
    """The evaluation pipeline of a run on image files (predict's crop and resize), None for other runs."""
    return getattr(data.x_labeled, "pipeline", None)


def _export_onnx(loaded: LoadedRun, path: Path, x: torch.Tensor) -> float:
    for module in ("onnx", "onnxscript"):
        _require(module, "onnx")
    ort = _require("onnxruntime", "onnx")
    model = loaded.model
    # Export from two examples: torch.export treats a batch of one as a constant, and the batch must stay dynamic.
    sample = x[:2] if len(x) >= 2 else x.repeat(2, *([1] * (x.dim() - 1)))
    try:
        # The torch.export-based exporter (the default since torch 2.9; the TorchScript one is deprecated) runs
        # offline; external_data=False keeps the weights inside the one .onnx file.
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=True,
            verbose=False,  # no progress lines on stdout
            external_data=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    except Exception as err:  # the exporter raises many types (export, lowering, serialisation); report the first line
        _raise_os_error(err)  # a file that cannot be written is the path's problem, not the format's
        raise ExportError(
            f"torch.onnx.export failed for {loaded.weights_path}: {first_line(err)}; try --format safetensors"
        ) from None
    onnx = importlib.import_module("onnx")
    proto = onnx.load(str(path))
    # Metadata a reader can use without the run directory; "writer" also marks the file as metapl's.
    onnx.helper.set_model_props(proto, mark(_description(loaded)))
    onnx.save(proto, str(path))
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as err:  # onnxruntime raises its own exception types for files it cannot load or run
        _raise_os_error(err)
        raise ExportError(
            f"onnxruntime cannot run the exported model: {first_line(err)}; try --format safetensors"
        ) from None
    with torch.no_grad():
        expected = model(x).numpy()
    diff = float(np.abs(expected - got).max())
    if not diff <= ONNX_TOLERANCE:  # also catches NaN
        raise ExportError(
            f"the ONNX model's outputs differ from PyTorch's by up to {diff:.3g} (> {ONNX_TOLERANCE:g}) "
            f"on {len(x)} test inputs; export with --format safetensors instead"
        )
    return diff


def _raise_os_error(err: BaseException | None) -> None:
    """Re-raise the OSError (no permission, disk full) behind an exporter's own exception, for the command
    line's one line naming the path; other errors are left to the caller."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            raise err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
