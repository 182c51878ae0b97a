"""Loading a finished run: its config.yaml rebuilds the model and the data (through splits.json, the exact split
the run used; neither its unlabeled shards nor its label store, which only training reads), and model.pt (the
evaluated model, the EMA student) or best_model.pt (the best on validation) fills the model's weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from metapl.core.checkpoint import check_weight_values, load_weights, read_training_state, state_mismatch
from metapl.core.errors import CheckpointError, ConfigError
from metapl.parts.data import build_data
from metapl.parts.data.loaders import DataBundle
from metapl.parts.methods import METHODS, NETWORKS
from metapl.run.build import build_model
from metapl.run.config import Config, load_config_file
from metapl.run.run_dir import CHECKPOINT, TEACHER_MODEL, with_own_split

WEIGHTS = {"final": "model.pt", "best": "best_model.pt"}


def output_name(name: str, network: str) -> str:
    """A command's default output name in the run directory for `network`: predictions.csv for the student,
    teacher_predictions.csv for the teacher (so that neither replaces the other)."""
    return name if network == "student" else f"{network}_{name}"


@dataclass
class LoadedRun:
    """A run's config, its rebuilt data and its model with the chosen weights loaded, in eval mode."""

    run: Path
    config: Config
    data: DataBundle
    model: nn.Module
    weights_path: Path
    class_names: list[str] = field(default_factory=list)  # in label order (classes.json; "0".."K-1" without)
    network: str = "student"  # which of the run's networks: the evaluated student, or the teacher (NETWORKS)


def load_run(
    run: Path, weights: str = "final", device: torch.device | str = "cpu", network: str = "student"
) -> LoadedRun:
    """Rebuild a run's data and model and load its final (model.pt) or best (best_model.pt) weights; with
    network="teacher", the teacher's network and its final weights (teacher_model.pt)."""
    run = Path(run)
    if not run.is_dir():
        raise CheckpointError(f"no run directory at {run}; pass a directory written by metapl train --out")
    if not (run / "config.yaml").is_file():
        raise CheckpointError(
            f"{run} is not a run directory (no config.yaml); pass a directory written by metapl train"
        )
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights!r} is not allowed; use one of: {', '.join(WEIGHTS)}")
    if network not in NETWORKS:
        raise ConfigError(f"network={network!r} is not allowed; use one of: {', '.join(NETWORKS)}")
    cfg = load_config_file(run / "config.yaml")
    if network == "teacher":
        _check_teacher(cfg, weights)
    # The indices the run saved, not a re-draw: the split stays the run's even if the drawing code changes.
    cfg.data = with_own_split(run, cfg.data)
    data = build_data(model_data(cfg.data), cfg.train.seed)
    if cfg.data.unlabeled_shards:  # not read, yet still the run's inputs: outputs spare them (data_files)
        from metapl.parts.data.shards import ShardSet, named_shards

        data.x_unlabeled = ShardSet(cfg.data.unlabeled_shards, named_shards(cfg.data.unlabeled_shards), 0)
    path = run / WEIGHTS[weights]
    if not (run / WEIGHTS["final"]).is_file() and (run / CHECKPOINT).is_file():
        raise CheckpointError(
            f"no {path}: the run's training has not finished; run the same metapl train command again to finish it "
            f"(it resumes from {run / CHECKPOINT})"
        )
    if weights == "best" and not path.is_file():
        raise CheckpointError(f"no {path}: the run kept no best-on-validation weights; use --weights final")
    if network == "teacher":
        path, state = _teacher_weights(run, cfg)
    else:
        state = load_weights(path, fix="pass a run whose weights are intact, or train this one again")
    model = build_model(cfg, data, role=network)
    load_state(model, state, path, cfg, data)
    model.to(device).eval()
    return LoadedRun(run, cfg, data, model, path, class_names(run, data), network)


