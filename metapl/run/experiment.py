"""From a validated Config to a finished run directory: checks, data, method, the phases, the summary.

Everything that can be checked is checked before the run directory is written (run/run_dir.py says when a
directory may be resumed, started over or must be refused); then the phases run: training, and finetuning for
methods that have it. Rank 0 alone writes under torchrun.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metapl.core import distributed
from metapl.core.atomic import atomic_write_json
from metapl.core.checkpoint import (
    CheckpointKeeper,
    atomic_save,
    process_rng_states,
    set_process_rng_states,
    training_state,
)
from metapl.core.errors import CheckpointError, ConfigError, DataError, TrainingError
from metapl.core.optim import OptimSettings
from metapl.parts.data import build_data
from metapl.parts.data.loaders import BatchStream, DataBundle, check_stream_data
from metapl.parts.methods.base import Method
from metapl.parts.methods.supervised import finetuner
from metapl.run import run_dir, run_inputs
from metapl.run.budget import check_data_settings, check_step_memory
from metapl.run.build import build_method, check_num_classes, method_label, resolve_device, seed_everything
from metapl.run.config import Config
from metapl.run.logger import RunLogger, read_metrics
from metapl.run.loop import FitResult, fit
from metapl.run.loop import _better as better_evaluation  # the rule that selects the student's evaluation
from metapl.run.outputs import check_output_folder, config_inputs
from metapl.run.run_dir import CHECKPOINT, TEACHER_MODEL, RunLock
from metapl.run.scoring import make_evaluator
from metapl.run.short_runs import short_run_warning
from metapl.run.speed import AUTOCAST_DTYPES, apply_switches, check_switches
from metapl.run.threads import apply_threads


def run_experiment(
    cfg: Config,
    out_dir: Path,
    progress: bool = True,
    tensorboard: bool = True,
    restart: bool = False,
    announce: Callable[[str], None] | None = None,
) -> dict:
    """Train as `cfg` says and write the run directory; returns the summary (also in summary.json).

        When `out_dir` holds a checkpoint of the same config, training resumes from it and ends with the same
        weights as an uninterrupted run; `restart` discards what the directory holds and starts over. A lock file
        keeps a second process from training into the same directory. `announce` hears one line when a run resumes or
    continues, and a warning when train.steps is short for the schedule's wait and warm-up (run/short_runs.py).
    """
    out_dir = Path(out_dir)
    rank_device = distributed.setup_from_env()  # under torchrun: join the group, one device per rank
    lock = RunLock(out_dir)
    main = distributed.is_main()
    try:
        world = distributed.world_size()
        if cfg.data.batch_size % world:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is the global labeled batch and must be divisible by the "
                f"{world} processes; use a multiple of {world}"
            )
        use_rank_device = rank_device is not None and cfg.train.device == "auto"
        device = rank_device if rank_device is not None and use_rank_device else resolve_device(cfg.train.device)
        check_switches(cfg.train, device)
        check_output_folder(out_dir, config_inputs(cfg))
        saved = run_dir.resume_state(out_dir, cfg, restart)
        if saved is not None:  # the shards, label store and weights the run started with, before reading them
            run_inputs.check(out_dir, run_inputs.file_inputs(cfg))
        seed_everything(cfg.train.seed)
        check_data_settings(cfg.data)
        data_cfg = run_dir.with_own_split(out_dir, cfg.data) if saved is not None else cfg.data
        data = build_data(data_cfg, cfg.train.seed)  # the split's pool checked against splits.json's fingerprint
        if saved is not None:
            run_inputs.check(out_dir, run_inputs.test_set_input(data))
        check_num_classes(cfg, data)
        if len(data.y_labeled) < cfg.data.batch_size:
            raise DataError(
                f"the labeled set has {len(data.y_labeled)} examples, fewer than data.batch_size={cfg.data.batch_size}; "
                f"set data.batch_size to at most {len(data.y_labeled)} or label more examples"
            )
        check_step_memory(cfg, data, device, world)  # sizes that cannot fit, before the networks are allocated
        method = build_method(cfg, data, device)  # the same seed on every rank: the same initial weights
        apply_threads(cfg.train.threads, list(method.networks().values()), device, data.input_shape)
        check_stream_data(data, labeled_only=not method.uses_unlabeled)
        inputs = {**run_inputs.file_inputs(cfg), **run_inputs.test_set_input(data)} if saved is None and main else {}
        # Only now, with every check passed, is the directory written.
        if main:
            run_dir.claim(out_dir)
            lock.acquire()
            names = data.class_names or [str(k) for k in range(data.num_classes)]
            continued = saved is not None and "continued_from" in saved
            run_dir.start(out_dir, cfg, data.split, fresh=saved is None, class_names=names, continued=continued)
            if saved is None:
                run_inputs.record(out_dir, inputs)
            if saved is not None and announce is not None:
                phase_step = _run_step(cfg, saved["phase"], saved["step"])
                if continued:
                    again = ", then finetuning again" if method.finetunes and cfg.finetune.steps > 0 else ""
                    announce(
                        f"continuing the run in {out_dir} (train.steps={saved['continued_from']}) from step "
                        f"{phase_step} to train.steps={cfg.train.steps}{again}"
                    )
                else:
                    announce(f"resuming the run in {out_dir} from its checkpoint at step {phase_step}")
            warning = short_run_warning(cfg)
            if warning is not None and announce is not None:  # every check passed: the run is about to train
                announce(f"metapl: warning: {warning}")
        return _run_phases(cfg, out_dir, data, method, device, saved, progress, tensorboard)
    except TrainingError as err:
        kept = (out_dir / CHECKPOINT).exists()
        hint = (
            f"{out_dir} keeps its last finite checkpoint; to train again with new settings add --restart"
            if kept
            else "nothing was kept, so the same --out takes new settings"
        )
        raise TrainingError(f"{err}; {hint}") from None
    finally:
        lock.release()
        distributed.cleanup()


def _run_phases(
    cfg: Config,
    out_dir: Path,
    data: DataBundle,
    method: Method,
    device: torch.device,
    saved: dict | None,
    progress: bool,
    tensorboard: bool,
) -> dict:
    """The phases (training, then finetuning for methods that have it), resumed from `saved` when given."""
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    apply_switches(cfg.train, method, image_inputs=len(data.input_shape) == 3)
    if world > 1:
        torch.manual_seed(cfg.train.seed + 1_000_003 * rank)  # but each rank its own dropout masks and samples
    results: dict[str, FitResult] = {}
    phase = "train"
    if saved is not None:
        with _restoring(out_dir):
            method.load_state_dict(saved["method"])
            results = {name: FitResult.from_state(state) for name, state in saved["results"].items()}
        phase = saved["phase"]
    keeper = CheckpointKeeper(out_dir / CHECKPOINT, cfg.train.keep_checkpoints)

    # Where training ended (its stream and RNG): finetuning checkpoints keep it, so that a run trained longer
    # (a raised train.steps) continues its training phase (run_dir.continued).
    train_end: dict | None = saved.get("train_end") if saved is not None else None

    def checkpointer(phase_name: str, stream: BatchStream, tuner: Method | None = None):
        def save(step: int, result: FitResult) -> None:
            results[phase_name] = result
            state = training_state(
                phase_name,
                step,
                method.state_dict(),
                tuner.state_dict() if tuner is not None else None,
                stream.state_dict(),
                {name: r.state_dict() for name, r in results.items()},
            )
            if phase_name == "finetune" and train_end is not None:
                state["train_end"] = train_end
            keeper.save(state, _run_step(cfg, phase_name, step))

        return save

    resume_step = _run_step(cfg, phase, saved["step"]) if saved is not None else None
    logger = RunLogger(out_dir, tensorboard=tensorboard, resume_step=resume_step or 0) if main else None
    common: dict[str, Any] = dict(  # what both phases' loops share
        evaluate=make_evaluator(data, cfg.train.eval_batch_size),
        logger=logger,
        device=device,
        eval_every=cfg.train.eval_every,
        log_every=cfg.train.log_every,
        progress=progress and main,
        autocast_dtype=AUTOCAST_DTYPES[cfg.train.precision],
        channels_last=cfg.train.channels_last,
        checkpoint_every=cfg.train.checkpoint_every,
        nonfinite=cfg.train.nonfinite,
        max_skipped_in_a_row=cfg.train.max_skipped_in_a_row,
    )
    try:
        if phase == "train":
            stream = BatchStream(
                data,
                cfg.data.batch_size,
                cfg.data.mu,
                cfg.train.seed,
                labeled_only=not method.uses_unlabeled,
                rank=rank,
                world_size=world,
                augment_device=device if cfg.data.augment_on_device else None,
            )
            if saved is not None:
                with _restoring(out_dir):
                    stream.load_state_dict(saved["stream"])
                    set_process_rng_states(saved["rng"])
            checkpoint = checkpointer("train", stream) if main else None
            results["train"] = fit(
                method, stream, cfg.train.steps, resume=results.get("train"), checkpoint=checkpoint, **common
            )
            train_end = {"stream": stream.state_dict(), "rng": process_rng_states()}
            stream.close()  # its loader workers (image files) are not needed while finetuning
        final_model = method.eval_model()
        if method.finetunes and cfg.finetune.steps > 0:
            ft = cfg.finetune
            settings = OptimSettings(
                lr=ft.lr, momentum=ft.momentum, nesterov=ft.momentum > 0, schedule="constant", total_steps=ft.steps
            )
            tuner = finetuner(method.eval_model(), data.num_classes, settings, ft.label_smoothing)
            batch_size = min(ft.batch_size, len(data.y_labeled)) // world * world
            ft_stream = BatchStream(data, batch_size, 1, cfg.train.seed + 1, True, rank=rank, world_size=world)
            if saved is not None and phase == "finetune":
                with _restoring(out_dir):
                    tuner.load_state_dict(saved["finetune"])
                    ft_stream.load_state_dict(saved["stream"])
                    set_process_rng_states(saved["rng"])
            checkpoint = checkpointer("finetune", ft_stream, tuner) if main else None
            results["finetune"] = fit(
                tuner,
                ft_stream,
                ft.steps,
                phase="finetune",
                step_offset=_run_step(cfg, "finetune", 0),
                resume=results.get("finetune"),
                checkpoint=checkpoint,
                **common,
            )
            ft_stream.close()
            final_model = tuner.eval_model()
    finally:
        if logger is not None:
            logger.close()

    if not main:
        return {}
    atomic_save(_cpu_state(final_model), out_dir / "model.pt")
    teacher = method.reported_networks().get("teacher")  # an image network (mpl, pseudo_label): eval/predict/export
    if teacher is not None:
        atomic_save(_cpu_state(teacher), out_dir / TEACHER_MODEL)
    last = results.get("finetune", results["train"])
    if last.best_state is not None:
        atomic_save(last.best_state, out_dir / "best_model.pt")
    summary = {
        "preset": cfg.preset,
        "method": cfg.method.name,
        "method_label": method_label(cfg),
        "seed": cfg.train.seed,
        "device": str(device),
        "resumed_from_step": resume_step,
        **{f"{name}_{key}": value for name, r in results.items() for key, value in _phase_summary(r).items()},
    }
    summary["test_top1"] = last.final.get("test_top1")
    summary["test_top1_selected"] = last.best.get("test_top1")
    summary.update(_teacher_summary(out_dir, results["train"]))
    atomic_write_json(summary, out_dir / "summary.json")
    return summary


@contextlib.contextmanager
def _restoring(out_dir: Path) -> Iterator[None]:
    """Turns a checkpoint whose tensors do not fit the models and optimisers built from config.yaml (another
    architecture or class count) into one line naming the file."""
    path = out_dir / CHECKPOINT
    try:
        yield
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        # load_state_dict's first line only says "Error(s) in loading state_dict"; the second names the tensor.
        detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0]
        if isinstance(err, KeyError):
            detail = f"it lacks the entry {err.args[0]!r}" if err.args else "an entry is missing"
        detail = detail if len(detail) <= 200 else detail[:197] + "..."  # load_state_dict lists every key
        raise CheckpointError(
            f"{path} does not fit the models of {out_dir / 'config.yaml'} ({detail.rstrip('.')}); "
            + run_dir.start_over_hint(path)
        ) from None


def _run_step(cfg: Config, phase: str, step: int) -> int:
    """A phase's step on the run's one step axis (logs, checkpoints): finetuning continues after training."""
    return step if phase == "train" else cfg.train.steps + step


def _phase_summary(result: FitResult) -> dict:
    out = {f"final_{k}": v for k, v in result.final.items()}
    out.update({f"best_{k}": v for k, v in result.best.items()})
    out.update(best_step=result.best_step, seconds=round(result.seconds, 2), steps=result.steps)
    out["skipped_steps"] = result.skipped_steps
    return out


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _teacher_summary(out_dir: Path, train: FitResult) -> dict:
    """The teacher's test top-1 at the end of training (teacher_test_top1) and at the evaluation where its own
    validation top-1 was highest (teacher_test_top1_selected), as the student's test_top1 and
    test_top1_selected; {} for methods that score no teacher (a teacher is trained in the training phase only)."""
    if "teacher_test_top1" not in train.final:
        return {}
    selected = train.final  # without a validation split nothing may select on the test set: the last evaluation
    try:
        records = read_metrics(out_dir)
    except (OSError, ValueError):
        records = []
    best: dict | None = None
    for record in records:
        if record.get("phase") == "train_eval" and "teacher_val_top1" in record and "teacher_test_top1" in record:
            if best is None or better_evaluation(record, best, "teacher_val_top1"):
                best = record
    if best is not None:
        selected = best
    return {
        "teacher_test_top1": train.final["teacher_test_top1"],
        "teacher_test_top1_selected": selected["teacher_test_top1"],
    }
