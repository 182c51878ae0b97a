"""Using a finished run: evaluate its weights again, predict on image files or CSV rows, export to safetensors/ONNX.

Every function starts from a run directory written by `metapl train`: its config.yaml rebuilds the model and the
data (through splits.json, the exact split the run used), and model.pt (the evaluated model, the EMA student) or
best_model.pt (the best on validation) fills the model's weights.
"""

from __future__ import annotations

import csv
import importlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metapl.config import Config, load_config_file
from metapl.data import build_data, example_inputs
from metapl.data.loaders import DataBundle
from metapl.engine.checkpoint import atomic_write_json, load_weights
from metapl.engine.evaluate import evaluate, predict_proba
from metapl.errors import CheckpointError, ConfigError, DataError, ExportError
from metapl.experiment import build_model, resolve_device

WEIGHTS = {"final": "model.pt", "best": "best_model.pt"}
# A run's own files, which no --out may replace (checkpoint-*.pt too).
RUN_FILES = ("config.yaml", "splits.json", "model.pt", "best_model.pt", "metrics.jsonl", "summary.json", "eval.json")
EXPORT_FORMATS = ("safetensors", "onnx")
ONNX_TOLERANCE = 1e-4  # max |logit difference| between onnxruntime and PyTorch that an export may show
CHECK_EXAMPLES = 16  # test inputs an export is checked on


@dataclass
class LoadedRun:
    """A run's config, its rebuilt data and its model with the chosen weights loaded, in eval mode."""

    run: Path
    config: Config
    data: DataBundle
    model: nn.Module
    weights_path: Path


def load_run(run: Path, weights: str = "final", device: torch.device | str = "cpu") -> LoadedRun:
    """Rebuild a run's data and model and load its final (model.pt) or best (best_model.pt) weights."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"no run directory at {run}; pass a directory written by metapl train --out")
    if not (run / "config.yaml").is_file():
        raise CheckpointError(
            f"{run} is not a run directory (no config.yaml); pass a directory written by metapl train"
        )
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is not allowed; use one of: {', '.join(WEIGHTS)}")
    cfg = load_config_file(run / "config.yaml")
    if (run / "splits.json").is_file():
        # The indices the run saved, not a re-draw: the split stays the run's even if the drawing code changes.
        cfg.data.split_file = str(run / "splits.json")
    data = build_data(cfg.data, cfg.train.seed)
    path = run / WEIGHTS[weights]
    if not (run / WEIGHTS["final"]).is_file() and (run / "checkpoint.pt").is_file():
        raise CheckpointError(
            f"no {path}: the run's training has not finished; run the same metapl train command again to finish it "
            f"(it resumes from {run / 'checkpoint.pt'})"
        )
    if weights == "best" and not path.is_file():
        raise CheckpointError(f"no {path}: the run kept no best-on-validation weights; use --weights final")
    state = load_weights(path, fix="pass a run whose weights are intact, or train this one again")
    model = build_model(cfg, data)
    _load_state(model, state, path, cfg, data)
    model.to(device).eval()
    return LoadedRun(run, cfg, data, model, path)


def _load_state(model: nn.Module, state: object, path: Path, cfg: Config, data: DataBundle) -> None:
    # Compare keys and shapes first: load_state_dict's own message is many lines and starts with no detail.
    fix = (
        f"pass weights written by this run (its config.yaml builds {cfg.model.name} with {data.num_classes} classes "
        f"and input shape {tuple(data.input_shape)})"
    )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; {fix}")
    expected = model.state_dict()
    problem = None
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problem = f"it lacks {missing[0]!r}" + (f" and {len(missing) - 1} more keys" if len(missing) > 1 else "")
    elif unexpected:
        problem = f"it has the unknown key {unexpected[0]!r}"
    else:
        for key, tensor in expected.items():
            if state[key].shape != tensor.shape:
                problem = f"{key} has shape {tuple(state[key].shape)} where the model needs {tuple(tensor.shape)}"
                break
    if problem is None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:  # anything the checks above did not foresee, reduced to its first detail
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            problem = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
    if problem is not None:
        raise CheckpointError(f"{path} does not fit the model of {path.parent / 'config.yaml'}: {problem}; {fix}")


def check_output(out: Path, runs: list[Path], inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an --out that is a directory, an input of the command, or one of a run's own files."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass a file name inside it")
    target = out.resolve()
    if any(Path(source).resolve() == target for source in inputs):
        raise ConfigError(f"--out {out} is the input file, which would be overwritten; pass another --out")
    for run in runs:
        name = target.name
        if target.parent == Path(run).resolve() and (name in RUN_FILES or name.startswith("checkpoint")):
            raise ConfigError(f"--out {out} would overwrite the run's own {name}; pass another --out")


# ---------------------------------------------------------------------------------------------- eval
def evaluate_run(run: Path, weights: str = "final", batch_size: int | None = None) -> dict:
    """Top-1 (top-5 above 5 classes) and loss on the run's validation and test sets; also written to RUN/eval.json."""
    loaded = load_run(run, weights, resolve_device("auto"))
    batch_size = batch_size if batch_size is not None else loaded.config.train.eval_batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} is impossible; it must be at least 1")
    data = loaded.data
    result: dict = {
        "run": str(run),
        "weights": weights,
        "weights_file": loaded.weights_path.name,
        "device": str(next(loaded.model.parameters()).device),
        "batch_size": batch_size,
    }
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        result[f"{split}_examples"] = len(y)
        result.update({f"{split}_{k}": v for k, v in evaluate(loaded.model, x, y, batch_size).items()})
    atomic_write_json(result, Path(run) / "eval.json")
    return result


