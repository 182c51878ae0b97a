"""Typed run configuration: YAML presets, `--set key=value` overrides, config.yaml, validation with one-line errors.

Each section is a dataclass whose fields declare their defaults and allowed values (metapl/core/settings.py). The
`method` section is the chosen method's own settings dataclass, defined in that method's module; its keys, nested and
the flat keys of config formats 1–2, are run/method_keys.py's. The `data` and `model` sections are their shared keys
plus the chosen parts' own settings (the data set's; the student's and the teacher's models'), each part's dataclass
registered beside it (DATASETS, MODELS: Registry.settings_class); run/part_keys.py keeps them. One value is parsed
and coerced by run/values.py.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from metapl.core.errors import ConfigError, first_line
from metapl.core.optim_config import OptimConfig
from metapl.core.registry import Registry
from metapl.core.settings import (
    above,
    at_least,
    check_settings,
    choice,
    fraction,
    part_field,
    path_field,
    ranged,
    seed_field,
    suggest,
)
from metapl.parts.data.registry import DATASETS
from metapl.parts.methods import METHODS
from metapl.parts.models.registry import MODELS
from metapl.run.method_keys import method_path, method_value, set_method_value, shared_key
from metapl.run.part_keys import (
    choose_part,
    fill_parts,
    other_parts_key,
    parts_of,
    pretrained_image_size,
    section_dict,
    set_part_value,
    shared_keys,
)
from metapl.run.presets import load_preset
from metapl.run.values import all_keys, coerce, coerce_field, flatten, has_field, parse_override

# config.yaml's layout. 1: every method's keys in one `method` section and derived optimiser keys (metapl 0.1);
# 2: the chosen method's keys only; 3: mpl's and reduced_mpl's keys nested (method.feedback.*, method.teacher_losses.*).
# Version 1 files are read by dropping what version 2 no longer has; versions 1 and 2 name the nested keys by their
# flat keys (parts/methods/settings.py: flat_keys), which every method section still reads.
CONFIG_FORMAT = 3
READABLE_FORMATS = (1, 2, CONFIG_FORMAT)


@dataclass
class DataConfig:
    """The `data` section: the keys every data set reads, and `settings`, the chosen data set's own (parts/data/settings.py:
    twomoon's num_points, the image files' image_size, ...)."""

    REGISTRY: ClassVar[Registry] = DATASETS
    PARTS: ClassVar[dict[str, str]] = {"settings": "name"}  # part field: the key naming its part
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("mu", "batch_size")

    name: str = "digits"  # a name in metapl.parts.data.DATASETS
    labeled_per_class: int = at_least(1, 5)
    val_per_class: int = at_least(0, 0)  # validation examples per class, carved from the training pool
    unlabeled_includes_labeled: bool = True
    batch_size: int = at_least(1, 50)  # labeled batch B
    mu: int = at_least(1, 7)  # unlabeled batch = μ·B
    augment: bool = True
    settings: Any = part_field()  # the data set's own keys (DATASETS.settings_class(name))
    split_file: str = path_field()  # reuse the split of an earlier run (its splits.json)
    # where the files are: fashion_mnist: the IDX folder (default /usr/share/datasets/fashion-mnist);
    # cifar10/cifar100/svhn: the folder torchvision downloads into (default ./data); imagenet: the folder
    # with train/ and val/; folder: the labeled images (class folders or a path,label CSV)
    root: str = path_field()
    labeled_selection: str = choice("balanced", ("balanced", "random", "first", "all"))  # first: file order
    unlabeled_dir: str = (
        path_field()
    )  # imagenet/folder: more unlabeled images (a folder, searched recursively, or a CSV)
    # imagenet/folder: the unlabeled images as WebDataset shards, streamed instead of the unlabeled pool: a brace
    # pattern (shards/u-{000000..000099}.tar) or a folder of .tar files (docs/scale.md#shards)
    unlabeled_shards: str = path_field()
    shard_lanes: int = at_least(0, 0, " (0: processes × data.workers)")  # shard readers the unlabeled batch is cut into
    # RandAugment M of the strong view (0: 17 for imagenet, 16 otherwise; docs/method.md#randaugment)
    magnitude: int = ranged(0, lambda v: 0 <= v <= 20, "between 0 (the dataset's) and 20")
    flip: bool = True  # horizontal flips in the image pipelines (off for digits such as SVHN)
    # imagenet/folder: loader processes that decode images (-1: min(8, CPU count))
    workers: int = ranged(-1, lambda v: v >= -1, "-1 (automatic), 0 (in the training process) or more")
    augment_on_device: bool = False  # in-memory images: augment each batch on the training device (GPU)
    label_dir: str = (
        path_field()
    )  # a teacher's stored class distributions (metapl label --out DIR), for method reduced_mpl

    def __post_init__(self) -> None:
        fill_parts(self)

    def to_dict(self) -> dict:
        return section_dict(self)


@dataclass
class ModelConfig:
    """The `model` section: the keys every network reads, and the own settings (parts/models/settings.py: mlp's hidden,
    small_cnn's width, ...) of model.name (`settings`) and of model.teacher_name when that names another model
    (`teacher_settings`; None otherwise). A key both models have is one key: it sets both."""

    REGISTRY: ClassVar[Registry] = MODELS
    PARTS: ClassVar[dict[str, str]] = {"settings": "name", "teacher_settings": "teacher_name"}

    name: str = "mlp"  # a name in metapl.parts.models.MODELS
    dropout: float = fraction(0.0)
    settings: Any = part_field()  # model.name's own keys (MODELS.settings_class(name))
    # 0: the data's class count; otherwise a check that the data has this many classes
    num_classes: int = at_least(0, 0, " (0: the data's class count)")
    # the teacher's network (mpl, pseudo_label), e.g. a bigger timm/<architecture>; empty: model.name (docs/scale.md)
    teacher_name: str = ""
    teacher_settings: Any = part_field()  # model.teacher_name's own keys when it names another model; else None
    # timm/<architecture>: pretrained weights, a local file or "cache" (timm's local cache; train --download fills it)
    pretrained: str = path_field()
    teacher_pretrained: str = (
        path_field()
    )  # the teacher's weights; empty: model.pretrained when the teacher is model.name

    def __post_init__(self) -> None:
        fill_parts(self)

    def to_dict(self) -> dict:
        return section_dict(self)

    def of(self, role: str) -> ModelConfig:
        """The section as one network sees it: role "teacher" gets model.teacher_name, its settings and weights."""
        if role != "teacher":
            return self
        name = self.teacher_name or self.name
        pretrained = self.teacher_pretrained or (self.pretrained if name == self.name else "")
        own = self.teacher_settings if self.teacher_settings is not None else self.settings
        return dataclasses.replace(self, name=name, pretrained=pretrained, settings=own, teacher_settings=None)


@dataclass
class MethodSection:
    """method.name and that method's settings (the dataclass its module defines)."""

    name: str
    settings: Any

    @classmethod
    def of(cls, name: str) -> MethodSection:
        return cls(name, METHODS.settings_class(name)())

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self.settings)}