def _check_teacher(cfg: Config, weights: str) -> None:
    """Refuse --network teacher for a run that has no teacher image network, and --weights best with it."""
    method = cfg.method.name
    if method == "reduced_mpl":
        raise ConfigError(
            "method reduced_mpl's teacher is the reduced teacher, a small network over the stored class "
            "distributions of data.label_dir, not an image network: it cannot score, predict or export images; use "
            "--network student, or the big teacher's own run (the source of metapl label)"
        )
    # a method trains a teacher image network when it trains two networks of the run's model
    with_teacher = [name for name in METHODS.names() if METHODS.get(name).memory.networks > 1]
    if method not in with_teacher:
        raise ConfigError(
            f"method {method} trains no teacher; use --network student (methods with a teacher: "
            f"{', '.join(with_teacher)})"
        )
    if weights != "final":
        raise ConfigError(
            f"--weights {weights} --network teacher: a run keeps its teacher's final weights only "
            f"({TEACHER_MODEL}); use --weights final"
        )


def _teacher_weights(run: Path, cfg: Config) -> tuple[Path, object]:
    """The teacher's final weights: teacher_model.pt, or for a run of a metapl before that file, the teacher
    state in checkpoint.pt when the checkpoint is at the end of training (the teacher does not change after)."""
    path = run / TEACHER_MODEL
    if path.is_file():
        return path, load_weights(path, fix="pass a run whose weights are intact, or train this one again")
    checkpoint = run / CHECKPOINT
    if checkpoint.is_file():
        state = read_training_state(checkpoint, fix="train the run again with --restart to get its teacher's weights")
        finished = state.get("phase") == "finetune" or state.get("step") == cfg.train.steps
        teacher = state.get("method", {}).get("teacher") if isinstance(state.get("method"), dict) else None
        if finished and teacher is not None:
            return checkpoint, teacher
    raise CheckpointError(
        f"no {path}: the run predates {TEACHER_MODEL} and keeps no {CHECKPOINT} of the "
        "end of training to take the teacher from; train the run again (metapl train --restart) to keep its teacher's weights"
    )


def model_data(data_cfg):
    """The data config that a finished run's model needs: its split, inputs and test set, without the unlabeled
    shards and the stored teacher's distributions, which only training reads (they may be gone by now)."""
    return dataclasses.replace(data_cfg, unlabeled_shards="", label_dir="")


def class_names(run: Path, data: DataBundle) -> list[str]:
    """The run's class names in label order: its classes.json, else the data's names, else "0".."K-1" (runs of
    metapl before classes.json)."""
    path = Path(run) / "classes.json"
    if not path.is_file():
        return list(data.class_names or [str(k) for k in range(data.num_classes)])
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("names")
    except (OSError, ValueError, AttributeError):
        names = None
    if not isinstance(names, list) or len(names) != data.num_classes or not all(isinstance(n, str) for n in names):
        raise CheckpointError(
            f"{path} does not hold the names of the run's {data.num_classes} classes; restore it, or delete it to "
            "get class indices only"
        )
    return names


def data_files(data: DataBundle) -> list[str]:
    """Every image file a run's data reads (runs on image files), for the check that an output spares them."""
    files: list[str] = []
    for x in (data.x_labeled, data.x_unlabeled, data.x_val, data.x_test):
        paths = getattr(x, "paths", None)
        if paths is not None:
            files.extend(str(p) for p in paths)
    return files


def load_state(model: nn.Module, state: object, path: Path, cfg: Config, data: DataBundle) -> None:
    fix = (
        f"pass weights written by this run (its config.yaml builds {cfg.model.name} with {data.num_classes} classes "
        f"and input shape {tuple(data.input_shape)})"
    )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors; {fix}")
    check_weight_values(state, path, "train the run again, or pass another run's weights")
    problem = state_mismatch(model, state)
    if problem is None:
        try:
            model.load_state_dict(state)
        except RuntimeError as err:  # anything the checks above did not foresee, reduced to its first detail
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            problem = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
    if problem is not None:
        raise CheckpointError(f"{path} does not fit the model of {path.parent / 'config.yaml'}: {problem}; {fix}")
