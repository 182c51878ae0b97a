"""`metapl eval`: a run's weights scored again on its validation and test sets."""

from __future__ import annotations

from pathlib import Path

from metapl.commands.finished_run import load_run, output_name
from metapl.core.atomic import atomic_write_json
from metapl.core.errors import ConfigError
from metapl.run import run_inputs
from metapl.run.build import resolve_device
from metapl.run.scoring import evaluate


def eval_path(run: Path, network: str = "student") -> Path:
    """Where evaluate_run writes its scores: RUN/eval.json (the student), RUN/teacher_eval.json (the teacher)."""
    return Path(run) / output_name("eval.json", network)


def evaluate_run(run: Path, weights: str = "final", batch_size: int | None = None, network: str = "student") -> dict:
    """Top-1 (top-5 above 5 classes) and loss on the run's validation and test sets of the student (or with
    network="teacher" the teacher's final weights); also written to eval_path(run, network)."""
    loaded = load_run(run, weights, resolve_device("auto"), network)
    # the test set the run was scored on when it trained (inputs.json), so that the scores compare
    run_inputs.check(Path(run), run_inputs.test_set_input(loaded.data), command="eval")
    batch_size = batch_size if batch_size is not None else loaded.config.train.eval_batch_size
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} is impossible; it must be at least 1")
    data = loaded.data
    result: dict = {
        "run": str(run),
        "network": loaded.network,
        "weights": weights,
        "weights_file": loaded.weights_path.name,
        "device": str(next(loaded.model.parameters()).device),
        "batch_size": batch_size,
    }
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        result[f"{split}_examples"] = len(y)
        result.update({f"{split}_{k}": v for k, v in evaluate(loaded.model, x, y, batch_size).items()})
    atomic_write_json(result, eval_path(run, network))
    return result


def format_eval_table(result: dict) -> str:
    """The scores of evaluate_run as a small table, one row per split; '-' where a split is empty."""
    metrics = [m for m in ("top1", "top5", "loss") if f"test_{m}" in result or f"val_{m}" in result]
    rows = [["split", "examples", *metrics]]
    for split in ("val", "test"):
        values = [f"{result[f'{split}_{m}']:.4f}" if f"{split}_{m}" in result else "-" for m in metrics]
        rows.append([split, str(result[f"{split}_examples"]), *values])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    network = result.get("network", "student")
    lines = [f"{network}, weights: {result['weights']} ({result['weights_file']})"]
    lines += [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join(lines)
