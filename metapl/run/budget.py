"""What a run's sizes cost, checked before anything big is allocated: a training step's memory estimated from the
config and the data's shape against what this machine has, and allocation failures met later turned into one
line that names the settings that size them.

The estimate is a lower bound on purpose: it counts only what a step cannot do without (the batch's inputs and
indices, one network's weights, gradients and optimiser state, and the outputs of the network's layers that hold
parameters, for the examples that are trained on), so a refused run could not have fitted, and every run that
fits is let through. Anything the estimate misses and the allocator then refuses still ends in one line
(`allocation_failure`).
"""

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from metapl.core.errors import ConfigError, first_line
from metapl.core.optim_config import STATE_SLOTS
from metapl.parts.methods import METHODS
from metapl.run.config import Config, get_value
from metapl.run.method_keys import canonical_key
from metapl.run.part_keys import section_size_keys

# Settings that size what a command allocates, by command; the first ones a user changed are named first. Training's
# are the config's (train_size_keys): each section and each chosen part declares its own (SIZE_KEYS).
SIZE_SETTINGS = {
    "eval": ("--batch-size",),
    "predict": ("the number of inputs",),
    "export": (),
    "plot": (),
    "demo": ("--steps",),
    "label": ("--batch-size",),
}
_ALLOCATION_WORDS = (
    "out of memory",
    "failed to allocate",
    "can't allocate memory",
    "cannot allocate memory",
    "not enough memory",
    "tried to allocate",
    "defaultcpuallocator",
    "std::bad_alloc",
    "is killed by signal: killed",  # a data loader worker ended by the kernel's out-of-memory killer
)


_STEP_SECTIONS = ("data", "model", "train", "finetune", "method")  # the order in which training's size keys are named
_NETWORK_NAMES = ("model.name", "model.teacher_name")  # sizes too: a smaller network is the other fix


def train_size_keys(cfg: Config | None = None) -> list[str]:
    """The settings that size a training step: those the sections and the chosen parts declare (data: batch_size,
    mu and the data set's own, such as twomoon's num_points; the models' own, such as mlp's hidden; ...), then the
    networks' names. Without a config (a failure before one was built): those of every registered part."""
    if cfg is not None:
        keys = [key for section in _STEP_SECTIONS for key in section_size_keys(cfg, section)]
    else:
        keys = _every_size_key()
    return list(dict.fromkeys(keys + list(_NETWORK_NAMES)))


def _every_size_key() -> list[str]:
    """The size keys of every section and every part registered for it, in _STEP_SECTIONS' order."""
    from metapl.core.settings import size_keys
    from metapl.parts.data.registry import DATASETS
    from metapl.parts.models.registry import MODELS
    from metapl.run.config import DataConfig, FinetuneConfig, ModelConfig, TrainConfig

    owned: dict[str, list[type]] = {
        "data": [DataConfig, *DATASETS.all_settings().values()],
        "model": [ModelConfig, *MODELS.all_settings().values()],
        "train": [TrainConfig],
        "finetune": [FinetuneConfig],
        "method": [METHODS.settings_class(name) for name in METHODS.names()],
    }
    return [f"{section}.{key}" for section in _STEP_SECTIONS for own in owned[section] for key in size_keys(own)]


# ---------------------------------------------------------------------------------------------- the machine
def host_available() -> int | None:
    """Bytes of host memory a new allocation can get: /proc/meminfo's MemAvailable, else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_available(device: torch.device) -> int | None:
    """Free bytes on `device`: torch.cuda.mem_get_info on a GPU, host_available() on the CPU."""
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except (RuntimeError, AssertionError):
            return None
    if device.type == "cpu":
        return host_available()
    return None


def human(size: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1 (1.5 GiB)."""
    if size >= 1024**6:  # integers of any size: no float conversion
        return "more than 1,024 PiB"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} PiB"


def _where(device: torch.device) -> str:
    return "the GPU has" if device.type == "cuda" else "this machine has"


