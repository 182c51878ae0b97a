"""`metapl predict`: class probabilities for image files or CSV rows, as a CSV."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from metapl.commands.finished_run import data_files, load_run, output_name
from metapl.commands.predict_inputs import csv_image_paths, load_inputs
from metapl.core.atomic import atomic_write_text
from metapl.run.build import resolve_device
from metapl.run.outputs import check_not_among, check_output_file, inputs_of_run
from metapl.run.ownership import check_replaceable
from metapl.run.scoring import predict_proba


def predict_run(
    run: Path,
    source: Path,
    out: Path | None = None,
    weights: str = "final",
    invert: bool = False,
    network: str = "student",
) -> tuple[Path, int]:
    """Class probabilities per input, written as input,class,prob_... to `out` (RUN/predictions.csv; with
    network="teacher" the teacher's, RUN/teacher_predictions.csv).

    A run whose classes have names (an image folder's class folders, a CSV's labels) gets a `label` column after
    `class` with the predicted class's name, and its probability columns are named by class (prob_cat, prob_dog:
    probability_columns); `class` stays the index, as for every run.
    """
    source = Path(source)
    out = Path(out) if out is not None else Path(run) / output_name("predictions.csv", network)
    what = "the input folder" if source.is_dir() else "the input file"
    check_output_file(out, [(f"{what} {str(source)!r}", source), *inputs_of_run(Path(run))], [Path(run)])
    if source.suffix.lower() == ".csv" and source.is_file():
        check_not_among(out, [str(p) for p in csv_image_paths(source)], f"the input CSV {source}")
    loaded = load_run(run, weights, resolve_device("auto"), network)
    check_not_among(out, data_files(loaded.data), "the run's data")
    check_replaceable(out)
    pipeline = getattr(loaded.data.x_labeled, "pipeline", None)  # runs on image files: their eval crop
    names, x = load_inputs(source, loaded.data.input_shape, invert, pipeline)
    proba = predict_proba(loaded.model, x, batch_size=loaded.config.train.eval_batch_size)
    classes = proba.argmax(dim=1)
    labels = loaded.class_names
    named = labels != [str(k) for k in range(len(labels))]  # only names that say more than the index
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    # The header begins with ownership.PREDICTIONS_HEADER: the mark by which a later predict knows the file is metapl's.
    writer.writerow(["input", "class", *(["label"] if named else []), *probability_columns(labels)])
    for name, cls, row in zip(names, classes.tolist(), proba.tolist()):
        writer.writerow([name, cls, *([labels[cls]] if named else []), *(f"{p:.8g}" for p in row)])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text.getvalue())
    return out, len(names)


def probability_columns(names: list[str]) -> list[str]:
    """The probability columns' names in label order: prob_<class name>, the name reduced to letters, digits and
    _ (Unicode letters stay; prob_0..prob_{K-1} when the names are the indices); a name that would repeat another, or say nothing,
    gets its class index instead (prob_3), so that every column is unique and safe in any CSV or data frame."""
    columns: list[str] = []
    for k, name in enumerate(names):
        safe = re.sub(r"\W+", "_", name).strip("_")
        columns.append(f"prob_{safe}" if safe else f"prob_{k}")
    counts = {c: columns.count(c) for c in columns}
    indices = {f"prob_{k}" for k in range(len(names))}
    out = []  # unique: a kept name is unique or its own index, a replaced one its own index
    for k, column in enumerate(columns):
        # a repeated name, or an index-like name that is another class's index (prob_2 for class 5), is ambiguous
        if counts[column] > 1 or (column in indices and column != f"prob_{k}"):
            column = f"prob_{k}"
        out.append(column)
    return out
