"""From a validated Config to a finished run directory: data, models, method, loop, finetuning, summary."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from metapl.config import Config, save_config
from metapl.data import build_data
from metapl.data.loaders import BatchStream, DataBundle
from metapl.engine.checkpoint import atomic_save, atomic_write_json
from metapl.engine.evaluate import evaluate
from metapl.engine.logger import RunLogger
from metapl.engine.loop import FitResult, fit
from metapl.errors import ConfigError
from metapl.methods import UDA, AuxLossSettings, MetaPseudoLabels, PseudoLabel, Supervised
from metapl.methods.supervised import finetuner
from metapl.models import create_model
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
    return create_model(m.name, data.num_classes, data.input_shape, dropout=m.dropout, **options)


def _optim(settings: OptimSettings, total_steps: int) -> OptimSettings:
    return dataclasses.replace(settings, total_steps=total_steps)


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
        return Supervised(build_model(cfg, data).to(device), k, _optim(cfg.student, steps), m.label_smoothing, ema)
    if m.name == "uda":
        losses = dataclasses.replace(losses, supervised=True, uda=True)
        return UDA(build_model(cfg, data).to(device), k, _optim(cfg.student, steps), losses, ema)
    teacher, student = build_model(cfg, data).to(device), build_model(cfg, data).to(device)
    if m.name == "pseudo_label":
        teacher_steps = max(1, int(round(steps * m.teacher_fraction)))
        return PseudoLabel(
            teacher,
            student,
            k,
            teacher_steps,
            teacher_optim=_optim(cfg.teacher, teacher_steps),
            student_optim=_optim(cfg.student, steps - teacher_steps),
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
        teacher_optim=_optim(cfg.teacher, steps),
        student_optim=_optim(cfg.student, steps),
        teacher_losses=losses,
        student_label_smoothing=m.student_label_smoothing,
        sampling=m.sampling,
        h_sign=m.h_sign,
        baseline=m.baseline,
        baseline_decay=m.baseline_decay,
        reinforce_reduction=m.reinforce_reduction,
        ema_decay=ema,
    )


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


def run_experiment(cfg: Config, out_dir: Path, progress: bool = True, tensorboard: bool = True) -> dict:
    """Train as `cfg` says and write the run directory; returns the summary (also in summary.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    data = build_data(cfg.data, cfg.train.seed)
    save_config(cfg, out_dir / "config.yaml")
    data.split.save(out_dir / "splits.json")

    method = build_method(cfg, data, device)
    evaluator = make_evaluator(data, cfg.train.eval_batch_size)
    stream = BatchStream(
        data, cfg.data.batch_size, cfg.data.mu, seed=cfg.train.seed, labeled_only=cfg.method.name == "supervised"
    )
    logger = RunLogger(out_dir, tensorboard=tensorboard)
    try:
        result = fit(
            method,
            stream,
            cfg.train.steps,
            evaluate=evaluator,
            logger=logger,
            device=device,
            eval_every=cfg.train.eval_every,
            log_every=cfg.train.log_every,
            progress=progress,
        )
        phases = {"train": result}
        final_model = method.eval_model()
        if cfg.finetune.steps > 0:
            phases["finetune"], final_model = _finetune(cfg, method, data, evaluator, logger, device, progress)
    finally:
        logger.close()

    atomic_save(_cpu_state(final_model), out_dir / "model.pt")
    last = phases.get("finetune", result)
    if last.best_state is not None:
        atomic_save(last.best_state, out_dir / "best_model.pt")
    summary = {
        "preset": cfg.preset,
        "method": cfg.method.name,
        "feedback": cfg.method.feedback if cfg.method.name == "mpl" else None,
        "seed": cfg.train.seed,
        "device": str(device),
        **{f"{name}_{key}": value for name, phase in phases.items() for key, value in _phase_summary(phase).items()},
    }
    summary["test_top1"] = last.final.get("test_top1")
    summary["test_top1_selected"] = last.best.get("test_top1")
    atomic_write_json(summary, out_dir / "summary.json")
    return summary


def _finetune(
    cfg: Config, method, data: DataBundle, evaluator, logger, device, progress
) -> tuple[FitResult, nn.Module]:
    """The student's finetuning phase on labeled data (spec §5), on a copy of the evaluated model."""
    ft = cfg.finetune
    settings = OptimSettings(
        lr=ft.lr, momentum=ft.momentum, nesterov=ft.momentum > 0, schedule="constant", total_steps=ft.steps
    )
    tuner = finetuner(method.eval_model(), data.num_classes, settings, ft.label_smoothing)
    batch = min(ft.batch_size, len(data.y_labeled))
    stream = BatchStream(data, batch, 1, seed=cfg.train.seed + 1, labeled_only=True)
    result = fit(
        tuner,
        stream,
        ft.steps,
        evaluate=evaluator,
        logger=logger,
        device=device,
        eval_every=cfg.train.eval_every,
        log_every=cfg.train.log_every,
        phase="finetune",
        progress=progress,
    )
    return result, tuner.eval_model()


def _phase_summary(result: FitResult) -> dict:
    out = {f"final_{k}": v for k, v in result.final.items()}
    out.update({f"best_{k}": v for k, v in result.best.items()})
    out.update(best_step=result.best_step, seconds=round(result.seconds, 2), steps=result.steps)
    return out


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