# ---------------------------------------------------------------------------------------------- before data
def check_data_settings(data_cfg) -> None:
    """Refuse data settings whose cost alone cannot fit, before the data set is built: what the data set's own
    settings say loading takes at the least (`least_memory`: TwoMoon's two draws of num_points points) and loader
    processes beyond reason."""
    available = host_available()
    least_memory = getattr(data_cfg.settings, "least_memory", None)
    if least_memory is not None and available is not None:
        for name, need in least_memory():
            if need > available:
                value = getattr(data_cfg.settings, name)
                _refuse_own(f"data.{name}", value, f"data.name={data_cfg.name}", need, available, torch.device("cpu"))
    cores = os.cpu_count() or 1
    most_workers = max(64, 16 * cores)
    if data_cfg.workers > most_workers:
        raise ConfigError(
            f"data.workers={data_cfg.workers} loader processes on {cores} CPU core{'s' if cores != 1 else ''} "
            f"cannot run; use at most {most_workers} (-1 picks min(8, cores))"
        )


# ---------------------------------------------------------------------------------------------- one step
@dataclass
class NetworkProfile:
    """A network's size, measured on the meta device (nothing allocated): its parameters, and per example the
    elements its parameterised layers output (what autograd keeps) and its widest layer output."""

    parameters: int
    saved_per_example: int
    widest_per_example: int


def profile_network(cfg, data, role: str = "student") -> NetworkProfile | None:
    """Build the run's network (`role` "teacher": model.teacher_name's) on the meta device and run two examples
    through it; None when a network cannot be built there (code that reads tensor values while it builds)."""
    from metapl.run.build import build_model

    try:
        with torch.device("meta"):
            model = build_model(cfg, data, role) if role != "student" else build_model(cfg, data)
    except (RuntimeError, OverflowError) as err:
        first = first_line(err)
        if "overflow" not in f"{type(err).__name__} {first}".lower():
            return None  # not a size problem: the real build reports it, or the run goes on unestimated
        keys = _size_keys(cfg)  # sizes beyond what a tensor can describe
        raise ConfigError(
            f"{', '.join(_shown(cfg, k) for k in keys) or _shown(cfg, 'model.name')} makes a network too large to "
            f"build ({first[:120]}); lower {' or '.join(keys) or 'the model size'}"
        ) from None
    outputs: list[tuple[bool, int]] = []

    def record(module: nn.Module, args, output) -> None:
        if isinstance(output, torch.Tensor):
            own = next(module.parameters(recurse=False), None) is not None
            outputs.append((own, output.numel()))

    parameters = sum(p.numel() for p in model.parameters())
    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model.train()
            model(torch.empty((2, *data.input_shape), device="meta"))
    except NotImplementedError:  # an operation the meta device does not implement: count the weights alone
        return NetworkProfile(parameters, 0, 0)
    except RuntimeError as err:
        first = first_line(err)
        if "meta" in first.lower():  # code that reads tensor values, which the meta device has not
            return NetworkProfile(parameters, 0, 0)
        key = "model.teacher_name" if role == "teacher" else "model.name"  # a shape the network cannot take
        name = cfg.model.of(role).name
        raise ConfigError(
            f"{key}={name!r} does not fit data.name={cfg.data.name!r} (inputs of shape {tuple(data.input_shape)}): "
            f"{first[:160]}; choose a {key} for inputs of this size"
        ) from None
    finally:
        for hook in hooks:
            hook.remove()
    saved = sum(n for own, n in outputs if own) // 2
    widest = max((n for _, n in outputs), default=0) // 2
    return NetworkProfile(parameters, saved, widest)


def _input_bytes(data) -> tuple[int, int]:
    """(elements, bytes per element) of one input: image files are decoded to uint8."""
    x = data.x_labeled
    element = 1 if not isinstance(x, torch.Tensor) else x.element_size()
    return math.prod(data.input_shape), element


