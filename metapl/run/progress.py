"""What training shows while it runs: a progress bar on a terminal, one line per evaluation anywhere else.

A bar is useless in a log file (CI, nohup, a cluster job): it is either off or a mess of carriage returns. When
stderr is not a terminal, each evaluation prints one flushed line instead: the step, the phase, the validation
and test top-1 of the evaluated model (the student) and of the networks reported besides (the teacher), the
images per second since the previous evaluation and the estimated time left in the phase.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# The networks besides the evaluated one whose scores a line shows (make_evaluator's prefixes).
_OTHERS = ("teacher",)


class Progress:
    """A bar on a terminal, evaluation lines elsewhere, nothing when `enabled` is false."""

    def __init__(self, total: int, initial: int, phase: str, enabled: bool, stream: TextIO | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.phase = total, phase
        self.tty = enabled and _is_terminal(self.stream)
        self.lines = enabled and not self.tty
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=phase,
            disable=not self.tty,
            dynamic_ncols=True,
            leave=False,
            file=self.stream,
        )
        self.start_step, self.start_time = initial, time.perf_counter()
        self.images, self.last_time = 0, self.start_time

    def step(self, images: int, postfix: dict[str, str]) -> None:
        """One step done, of `images` images (all ranks)."""
        self.images += images
        if self.tty:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def evaluated(self, step: int, scores: dict[str, float]) -> None:
        """After the evaluation at `step` (steps done in the phase): one line when not on a terminal."""
        if not self.lines:
            return
        now = time.perf_counter()
        rate = self.images / max(now - self.last_time, 1e-9)
        self.images, self.last_time = 0, now
        done = step - self.start_step
        left = (self.total - step) * (now - self.start_time) / done if done > 0 else 0.0
        parts = [f"{self.phase} {step}/{self.total}", _scores("student", scores, "")]
        parts += [_scores(name, scores, f"{name}_") for name in _OTHERS]
        parts += [f"{rate:,.0f} images/s", f"ETA {format_duration(left)}"]
        print(" | ".join(p for p in parts if p), file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


def _scores(name: str, scores: dict[str, float], prefix: str) -> str:
    """'student val 51.2% test 49.8%' (the splits present), or '' when the network has no scores."""
    shown = [
        f"{split} {scores[f'{prefix}{split}_top1']:.1%}"
        for split in ("val", "test")
        if f"{prefix}{split}_top1" in scores
    ]
    return f"{name} {' '.join(shown)}" if shown else ""


def format_duration(seconds: float) -> str:
    """'45s', '12m05s', '3h07m'."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
