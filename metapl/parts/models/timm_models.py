"""timm's architectures as metapl models: `model.name=timm/<architecture>` (docs/scale.md#models).

Any name of `timm.list_models()` works, optionally with a pretrained tag (`timm/resnet50.a1_in1k`). Pretrained
weights come only from this machine: `model.pretrained` is a local file (safetensors or a PyTorch state dict)
or `cache`, timm's local cache (the Hugging Face hub cache, or torch.hub's for weights published by URL), read
without any network access; `metapl train --download` fills the cache once. With pretrained weights, the
network's input mean and std and, unless data.image_size is set, the image side come from the weights'
pretrained config.

This module imports neither timm nor PyTorch at import time: the registry asks it to check a name (which imports
timm) only when the name starts with "timm/".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from metapl.core.errors import CheckpointError, ConfigError, first_line
from metapl.core.registry import Family
from metapl.core.settings import suggest
from metapl.parts.models.registry import ModelEntry, Preprocessing, image_channels

if TYPE_CHECKING:
    from torch import nn

PREFIX = "timm/"
INSTALL = "install it with: pip install 'metapl[scale]'"
LIST_HINT = "list them with: python -c \"import timm; print(timm.list_models('*resnet*'))\""
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes on the hub, in the order timm tries


def _timm(key: str, rest: str) -> Any:
    try:
        import timm
    except ImportError:
        raise ConfigError(f"{key}='{PREFIX}{rest}' needs timm, which is not installed; {INSTALL}") from None
    return timm


# ------------------------------------------------------------------------------------------------ names
def check(rest: str, key: str) -> None:
    """`rest` is a timm architecture, optionally with one of its pretrained tags; else one ConfigError line."""
    timm = _timm(key, rest)
    architecture, dot, tag = rest.partition(".")
    known = timm.list_models()
    if architecture not in set(known):
        hint = suggest(f"{PREFIX}{architecture}", [PREFIX + name for name in known])
        raise ConfigError(f"{key}='{PREFIX}{rest}' is not a timm architecture{hint}; {LIST_HINT}")
    if dot:
        tagged = timm.list_pretrained(f"{architecture}.*")
        if rest not in tagged:
            hint = suggest(PREFIX + rest, [PREFIX + t for t in tagged])
            shown = ", ".join(tagged[:8]) or "none"
            raise ConfigError(
                f"{key}='{PREFIX}{rest}': timm has no weights tagged {tag!r} for {architecture}{hint}; "
                f"its tags: {shown}"
            )


def _pretrained_cfg(rest: str) -> Any:
    """timm's pretrained config of `rest` (its default tag's when untagged), or None when it has no weights."""
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(rest)
    except RuntimeError:  # an unknown tag; check() says so first
        return None


# ------------------------------------------------------------------------------------------------ weights
def _weights_file(rest: str, pretrained: str, key: str) -> Path:
    """The local file that `pretrained` names: the file itself, or the one in timm's local cache."""
    if pretrained != "cache":
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError(
                f"{key}={pretrained!r}: no such file; pass a local weights file (.safetensors, .pth, .bin) of "
                f"{PREFIX}{rest}, or 'cache' for timm's local cache"
            )
        return path
    found = cached_weights(rest)
    if found is None:
        cfg = _pretrained_cfg(rest)
        where = (cfg.hf_hub_id or cfg.url) if cfg is not None else None
        if not where:
            raise ConfigError(f"{key}=cache: timm has no pretrained weights for {PREFIX}{rest}; pass a local file")
        raise ConfigError(
            f"{key}=cache: the weights of {PREFIX}{rest} ({where}) are not in timm's local cache; fetch them once "
            "with metapl train --download, or pass a local file"
        )
    return found


def cached_weights(rest: str) -> Path | None:
    """The weights of `rest` in the Hugging Face hub's local cache or torch.hub's, without network access."""
    cfg = _pretrained_cfg(rest)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else HF_FILES:
            found = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    if cfg.url:
        import torch.hub

        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return path
    return None


