"""Every registered part owns its settings: a data set, a model and a method registered here, in the test, by one
module (this one) and one registry line each, get their keys in the config (build_config, `metapl config`), a
did-you-mean for a misspelt key, a one-line refusal naming the owner for a key of another part, and the memory
check names their size keys. Also: metapl's own tables agree with the parts' entries, and an old config.yaml that
holds every data set's and model's keys still loads, evaluates and resumes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import yaml
from cli_helpers import cli, succeeds
from torch import nn

from metapl.core.errors import ConfigError
from metapl.core.settings import NoSettings, at_least
from metapl.parts.data.registry import DATASETS, DatasetEntry, LoadedDataset
from metapl.parts.methods import METHODS
from metapl.parts.methods.base import MemoryShape, MethodEntry
from metapl.parts.methods.settings import SupervisedSettings
from metapl.parts.models.registry import MODELS, ModelEntry
from metapl.run.config import DataConfig, ModelConfig, build_config, load_config_file, save_config


# ---------------------------------------------------------------------------------------------- the dummy parts
@dataclass
class DummyPointsSettings:
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("dims",)

    dims: int = at_least(1, 3)  # features per point: sizes every example
    count: int = at_least(4, 40)  # points in the training pool (and as many in the test set)


def _load_points(cfg, seed: int) -> LoadedDataset:
    from metapl.parts.data import augment
    from metapl.parts.data.datasets import ArrayDataset

    own = cfg.settings
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * own.count, own.dims, generator=generator)
    y = (x[:, 0] > 0).long()
    dataset = ArrayDataset(x[: own.count], y[: own.count], x[own.count :], y[own.count :], 2)
    return LoadedDataset(dataset, augment.identity, augment.identity, augment.identity)


@dataclass
class DummyNetSettings:
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("units",)

    units: int = at_least(1, 8)
    depth: int = at_least(1, 1)


def _create_net(num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0, units: int = 8, depth: int = 1):
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, units), nn.ReLU()]
        width = units
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(width, num_classes))


@dataclass
class DummyMethodSettings(SupervisedSettings):
    SIZE_KEYS: ClassVar[tuple[str, ...]] = ("dummy_buffer",)

    dummy_buffer: int = at_least(1, 16)  # entries of a buffer of class scores the method would keep


def _build_method(settings, run):
    from metapl.parts.methods.supervised import METHOD as SUPERVISED

    return SUPERVISED.build(SupervisedSettings(settings.label_smoothing), run)


def _buffer(settings, num_classes: int, examples: int) -> list[tuple[str, int]]:
    return [("method.dummy_buffer", 4 * settings.dummy_buffer * num_classes)]


DUMMY_DATA = DatasetEntry(_load_points, settings=DummyPointsSettings)
DUMMY_MODEL = ModelEntry(_create_net, settings=DummyNetSettings)
DUMMY_METHOD = MethodEntry(
    DummyMethodSettings, _build_method, memory=MemoryShape(networks=1, unlabeled_views=0, labeled=True, own=_buffer)
)
DUMMY = ["data.name=dummy_points", "model.name=dummy_net", "train.steps=2", "train.eval_every=0"]


@pytest.fixture
def dummies() -> Iterator[None]:
    """The three dummy parts registered (one line each, as a plugin would), and unregistered afterwards."""
    DATASETS.add("dummy_points", f"{__name__}:DUMMY_DATA")
    MODELS.add("dummy_net", f"{__name__}:DUMMY_MODEL")
    METHODS.add("dummy_method", f"{__name__}:DUMMY_METHOD")
    try:
        yield
    finally:
        DATASETS.remove("dummy_points")
        MODELS.remove("dummy_net")
        METHODS.remove("dummy_method")


# ---------------------------------------------------------------------------------------------- the dummies' keys
def test_a_registered_parts_keys_are_config_keys(dummies, capsys):
    cfg = build_config("digits", [*DUMMY, "data.count=50", "model.units=12", "method.dummy_buffer=4"], "dummy_method")
    shown = cfg.to_dict()
    assert {"dims": 3, "count": 50}.items() <= shown["data"].items()
    assert {"units": 12, "depth": 1}.items() <= shown["model"].items()
    assert shown["method"]["dummy_buffer"] == 4
    assert "hidden" not in shown["model"] and "num_points" not in shown["data"]
    assert type(cfg.data.settings) is DummyPointsSettings and cfg.model.settings.units == 12
    listed = yaml.safe_load(succeeds(capsys, "config", "--preset", "digits", "--method", "dummy_method", *_sets(DUMMY)))
    assert listed["data"]["count"] == 40 and listed["model"]["depth"] == 1 and listed["method"]["dummy_buffer"] == 16
    with pytest.raises(ConfigError, match=r"data.count=2 is impossible; it must be 4 or more"):
        build_config("digits", [*DUMMY, "data.count=2"])  # the rule its field declares


def test_a_registered_part_trains(dummies):
    """One module and one line each are a part metapl runs: the dummy data set through the dummy model."""
    from metapl.parts.data import build_data
    from metapl.parts.data.loaders import BatchStream
    from metapl.run.build import build_method

    cfg = build_config("digits", [*DUMMY, "model.units=5", "data.dims=4", "data.val_per_class=0"], "dummy_method")
    data = build_data(cfg.data, 0)
    assert tuple(data.input_shape) == (4,)
    method = build_method(cfg, data, torch.device("cpu"))
    (net,) = method.networks().values()
    first = next(m for m in net.modules() if isinstance(m, nn.Linear))
    assert (first.in_features, first.out_features) == (4, 5)  # data.dims and model.units reached the network
    metrics = method.step(next(BatchStream(data, 8, 1, seed=0, labeled_only=True)), 0)
    assert all(math.isfinite(float(torch.as_tensor(v).detach())) for v in metrics.values())


@pytest.mark.parametrize(
    "override, suggested",
    [
        ("data.cuont=5", "did you mean 'data.count'"),
        ("model.unist=5", "did you mean 'model.units'"),
        ("method.dummy_bufer=5", "did you mean 'method.dummy_buffer'"),
    ],
)
def test_a_misspelt_key_of_a_registered_part_gets_did_you_mean(dummies, override, suggested):
    with pytest.raises(ConfigError, match=suggested):
        build_config("digits", [*DUMMY, override], "dummy_method")


@pytest.mark.parametrize(
    "overrides, method, refused",
    [
        (["data.count=5"], "mpl", "data.count is a setting of data.name=dummy_points, not of digits;"),
        (["model.units=5"], "mpl", "model.units is a setting of model.name=dummy_net, not of mlp;"),
        (["method.dummy_buffer=5"], "mpl", "method.dummy_buffer is a setting of method.name=dummy_method, not of mpl"),
        (
            [*DUMMY, "data.num_points=5"],
            "mpl",
            "data.num_points is a setting of data.name=twomoon, not of dummy_points",
        ),
        ([*DUMMY, "model.hidden=[5]"], "mpl", "model.hidden is a setting of model.name=mlp, not of dummy_net;"),
        (["model.teacher_name=dummy_net", "model.width=5"], "mpl", "not of mlp nor of model.teacher_name=dummy_net"),
    ],
)
def test_a_key_of_another_part_is_refused_naming_its_owner(dummies, capsys, overrides, method, refused):
    with pytest.raises(ConfigError, match=refused.replace("[", r"\[")):
        build_config("digits", overrides, method)
    code, err, _ = cli(capsys, "config", "--preset", "digits", "--method", method, *_sets(overrides))
    assert code == 2 and len(err) == 1 and refused in err[0]


def test_a_presets_keys_of_other_parts_are_dropped_and_the_chosen_parts_kept(dummies):
    """A preset describes an experiment: the parts the user chooses (the last value of data.name, wherever it
    stands) take the preset's keys they have, the rest are dropped; the user's own keys must be theirs."""
    cfg = build_config("twomoon", ["data.name=dummy_points"])
    assert type(cfg.data.settings) is DummyPointsSettings
    with pytest.raises(ConfigError, match="data.noise is a setting of data.name=twomoon, not of dummy_points"):
        build_config("twomoon", ["data.noise=0.3", "data.name=dummy_points"])
    back = build_config("twomoon", ["data.name=dummy_points", "data.noise=0.3", "data.name=twomoon"])
    assert (back.data.settings.num_points, back.data.settings.jitter, back.data.settings.noise) == (2000, 0.1, 0.3)
    teacher = build_config("digits", ["model.width=6", "model.teacher_name=small_cnn"])
    assert (teacher.model.settings.hidden, teacher.model.teacher_settings.width) == ([256, 256], 6)
    assert teacher.model.of("teacher").settings.width == 6 and teacher.model.of("student").settings.hidden
    assert build_config("digits", ["model.teacher_name=mlp"]).model.teacher_settings is None  # one model, one set


def test_a_key_both_models_have_is_one_key(dummies):
    MODELS.add("dummy_wide", f"{__name__}:DUMMY_MODEL")  # another model with a key named as dummy_net's
    try:
        cfg = build_config("digits", ["model.name=dummy_net", "model.teacher_name=dummy_wide", "model.units=7"])
        assert cfg.model.teacher_settings is not None and cfg.model.teacher_settings is not cfg.model.settings
        assert (cfg.model.settings.units, cfg.model.of("teacher").settings.units) == (7, 7)
        assert list(cfg.to_dict()["model"]).count("units") == 1
    finally:
        MODELS.remove("dummy_wide")


def test_a_part_added_with_a_settings_location_is_not_imported_for_its_keys():
    """Registry.add's `settings` names the class in a light module: the config reads it without the entry."""
    DATASETS.add("dummy_light", f"{__name__}:DUMMY_DATA", settings=f"{__name__}:DummyPointsSettings")
    try:
        assert DATASETS.settings_class("dummy_light") is DummyPointsSettings
        assert "dummy_light" not in DATASETS._loaded  # the entry was not asked for
        assert build_config("digits", ["data.name=dummy_light", "data.count=9"]).data.settings.count == 9
    finally:
        DATASETS.remove("dummy_light")
    assert "dummy_light" not in DATASETS and "dummy_light" not in DATASETS._settings


