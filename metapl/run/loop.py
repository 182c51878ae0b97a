"""The training loop: time, data, evaluation and logs. It never knows which method it runs."""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from metapl.core import distributed
from metapl.core.batch import Batch
from metapl.core.errors import Interrupted, TrainingError
from metapl.parts.methods.base import Method
from metapl.run.logger import RunLogger
from metapl.run.progress import Progress

Evaluator = Callable[[Method], dict[str, float]]  # method -> {"val_top1": ..., "test_top1": ...}

_SHOWN = ("loss", "teacher_loss", "student_loss", "h")


@dataclass
class FitResult:
    """What a phase ended with: the last and the best-on-validation evaluation, and the best model's weights."""

    final: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    best_step: int = -1
    best_state: dict | None = None
    seconds: float = 0.0
    steps: int = 0  # steps completed
    skipped_steps: int = 0  # steps undone for a non-finite loss or gradient (nonfinite="skip")
    skipped_in_a_row: int = 0

    def state_dict(self) -> dict:
        return {
            "final": self.final,
            "best": self.best,
            "best_step": self.best_step,
            "best_state": self.best_state,
            "seconds": self.seconds,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "skipped_in_a_row": self.skipped_in_a_row,
        }

    @classmethod
    def from_state(cls, state: dict) -> FitResult:
        return cls(**state)


Checkpointer = Callable[[int, FitResult], None]  # (steps completed, result so far) -> writes a checkpoint


def fit(
    method: Method,
    batches: Iterator[Batch],
    steps: int,
    *,
    evaluate: Evaluator,
    logger: RunLogger | None = None,
    device: torch.device | str = "cpu",
    eval_every: int = 0,
    log_every: int = 10,
    phase: str = "train",
    progress: bool = True,
    select_on: str = "val_top1",
    resume: FitResult | None = None,
    checkpoint: Checkpointer | None = None,
    checkpoint_every: int = 0,
    step_offset: int = 0,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    nonfinite: str = "stop",
    max_skipped_in_a_row: int = 100,
) -> FitResult:
    """Run method steps up to `steps`; evaluate every `eval_every` steps and at the end; keep the best on
    `select_on`; call `checkpoint` every `checkpoint_every` steps and at the end.

    With `resume` (a result saved by an earlier, interrupted call) the loop goes on from `resume.steps`; the
    method and the batch stream must have been restored to that step by the caller. Logs use step + step_offset
    so that a later phase continues the curves of an earlier one. `autocast_dtype` runs each step under
    torch.autocast (bf16, or fp16 with the methods' loss scaling).

    A non-finite loss stops the run at the next log step (`nonfinite="stop"`: no cost). With "skip", every step
    starts from a copy of method.state_dict() and a step whose losses or gradient norms are not finite is undone
    from it and counted; more than `max_skipped_in_a_row` such steps in a row stop the run. The cost, paid only
    with "skip": one copy of the models, optimiser and EMA states and one host sync per step.
    """
    if nonfinite not in ("stop", "skip"):
        raise ValueError(f"nonfinite={nonfinite!r}: use 'stop' or 'skip'")
    skip = nonfinite == "skip"
    # Under float16 the methods skip an overflowing update themselves (loss scaling): only losses count here.
    check_grads = autocast_dtype is not torch.float16
    device = torch.device(device)
    pin = device.type == "cuda"
    result = resume or FitResult()
    first = result.steps
    start = time.perf_counter() - result.seconds
    last_log_time, last_log_step = time.perf_counter(), first
    # A bar on a terminal; one line per evaluation when stderr is a file (run/progress.py).
    bar = Progress(steps, first, phase, progress)
    world = distributed.world_size()
    postfix: dict[str, str] = {}
    stop = _StopRequest()  # SIGINT / SIGTERM: finish the step, write a checkpoint, then stop
    try:
        for step in range(first, steps):
            batch = next(batches)
            batch = (batch.pin_memory() if pin else batch).to(device, non_blocking=True, channels_last=channels_last)
            before = _copy_state(method.state_dict()) if skip else None
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                metrics = method.step(batch, step)
            if skip:
                bad = _first_nonfinite(metrics, check_grads, device)
                if bad is None:
                    result.skipped_in_a_row = 0
                else:
                    method.load_state_dict(before)  # type: ignore[arg-type]  # a copy of a state dict
                    result.skipped_steps += 1
                    result.skipped_in_a_row += 1
                    if result.skipped_in_a_row > max_skipped_in_a_row:
                        bar.close()
                        raise TrainingError(
                            f"{bad[0]} was {bad[1]} at step {step + 1}, after {result.skipped_in_a_row - 1} skipped "
                            f"steps in a row (train.max_skipped_in_a_row={max_skipped_in_a_row}); lower the learning "
                            "rates or check the data"
                        )
                metrics["skipped_steps"] = result.skipped_steps
            is_last = step == steps - 1
            if logger is not None and _due(step, log_every, is_last):
                now = time.perf_counter()
                images = (step + 1 - last_log_step) * _batch_size(batch)
                metrics["images_per_s"] = images / max(now - last_log_time, 1e-9)
                last_log_time, last_log_step = now, step + 1
                values = logger.log(step_offset + step + 1, metrics, phase)
                if not skip:
                    _check_finite(values, step + 1)
                postfix.update({k: f"{values[k]:.3g}" for k in _SHOWN if k in values})
            bar.step(_batch_size(batch) * world, postfix)
            if _due(step, eval_every, is_last):
                scores = evaluate(method)
                result.final = scores
                if logger is not None:
                    logger.log(step_offset + step + 1, scores, f"{phase}_eval")
                # No validation split: nothing may select on the test set, so the "best" is the last evaluation.
                improved = select_on not in scores or not result.best or _better(scores, result.best, select_on)
                if improved:
                    result.best, result.best_step = scores, step + 1
                    result.best_state = {
                        k: v.detach().cpu().clone() for k, v in method.eval_model().state_dict().items()
                    }
                postfix.update({k: f"{v:.3f}" for k, v in scores.items() if k in ("val_top1", "test_top1")})
                bar.evaluated(step + 1, scores)
            result.steps, result.seconds = step + 1, time.perf_counter() - start
            # Under torchrun every rank stops after the same step (a signal reaches each at its own moment), or
            # the others would wait forever in the next step's all-reduce.
            signum = distributed.rank_max(stop.signum or 0, device) if world > 1 else stop.signum or 0
            stopping = signum > 0
            if checkpoint is not None and (_due(step, checkpoint_every, is_last) or stopping):
                if not skip:  # with skip a bad step was undone: the state is the last good one
                    _check_finite({k: float(v) for k, v in metrics.items() if "loss" in k}, step + 1)  # keep good ones
                if stopping and world > 1:
                    saved_ok = _save_for_all(checkpoint, step + 1, result, device)
                else:
                    checkpoint(step + 1, result)
                    saved_ok = True
            elif stopping and world > 1:
                saved_ok = distributed.rank_max(0, device) > 0  # rank 0 says whether it saved
            else:
                saved_ok = checkpoint is not None
            if stopping:
                bar.close()
                raise _interrupted(signum, phase, step + 1, saved_ok)
    finally:
        stop.restore()
    bar.close()
    return result


