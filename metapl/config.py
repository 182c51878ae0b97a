"""Typed run configuration: YAML presets, `--set key=value` overrides, validation with one-line errors."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from metapl.errors import ConfigError
from metapl.optim import OptimSettings

METHODS = ("supervised", "pseudo_label", "uda", "mpl")
DATASETS = ("twomoon", "digits", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagenet", "folder")
MODELS = ("mlp", "small_cnn", "wrn28_2", "resnet50")


@dataclass
class DataConfig:
    name: str = "digits"
    labeled_per_class: int = 5
    val_per_class: int = 0  # validation examples per class, carved from the training pool
    unlabeled_includes_labeled: bool = True
    batch_size: int = 50  # labeled batch B
    mu: int = 7  # unlabeled batch = μ·B
    augment: bool = True
    num_points: int = 2000  # twomoon
    noise: float = 0.1  # twomoon: std of the points around the moons
    jitter: float = 0.0  # twomoon: std of the strong view's Gaussian jitter
    split_file: str = ""  # reuse the split of an earlier run (its splits.json)
    # where the files are: fashion_mnist: the IDX folder (default /usr/share/datasets/fashion-mnist);
    # cifar10/cifar100/svhn: the folder torchvision downloads into (default ./data); imagenet: the folder
    # with train/ and val/; folder: the labeled images (class folders or a path,label CSV)
    root: str = ""
    labeled_selection: str = "balanced"  # balanced | random | first (file order) | all
    extra: bool = False  # svhn: add extra_32x32.mat (531,131 images) to the unlabeled pool
    unlabeled_dir: str = ""  # imagenet/folder: more unlabeled images (a folder, searched recursively, or a CSV)
    test_dir: str = ""  # folder: the test images (class folders or CSV); empty: no test set
    image_size: int = 0  # imagenet/folder: the side images are cropped/resized to (0: 224 / 32)
    magnitude: int = 0  # RandAugment M of the strong view (0: 17 for imagenet, 16 otherwise; spec §8)
    flip: bool = True  # horizontal flips in the image pipelines (off for digits such as SVHN)
    workers: int = -1  # imagenet/folder: loader processes that decode images (-1: min(8, CPU count))
    augment_on_device: bool = False  # in-memory images: augment each batch on the training device (GPU)


@dataclass
class ModelConfig:
    name: str = "mlp"
    dropout: float = 0.0
    hidden: list[int] = field(default_factory=lambda: [128, 128])  # mlp
    activation: str = "relu"  # mlp
    batch_norm: bool = False  # mlp
    init_range: float = 0.0  # mlp: > 0 draws every weight and bias from U(−r, r)
    width: int = 32  # small_cnn
    num_classes: int = 0  # 0: the data's class count; otherwise a check that the data has this many classes


@dataclass
class MethodConfig:
    name: str = "mpl"
    feedback: str = "hard"  # mpl: hard | soft | official
    h: str = "dot"  # mpl, hard: dot | cosine | taylor
    sampling: str = "sample"  # mpl, hard: sample ŷ ~ T, or argmax
    h_sign: int = 1
    baseline: bool = True
    baseline_decay: float = 0.99
    reinforce_reduction: str = "mean"  # mpl, hard: CE(ŷ, T) averaged (the code's scale) or summed (unbiased, §2.2)
    # mpl: keep the teacher's graph while the student steps (fastest), or recompute it afterwards (one more teacher
    # forward, about a third less peak memory); the same update either way
    teacher_graph: str = "keep"
    label_smoothing: float = 0.0  # the (teacher's) supervised CE
    student_label_smoothing: float = 0.0
    supervised_loss: bool = True  # teacher auxiliary loss (mpl)
    uda: bool = True  # teacher auxiliary loss (mpl); always on for method uda
    uda_weight: float = 8.0
    uda_temperature: float = 0.7
    uda_threshold: float = 0.6
    uda_ramp_steps: int = 5000
    tsa: str = "none"  # none | linear | log | exp
    teacher_fraction: float = 0.5  # pseudo_label: share of the steps that train the teacher


@dataclass
class TrainConfig:
    steps: int = 1000
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    ema_decay: float = 0.0  # 0 turns the student's EMA off
    eval_every: int = 100
    log_every: int = 10
    eval_batch_size: int = 1024
    scale_lr: bool = False  # peak LR = lr × data.batch_size / 256, as the official code does
    precision: str = "fp32"  # fp32 | bf16 (autocast) | fp16 (autocast with dynamic loss scaling)
    channels_last: bool = False  # NHWC memory format for convolutional models (faster on GPUs)
    compile: bool = False  # torch.compile every network (not with method.feedback=soft)
    sync_bn: bool = False  # BatchNorm statistics over all data-parallel ranks (CUDA only)
    checkpoint_every: int = 500  # also at the end of each phase; 0: only at the end
    keep_checkpoints: int = 0  # besides checkpoint.pt (the last), keep this many earlier ones
    nonfinite: str = "stop"  # a step with a NaN/inf loss or gradient: stop the run, or skip (undo and count) it
    max_skipped_in_a_row: int = 100  # nonfinite=skip: stop after more consecutive skipped steps than this


@dataclass
class FinetuneConfig:
    steps: int = 1000  # after MPL only (the student's finetuning, spec §5); 0 turns it off
    lr: float = 1e-5
    batch_size: int = 512
    momentum: float = 0.9
    label_smoothing: float = 0.0


@dataclass
class Config:
    preset: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    teacher: OptimSettings = field(default_factory=OptimSettings)  # total_steps is taken from train.steps
    student: OptimSettings = field(default_factory=OptimSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_CHOICES = {
    "data.name": DATASETS,
    "data.labeled_selection": ("balanced", "random", "first", "all"),
    "model.name": MODELS,
    "model.activation": ("relu", "sigmoid", "tanh", "leaky_relu"),
    "method.name": METHODS,
    "method.feedback": ("hard", "soft", "official"),
    "method.h": ("dot", "cosine", "taylor"),
    "method.sampling": ("sample", "argmax"),
    "method.h_sign": (1, -1),
    "method.tsa": ("none", "linear", "log", "exp"),
    "method.reinforce_reduction": ("mean", "sum"),
    "method.teacher_graph": ("keep", "recompute"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.nonfinite": ("stop", "skip"),
    "teacher.schedule": ("cosine", "constant"),
    "student.schedule": ("cosine", "constant"),
}


_DERIVED = {
    "preset": "choose the preset with --preset",
    "teacher.total_steps": "it is train.steps; set that",
    "student.total_steps": "it is train.steps; set that",
    "teacher.fp16_loss_scale": "set train.precision=fp16",
    "student.fp16_loss_scale": "set train.precision=fp16",
}


# ---------------------------------------------------------------------------------------------- presets
def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("metapl.presets").iterdir() if p.name.endswith(".yaml")
    )


def load_preset(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, names)}; available: {', '.join(names)}")
    return yaml.safe_load(resources.files("metapl.presets").joinpath(f"{name}.yaml").read_text()) or {}


def build_config(preset: str, overrides: list[str] = (), method: str | None = None) -> Config:
    """The preset's values, then `method`, then each 'key=value' override; validated."""
    raw = load_preset(preset)
    cfg = from_dict(raw)
    cfg.preset = preset
    if method is not None:
        set_value(cfg, "method.name", method)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value; write e.g. --set train.steps=500")
        if key in _DERIVED:
            raise ConfigError(f"{key} cannot be set: {_DERIVED[key]}")
        if key == "method.name" and method is not None and _parse_scalar(text) != method:
            raise ConfigError(f"--method {method} and --set {item.strip()} disagree; give the method once")
        set_value(cfg, key, _parse_scalar(text))
    validate(cfg)
    return cfg