def check_step_memory(cfg, data, device: torch.device, world_size: int = 1) -> None:
    """Refuse, before the networks are built, a run whose step cannot fit the memory of `device` (and of the
    host, which gathers the batches), naming the settings that size it and the value above which nothing fits."""
    profile = profile_network(cfg, data)
    if profile is None:
        return
    teacher = profile
    shape = METHODS.get(cfg.method.name).memory  # declared by the method's own module
    if getattr(cfg.model, "teacher_name", "") and shape.networks == 2:
        teacher = profile_network(cfg, data, "teacher") or profile
    per_input, input_element = _input_bytes(data)
    b_global, mu = cfg.data.batch_size, cfg.data.mu
    unlabeled = shape.unlabeled_views > 0
    b = max(1, b_global // world_size)
    # what the method's own settings allocate besides the networks (reduced_mpl: its teacher and buffer)
    own = shape.own(cfg.method.settings, data.num_classes, b * (1 + mu * unlabeled)) if shape.own else []
    activation = 2 if cfg.train.precision in ("bf16", "fp16") else 4
    # what autograd keeps per example: of the smaller network, when the teacher is another one
    measured = [p.saved_per_example for p in (profile, teacher) if p.saved_per_example]  # 0: forward not run
    saved = min(measured, default=0) * activation

    # weights, gradients and the optimiser's state of each trained network (the teacher's own size), the EMA's copy
    copies = {network: 2 + STATE_SLOTS[getattr(cfg, network).optimizer] for network in ("student", "teacher")}
    parameters = profile.parameters * (copies["student"] + (cfg.train.ema_decay > 0))
    parameters += teacher.parameters * copies["teacher"] * (shape.networks - 1)
    weights = parameters * 4
    # on the device, per unit of μ and the rest: the batch's inputs (labeled, weak and strong views) and what
    # autograd keeps of the layers' outputs for the examples that go through a network with a graph
    step_per_mu = b * (2 * per_input * input_element + shape.unlabeled_views * saved) if unlabeled else 0
    step_rest = weights + sum(need for _, need in own) + b * (per_input * input_element + saved * shape.labeled)
    eval_batch = min(cfg.train.eval_batch_size, max(len(data.y_val), len(data.y_test), 1))
    evaluation = weights + eval_batch * (per_input * 4 + profile.widest_per_example * 4)
    step = step_rest + step_per_mu * mu

    available = device_available(device)
    if available is not None:
        for key, need in own:
            if need > available:
                _refuse_setting(cfg, key, need, available, device)
        if weights > available:
            _refuse_network(cfg, profile, teacher, weights, available, device)
        if step > available:
            most = (available - step_rest) // step_per_mu if step_per_mu else 0
            _refuse_step(cfg, data, step, available, device, unlabeled, most)
        if evaluation > available:
            most_eval = max(1, (available - weights) // max(1, per_input * 4 + profile.widest_per_example * 4))
            raise ConfigError(
                f"train.eval_batch_size={cfg.train.eval_batch_size} needs at least {human(evaluation)} to evaluate "
                f"{eval_batch} examples at once, but {_where(device)} {human(available)} available; lower "
                f"train.eval_batch_size (more than {most_eval:,} cannot fit)"
            )
    # The host draws every global batch's indices (int64) and, unless the device augments, gathers the batch.
    host = host_available()
    if host is None:
        return
    indices = 8 * b_global * (1 + (mu if unlabeled else 0))
    gathered = 0 if device.type == "cpu" or cfg.data.augment_on_device else b * (1 + 2 * mu * unlabeled) * per_input
    if indices + gathered * input_element > host:
        per_mu = 8 * b_global + 2 * b * per_input * input_element
        most = (host - 8 * b_global - b * per_input * input_element) // per_mu if unlabeled else 0
        _refuse_step(cfg, data, indices + gathered * input_element, host, torch.device("cpu"), unlabeled, most)


def _size_keys(cfg) -> list[str]:
    """The model.* settings that size the networks, as the models' own settings declare them (mlp: hidden)."""
    return section_size_keys(cfg, "model")


def _shown(cfg, key: str) -> str:
    return f"{key}={get_value(cfg, key)!r}"


def _refuse_setting(cfg, key: str, need: int, available: int, device: torch.device) -> None:
    """A method's own size setting that alone cannot fit (what it allocates grows in proportion to it)."""
    _refuse_own(key, get_value(cfg, key), f"method.name={cfg.method.name}", need, available, device)


def _refuse_own(key: str, value: int, owner: str, need: int, available: int, device: torch.device) -> None:
    """A part's own size setting (`owner`: "data.name=twomoon") that alone cannot fit (what it allocates grows in
    proportion to it): one line with the value above which nothing fits."""
    most = value * available // need
    fits = f" (more than {most:,} cannot fit)" if most >= 1 else ""
    raise ConfigError(
        f"{key}={value!r} needs at least {human(need)} for {owner}, but {_where(device)} {human(available)} "
        f"available; lower {key}{fits}"
    )


def _refuse_network(cfg, profile, teacher, weights: int, available: int, device: torch.device) -> None:
    keys = _size_keys(cfg)
    named = ", ".join(_shown(cfg, k) for k in keys) or f"model.name={cfg.model.name!r}"
    fix = f"lower {' or '.join(keys)}" if keys else "choose a smaller model.name"
    networks = f"a network of {profile.parameters:,} parameters"
    if teacher is not profile:
        named += f" with model.teacher_name={cfg.model.teacher_name!r}"
        networks = f"a student of {profile.parameters:,} and a teacher of {teacher.parameters:,} parameters"
        fix += " or choose a smaller model.teacher_name"
    raise ConfigError(
        f"{named} makes {networks}, whose copies in training (weights, gradients, optimiser state, EMA) need at least "
        f"{human(weights)}, but {_where(device)} {human(available)} available; {fix}"
    )


def _refuse_step(cfg, data, need: int, available: int, device, unlabeled: bool, most_mu: int) -> None:
    b = cfg.data.batch_size
    examples = f"{b} labeled" + (f" + {b * cfg.data.mu:,} unlabeled" if unlabeled else "")
    # data.mu, data.batch_size and the data set's own (image_size), but not those whose cost the data set states
    # by itself (least_memory: twomoon's num_points sizes the points loaded, checked before the data is built)
    loaded = {f"data.{key}" for key, _ in getattr(cfg.data.settings, "least_memory", list)()}
    data_keys = [key for key in section_size_keys(cfg, "data") if key not in loaded]
    settings = [key for key in data_keys if unlabeled or key != "data.mu"] + _size_keys(cfg)
    shown = [_shown(cfg, k) for k in settings]
    named = f"{', '.join(shown[:-1])} and {shown[-1]}" if len(shown) > 1 else shown[0]
    fits = f" (data.mu above {most_mu:,} cannot fit)" if unlabeled and most_mu >= 1 else ""
    raise ConfigError(
        f"{named} need at least {human(need)} per training step ({examples} examples of shape "
        f"{tuple(data.input_shape)} through {cfg.model.name}), but {_where(device)} {human(available)} available; "
        f"lower {', '.join(settings[:-1])} or {settings[-1]}{fits}"
    )


# ---------------------------------------------------------------------------------------------- afterwards
def is_allocation_failure(err: BaseException) -> bool:
    """MemoryError, torch's OutOfMemoryError, an OSError ENOMEM, or a RuntimeError whose text says an
    allocation failed (the CPU allocator, CUDA, a data loader worker killed for memory)."""
    if isinstance(err, MemoryError):
        return True
    if isinstance(err, OSError):
        return err.errno == errno.ENOMEM
    if isinstance(err, RuntimeError):
        text = str(err).lower()
        return any(word in text for word in _ALLOCATION_WORDS)
    return False


def allocation_failure(
    err: BaseException, command: str, overrides: list[str] | tuple[str, ...] = (), cfg: Config | None = None
) -> str | None:
    """One line for an allocation that failed during `command`, naming the settings that size it (those the
    user set first; for train, those of `cfg`'s chosen parts, or of every part without it), or None when `err` is
    no allocation failure."""
    if not is_allocation_failure(err):
        return None
    text = first_line(err)
    text = text if len(text) <= 160 else text[:157] + "..."
    candidates = train_size_keys(cfg) if command == "train" else list(SIZE_SETTINGS.get(command, ()))
    method = cfg.method.name if cfg is not None else None
    given = {canonical_key(key, method): key for key in (item.partition("=")[0].strip() for item in overrides)}
    set_by_user = [k for k in candidates if k in given]  # named as the user wrote them (a flat method key too)
    named = set_by_user or candidates
    if command == "predict":
        fix = "pass fewer inputs at a time (a smaller folder or CSV)"
    elif named:
        shown = [f"{given[k]}={_override_value(overrides, given[k])}" if k in given else k for k in named[:5]]
        fix = f"lower {', '.join(shown)}"
    else:
        fix = "free memory (close other programs) or use a machine with more"
    return f"out of memory ({text}); {fix}"


def _override_value(overrides, key: str) -> str:
    values = [item.partition("=")[2] for item in overrides if item.partition("=")[0].strip() == key]
    return values[-1] if values else "?"