def _save_for_all(checkpoint: Checkpointer, step: int, result: FitResult, device: torch.device) -> bool:
    """Rank 0 writes the checkpoint of a stopping run and tells the other ranks whether it could."""
    try:
        checkpoint(step, result)
    except BaseException:
        distributed.rank_max(0, device)  # the others must not wait for an answer that never comes
        raise
    return distributed.rank_max(1, device) > 0


def _interrupted(signum: int, phase: str, step: int, saved: bool) -> Interrupted:
    """The one line each process prints when a signal stops training: rank 0 (or a single process) says whether
    its checkpoint was saved; under torchrun the other ranks name themselves and what rank 0 did."""
    name = signal.Signals(signum).name
    rank = distributed.rank()
    if rank == 0:
        saved_text = "a checkpoint was saved: run the same command to resume" if saved else "nothing was saved"
        return Interrupted(f"{name} stopped {phase} after step {step}; {saved_text}", signum)
    what = "saved a checkpoint" if saved else "saved nothing"
    return Interrupted(f"rank {rank}: {name} stopped {phase} after step {step}, with rank 0, which {what}", signum)


def _batch_size(batch: Batch) -> int:
    size = batch.x_l.shape[0]
    if batch.x_u_strong is not None:
        size += 2 * batch.x_u_strong.shape[0]
    return size


def _copy_state(state: object) -> object:
    """A copy of a (nested) state dict whose tensors do not share memory with the live ones."""
    if isinstance(state, torch.Tensor):
        return state.detach().clone()
    if isinstance(state, dict):
        copied = copy.copy(state)  # the same mapping type, with a module state dict's _metadata (versions)
        for key, value in state.items():
            copied[key] = _copy_state(value)
        return copied
    if isinstance(state, (list, tuple)):
        return type(state)(_copy_state(v) for v in state)
    return copy.deepcopy(state)


def _first_nonfinite(metrics: dict, check_grads: bool, device: torch.device) -> tuple[str, float] | None:
    """(name, value) of the first loss or gradient norm that is NaN or infinite on any rank, else None."""
    keys = [k for k in metrics if "loss" in k or (check_grads and k.endswith("grad_norm"))]
    if not keys:
        return None
    values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float32, device=device).reshape(()) for k in keys])
    finite = torch.isfinite(values)
    if distributed.world_size() > 1:  # every rank must undo the same steps
        finite = distributed.mean(finite.float()) == 1
    if bool(finite.all()):  # the one host sync per step
        return None
    index = int((~finite).nonzero()[0, 0])
    return keys[index], values[index].item()


def _check_finite(values: dict[str, float], step: int) -> None:
    bad = {k: v for k, v in values.items() if "loss" in k and not math.isfinite(v)}
    if bad:
        name, value = next(iter(bad.items()))
        raise TrainingError(f"{name} became {value} at step {step}; lower the learning rates or check the data")


def _due(step: int, every: int, is_last: bool) -> bool:
    """Every `every` steps (never when 0) and at the last step."""
    return is_last or (every > 0 and (step + 1) % every == 0)


def _better(scores: dict[str, float], best: dict[str, float], key: str) -> bool:
    """Higher validation accuracy wins; a tie (common on small validation sets) goes to the lower validation loss."""
    if scores[key] != best[key]:
        return scores[key] > best[key]
    loss_key = key.replace("top1", "loss")
    return scores.get(loss_key, math.inf) < best.get(loss_key, math.inf)


class _StopRequest:
    """Records SIGINT/SIGTERM instead of dying mid-step; restores the previous handlers afterwards."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