def load_config_file(path: Path) -> Config:
    """A config saved with a run (config.yaml)."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"cannot read config {path}: {first_line}; pass a run directory written by metapl train"
        ) from None
    cfg = from_dict(raw)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- parsing
def from_dict(raw: dict) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    cfg = Config()
    for key, value in flatten(raw):
        set_value(cfg, key, value)
    return cfg


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


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Set a dotted key ('train.steps') with type checking; unknown keys get a did-you-mean suggestion."""
    if key == "preset":
        cfg.preset = _coerce(key, value, str)
        return
    section_name, _, name = key.partition(".")
    section = getattr(cfg, section_name, None) if section_name != "preset" else None
    if not dataclasses.is_dataclass(section) or name not in {f.name for f in dataclasses.fields(section)}:
        if dataclasses.is_dataclass(section) and not name:
            example = dataclasses.fields(section)[0].name
            raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{example}=...")
        raise ConfigError(
            f"unknown config key {key!r}{_suggest(key, _all_keys())}; list the keys with: metapl config --preset NAME"
        )
    expected = typing.get_type_hints(type(section))[name]
    setattr(section, name, _coerce(key, value, expected))


def _all_keys() -> list[str]:
    keys = []
    for section in dataclasses.fields(Config):
        value = getattr(Config(), section.name)
        if dataclasses.is_dataclass(value):
            keys.extend(f"{section.name}.{f.name}" for f in dataclasses.fields(value))
        else:
            keys.append(section.name)
    return keys


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


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


def _coerce(key: str, value: Any, expected: Any) -> Any:
    origin = typing.get_origin(expected)
    if origin is list:
        (item_type,) = typing.get_args(expected)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r} must be a list, e.g. {key}=[64,64]")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(expected) if t is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, options[0])
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
            raise ConfigError(f"{key}={value!r} must be an integer, e.g. {key}=100")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number, e.g. {key}=0.1")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    raise ConfigError(f"{key} has an unsupported type {expected}")