@dataclass
class TrainConfig:
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("eval_batch_size",)

    steps: int = at_least(1, 1000)
    seed: int = seed_field(0)
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    ema_decay: float = ranged(0.0, lambda v: 0 <= v < 1, "in [0, 1) (0 turns EMA off)")
    eval_every: int = at_least(0, 100, " (0: only at the end)")
    log_every: int = at_least(1, 10)
    eval_batch_size: int = at_least(1, 1024)
    scale_lr: bool = False  # peak LR = lr × data.batch_size / 256, as the official code does
    precision: str = choice("fp32", ("fp32", "bf16", "fp16"))  # bf16: autocast; fp16: with dynamic loss scaling
    channels_last: bool = False  # NHWC memory format for convolutional models (faster on GPUs)
    compile: bool = False  # torch.compile every network (not with method.feedback.mode=soft)
    sync_bn: bool = False  # BatchNorm statistics over all data-parallel ranks (CUDA only)
    checkpoint_every: int = at_least(0, 500, " (0: only at the end)")  # also at the end of each phase
    keep_checkpoints: int = at_least(0, 0)  # besides checkpoint.pt (the last), keep this many earlier ones
    # a step with a NaN/inf loss or gradient: stop the run, or skip (undo and count) it
    nonfinite: str = choice("stop", ("stop", "skip"))
    max_skipped_in_a_row: int = at_least(1, 100)  # nonfinite=skip: stop after more consecutive skipped steps
    # PyTorch's intra-op CPU threads (train, eval, predict, label): 0 picks (one thread for a network of little work
    # per example or on a busy machine, else all cores; OMP_NUM_THREADS, when set, is kept: run/threads.py)
    # The bound: PyTorch takes a 32-bit count, and no machine has more cores than this.
    threads: int = ranged(0, lambda v: 0 <= v <= 4096, "from 0 to 4096 (0: automatic)")