# ---------------------------------------------------------------------------------------------- memory
def test_the_memory_check_names_the_registered_parts_size_keys(dummies, monkeypatch):
    from metapl.parts.data import build_data
    from metapl.run import budget

    cfg = build_config("digits", [*DUMMY, "data.dims=64", "model.units=100000", "data.val_per_class=0"], "supervised")
    data = build_data(cfg.data, 0)
    monkeypatch.setattr(budget, "host_available", lambda: 64 * 1024**2)  # 64 MiB: 6.6M weights' copies cannot fit
    with pytest.raises(ConfigError, match=r"model.units=100000 makes a network of .* lower model.units"):
        budget.check_step_memory(cfg, data, torch.device("cpu"))
    small = ["data.val_per_class=0", "data.labeled_per_class=1", "data.count=8"]
    cfg = build_config("digits", [*DUMMY, *small, "data.dims=300000"], "supervised")  # 50 inputs of 1.2 MB a step
    data = build_data(cfg.data, 0)
    with pytest.raises(ConfigError, match=r"data.batch_size=50, data.dims=300000 and model.units=8 need at least"):
        budget.check_step_memory(cfg, data, torch.device("cpu"))
    cfg = build_config("digits", [*DUMMY, "method.dummy_buffer=10000000"], "dummy_method")
    with pytest.raises(ConfigError, match=r"method.dummy_buffer=10000000 needs at least .* for method.name=dummy_m"):
        budget.check_step_memory(cfg, build_data(cfg.data, 0), torch.device("cpu"))


