"""Config: presets load, overrides are typed, and every bad value is refused with a message naming it."""

from __future__ import annotations

import pytest

from metapl.config import build_config, from_dict, preset_names, validate
from metapl.errors import ConfigError


def test_presets_load_and_validate():
    names = preset_names()
    assert {"digits", "twomoon"} <= set(names)
    for name in names:
        cfg = build_config(name)
        validate(cfg)
        assert cfg.preset == name


def test_overrides_are_typed_and_applied():
    cfg = build_config(
        "digits", ["train.steps=7", "teacher.lr=0.2", "model.hidden=[16, 8]", "method.baseline=false"], "uda"
    )
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.teacher.lr == 0.2
    assert cfg.model.hidden == [16, 8]
    assert cfg.method.baseline is False
    assert cfg.method.name == "uda"


def test_int_accepted_where_float_expected():
    assert build_config("digits", ["student.lr=1"]).student.lr == 1.0


def test_round_trip_through_dict():
    cfg = build_config("twomoon", ["train.seed=3"])
    again = from_dict(cfg.to_dict())
    assert again == cfg


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.stpes=5", "did you mean 'train.steps'"),
        ("nosection.x=1", "unknown config key 'nosection.x'"),
        ("train.steps=abc", "train.steps='abc' must be an integer"),
        ("train.steps=1.5", "must be an integer"),
        ("teacher.lr=fast", "teacher.lr='fast' must be a number"),
        ("method.baseline=3", "must be true or false"),
        ("teacher.lr=0", "teacher.lr=0.0 is impossible; it must be above 0"),
        ("student.lr=-0.1", "student.lr=-0.1 is impossible"),
        ("data.mu=0", "data.mu=0 is impossible"),
        ("data.batch_size=0", "data.batch_size=0 is impossible"),
        ("method.uda_threshold=1.5", "method.uda_threshold=1.5 is impossible; it must be in [0, 1]"),
        ("method.feedback=hardd", "did you mean 'hard'"),
        ("method.h=dots", "method.h='dots' is not allowed"),
        ("train", "is not key=value"),
        ("train=5", "'train' is a section"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, fragment):
    with pytest.raises(ConfigError) as err:
        build_config("digits", [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        build_config("digit")
