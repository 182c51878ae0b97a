"""One config value: an override's `key=value` parsed, a value coerced to its field's type (with a one-line error
naming the key), and the dotted keys of nested sections. Torch-free, as all of the configuration."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any

import yaml

from metapl.core.errors import ConfigError

if TYPE_CHECKING:
    from metapl.run.config import Config


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value; write e.g. --set train.steps=500")
    return key, _parse_scalar(text)


def flatten(raw: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """[('section.key', value), ...] in the mapping's order."""
    items = []
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            items.extend(flatten(value, name + "."))
        else:
            items.append((name, value))
    return items


def has_field(obj: Any, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(obj)}


def all_keys(cfg: Config) -> list[str]:
    return [key for key, _ in flatten(cfg.to_dict())]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def coerce_field(key: str, value: Any, owner: Any, name: str) -> Any:
    """`value` as the type of dataclass `owner`'s field `name`, set as `key`; a value of the wrong type for a field
    with a few allowed values is shown those values, not a generic example."""
    field_ = next(f for f in dataclasses.fields(owner) if f.name == name)
    return coerce(key, value, typing.get_type_hints(type(owner))[name], field_.metadata.get("choices", ()))


def coerce(key: str, value: Any, expected: Any, choices: tuple = ()) -> Any:
    """`value` as type `expected` (YAML's scalars and lists), or a ConfigError naming `key` and an example of the
    type (one of `choices` when the key allows only those)."""

    def example(default: str) -> str:
        return f"one of: {', '.join(str(c) for c in choices)}" if choices else f"e.g. {key}={default}"

    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}=[64,64]")
        return [coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(expected) if t is not type(None)]
        if value is None:
            return None
        return coerce(key, value, options[0])
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r} must be true or false")
    if expected in (int, float) and isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}={value!r} must be an integer, {example('100')}")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number, {example('0.1')}")
        try:
            return float(value) + 0.0  # + 0.0: -0.0 is 0 (NumPy refuses a negative zero scale)
        except OverflowError:  # an integer beyond any float
            raise ConfigError(f"{key}={value} is impossible; it must be a finite number") from None
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string" + (f", {example('')}" if choices else ""))
        if "\x00" in value:  # the OS refuses it in a path, with a traceback from deep inside
            raise ConfigError(f"{key}={value!r} holds a NUL character, which no name or path can hold")
        return value
    raise ConfigError(f"{key} has an unsupported type {expected}")