def test_an_allocation_failure_names_the_chosen_parts_size_keys(dummies):
    from metapl.run.budget import allocation_failure, train_size_keys

    cfg = build_config("digits", DUMMY, "dummy_method")
    keys = train_size_keys(cfg)
    assert {"data.dims", "model.units", "method.dummy_buffer"} <= set(keys)
    assert not {"data.num_points", "model.hidden", "method.hidden"} & set(keys)  # parts not chosen
    line = allocation_failure(MemoryError("can't allocate memory"), "train", ["model.units=900"], cfg)
    assert line is not None and "lower model.units=900" in line and "data.mu" not in line
    assert "data.dims" in train_size_keys()  # without a config: every registered part's


# ---------------------------------------------------------------------------------------------- metapl's own parts
@pytest.mark.parametrize(("registry", "section"), [(DATASETS, DataConfig), (MODELS, ModelConfig)])
def test_every_part_names_its_settings_and_they_are_its_entrys(registry, section):
    """The torch-free table the config reads names every part, with the class its entry carries; no part's key is
    one of its section's shared keys."""
    shared = {f.name for f in dataclasses.fields(section) if not f.metadata.get("part")}
    for name in registry.names():
        cls = registry.settings_class(name)
        assert dataclasses.is_dataclass(cls), name
        assert cls is (registry.get(name).settings or NoSettings), name
        assert not shared & {f.name for f in dataclasses.fields(cls)}, name
        assert set(getattr(cls, "SIZE_KEYS", ())) <= {f.name for f in dataclasses.fields(cls)}, name
    assert set(registry._settings) == set(registry.names())  # every metapl part is read without PyTorch


