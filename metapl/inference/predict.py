"""`metapl predict`: class probabilities for image files or CSV rows, as a CSV."""

from __future__ import annotations

import csv
from pathlib import Path

from metapl.build import resolve_device
from metapl.engine.evaluate import predict_proba
from metapl.inference.inputs import load_inputs
from metapl.inference.outputs import check_output
from metapl.inference.run import load_run


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
