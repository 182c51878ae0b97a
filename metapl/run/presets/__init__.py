"""The presets: YAML files beside this module, one experiment each (torch-free, for a quick CLI)."""

from __future__ import annotations

from importlib import resources

import yaml

from metapl.core.errors import ConfigError
from metapl.core.settings import suggest


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("metapl.run.presets").iterdir() if p.name.endswith(".yaml")
    )


ABOUT = "about"  # a preset's one-line description (with the paper's accuracy where there is one); not a config key


def load_preset(name: str) -> dict:
    """The preset's config sections (its `about` line left out)."""
    raw = _read(name)
    raw.pop(ABOUT, None)
    return raw


def preset_table() -> list[dict[str, str]]:
    """One row per preset, for `metapl presets`: data, model, method, steps and the preset's `about` line."""
    rows = []
    for name in preset_names():
        raw = _read(name)
        sections = {
            key: raw[key] if isinstance(raw.get(key), dict) else {} for key in ("data", "model", "method", "train")
        }
        rows.append(
            {
                "preset": name,
                "data": str(sections["data"].get("name", "")),
                "model": str(sections["model"].get("name", "")),
                "method": str(sections["method"].get("name", "")),
                "steps": str(sections["train"].get("steps", "")),
                "about": str(raw.get(ABOUT, "")),
            }
        )
    return rows


def _read(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}{suggest(name, names)}; available: {', '.join(names)}")
    raw = yaml.safe_load(resources.files("metapl.run.presets").joinpath(f"{name}.yaml").read_text()) or {}
    return raw if isinstance(raw, dict) else {}