@dataclass
class FinetuneConfig:
    """The finetuning phase after methods that have one (MPL; docs/method.md#finetuning)."""

    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("batch_size",)

    steps: int = at_least(0, 1000, " (0 turns finetuning off)")
    lr: float = above(0, 1e-5)
    batch_size: int = at_least(1, 512)
    momentum: float = fraction(0.9)
    label_smoothing: float = fraction(0.0)


@dataclass
class Config:
    preset: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodSection = field(default_factory=lambda: MethodSection.of("mpl"))
    teacher: OptimConfig = field(default_factory=OptimConfig)
    student: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else _plain(value)
        return out


def _plain(value: Any) -> Any:
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


_PART_SECTIONS: dict[str, Any] = {"data": DataConfig, "model": ModelConfig}  # the sections with parts

# Keys a user cannot set, and why (they are derived from others).
_DERIVED = {
    "preset": "choose the preset with --preset",
    "teacher.total_steps": "it is train.steps (the teacher's share for pseudo_label); set train.steps",
    "student.total_steps": "it is train.steps (the student's share for pseudo_label); set train.steps",
    "teacher.fp16_loss_scale": "set train.precision=fp16",
    "student.fp16_loss_scale": "set train.precision=fp16",
}


# ---------------------------------------------------------------------------------------------- building
def build_config(preset: str, overrides: typing.Sequence[str] = (), method: str | None = None) -> Config:
    """The preset's values, then `method`, then each 'key=value' override; validated.

    A preset's `method` section may hold settings of several methods (a preset describes an experiment that
    several methods run): the chosen method takes the keys it has. Overrides must name the chosen method's keys.
    """
    raw = load_preset(preset)
    parsed = [parse_override(item) for item in overrides]
    for key, value in parsed:
        if key in _DERIVED:
            raise ConfigError(f"{key} cannot be set: {_DERIVED[key]}")
        if key == "method.name" and method is not None and value != method:
            raise ConfigError(f"--method {method} and --set method.name={value} disagree; give the method once")
    name = method or next((v for k, v in parsed if k == "method.name"), None)
    cfg = from_dict(_with_part_names(raw, parsed), method_name=name, lenient_method=True, lenient_parts=True)
    cfg.preset = preset
    for key, value in parsed:
        if not _names_part(key):  # the parts overrides choose are the preset's already (_with_part_names)
            set_value(cfg, key, value)
    given = {key for key, _ in parsed}
    _drop_unread_inputs(cfg, keep=given)  # a preset's inputs for other methods; the user's own are checked
    validate(cfg)
    pretrained_image_size(cfg)
    return cfg


def _names_part(key: str) -> bool:
    section_name, _, name = key.partition(".")
    section = _PART_SECTIONS.get(section_name)
    return section is not None and name in section.PARTS.values()


