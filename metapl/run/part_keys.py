"""The data and model sections' parts: besides its shared keys, a section with PARTS (data, model) holds the settings
dataclass of each part its names choose (PARTS: part field -> the field naming the part; the data set's, the
student's and the teacher's models'). These functions are the one place that knows how: filling and writing those
settings, setting a part's key, refusing a key of a part not chosen by naming its owner. Torch-free."""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import TYPE_CHECKING, Any

from metapl.core.errors import ConfigError
from metapl.core.settings import size_keys, suggest
from metapl.parts.models.registry import MODELS
from metapl.run.values import all_keys, coerce_field, has_field

if TYPE_CHECKING:
    from metapl.run.config import Config


def _part_name(section: Any, part: str) -> str | None:
    """The name of the part whose settings the field `part` holds; None for a teacher that is model.name."""
    name = getattr(section, section.PARTS[part])
    if part != "settings" and (not name or name == section.name):
        return None
    return name


def parts_of(section: Any) -> list[Any]:
    """The settings of the parts a section's names choose (the data set's; the student's and teacher's models')."""
    return [getattr(section, part) for part in getattr(section, "PARTS", {}) if getattr(section, part) is not None]


def fill_parts(section: Any) -> None:
    """Give each part field the settings of the part its name chooses (a new section, or one whose names changed),
    keeping the values of the keys that the settings it held share with the new ones (a key both models have)."""
    held = parts_of(section)
    for part in section.PARTS:
        name = _part_name(section, part)
        wanted = section.REGISTRY.settings_class(name) if name is not None else None
        current = getattr(section, part)
        if wanted is None or type(current) is wanted:
            setattr(section, part, current if wanted is not None else None)
            continue
        new = wanted()
        sources = sorted(held, key=lambda own: type(own) is not wanted)  # settings of the same part first
        for f in dataclasses.fields(new):
            source = next((own for own in sources if has_field(own, f.name)), None)
            if source is not None:
                setattr(new, f.name, copy.deepcopy(getattr(source, f.name)))
        setattr(section, part, new)


def section_dict(section: Any) -> dict:
    """A section's keys in order, each part's own keys where its field stands (a key of both models once)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not f.metadata.get("part"):
            out[f.name] = copy.deepcopy(value)
        elif value is not None:
            for key, own in dataclasses.asdict(value).items():
                out.setdefault(key, own)
    return out


def shared_keys(section: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(section) if not f.metadata.get("part")}


def choose_part(section: Any, key: str, name: str) -> None:
    """Check the part a naming key (data.name, model.teacher_name) chooses; model.teacher_name may be empty."""
    if name or key.endswith(".name"):
        section.REGISTRY.check(name, key)


def set_part_value(cfg: Config, section_name: str, section: Any, name: str, value: Any) -> None:
    """Set a key of a chosen part's own (data.num_points) on every chosen part that has it (the student's and the
    teacher's models may both); a key of a part not chosen is refused naming it."""
    key = f"{section_name}.{name}"
    holders = [own for own in parts_of(section) if has_field(own, name)]
    if not holders:
        _refuse_part_key(cfg, section_name, section, name)
    for own in holders:
        setattr(own, name, coerce_field(key, value, own, name))


def _refuse_part_key(cfg: Config, section_name: str, section: Any, name: str) -> typing.NoReturn:
    """A ConfigError for a key no chosen part of the section has: one of another part names that part (as a key of
    another method does), any other gets the closest key."""
    key = f"{section_name}.{name}"
    owners = section.REGISTRY.owners(name)
    if owners:
        others = [part for part in section.PARTS if part != "settings" and getattr(section, part) is not None]
        chosen = [section.name] + [
            f"{section_name}.{section.PARTS[p]}={getattr(section, section.PARTS[p])}" for p in others
        ]
        naming = " or ".join(f"{section_name}.{field}={owners[0]}" for field in section.PARTS.values())
        current = f"{section_name}.name={section.name}"
        raise ConfigError(
            f"{key} is a setting of {section.REGISTRY.key}={' or '.join(owners)}, not of {' nor of '.join(chosen)}; "
            f"choose {naming}, or drop it (list {section.name}'s keys with: metapl config --preset "
            f"{cfg.preset or 'NAME'} --set {current})"
        )
    every = all_keys(cfg) + [
        f"{section_name}.{f.name}" for own in section.REGISTRY.all_settings().values() for f in dataclasses.fields(own)
    ]
    raise ConfigError(
        f"unknown config key {key!r}{suggest(key, every)}; list the keys with: metapl config --preset NAME"
    )


def other_parts_key(cfg: Config, key: str) -> bool:
    """Whether `key` belongs to a part of its section that the config does not choose (a preset's keys for another
    data set, an old config.yaml's keys of every model): such keys are dropped, not refused, where they come from a
    file; a key no part has is not one."""
    section_name, _, name = key.partition(".")
    section: Any = getattr(cfg, section_name, None)
    if not hasattr(section, "PARTS") or name in shared_keys(section):
        return False
    if any(has_field(own, name) for own in parts_of(section)):
        return False
    return bool(section.REGISTRY.owners(name))


def section_size_keys(cfg: Config, section_name: str) -> list[str]:
    """The keys of a section that size a training step's memory: the section's own (SIZE_KEYS) and, for a section
    with parts, those its chosen parts' settings declare."""
    section = getattr(cfg, section_name)
    owned = [section.settings] if section_name == "method" else [section, *parts_of(section)]
    keys = [f"{section_name}.{name}" for own in owned for name in size_keys(own)]
    return list(dict.fromkeys(keys))


def pretrained_image_size(cfg: Config) -> None:
    """data.image_size=0 (a data set of image files) with pretrained weights (timm): the side they were trained at,
    saved with the run."""
    own = cfg.data.settings
    if getattr(own, "image_size", None) == 0 and cfg.model.pretrained:
        inputs = MODELS.get(cfg.model.name).preprocessing(cfg.model)
        if inputs is not None:
            own.image_size = inputs.size