# ---------------------------------------------------------------------------------------------- validation
def validate(cfg: Config) -> None:
    """Reject impossible values with a message that names the key, the value and the allowed range."""
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            shown = ", ".join(str(c) for c in choices)
            raise ConfigError(
                f"{key}={value!r} is not allowed{_suggest(str(value), [str(c) for c in choices])}; use one of: {shown}"
            )
    checks = [
        ("data.labeled_per_class", cfg.data.labeled_per_class >= 1, "at least 1"),
        ("data.val_per_class", cfg.data.val_per_class >= 0, "0 or more"),
        ("data.batch_size", cfg.data.batch_size >= 1, "at least 1"),
        ("data.mu", cfg.data.mu >= 1, "at least 1"),
        ("data.num_points", cfg.data.num_points >= 4, "at least 4"),
        ("data.noise", cfg.data.noise >= 0, "0 or more"),
        ("data.jitter", cfg.data.jitter >= 0, "0 or more"),
        ("data.image_size", cfg.data.image_size >= 0, "0 (the dataset's) or more"),
        ("data.magnitude", 0 <= cfg.data.magnitude <= 20, "between 0 (the dataset's) and 20"),
        ("data.workers", cfg.data.workers >= -1, "-1 (automatic), 0 (in the training process) or more"),
        ("model.dropout", 0 <= cfg.model.dropout < 1, "in [0, 1)"),
        (
            "model.hidden",
            len(cfg.model.hidden) >= 1 and all(h >= 1 for h in cfg.model.hidden),
            "a list of positive sizes",
        ),
        ("model.init_range", cfg.model.init_range >= 0, "0 (default init) or more"),
        ("model.width", cfg.model.width >= 1, "at least 1"),
        ("model.num_classes", cfg.model.num_classes >= 0, "0 (the data's class count) or the data's class count"),
        ("method.baseline_decay", 0 <= cfg.method.baseline_decay < 1, "in [0, 1)"),
        ("method.label_smoothing", 0 <= cfg.method.label_smoothing < 1, "in [0, 1)"),
        ("method.student_label_smoothing", 0 <= cfg.method.student_label_smoothing < 1, "in [0, 1)"),
        ("method.uda_weight", cfg.method.uda_weight >= 0, "0 or more"),
        ("method.uda_temperature", cfg.method.uda_temperature > 0, "above 0"),
        ("method.uda_threshold", 0 <= cfg.method.uda_threshold <= 1, "in [0, 1]"),
        ("method.uda_ramp_steps", cfg.method.uda_ramp_steps >= 0, "0 or more"),
        ("method.teacher_fraction", 0 < cfg.method.teacher_fraction < 1, "in (0, 1)"),
        ("train.steps", cfg.train.steps >= 1, "at least 1"),
        ("train.seed", 0 <= cfg.train.seed < 2**32, "in [0, 2**32)"),
        ("train.ema_decay", 0 <= cfg.train.ema_decay < 1, "in [0, 1) (0 turns EMA off)"),
        ("train.eval_every", cfg.train.eval_every >= 0, "0 (only at the end) or more"),
        ("train.log_every", cfg.train.log_every >= 1, "at least 1"),
        ("train.eval_batch_size", cfg.train.eval_batch_size >= 1, "at least 1"),
        ("train.checkpoint_every", cfg.train.checkpoint_every >= 0, "0 (only at the end) or more"),
        ("train.keep_checkpoints", cfg.train.keep_checkpoints >= 0, "0 or more"),
        ("train.max_skipped_in_a_row", cfg.train.max_skipped_in_a_row >= 1, "at least 1"),
        ("finetune.steps", cfg.finetune.steps >= 0, "0 (off) or more"),
        ("finetune.lr", cfg.finetune.lr > 0, "above 0"),
        ("finetune.batch_size", cfg.finetune.batch_size >= 1, "at least 1"),
        ("finetune.momentum", 0 <= cfg.finetune.momentum < 1, "in [0, 1)"),
        ("finetune.label_smoothing", 0 <= cfg.finetune.label_smoothing < 1, "in [0, 1)"),
    ]
    for section in ("teacher", "student"):
        opt: OptimSettings = getattr(cfg, section)
        checks += [
            (f"{section}.lr", opt.lr > 0, "above 0"),
            (f"{section}.momentum", 0 <= opt.momentum < 1, "in [0, 1)"),
            (f"{section}.weight_decay", opt.weight_decay >= 0, "0 or more"),
            (f"{section}.grad_clip", opt.grad_clip >= 0, "0 (off) or more"),
            (f"{section}.warmup_steps", opt.warmup_steps >= 0, "0 or more"),
            (f"{section}.wait_steps", opt.wait_steps >= 0, "0 or more"),
        ]
    for key, ok, allowed in checks:
        if not ok:
            section, name = key.split(".")
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"{key}={value!r} is impossible; it must be {allowed}")
