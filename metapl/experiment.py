"""From a validated Config to a finished run directory: data, models, method, loop, finetuning, summary."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metapl import distributed
from metapl.config import Config, flatten, load_config_file, save_config
from metapl.data import build_data
from metapl.data.loaders import BatchStream, DataBundle
from metapl.engine.checkpoint import (
    CheckpointKeeper,
    RunLock,
    atomic_save,
    atomic_write_json,
    load_weights,
    rng_state,
    set_rng_state,
)
from metapl.engine.evaluate import evaluate
from metapl.engine.logger import RunLogger
from metapl.engine.loop import FitResult, fit
from metapl.errors import CheckpointError, ConfigError, DataError
from metapl.methods import UDA, AuxLossSettings, MetaPseudoLabels, PseudoLabel, Supervised
from metapl.methods.supervised import finetuner
from metapl.models import compile_network, create_model
from metapl.models.normalize import Standardized
from metapl.optim import OptimSettings


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA GPU is visible; use train.device=auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: Config, data: DataBundle) -> nn.Module:
    m = cfg.model
    options: dict = {}
    if m.name == "mlp":
        options = {"hidden": tuple(m.hidden), "activation": m.activation, "batch_norm": m.batch_norm}
        if m.init_range > 0:
            options["init_range"] = m.init_range
    elif m.name == "small_cnn":
        options = {"width": m.width}
    check_num_classes(cfg, data)
    try:
        model = create_model(m.name, data.num_classes, data.input_shape, dropout=m.dropout, **options)
    except ValueError as err:  # the model cannot take this data's inputs
        raise ConfigError(f"model.name={m.name!r} does not fit data.name={cfg.data.name!r}: {err}") from None
    if data.normalization is not None:
        model = Standardized(model, *data.normalization)
    return model


def check_num_classes(cfg: Config, data: DataBundle) -> None:
    """model.num_classes, when set, must be the data's class count (a guard for folder and CSV datasets)."""
    if cfg.model.num_classes and cfg.model.num_classes != data.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but data.name={cfg.data.name!r} has {data.num_classes} "
            f"classes; set model.num_classes={data.num_classes}, or 0 to take the data's"
        )


def _optim(cfg: Config, settings: OptimSettings, total_steps: int) -> OptimSettings:
    """The run's settings for one network: its step budget, the batch-scaled LR and fp16 loss scaling."""
    lr = settings.lr * cfg.data.batch_size / 256 if cfg.train.scale_lr else settings.lr
    fp16 = cfg.train.precision == "fp16"
    return dataclasses.replace(settings, lr=lr, total_steps=total_steps, fp16_loss_scale=fp16)


def build_method(cfg: Config, data: DataBundle, device: torch.device):
    """The method named by cfg.method.name, with fresh models on `device`."""
    m, steps, k = cfg.method, cfg.train.steps, data.num_classes
    ema = cfg.train.ema_decay or None
    losses = AuxLossSettings(
        supervised=m.supervised_loss,
        label_smoothing=m.label_smoothing,
        tsa=None if m.tsa == "none" else m.tsa,
        tsa_steps=steps,
        uda=m.uda,
        uda_weight=m.uda_weight,
        uda_temperature=m.uda_temperature,
        uda_threshold=m.uda_threshold,
        uda_ramp_steps=m.uda_ramp_steps,
    )
    if m.name == "supervised":
        return Supervised(build_model(cfg, data).to(device), k, _optim(cfg, cfg.student, steps), m.label_smoothing, ema)
    if m.name == "uda":
        losses = dataclasses.replace(losses, supervised=True, uda=True)
        return UDA(build_model(cfg, data).to(device), k, _optim(cfg, cfg.student, steps), losses, ema)
    teacher, student = build_model(cfg, data).to(device), build_model(cfg, data).to(device)
    if m.name == "pseudo_label":
        teacher_steps = max(1, int(round(steps * m.teacher_fraction)))
        return PseudoLabel(
            teacher,
            student,
            k,
            teacher_steps,
            teacher_optim=_optim(cfg, cfg.teacher, teacher_steps),
            student_optim=_optim(cfg, cfg.student, steps - teacher_steps),
            label_smoothing=m.label_smoothing,
            student_label_smoothing=m.student_label_smoothing,
            ema_decay=ema,
        )
    return MetaPseudoLabels(
        teacher,
        student,
        k,
        feedback=m.feedback,
        h=m.h,
        teacher_optim=_optim(cfg, cfg.teacher, steps),
        student_optim=_optim(cfg, cfg.student, steps),
        teacher_losses=losses,
        student_label_smoothing=m.student_label_smoothing,
        sampling=m.sampling,
        h_sign=m.h_sign,
        baseline=m.baseline,
        baseline_decay=m.baseline_decay,
        reinforce_reduction=m.reinforce_reduction,
        ema_decay=ema,
        teacher_graph=m.teacher_graph,
    )