def download_weights(rest: str) -> Path:
    """Fetch the weights of `rest` into timm's local cache (`metapl train --download`); returns the file."""
    found = cached_weights(rest)
    if found is not None:
        return found
    cfg = _pretrained_cfg(rest)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError(f"--download: timm has no pretrained weights for {PREFIX}{rest}; pass a local file")
    from metapl.core.network import unreachable

    if cfg.hf_hub_id:
        from huggingface_hub import constants

        server = f"{constants.ENDPOINT}/{cfg.hf_hub_id}"
    else:
        server = cfg.url
    reason = unreachable(server)  # the hub's client would retry for about a minute
    if reason is not None:
        raise ConfigError(
            f"no network: --download cannot reach {reason} to fetch the weights of {PREFIX}{rest} "
            f"({cfg.hf_hub_id or cfg.url}); copy the weights file to this machine and set model.pretrained=FILE"
        )
    try:
        if cfg.hf_hub_id:
            from huggingface_hub import hf_hub_download

            errors = []
            for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else HF_FILES:
                try:
                    return Path(hf_hub_download(cfg.hf_hub_id, filename))
                except Exception as err:  # noqa: BLE001 - the hub raises many types; the next file may exist
                    errors.append(err)
            raise errors[-1]
        from timm.models._hub import download_cached_file

        return Path(download_cached_file(cfg.url))
    except Exception as err:  # noqa: BLE001 - network errors come in many types
        first = first_line(err)
        raise ConfigError(
            f"--download could not fetch the weights of {PREFIX}{rest} ({cfg.hf_hub_id or cfg.url}): {first}; "
            "download them by hand and set model.pretrained=FILE"
        ) from None


# ------------------------------------------------------------------------------------------------ the entry
@dataclass(frozen=True)
class _Builder:
    rest: str  # the architecture after "timm/", with its tag when given

    def create(
        self,
        num_classes: int,
        input_shape: tuple[int, ...],
        dropout: float = 0.0,
        pretrained: str = "",
        pretrained_key: str = "model.pretrained",
    ) -> nn.Module:
        """A fresh timm network; with `pretrained`, its weights from that local file or timm's local cache
        (the classifier is new when the class count differs, as timm adapts it)."""
        name = f"{PREFIX}{self.rest}"
        timm = _timm("model.name", self.rest)
        channels = image_channels(name, input_shape)
        options: dict[str, Any] = {"num_classes": num_classes, "in_chans": channels, "drop_rate": dropout}
        cfg = _pretrained_cfg(self.rest)
        if cfg is not None and cfg.fixed_input_size:  # ViTs and the like: a patch grid for this side
            options["img_size"] = input_shape[-1]
        path = None
        if pretrained:
            path = _weights_file(self.rest, pretrained, pretrained_key)
            from metapl.core.checkpoint import load_state_file

            fix = f"pass the state dict of this architecture in {pretrained_key}"
            overlay = {"state_dict": load_state_file(path, fix=fix)}
            options.update(pretrained=True, pretrained_cfg_overlay=overlay)
        try:
            with _quiet_timm():
                return timm.create_model(self.rest, **options)
        except (RuntimeError, KeyError, ValueError, AssertionError) as err:
            if path is None:
                raise ValueError(str(err).strip().splitlines()[0] if str(err).strip() else repr(err)) from None
            lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            detail = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s)") else lines[0]
            detail = detail if len(detail) <= 200 else detail[:197] + "..."
            raise CheckpointError(
                f"{pretrained_key}={pretrained!r} ({path}) does not fit {name}: {detail}; pass the weights of "
                f"this architecture (timm's {self.rest.partition('.')[0]}.* files)"
            ) from None

    def preprocessing(self, model_cfg: Any) -> Preprocessing | None:
        """With pretrained weights, what they expect: the pretrained config's input side, mean and std."""
        if not getattr(model_cfg, "pretrained", ""):
            return None
        cfg = _pretrained_cfg(self.rest)
        if cfg is None:  # an architecture without published weights: timm's defaults for its inputs
            from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

            return Preprocessing(224, tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
        return Preprocessing(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std))


@contextlib.contextmanager
def _quiet_timm():
    """timm logs 'Missing keys ... discarded' at INFO when it replaces a classifier; metapl says what it does."""
    import logging

    logger = logging.getLogger("timm")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _entry(rest: str) -> ModelEntry:
    builder = _Builder(rest)
    return ModelEntry(builder.create, preprocessing=builder.preprocessing, pretrained=True)


MODEL: Family[ModelEntry] = Family(_entry, check, f"{PREFIX}<architecture>")


def download_pretrained(model_section: Any) -> list[Path]:
    """`metapl train --download`: fetch the weights that model.pretrained=cache (and the teacher's) will read,
    unless timm's local cache holds them already. Returns the files; empty when nothing reads the cache."""
    files = []
    for role in ("student", "teacher"):
        model_cfg = model_section.of(role)
        if model_cfg.pretrained == "cache" and model_cfg.name.startswith(PREFIX):
            files.append(download_weights(model_cfg.name[len(PREFIX) :]))
    return files
