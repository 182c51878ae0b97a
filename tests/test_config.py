"""Config: presets load, overrides are typed, and every bad value is refused with a message naming it."""

from __future__ import annotations

from typing import Any

import pytest

from metapl.core.errors import ConfigError
from metapl.run.config import build_config, from_dict, load_config_file, save_config, validate
from metapl.run.presets import preset_names
from metapl.run.values import all_keys


def test_presets_load_and_validate():
    names = preset_names()
    assert {"digits", "twomoon"} <= set(names)
    for name in names:
        cfg = build_config(name)
        validate(cfg)
        assert cfg.preset == name


def test_overrides_are_typed_and_applied():
    cfg = build_config(
        "digits", ["train.steps=7", "teacher.lr=0.2", "model.hidden=[16, 8]", "method.uda_weight=2"], "uda"
    )
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.teacher.lr == 0.2
    assert cfg.model.settings.hidden == [16, 8]
    assert cfg.method.settings.uda_weight == 2.0
    assert cfg.method.name == "uda"


def test_method_section_is_the_chosen_methods_settings():
    """The `method` section holds the chosen method's keys only; the preset's keys of other methods are dropped,
    shared ones kept; a key of another method given by the user names the method it belongs to."""
    from metapl.parts.methods.mpl import MPLSettings
    from metapl.parts.methods.supervised import SupervisedSettings
    from metapl.parts.methods.uda import UDASettings

    mpl = build_config("digits")
    assert type(mpl.method.settings) is MPLSettings and mpl.method.settings.teacher_losses.label_smoothing == 0.15
    uda = build_config("digits", method="uda")
    assert type(uda.method.settings) is UDASettings
    assert uda.method.settings.uda_ramp_steps == 500  # the preset's value of a key UDA shares with MPL
    assert "feedback" not in uda.to_dict()["method"]
    supervised = build_config("digits", ["method.name=supervised"])
    assert type(supervised.method.settings) is SupervisedSettings
    assert set(supervised.to_dict()["method"]) == {"name", "label_smoothing"}
    with pytest.raises(ConfigError, match="method.feedback is a setting of method.name=mpl, not of uda"):
        build_config("digits", ["method.feedback=soft"], "uda")
    with pytest.raises(ConfigError, match="did you mean 'method.feedback'"):
        build_config("digits", ["method.fedback=soft"])


def test_derived_keys_are_refused_and_not_shown():
    """total_steps and the fp16 loss scale follow from train.steps and train.precision: never set, never shown."""
    with pytest.raises(ConfigError, match="teacher.total_steps cannot be set: it is train.steps"):
        build_config("digits", ["teacher.total_steps=5"])
    assert "total_steps" not in build_config("digits").to_dict()["teacher"]


def test_config_file_round_trip_and_old_format(tmp_path):
    """config.yaml carries its format; a metapl 0.1 file (every method's keys, derived optimiser keys) still reads."""
    import yaml

    cfg = build_config("digits", ["train.steps=9"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["config_format"] == 3
    assert load_config_file(tmp_path / "config.yaml") == cfg
    old = cfg.to_dict()
    old["method"] = _flat_method(old["method"])  # 0.1 and 0.2 wrote the method's keys flat
    old["method"].update(teacher_fraction=0.5, supervised_loss=True)  # 0.1 wrote every method's keys
    old["teacher"].update(total_steps=1000, fp16_loss_scale=False)
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    again = load_config_file(tmp_path / "old.yaml")
    again.preset = cfg.preset
    assert again == cfg
    (tmp_path / "future.yaml").write_text(yaml.safe_dump({"config_format": 99, **cfg.to_dict()}))
    with pytest.raises(ConfigError, match="config_format=99, which this metapl"):
        load_config_file(tmp_path / "future.yaml")


def _flat_method(method: dict) -> dict:
    """A nested method section as config formats 1 and 2 wrote it: one flat mapping of flat keys."""
    from metapl.parts.methods import METHODS
    from metapl.parts.methods.settings import flat_keys

    table = flat_keys(METHODS.settings_class(method["name"]))
    flat = {"name": method["name"]}
    for key, path in table.items():
        value = method
        for name in path:
            value = value[name]
        flat[key] = value
    return flat


@pytest.mark.parametrize("name", ["mpl", "reduced_mpl"])
def test_format_2_flat_method_section_loads_nested(tmp_path, name):
    """A format-2 config.yaml (the flat method section of metapl 0.2: method.feedback, method.h, method.uda_weight,
    method.teacher_signal) loads as the nested settings it meant, every value where it belongs."""
    import yaml

    extra = ["data.label_dir=labels"] if name == "reduced_mpl" else []
    changed = {
        "mpl": ["method.feedback.mode=official", "method.feedback.h=cosine", "method.teacher_losses.uda_weight=3"],
        "reduced_mpl": ["method.feedback.teacher_signal=shuffled", "method.teacher_losses.supervised_weight=0.5"],
    }[name]
    cfg = build_config("digits", [*extra, *changed], name)
    old = cfg.to_dict()
    old["method"] = _flat_method(old["method"])
    assert "feedback" in old["method"] and not isinstance(old["method"]["feedback"], dict)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"config_format": 2, **old}, sort_keys=False))
    loaded = load_config_file(tmp_path / "config.yaml")
    loaded.preset = cfg.preset
    assert loaded == cfg
    nested = loaded.to_dict()["method"]
    assert isinstance(nested["feedback"], dict) and isinstance(nested["teacher_losses"], dict)


