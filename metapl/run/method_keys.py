"""The method section's keys: the chosen method's settings, nested (method.feedback.h, method.teacher_losses.*),
and the flat keys of config formats 1–2 (method.h), which every method section still reads through one table
(parts/methods/settings.py: flat_keys). Setting, reading and naming a key; a key of another method is refused
naming the method that has it. Torch-free: only the settings classes are read."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from metapl.core.errors import ConfigError
from metapl.core.settings import check_field, suggest
from metapl.parts.methods import METHODS
from metapl.parts.methods.settings import FieldPath, flat_keys, leaf_paths, sections
from metapl.run.values import coerce, coerce_field

if TYPE_CHECKING:
    from metapl.run.config import Config


def set_method_value(cfg: Config, name: str, value: Any) -> None:
    """Set method key `name` (a nested key, feedback.h, or a flat key of config formats 1–2, h), checked and named in
    errors as given."""
    if name == "name":
        new = coerce("method.name", value, str)
        METHODS.check(new)
        if new != cfg.method.name:  # settings both methods have keep their values (a preset's UDA weight, ...)
            old = cfg.method.settings
            old_keys = flat_keys(type(old))
            settings = METHODS.settings_class(new)()
            for flat, target in flat_keys(type(settings)).items():
                if flat in old_keys:
                    _set_path(settings, target, _get_path(old, old_keys[flat]))
            cfg.method = dataclasses.replace(cfg.method, name=new, settings=settings)  # config's MethodSection
        return
    settings = cfg.method.settings
    if not name:
        raise ConfigError("'method' is a section; set one of its keys, e.g. method.name=mpl")
    path = method_path(type(settings), name)
    if path is None:
        nested = sections(type(settings))
        if name in nested:
            example = dataclasses.fields(nested[name])[0].name
            raise ConfigError(f"'method.{name}' is a section; set one of its keys, e.g. method.{name}.{example}=...")
        owner = _method_owning(f"method.{name}")
        raise ConfigError(
            f"method.{name} is a setting of method.name={owner}, not of {cfg.method.name}; "
            f"choose --method {owner}, or drop it (list {cfg.method.name}'s keys with: metapl config --preset "
            f"{cfg.preset or 'NAME'} --method {cfg.method.name})"
        )
    section = _get_path(settings, path[:-1])
    field_ = next(f for f in dataclasses.fields(section) if f.name == path[-1])
    coerced = coerce_field(f"method.{name}", value, section, path[-1])
    check_field(field_, coerced, f"method.{name}")  # now, so that the error names the key as the user wrote it
    setattr(section, path[-1], coerced)


def method_path(cls: type, name: str) -> FieldPath | None:
    """The field path that method key `name` names in the settings class `cls` (nested: 'feedback.h'; flat, as
    config formats 1 and 2 wrote it: 'h'), or None."""
    flat = flat_keys(cls)
    if name in flat:
        return flat[name]
    path = tuple(name.split("."))
    return path if path in leaf_paths(cls) else None


def _get_path(settings: Any, path: FieldPath) -> Any:
    for name in path:
        settings = getattr(settings, name)
    return settings


def _set_path(settings: Any, path: FieldPath, value: Any) -> None:
    setattr(_get_path(settings, path[:-1]), path[-1], value)


def method_value(cfg: Config, key: str) -> Any:
    """The value of the chosen method's key `key` ('method.feedback.shuffle_buffer', or its flat key)."""
    path = method_path(type(cfg.method.settings), key.partition(".")[2])
    if path is None:
        raise KeyError(key)
    return _get_path(cfg.method.settings, path)


def canonical_key(key: str, method: str | None = None) -> str:
    """`key` as the config names it now: a flat method key of formats 1–2 ('method.shuffle_buffer') becomes its
    nested key ('method.feedback.shuffle_buffer') in `method`'s settings, or in the first method that has it."""
    if not key.startswith("method."):
        return key
    name = key.partition(".")[2]
    for owner in [method] if method else METHODS.names():
        path = method_path(METHODS.settings_class(owner), name) if owner in METHODS else None
        if path is not None:
            return "method." + ".".join(path)
    return key


def _method_keys(cls: type) -> list[str]:
    """Every key of the settings class `cls`: the nested keys and the flat keys of formats 1–2."""
    return [*(".".join(path) for path in leaf_paths(cls)), *flat_keys(cls)]


def _method_owning(key: str) -> str:
    """The first registered method whose settings have `key` ('method.x'); a ConfigError when none has."""
    name = key.partition(".")[2]
    for method in METHODS.names():
        if method_path(METHODS.settings_class(method), name) is not None:
            return method
    keys = sorted({f"method.{k}" for m in METHODS.names() for k in _method_keys(METHODS.settings_class(m))})
    raise ConfigError(
        f"unknown config key {key!r}{suggest(key, keys)}; list the keys with: metapl config --preset NAME"
    )


def shared_key(settings: Any, key: str) -> str | None:
    """A preset's (or a format-1 file's) key `key` of another method, as the key of `settings`'s method that holds
    the same setting (their flat keys agree: mpl's method.teacher_losses.uda_weight is uda's method.uda_weight), or
    None when `settings`'s method has no such setting. A ConfigError when no method has the key."""
    owner = METHODS.settings_class(_method_owning(key))
    path = method_path(owner, key.partition(".")[2])
    flat = next(flat for flat, p in flat_keys(owner).items() if p == path)
    return f"method.{flat}" if flat in flat_keys(type(settings)) else None