def networks(method) -> list[nn.Module]:
    """The trained networks of a method (model, or teacher and student), whatever the method."""
    return [m for m in (getattr(method, n, None) for n in ("model", "teacher", "student")) if isinstance(m, nn.Module)]


def _apply_speed_switches(cfg: Config, method, data: DataBundle, device: torch.device) -> None:
    """channels_last, SyncBatchNorm and torch.compile, as the config asks (after the EMA copied the student)."""
    t = cfg.train
    if t.precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA GPU (CPUs emulate float16, very slowly); use bf16 or fp32")
    if t.sync_bn and (device.type != "cuda" or distributed.world_size() == 1):
        raise ConfigError("train.sync_bn=true needs torchrun with several CUDA processes; set train.sync_bn=false")
    if t.compile and cfg.method.name == "mpl" and cfg.method.feedback == "soft":
        raise ConfigError("train.compile=true does not support method.feedback=soft (its JVP); set train.compile=false")
    for net in networks(method):
        if t.channels_last and len(data.input_shape) == 3:
            net.to(memory_format=torch.channels_last)
        if t.sync_bn:
            _convert_sync_bn(net)
        if t.compile:
            compile_network(net)


def _convert_sync_bn(net: nn.Module) -> None:
    """Swap BatchNorm layers for SyncBatchNorm in place (the parameters stay the same objects)."""
    for name, child in net.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(net, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            _convert_sync_bn(child)


def make_evaluator(data: DataBundle, batch_size: int):
    """Validation and test scores of the method's evaluated model (the EMA student), and the teacher's, if any."""

    def score(model: nn.Module, prefix: str) -> dict[str, float]:
        scores = {}
        for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
            scores.update({f"{prefix}{split}_{k}": v for k, v in evaluate(model, x, y, batch_size).items()})
        return scores

    def run(method) -> dict[str, float]:
        scores = score(method.eval_model(), "")
        teacher = getattr(method, "teacher", None)
        if teacher is not None and teacher is not method.eval_model():
            scores.update(score(teacher, "teacher_"))
        return scores

    return run


CHECKPOINT = "checkpoint.pt"


def run_experiment(cfg: Config, out_dir: Path, progress: bool = True, tensorboard: bool = True) -> dict:
    """Train as `cfg` says and write the run directory; returns the summary (also in summary.json).

    When `out_dir` holds a checkpoint of the same config, training resumes from it and ends with the same
    weights as an uninterrupted run. A lock file keeps a second process from training into the same directory.
    """
    out_dir = Path(out_dir)
    rank_device = distributed.setup_from_env()  # under torchrun: join the group, one device per rank
    lock = RunLock(out_dir)
    try:
        world = distributed.world_size()
        if cfg.data.batch_size % world:
            raise ConfigError(
                f"data.batch_size={cfg.data.batch_size} is the global labeled batch and must be divisible by the "
                f"{world} processes; use a multiple of {world}"
            )
        use_rank_device = rank_device is not None and cfg.train.device == "auto"
        device = rank_device if use_rank_device else resolve_device(cfg.train.device)
        saved = load_resume_state(cfg, out_dir)
        seed_everything(cfg.train.seed)
        data = build_data(cfg.data, cfg.train.seed)  # before anything is written: a bad dataset leaves no trace
        check_num_classes(cfg, data)
        if len(data.y_labeled) < cfg.data.batch_size:
            raise DataError(
                f"the labeled set has {len(data.y_labeled)} examples, fewer than data.batch_size={cfg.data.batch_size}; "
                f"set data.batch_size to at most {len(data.y_labeled)} or label more examples"
            )
        if distributed.is_main():
            out_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            if saved is None:
                save_config(cfg, out_dir / "config.yaml")
                data.split.save(out_dir / "splits.json")
        return _train(cfg, out_dir, data, device, saved, progress, tensorboard)
    finally:
        lock.release()
        distributed.cleanup()


def _train(
    cfg: Config,
    out_dir: Path,
    data: DataBundle,
    device: torch.device,
    saved: dict | None,
    progress: bool,
    tensorboard: bool,
) -> dict:
    """The phases (training, then finetuning after MPL), resumed from `saved` when given; rank 0 writes."""
    rank, world, main = distributed.rank(), distributed.world_size(), distributed.is_main()
    method = build_method(cfg, data, device)  # the same seed on every rank: the same initial weights
    _apply_speed_switches(cfg, method, data, device)
    if world > 1:
        torch.manual_seed(cfg.train.seed + 1_000_003 * rank)  # but each rank its own dropout masks and samples
    evaluator = make_evaluator(data, cfg.train.eval_batch_size)
    results: dict[str, FitResult] = {}
    phase = "train"
    if saved is not None:
        with _restoring(out_dir):
            method.load_state_dict(saved["method"])
            results = {name: FitResult.from_state(state) for name, state in saved["results"].items()}
        phase = saved["phase"]
    keeper = CheckpointKeeper(out_dir / CHECKPOINT, cfg.train.keep_checkpoints)

    def checkpointer(phase_name: str, stream: BatchStream, tuner=None):
        def save(step: int, result: FitResult) -> None:
            results[phase_name] = result
            state = {
                "format": 1,
                "phase": phase_name,
                "step": step,
                "method": method.state_dict(),
                "finetune": tuner.state_dict() if tuner is not None else None,
                "stream": stream.state_dict(),
                "results": {name: r.state_dict() for name, r in results.items()},
                "rng": rng_state(),
            }
            keeper.save(state, _run_step(cfg, phase_name, step))

        return save

    resume_step = None
    if saved is not None:
        resume_step = _run_step(cfg, phase, saved["step"])
    # A fresh start in a directory whose earlier attempt stopped before its first checkpoint drops that attempt's logs.
    log_from = resume_step if saved is not None or not (out_dir / "metrics.jsonl").exists() else 0
    logger = RunLogger(out_dir, tensorboard=tensorboard, resume_step=log_from) if main else None
    common = dict(
        evaluate=evaluator,
        logger=logger,
        device=device,
        eval_every=cfg.train.eval_every,
        log_every=cfg.train.log_every,
        progress=progress and main,
        autocast_dtype={"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision],
        channels_last=cfg.train.channels_last,
        checkpoint_every=cfg.train.checkpoint_every,
        nonfinite=cfg.train.nonfinite,
        max_skipped_in_a_row=cfg.train.max_skipped_in_a_row,
    )
    try:
        if phase == "train":
            labeled_only = cfg.method.name == "supervised"
            stream = BatchStream(
                data,
                cfg.data.batch_size,
                cfg.data.mu,
                cfg.train.seed,
                labeled_only,
                rank=rank,
                world_size=world,
                augment_device=device if cfg.data.augment_on_device else None,
            )
            if saved is not None:
                with _restoring(out_dir):
                    stream.load_state_dict(saved["stream"])
                    set_rng_state(saved["rng"])
            checkpoint = checkpointer("train", stream) if main else None
            results["train"] = fit(
                method, stream, cfg.train.steps, resume=results.get("train"), checkpoint=checkpoint, **common
            )
            stream.close()  # its loader workers (image files) are not needed while finetuning
        final_model = method.eval_model()
        if cfg.finetune.steps > 0 and cfg.method.name == "mpl":
            ft = cfg.finetune
            settings = OptimSettings(
                lr=ft.lr, momentum=ft.momentum, nesterov=ft.momentum > 0, schedule="constant", total_steps=ft.steps
            )
            tuner = finetuner(method.eval_model(), data.num_classes, settings, ft.label_smoothing)
            batch_size = min(ft.batch_size, len(data.y_labeled)) // world * world
            ft_stream = BatchStream(data, batch_size, 1, cfg.train.seed + 1, True, rank=rank, world_size=world)
            if phase == "finetune":
                with _restoring(out_dir):
                    tuner.load_state_dict(saved["finetune"])
                    ft_stream.load_state_dict(saved["stream"])
                    set_rng_state(saved["rng"])
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
    last = results.get("finetune", results["train"])
    if last.best_state is not None:
        atomic_save(last.best_state, out_dir / "best_model.pt")
    summary = {
        "preset": cfg.preset,
        "method": cfg.method.name,
        "feedback": cfg.method.feedback if cfg.method.name == "mpl" else None,
        "seed": cfg.train.seed,
        "device": str(device),
        "resumed_from_step": resume_step,
        **{f"{name}_{key}": value for name, r in results.items() for key, value in _phase_summary(r).items()},
    }
    summary["test_top1"] = last.final.get("test_top1")
    summary["test_top1_selected"] = last.best.get("test_top1")
    atomic_write_json(summary, out_dir / "summary.json")
    return summary


# What metapl writes into a run directory besides config.yaml and dot-files (a directory that lost its
# config.yaml, or is being written by another rank, is still a run).
_RUN_NAMES = {"config.tmp", "splits.json", "metrics.jsonl", "tensorboard", "model.pt", "best_model.pt", "summary.json"}


def load_resume_state(cfg: Config, out_dir: Path) -> dict | None:
    """The checkpoint in `out_dir` when there is one; refuses one written with a different config or that cannot
    be read, and a directory of other files that a fresh run would overwrite."""
    path = out_dir / CHECKPOINT
    if out_dir.is_dir() and not path.exists():
        _refuse_foreign_directory(out_dir, cfg)
    if not path.exists():
        return None
    _refuse_other_config(load_config_file(out_dir / "config.yaml"), cfg, out_dir)
    saved = load_weights(path, fix=_START_OVER.format(path=path))
    expected = {"phase", "step", "method", "stream", "results", "rng", "finetune"}
    if not isinstance(saved, dict) or saved.get("format") != 1 or not expected <= saved.keys():
        raise CheckpointError(f"{path} is not a checkpoint written by metapl train; {_START_OVER.format(path=path)}")
    if saved["phase"] not in ("train", "finetune") or (saved["phase"] == "finetune" and saved["finetune"] is None):
        raise CheckpointError(f"{path} names an unknown phase; {_START_OVER.format(path=path)}")
    return saved


def _refuse_other_config(saved_cfg: Config, cfg: Config, out_dir: Path) -> None:
    saved_cfg.preset = cfg.preset
    for (key, old), (_, new) in zip(flatten(saved_cfg.to_dict()), flatten(cfg.to_dict())):
        if old != new:
            raise ConfigError(
                f"{out_dir} holds a run with {key}={old!r}, not {new!r}; resume with the same settings or pass a new --out"
            )


def _refuse_foreign_directory(out_dir: Path, cfg: Config) -> None:
    """A fresh run writes config.yaml, model.pt, ...: never over a user's files of those names, nor over a
    run of another config whose checkpoint is gone."""
    if (out_dir / "config.yaml").exists():
        try:
            saved_cfg = load_config_file(out_dir / "config.yaml")
        except ConfigError:
            saved_cfg = None
        if saved_cfg is not None:
            _refuse_other_config(saved_cfg, cfg, out_dir)
            return  # the same run without a checkpoint (it stopped before the first, or it was moved away): start over
        clash = "config.yaml"
    else:
        names = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith((".", "checkpoint")))
        clash = next((name for name in names if name not in _RUN_NAMES), None)
    if clash is not None:
        raise ConfigError(
            f"--out {out_dir} is not a metapl run directory (it holds {clash!r}, which metapl did not write) and "
            "training would write over its files; pass a new or empty directory"
        )


_START_OVER = "move {path} away to train this run from step 0, or pass another --out"


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
            + _START_OVER.format(path=path)
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