# ---------------------------------------------------------------------------------------------- old runs
# The data set's and model's keys that metapl wrote for every run before they were owned (their defaults).
EVERY_DATA_KEY = {"num_points": 2000, "noise": 0.1, "jitter": 0.0, "extra": False, "image_size": 0}
EVERY_MODEL_KEY = {"hidden": [128, 128], "activation": "relu", "batch_norm": False, "init_range": 0.0, "width": 32}


def _old_format(cfg, version: int = 2) -> dict:
    """What metapl before owned settings wrote: every data set's and model's keys (format 1, of metapl 0.1, had no
    config_format line)."""
    old = cfg.to_dict()
    old["data"] = {**EVERY_DATA_KEY, **old["data"]}  # the run's own values win
    old["model"] = {**EVERY_MODEL_KEY, **old["model"]}
    return {"config_format": 2, **old} if version == 2 else old


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_config_with_every_parts_keys_loads(tmp_path, version):
    cfg = build_config("digits", ["model.name=small_cnn", "model.width=6", "data.name=fashion_mnist"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(_old_format(cfg, version), sort_keys=False))
    assert load_config_file(tmp_path / "config.yaml") == cfg
    save_config(cfg, tmp_path / "new.yaml")
    assert "num_points" not in (tmp_path / "new.yaml").read_text()  # what is written now: the chosen parts' only


@pytest.mark.slow  # evaluates and resumes a trained run
def test_an_old_run_with_every_parts_keys_evaluates_and_resumes(digits_run_copy, capsys):
    from cli_helpers import DIGITS_TRAIN

    path = digits_run_copy / "config.yaml"
    cfg = load_config_file(path)
    path.write_text(yaml.safe_dump(_old_format(cfg), sort_keys=False))
    assert load_config_file(path) == cfg
    succeeds(capsys, "eval", digits_run_copy)
    code, err, out = cli(capsys, *DIGITS_TRAIN, "--out", digits_run_copy)  # finished: resumes at its last step
    assert code == 0, err


def _sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]