def format_eval_table(result: dict) -> str:
    """The scores of evaluate_run as a small table, one row per split; '-' where a split is empty."""
    metrics = [m for m in ("top1", "top5", "loss") if f"test_{m}" in result or f"val_{m}" in result]
    rows = [["split", "examples", *metrics]]
    for split in ("val", "test"):
        values = [f"{result[f'{split}_{m}']:.4f}" if f"{split}_{m}" in result else "-" for m in metrics]
        rows.append([split, str(result[f"{split}_examples"]), *values])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"weights: {result['weights']} ({result['weights_file']})"]
    lines += [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- inputs
def image_extensions() -> set[str]:
    """File suffixes (lower case, with the dot) of the formats Pillow can open."""
    from PIL import Image

    # registered_extensions() also lists save-only formats (PDF, ...); keep those Pillow can read.
    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def load_image(path: Path, input_shape: tuple[int, ...], invert: bool = False, pipeline=None) -> torch.Tensor:
    """An image file as a (C, H, W) tensor in [0, 1] for a model of `input_shape`: grey or RGB, bilinear resize.

    A run trained on image files passes its `pipeline`, so that an image is cropped exactly as in evaluation.
    """
    from PIL import Image, ImageOps

    if pipeline is not None:
        from metapl.data.folders import decode

        image = pipeline.evaluate(decode(str(path), input_shape[0])).float() / 255.0
        return 1.0 - image if invert else image
    channels, height, width = _image_shape(input_shape)
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)  # photos taken sideways carry their rotation in EXIF
            if "A" in image.getbands() or "transparency" in image.info:
                # Transparent pixels would turn black; drawings on a transparent canvas mean ink on white paper.
                rgba = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            image = image.convert("L" if channels == 1 else "RGB").resize((width, height), Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; pass a PNG, JPEG or other image Pillow can open") from None
    array = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
    return 1.0 - tensor if invert else tensor


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    size = math.prod(input_shape)
    if len(input_shape) != 3:
        raise DataError(
            f"the run's model takes inputs of shape {tuple(input_shape)}, not images; "
            f"pass a CSV of {size} numbers per row"
        )
    if input_shape[0] not in (1, 3):
        raise DataError(
            f"the run's model takes {input_shape[0]}-channel images, but image files give 1 (grey) "
            "or 3 (RGB) channels; "
            f"pass a CSV of {size} numbers per row"
        )
    return input_shape[0], input_shape[1], input_shape[2]


def load_inputs(
    source: Path, input_shape: tuple[int, ...], invert: bool = False, pipeline=None
) -> tuple[list[str], torch.Tensor]:
    """Names and a batch of inputs from an image file, a folder of images (sorted, not recursive) or a CSV."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"no input at {source}; pass an image file, a folder of images or a CSV file")
    if source.is_dir():
        extensions = image_extensions()
        # Names starting with a dot are editor or macOS metadata files (._scan.png), never the user's images.
        files = sorted(
            p for p in source.iterdir() if p.is_file() and p.suffix.lower() in extensions and not p.name.startswith(".")
        )
        if not files:
            raise DataError(f"no image files in {source}; put PNG or JPEG files there, or pass a CSV file")
        return [str(p) for p in files], torch.stack([load_image(p, input_shape, invert, pipeline) for p in files])
    if source.suffix.lower() == ".csv":
        return _load_csv(source, input_shape, invert, pipeline)
    return [str(source)], load_image(source, input_shape, invert, pipeline)[None]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _load_csv(path: Path, input_shape: tuple[int, ...], invert: bool, pipeline=None) -> tuple[list[str], torch.Tensor]:
    size = math.prod(input_shape)
    expected = f"write one image path or {size} numbers (the input of shape {tuple(input_shape)}, flattened) per row"
    names: list[str] = []
    inputs: list[torch.Tensor] = []
    images = 0  # rows naming an image file
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: drop the BOM spreadsheet programs write
            reader = csv.reader(handle)
            first = True
            for row in reader:
                cells = [cell.strip() for cell in row]
                if not any(cells):
                    continue
                line = reader.line_num
                numbers = [_number(cell) for cell in cells]
                if first and _is_header(cells, numbers, path.parent):
                    first = False
                    continue
                first = False
                where = f"row {line} of {path}"
                if len(cells) == 1 and numbers[0] is None:
                    image_path = Path(cells[0]) if Path(cells[0]).is_absolute() else path.parent / cells[0]
                    if not image_path.is_file():
                        raise DataError(
                            f"{where}: no image file at {image_path}; {expected} (paths relative to the CSV)"
                        )
                    try:
                        inputs.append(load_image(image_path, input_shape, invert, pipeline))
                    except DataError as err:
                        raise DataError(f"{where}: {err}") from None
                    names.append(cells[0])
                    images += 1
                    continue
                bad = next((c for c, n in zip(cells, numbers) if n is None or not math.isfinite(n)), None)
                if bad is not None:
                    raise DataError(f"{where}: {bad!r} is not a finite number; {expected}")
                if len(numbers) != size:
                    raise DataError(f"{where} has {len(numbers)} values where the model takes {size}; {expected}")
                inputs.append(torch.tensor(numbers, dtype=torch.float32).reshape(input_shape))
                names.append(f"{path.name}:{line}")
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read CSV {path}: {err}; pass a UTF-8 CSV file") from None
    if not inputs:
        raise DataError(f"{path} has no rows; {expected}")
    if invert and images == 0:
        raise ConfigError(f"--invert maps image pixels, but every row of {path} holds numbers; drop --invert")
    return names, torch.stack(inputs)


def _is_header(cells: list[str], numbers: list[float | None], folder: Path) -> bool:
    if all(n is not None for n in numbers):
        return False
    if len(cells) > 1:
        return True  # a row of values with a word in it can only be column names
    # One word: a header ("path") unless it names an image file.
    return not (Path(cells[0]) if Path(cells[0]).is_absolute() else folder / cells[0]).is_file()


# ---------------------------------------------------------------------------------------------- predict
def predict_run(
    run: Path, source: Path, out: Path | None = None, weights: str = "final", invert: bool = False
) -> tuple[Path, int]:
    """Class probabilities per input, written as input,class,prob_0..prob_{K-1} to `out` (RUN/predictions.csv)."""
    out = Path(out) if out is not None else Path(run) / "predictions.csv"
    check_output(out, [Path(run)], (Path(source),))
    loaded = load_run(run, weights, resolve_device("auto"))
    pipeline = getattr(loaded.data.x_labeled, "pipeline", None)  # runs on image files: their eval crop
    names, x = load_inputs(source, loaded.data.input_shape, invert, pipeline)
    proba = predict_proba(loaded.model, x, batch_size=loaded.config.train.eval_batch_size)
    classes = proba.argmax(dim=1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["input", "class", *(f"prob_{k}" for k in range(proba.shape[1]))])
        for name, cls, row in zip(names, classes.tolist(), proba.tolist()):
            writer.writerow([name, cls, *(f"{p:.8g}" for p in row)])
    tmp.replace(out)
    return out, len(names)


# ---------------------------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    """Where an export went, and how far the exported file's outputs are from the PyTorch model's."""

    path: Path
    format: str
    max_abs_diff: float
    checked_examples: int


def export_run(run: Path, fmt: str, out: Path | None = None, weights: str = "final") -> ExportResult:
    """Write the run's model as safetensors or ONNX, then check that the file reproduces the model's outputs."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format {fmt!r} is not allowed; use one of: {', '.join(EXPORT_FORMATS)}")
    if out is not None:
        check_output(Path(out), [Path(run)])
    loaded = load_run(run, weights, "cpu")  # CPU: onnxruntime's check runs there, and the files hold CPU tensors
    out = Path(out) if out is not None else Path(run) / f"{loaded.weights_path.stem}.{fmt}"
    out.parent.mkdir(parents=True, exist_ok=True)
    source = loaded.data.x_test if len(loaded.data.x_test) else loaded.data.x_labeled  # a folder may lack a test set
    x = example_inputs(source, CHECK_EXAMPLES)  # what predict feeds: floats in [0, 1]
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if fmt == "safetensors":
            diff = _export_safetensors(loaded, tmp, x)
        else:
            diff = _export_onnx(loaded, tmp, x)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)  # a failed check leaves no file that looks like a good export
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
    metadata = {
        "format": "pt",
        "num_classes": str(data.num_classes),
        "input_shape": json.dumps(list(data.input_shape)),
        "model": loaded.config.model.name,
        "weights": loaded.weights_path.name,
        "config": json.dumps(loaded.config.to_dict()),
    }
    # save() to bytes rather than save_file(): save_file creates the file with mode 0600, unlike every other output.
    path.write_bytes(safetensors_torch.save(state, metadata=metadata))
    fresh = build_model(loaded.config, data)
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
        raise ExportError(
            f"torch.onnx.export failed for {loaded.weights_path}: {_first_line(err)}; try --format safetensors"
        ) from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    except Exception as err:  # onnxruntime raises its own exception types for files it cannot load or run
        raise ExportError(
            f"onnxruntime cannot run the exported model: {_first_line(err)}; try --format safetensors"
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


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


__all__ = [
    "EXPORT_FORMATS",
    "WEIGHTS",
    "ExportError",
    "ExportResult",
    "LoadedRun",
    "evaluate_run",
    "export_run",
    "format_eval_table",
    "image_extensions",
    "load_image",
    "load_inputs",
    "load_run",
    "check_output",
    "predict_run",
]
