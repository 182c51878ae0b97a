"""The presets: YAML files beside this module, one experiment each (torch-free, for a quick CLI)."""

from __future__ import annotations

from importlib import resources

import yaml

from metapl.errors import ConfigError
from metapl.settings import suggest


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("metapl.presets").iterdir() if p.name.endswith(".yaml")
    )


def load_preset(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}{suggest(name, names)}; available: {', '.join(names)}")
    return yaml.safe_load(resources.files("metapl.presets").joinpath(f"{name}.yaml").read_text()) or {}
