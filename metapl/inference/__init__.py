"""Using a finished run: evaluate its weights again, predict on image files or CSV rows, export to safetensors/ONNX."""

from metapl.inference.evaluation import eval_path, evaluate_run, format_eval_table
from metapl.inference.export import EXPORT_FORMATS, ExportResult, export_run
from metapl.inference.inputs import image_extensions, load_image, load_inputs
from metapl.inference.predict import predict_run
from metapl.inference.run import WEIGHTS, LoadedRun, load_run

__all__ = [
    "EXPORT_FORMATS",
    "WEIGHTS",
    "ExportResult",
    "LoadedRun",
    "eval_path",
    "evaluate_run",
    "export_run",
    "format_eval_table",
    "image_extensions",
    "load_image",
    "load_inputs",
    "load_run",
    "predict_run",
]
