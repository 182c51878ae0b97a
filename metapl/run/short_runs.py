"""A warning for runs too short for their schedule's fixed step counts (docs/cli.md#short-runs).

The presets' student wait, LR warm-ups and UDA ramp are counts of steps sized for the preset's train.steps (digits:
100 warm-up steps of 4,000). A run of a few hundred steps keeps them: its student may spend most of the run waiting
or warming up and end barely trained. They are not scaled silently (a config means what it says, and a run's
config.yaml must reproduce it); the run says so in one line, with the values scaled to its length.
"""

from __future__ import annotations

from metapl.core.errors import ConfigError
from metapl.run.config import Config
from metapl.run.method_keys import method_value
from metapl.run.presets import load_preset

SHARE = 0.25  # the student's wait + warm-up (or the teacher's warm-up) may take at most this share of train.steps


def short_run_warning(cfg: Config) -> str | None:
    """One line naming the wait and warm-up settings (and the UDA ramp) and their values scaled to train.steps,
    when the student's wait + warm-up or the teacher's warm-up take more than SHARE of it; else None."""
    from metapl.parts.methods import METHODS

    steps = cfg.train.steps
    keys: dict[str, int] = {
        "student.wait_steps": cfg.student.wait_steps,
        "student.warmup_steps": cfg.student.warmup_steps,
    }
    long = keys["student.wait_steps"] + keys["student.warmup_steps"] > SHARE * steps
    if METHODS.get(cfg.method.name).memory.networks > 1:  # a teacher network, with the teacher section's schedule
        keys["teacher.warmup_steps"] = cfg.teacher.warmup_steps
        long = long or cfg.teacher.warmup_steps > SHARE * steps
    # scaled with the others (a long ramp alone delays the UDA loss, not the student); uda's key, and the flat
    # key of mpl's method.teacher_losses.uda_ramp_steps: one fix for both
    try:
        keys["method.uda_ramp_steps"] = method_value(cfg, "method.uda_ramp_steps")
    except KeyError:  # a method without a UDA ramp
        pass
    if not long:
        return None
    reference = _preset_steps(cfg)
    if steps < reference:  # the preset's proportions, at this run's length
        scale = steps / reference
    else:  # a schedule longer than its own preset's share: down to the share
        student = keys["student.wait_steps"] + keys["student.warmup_steps"]
        scale = SHARE * steps / max(student, keys.get("teacher.warmup_steps", 0))
    shown = ", ".join(f"{k}={v}" for k, v in keys.items() if v)
    fixes = " ".join(f"--set {k}={round(v * scale)}" for k, v in keys.items() if v)
    return (
        f"train.steps={steps} is short for {shown}: the student waits or warms up for much of the run, so it may "
        f"end undertrained; scale them with the run, e.g. {fixes} (docs/cli.md#short-runs)"
    )


def _preset_steps(cfg: Config) -> int:
    """The train.steps the preset's schedule was sized for (the run's own when it has no preset)."""
    try:
        return int(load_preset(cfg.preset).get("train", {}).get("steps", cfg.train.steps))
    except ConfigError:  # no preset (a config built in Python): no reference length
        return cfg.train.steps