def test_flat_keys_are_read_and_nested_keys_are_shown():
    """Every flat key of metapl 0.2 still sets its nested setting (--set, presets, old files); the config shows the
    nested keys; the flat keys of each method name distinct settings."""
    from metapl.parts.methods import METHODS
    from metapl.parts.methods.settings import flat_keys, leaf_paths

    cfg = build_config(
        "digits",
        ["method.feedback=soft", "method.h=cosine", "method.uda_weight=7", "method.teacher_signal=none"],
    )
    settings = cfg.method.settings
    assert (settings.feedback.mode, settings.feedback.h) == ("soft", "cosine")
    assert (settings.teacher_losses.uda_weight, settings.feedback.teacher_signal) == (7.0, "none")
    keys = all_keys(cfg)
    assert "method.feedback.mode" in keys and "method.teacher_losses.uda_weight" in keys and "method.h" not in keys
    nested = build_config("digits", ["method.feedback.mode=soft", "method.teacher_losses.uda_weight=7"])
    assert nested.method.settings.feedback.mode == "soft" and nested.method.settings.teacher_losses.uda_weight == 7.0
    for name in METHODS.names():
        table = flat_keys(METHODS.settings_class(name))
        assert sorted(table.values()) == sorted(leaf_paths(METHODS.settings_class(name))), name  # one flat key each
    uda = build_config("digits", ["method.uda_weight=2"], "uda")  # uda's keys stay flat
    assert uda.method.settings.uda_weight == 2.0 and "method.uda_weight" in all_keys(uda)