def _names_first(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The keys that choose parts (data.name, model.name, model.teacher_name) first: the other keys are the chosen
    parts'."""
    naming = {f"{s}.{n}" for s, section in _PART_SECTIONS.items() for n in section.PARTS.values()}
    return [item for item in items if item[0] in naming] + [item for item in items if item[0] not in naming]


def _with_part_names(raw: dict, parsed: list[tuple[str, Any]]) -> dict:
    """The preset with the parts that overrides choose (the last value of each naming key): the preset's keys of
    those parts are kept, those of others dropped."""
    raw = dict(raw)
    for key, value in parsed:
        section_name, _, name = key.partition(".")
        section = _PART_SECTIONS.get(section_name)
        if section is not None and name in section.PARTS.values():
            old = raw.get(section_name, {})
            if isinstance(old, dict):
                raw[section_name] = {**old, name: value}
    return raw


# ---------------------------------------------------------------------------------------------- config.yaml
def load_config_file(path: Path) -> Config:
    """A config saved with a run (config.yaml), of this format or an earlier one (READABLE_FORMATS)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(
            f"cannot read config {path}: {first_line(err)}; pass a run directory written by metapl train"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} is not a mapping of sections; pass a run directory written by metapl train")
    version = raw.pop("config_format", 1)
    if version not in READABLE_FORMATS:
        raise ConfigError(
            f"config {path} has config_format={version!r}, which this metapl ({CONFIG_FORMAT}) cannot read; "
            "use the metapl that wrote it"
        )
    if version == 1:  # derived keys that format 2 no longer stores
        for section in ("teacher", "student"):
            if isinstance(raw.get(section), dict):
                raw[section] = {k: v for k, v in raw[section].items() if k not in ("total_steps", "fp16_loss_scale")}
    try:
        cfg = from_dict(raw, lenient_method=version == 1, lenient_parts=True)  # formats 1, 2: every part's keys
        _drop_unread_inputs(cfg)  # a run of a metapl that let them through: they were never read
        validate(cfg)
    except ConfigError as err:
        raise ConfigError(f"config {path}: {err}") from None
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    from metapl.core.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump({"config_format": CONFIG_FORMAT, **cfg.to_dict()}, sort_keys=False))


# ---------------------------------------------------------------------------------------------- parsing
def from_dict(
    raw: dict, method_name: str | None = None, lenient_method: bool = False, lenient_parts: bool = False
) -> Config:
    """A Config from nested sections. `method_name` (when given) wins over raw's method.name; with
    `lenient_method` the method section's keys that belong to another method are dropped, not refused, and with
    `lenient_parts` so are the data and model sections' keys of data sets and models not chosen."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    items = flatten(raw)
    name = method_name if method_name is not None else next((v for k, v in items if k == "method.name"), "mpl")
    name = coerce("method.name", name, str)
    METHODS.check(name)
    cfg = Config(method=MethodSection.of(name))
    for key, value in _names_first(items):
        if key == "method.name":
            continue
        if lenient_parts and other_parts_key(cfg, key):
            continue
        if lenient_method and key.startswith("method.") and method_path(type(cfg.method.settings), key[7:]) is None:
            shared = shared_key(cfg.method.settings, key)  # raises for a key no method has
            if shared is None:
                continue
            key = shared
        set_value(cfg, key, value)
    return cfg


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key ('train.steps') with type checking; unknown keys get a did-you-mean suggestion."""
    if key == "preset":
        cfg.preset = coerce(key, value, str)
        return
    if key in _DERIVED:
        raise ConfigError(f"{key} cannot be set: {_DERIVED[key]}")
    section_name, _, name = key.partition(".")
    if section_name == "method":
        set_method_value(cfg, name, value)
        return
    section = getattr(cfg, section_name, None)
    if hasattr(section, "PARTS") and name and name not in shared_keys(section):
        set_part_value(cfg, section_name, section, name, value)  # a key of the chosen data set's or models'
        return
    if not dataclasses.is_dataclass(section) or not has_field(section, name):
        if dataclasses.is_dataclass(section) and not name:
            example = dataclasses.fields(section)[0].name
            raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{example}=...")
        raise ConfigError(
            f"unknown config key {key!r}{suggest(key, all_keys(cfg))}; list the keys with: metapl config --preset NAME"
        )
    if _names_part(key) and not isinstance(value, str):
        value = str(value)  # data.name=5: refused below with the registered names, not as a wrong type
    new = coerce_field(key, value, section, name)
    if _names_part(key):
        choose_part(section, key, new)
    setattr(section, name, new)
    if _names_part(key):
        fill_parts(section)  # the settings of the part now chosen


def get_value(cfg: Config, key: str) -> Any:
    """The value of a dotted key ('data.num_points'; 'method.feedback.h' or its flat key 'method.h'), wherever its
    section keeps it."""
    if key.startswith("method."):
        return method_value(cfg, key)
    return dict(flatten(cfg.to_dict()))[key]


# ---------------------------------------------------------------------------------------------- validation
def unread_inputs(cfg: Config) -> dict[str, str]:
    """The data settings naming inputs that the chosen method does not read, each with why: unlabeled images (a
    method whose settings say READS_UNLABELED=False) and a teacher's stored distributions (READS_STORED=False;
    parts/methods/settings.py). Set by a user, such a setting is refused, not ignored: the run would not be the one asked
    for. Read from the settings class, so no method (nor PyTorch) is imported."""
    settings = METHODS.settings_class(cfg.method.name)
    unread = {}
    if not getattr(settings, "READS_UNLABELED", True):
        unread["data.unlabeled_dir"] = unread["data.unlabeled_shards"] = "trains on labeled images only"
    if not getattr(settings, "READS_STORED", False):
        unread["data.label_dir"] = "reads no stored teacher distributions (method reduced_mpl does)"
    return unread


def _drop_unread_inputs(cfg: Config, keep: set[str] | frozenset[str] = frozenset()) -> None:
    """Clear the unread inputs (unread_inputs) that are not in `keep`: a preset describes an experiment that several
    methods run, and a method takes the inputs it reads, as it takes the method keys it has."""
    for key in unread_inputs(cfg):
        if key not in keep:
            setattr(cfg.data, key.partition(".")[2], "")


def validate(cfg: Config) -> None:
    """Reject impossible values with a message that names the key, the value and the allowed range: each
    field's declared rule, the registered names, and the checks that involve several sections."""
    DATASETS.check(cfg.data.name)
    MODELS.check(cfg.model.name)
    if cfg.model.teacher_name:
        MODELS.check(cfg.model.teacher_name, "model.teacher_name")
    for key, role in (("pretrained", "student"), ("teacher_pretrained", "teacher")):
        name = cfg.model.of(role).name
        if getattr(cfg.model, key) and not MODELS.get(name).pretrained:  # only then is the model imported
            raise ConfigError(
                f"model.{key}={getattr(cfg.model, key)!r}, but {name} has no pretrained weights to load; "
                "clear it, or choose a timm/<architecture> model"
            )
    METHODS.check(cfg.method.name)
    for section_name in _PART_SECTIONS:  # a section changed by hand (cfg.data.name = ...) gets its parts' settings
        fill_parts(getattr(cfg, section_name))
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if isinstance(section, MethodSection):
            check_settings(section.settings, "method")
        elif dataclasses.is_dataclass(section):
            check_settings(section, f.name)
    for key, why in unread_inputs(cfg).items():
        value = getattr(cfg.data, key.partition(".")[2])
        if value:
            raise ConfigError(
                f"{key}={value!r} is not read by method.name={cfg.method.name}, which {why}; clear it "
                f"(--set {key}=) or choose a method that reads it"
            )
    check_with = getattr(cfg.method.settings, "check_with", None)  # a method's checks across sections
    if check_with is not None:
        check_with(cfg)
    _check_parts_with(cfg)


def _check_parts_with(cfg: Config) -> None:
    """The chosen parts' checks across sections (`check_with`, as a method's)."""
    for section_name in _PART_SECTIONS:
        for own in parts_of(getattr(cfg, section_name)):
            check_with = getattr(own, "check_with", None)
            if check_with is not None:
                check_with(cfg)
