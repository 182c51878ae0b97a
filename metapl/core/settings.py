"""Settings fields that carry their own rules: each default, allowed value and range is declared once, on the
field, and `check_settings` enforces them for the config (one-line errors) and for the Python API alike.

Torch-free on purpose: `metapl config` and the CLI's start import this.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from metapl.core.errors import ConfigError, shorten

Rule = Callable[[Any], bool]
FLOAT32_MAX = 3.4028234663852886e38  # settings meet float32 tensors: a larger value would turn into inf there


def choice(default: Any, options: Sequence[Any]) -> Any:
    """A field whose value must be one of `options`."""
    return dataclasses.field(default=default, metadata={"choices": tuple(options)})


def ranged(default: Any = dataclasses.MISSING, rule: Rule | None = None, allowed: str = "", **kwargs: Any) -> Any:
    """A field whose value must satisfy `rule`; `allowed` says so in words ("in [0, 1)")."""
    return dataclasses.field(default=default, metadata={"rule": rule, "allowed": allowed}, **kwargs)


# The ranges used again and again, each with its wording.
def at_least(low: float, default: Any, note: str = "") -> Any:
    return ranged(default, lambda v: v >= low, f"{_num(low)} or more{note}" if low != 1 else f"at least 1{note}")


def above(low: float, default: Any) -> Any:
    return ranged(default, lambda v: v > low, f"above {_num(low)}")


def fraction(default: float, *, closed: bool = False) -> Any:
    """A value in [0, 1) (or [0, 1] with `closed`)."""
    if closed:
        return ranged(default, lambda v: 0 <= v <= 1, "in [0, 1]")
    return ranged(default, lambda v: 0 <= v < 1, "in [0, 1)")


# Every seed of metapl (train.seed, metapl shard --seed): what torch.manual_seed and NumPy's generators take alike.
SEED_LIMIT = 2**32
SEEDS = "in [0, 2**32)"


def seed_field(default: int = 0) -> Any:
    return ranged(default, lambda v: 0 <= v < SEED_LIMIT, SEEDS)


def path_field(default: str = "") -> Any:
    """A field that names a file or folder: checked for a length the OS can open (check_path)."""
    return dataclasses.field(default=default, metadata={"path": True})


NAME_MAX = 255  # bytes in one file or folder name (Linux, macOS; os.pathconf may say less for a disk)
PATH_MAX = 4096  # bytes in a path the OS opens at once (Linux), with its terminating NUL


def check_path(value: str | os.PathLike, key: str) -> None:
    """Refuse, naming `key`, a path longer than the OS can open (ENAMETOOLONG), shortened in the message."""
    raw = os.fsencode(value)
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX or len(raw) >= PATH_MAX:
        what = f"a name of {longest:,} bytes (at most {NAME_MAX})" if longest > NAME_MAX else f"{len(raw):,} bytes"
        raise ConfigError(
            f"{key}={shorten(value)!r} is too long for the file system ({what}; a path may have at most "
            f"{PATH_MAX - 1:,}); pass a shorter path"
        )


# ---------------------------------------------------------------------------------------------- parts' settings
# A registered part (a data set, a model, a method) owns a settings dataclass: its own keys of the config's section
# (data, model, method), each declared with the fields above. Two class attributes say more about them:
#   SIZE_KEYS: ClassVar[tuple[str, ...]]: the keys that size a training step's memory (mlp: ("hidden",)), which
#     the memory check names when a step cannot fit (run/budget.py);
#   check_with(self, cfg): checks across sections (config.validate calls it).


@dataclasses.dataclass
class NoSettings:
    """The settings of a part that has no keys of its own (digits, wrn28_2, a timm architecture)."""


def part_field() -> Any:
    """A section's field that holds a part's settings (data.settings: the chosen data set's): its keys are the
    section's keys (data.num_points), checked and listed with the section's own."""
    return dataclasses.field(default=None, metadata={"part": True})


def size_keys(settings: Any) -> tuple[str, ...]:
    """The keys of a settings dataclass (or a section) that size a training step's memory (SIZE_KEYS)."""
    return tuple(getattr(settings, "SIZE_KEYS", ()))


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def suggest(word: str, options: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest option, or ''."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_settings(settings: Any, prefix: str) -> None:
    """Raise ConfigError naming `prefix.field`, the value and what is allowed, for the first field that breaks
    its declared rule. Every float must be finite: no setting of metapl means anything at inf or nan."""
    for f in dataclasses.fields(settings):
        key, value = f"{prefix}.{f.name}", getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            check_settings(value, prefix if f.metadata.get("part") else key)  # a part's keys are its section's
        else:
            check_field(f, value, key)


def check_field(f: dataclasses.Field, value: Any, key: str) -> None:
    """check_settings for one field's value, named `key` in the message (the key as the user wrote it)."""
    if isinstance(value, float) and not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
        raise ConfigError(f"{key}={value!r} is impossible; it must be a finite number (float32: within ±3.4e38)")
    numbers = value if isinstance(value, list) else [value]
    if any(isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**63 for v in numbers):
        raise ConfigError(f"{key}={value!r} is impossible; it must fit in 64 bits (below 2**63)")
    if f.metadata.get("path") and value:
        check_path(value, key)
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        shown = ", ".join(str(c) for c in choices)
        hint = suggest(str(value), [str(c) for c in choices])
        raise ConfigError(f"{key}={value!r} is not allowed{hint}; use one of: {shown}")
    rule = f.metadata.get("rule")
    if rule is not None and not rule(value):
        raise ConfigError(f"{key}={value!r} is impossible; it must be {f.metadata['allowed']}")