def test_from_flat_builds_the_nested_settings_of_the_flat_keys():
    from metapl.parts.methods.settings import FeedbackSettings, MPLSettings, TeacherLosses, from_flat

    built = from_flat(MPLSettings, feedback="soft", h="cosine", uda_weight=2.0, teacher_graph="recompute")
    expected = MPLSettings(FeedbackSettings(mode="soft", h="cosine"), TeacherLosses(uda_weight=2.0), "recompute")
    assert built == expected
    with pytest.raises(TypeError, match="MPLSettings has no flat key 'mode'"):  # the nested name is no flat key
        from_flat(MPLSettings, mode="soft")


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("method.feedback.mdoe=soft", "did you mean 'method.feedback.mode'"),
        ("method.teacher_losses.uda_wieght=2", "did you mean 'method.teacher_losses.uda_weight'"),
        ("method.feedback.mode=sotf", "method.feedback.mode='sotf' is not allowed (did you mean 'soft'?)"),
        ("method.teacher_losses=1", "'method.teacher_losses' is a section; set one of its keys"),
        ("method.feedback.teacher_signal=x", "method.feedback.teacher_signal='x' is not allowed"),
        ("method.teacher_losses.supervised_weight=1", "is a setting of method.name=reduced_mpl, not of mpl"),
    ],
)
def test_nested_method_keys_get_did_you_mean_and_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as err:
        build_config("digits", [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_api_settings_are_checked_like_the_config():
    """A settings dataclass passed to a method's constructor is held to the same declared rules."""
    from torch import nn

    from metapl import FeedbackSettings, MetaPseudoLabels, MPLSettings

    with pytest.raises(ConfigError, match="method.feedback.baseline_decay=1.5 is impossible; it must be in \\[0, 1\\)"):
        MetaPseudoLabels(nn.Linear(2, 2), nn.Linear(2, 2), 2, MPLSettings(FeedbackSettings(baseline_decay=1.5)))
    with pytest.raises(ValueError, match="did you mean 'soft'"):  # ConfigError is a ValueError for API users
        MetaPseudoLabels(nn.Linear(2, 2), nn.Linear(2, 2), 2, MPLSettings(FeedbackSettings(mode="sotf")))


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
        ("teacher.lr=inf", "teacher.lr=inf is impossible; it must be a finite number"),
        ("method.name=mlp", "did you mean 'mpl'"),
        ("model.name=wrn", "model.name='wrn' is not allowed"),
        ("data.name=digit", "did you mean 'digits'"),
        ("data.name=5", "data.name='5' is not allowed; use one of: twomoon, digits"),
        ("model.teacher_name=7", "model.teacher_name='7' is not allowed; use one of: "),
        ("data.split_file=a\x00b", "data.split_file='a\\x00b' holds a NUL character"),
        # a value of the wrong type for a key of a few allowed values is shown those values, not an example
        ("method.feedback.h_sign=inf", "method.feedback.h_sign=inf must be an integer, one of: 1, -1"),
        ("method.h_sign=0.5", "method.h_sign=0.5 must be an integer, one of: 1, -1"),
        ("teacher.optimizer=1", "teacher.optimizer=1 must be a string, one of: sgd, adam"),
        ("train.precision=[1]", "train.precision=[1] must be a string, one of: fp32, bf16, fp16"),
        # float32 rounds a smaller ε to 0, and Adam would step a weight with a zero gradient by 0/0
        ("teacher.eps=1e-300", "teacher.eps=1e-300 is impossible; it must be 1e-30 or more"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(override, fragment):
    with pytest.raises(ConfigError) as err:
        build_config("digits", [override])
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message


def test_a_data_sets_own_bad_value_names_the_key_and_the_fix():
    with pytest.raises(ConfigError) as err:
        build_config("twomoon", ["data.noise=nan"])  # a key of twomoon's own settings
    assert "data.noise=nan is impossible; it must be a finite number" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        build_config("digit")


_NO_TORCH = """
import contextlib, io, sys
from metapl.commands.cli import main
from metapl.run.presets import load_preset, preset_names
for name in preset_names():
    if "timm/" in str(load_preset(name).get("model")):  # a timm/<architecture> name is checked by timm itself
        continue
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["config", "--preset", name]) == 0
    assert "train:" in out.getvalue()
print("torch" in sys.modules)
"""


@pytest.mark.slow
def test_config_command_does_not_import_torch():
    """`metapl config` and `import metapl.run.config` build every preset's config (timm models aside) without PyTorch,
    which takes seconds to import on a busy machine."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _NO_TORCH], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_torch_free_settings_are_the_methods_and_models_own():
    """The torch-free tables the config reads (method settings, activation names) are the ones the methods and
    networks use."""
    from metapl.parts.methods import METHODS
    from metapl.parts.models.mlp import ACTIVATIONS
    from metapl.parts.models.registry import ACTIVATION_NAMES

    for name in METHODS.names():
        assert METHODS.settings_class(name) is METHODS.get(name).settings
    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES


def test_the_inputs_a_methods_settings_declare_agree_with_its_step():
    """READS_UNLABELED (what the config checks without importing the method) matches the step's memory shape."""
    from metapl.parts.methods import METHODS

    for name in METHODS.names():
        entry = METHODS.get(name)
        # MethodEntry types `settings` as a plain class; the READS_* flags are ClassVars each settings class
        # declares, and reading them here fails (AttributeError) for one that does not.
        settings: Any = entry.settings
        assert settings.READS_UNLABELED == (entry.memory.unlabeled_views > 0), name
        assert settings.READS_STORED == (name == "reduced_mpl"), name
