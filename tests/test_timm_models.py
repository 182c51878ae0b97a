"""timm models (docs/scale.md#models): `timm/<architecture>` for the teacher and the student separately, randomly
initialised small networks on fake 32×32 images, pretrained weights only from local files or timm's local cache
(never downloaded unless --download), their input statistics, and one-line errors for bad names and files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_datasets import write_class_folders, write_unlabeled_folder

from metapl.commands.cli import main
from metapl.core import network
from metapl.core.errors import CheckpointError, ConfigError
from metapl.parts.data import build_data
from metapl.parts.data.loaders import BatchStream
from metapl.parts.models.normalize import Standardized
from metapl.run.build import build_method, build_model
from metapl.run.config import build_config

timm = pytest.importorskip("timm")

PAIRS = [("timm/test_resnet", "timm/test_efficientnet"), ("timm/test_convnext", "timm/test_vit")]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("timm_data")
    write_class_folders(root / "labeled", ["a", "b", "c"], per_class=4, side=32)
    write_unlabeled_folder(root / "unlabeled", 8, side=32)
    return root


def _base(folders: Path) -> list[str]:
    return [
        "data.name=folder",
        f"data.root={folders / 'labeled'}",
        f"data.unlabeled_dir={folders / 'unlabeled'}",
        "data.labeled_selection=all",
        "data.val_per_class=1",
        "data.batch_size=3",
        "data.mu=2",
        "data.workers=0",
        "train.steps=4",
        "student.wait_steps=0",
        "teacher.warmup_steps=0",
        "student.warmup_steps=0",
    ]


def _config(folders: Path, *overrides: str, method: str = "mpl"):
    return build_config("cifar10_4k", [*_base(folders), *overrides], method)


def _architecture(model: torch.nn.Module) -> str:
    """The timm architecture a Standardized timm network was built as. timm sets `pretrained_cfg` on its models as
    a plain attribute (a dict), which nn.Module's typing of attributes (Tensor | Module) cannot express."""
    assert isinstance(model, Standardized)
    return vars(model.net)["pretrained_cfg"]["architecture"]


def _weights(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("teacher_name, student_name", PAIRS)
def test_one_mpl_step_with_a_different_timm_teacher_and_student(folders, teacher_name, student_name):
    cfg = _config(folders, f"model.name={student_name}", f"model.teacher_name={teacher_name}")
    torch.manual_seed(0)
    data = build_data(cfg.data, seed=0)
    assert data.input_shape == (3, 32, 32)
    method = build_method(cfg, data, torch.device("cpu"))
    teacher, student = method.networks()["teacher"], method.networks()["student"]
    assert isinstance(teacher, Standardized) and isinstance(student, Standardized)  # uint8 in, standardised inside
    teacher_arch, student_arch = teacher_name.removeprefix("timm/"), student_name.removeprefix("timm/")
    assert _architecture(teacher) == teacher_arch
    assert _architecture(student) == student_arch
    assert type(teacher.net) is not type(student.net)
    before = {"teacher": _weights(teacher), "student": _weights(student)}
    batch = next(BatchStream(data, cfg.data.batch_size, cfg.data.mu, seed=0))
    metrics = method.step(batch, 0)
    assert all(torch.isfinite(torch.as_tensor(v).detach()) for v in metrics.values())
    for name, net in (("teacher", teacher), ("student", student)):
        after = net.state_dict()
        assert any(not torch.equal(before[name][k], after[k]) for k in after), f"the {name} did not move"


def test_a_whole_run_then_eval_on_timm_models(folders, tmp_path):
    """The run directory of a timm teacher/student run is read back by eval like any other."""
    from metapl.commands.evaluate import evaluate_run
    from metapl.run.experiment import run_experiment

    cfg = _config(
        folders,
        "model.name=timm/test_efficientnet",
        "model.teacher_name=timm/test_resnet",
        "train.steps=2",
        "train.eval_every=0",
        "finetune.steps=1",
        "finetune.batch_size=3",
    )
    summary = run_experiment(cfg, tmp_path / "run", progress=False, tensorboard=False)
    assert summary["train_steps"] == 2
    assert 0 <= evaluate_run(tmp_path / "run")["val_top1"] <= 1


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_label_with_a_timm_model_and_its_weights_file(folders, tmp_path, suffix):
    """`metapl label timm/<architecture> --weights FILE --preset P`: the store holds that network's distributions of
    every pool image, in pool order; FILE is a training checkpoint or a safetensors file."""
    from metapl.parts.data.label_store import MANIFEST, read_store
    from metapl.parts.data.registry import DATASETS

    cfg = _config(folders, "model.name=timm/test_resnet")
    loaded = DATASETS.get("folder").load(cfg.data, 0)
    torch.manual_seed(3)
    model = build_model(cfg, build_data(cfg.data, seed=0)).eval()
    assert isinstance(model, Standardized)
    weights = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(model.net.state_dict(), str(weights))
    else:
        torch.save({"state_dict": model.net.state_dict()}, weights)  # a training checkpoint's layout
    sets = [arg for item in _base(folders) for arg in ("--set", item)]
    out = tmp_path / "labels"
    command = ["label", "timm/test_resnet", "--weights", str(weights), "--preset", "cifar10_4k", *sets]
    assert main([*command, "--out", str(out), "--precision", "fp32", "--no-progress"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["source"]["model"] == "timm/test_resnet" and manifest["num_classes"] == 3
    store = read_store(out, loaded.dataset).dense()
    from metapl.parts.data.streaming import eval_batches

    images = torch.cat(list(eval_batches(loaded.dataset.x_train, 64)))  # the evaluation views, as eval reads them
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=-1)
    assert store.shape == (len(expected), 3)
    torch.testing.assert_close(store, expected, atol=1e-5, rtol=1e-4)


def test_unknown_architecture_is_one_line_with_did_you_mean(capsys):
    assert main(["config", "--preset", "digits", "--set", "model.name=timm/resnet5"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert "model.name='timm/resnet5' is not a timm architecture (did you mean 'timm/resnet50'?)" in lines[0]
    with pytest.raises(
        ConfigError, match=r"model.teacher_name='timm/efficentnet_b0'.*did you mean 'timm/efficientnet_b0'"
    ):
        build_config("digits", ["model.teacher_name=timm/efficentnet_b0"])
    with pytest.raises(ConfigError, match=r"no weights tagged 'nope' for resnet50"):
        build_config("digits", ["model.name=timm/resnet50.nope"])
    with pytest.raises(ConfigError, match=r"model.teacher_name='wrn' is not allowed \(did you mean 'wrn28_2'\?\)"):
        build_config("digits", ["model.teacher_name=wrn"])
    with pytest.raises(ConfigError, match="wrn28_2 has no pretrained weights to load"):
        build_config("digits", ["model.name=wrn28_2", "model.pretrained=x.pt"])


@pytest.mark.slow
def test_names_outside_timm_never_import_timm():
    code = (
        "import sys; from metapl.run.config import build_config; build_config('digits', ['model.name=small_cnn']); "
        "print('timm' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def test_teacher_settings_for_a_method_without_a_teacher_are_refused(folders):
    cfg = _config(
        folders,
        "model.name=small_cnn",
        "model.teacher_name=timm/test_resnet",
        "data.unlabeled_dir=",
        method="supervised",
    )
    with pytest.raises(ConfigError, match="method.name=supervised builds no teacher network"):
        build_method(cfg, build_data(cfg.data, 0), torch.device("cpu"))


# ------------------------------------------------------------------------------------------------ pretrained
def _published(architecture: str) -> dict[str, torch.Tensor]:
    """The state dict as timm publishes it: 1,000 ImageNet classes."""
    torch.manual_seed(123)
    return timm.create_model(architecture, num_classes=1000).state_dict()


def _fake_hub_cache(root: Path, repo_id: str, state: dict[str, torch.Tensor]) -> Path:
    """The Hugging Face hub cache's layout: models--ORG--NAME/{refs/main, snapshots/REV/model.safetensors}."""
    from safetensors.torch import save_file

    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the hub fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("metapl tried to download")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_weights_from_a_local_file(folders, tmp_path, no_network, suffix):
    state = _published("test_resnet")
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)  # a DDP training checkpoint
    cfg = _config(folders, "model.name=timm/test_resnet", f"model.pretrained={path}")
    assert cfg.data.settings.image_size == 160  # the pretrained config's input size (data.image_size=0)
    data = build_data(cfg.data, seed=0)
    model = build_model(cfg, data, pretrained=True)
    assert isinstance(model, Standardized)
    assert model.mean.flatten().tolist() == [0.5, 0.5, 0.5] and model.std.flatten().tolist() == [0.5, 0.5, 0.5]
    loaded = model.net.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert body and all(torch.equal(loaded[k], state[k]) for k in body)
    assert loaded["fc.weight"].shape == (3, state["fc.weight"].shape[1])  # a new head for the data's 3 classes
    bare = build_model(cfg, data)  # eval/predict/export: the architecture alone, the file is not read
    assert isinstance(bare, Standardized)
    assert not torch.equal(bare.net.state_dict()["conv1.0.weight"], state["conv1.0.weight"])


def test_pretrained_weights_from_timms_local_cache_never_download(folders, tmp_path, monkeypatch, no_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = _config(folders, "model.name=timm/test_efficientnet", "model.teacher_name=timm/test_resnet")
    cfg.model.pretrained = "cache"
    data = build_data(cfg.data, seed=0)
    with pytest.raises(
        ConfigError, match=r"model.pretrained=cache: the weights of timm/test_efficientnet .* are not in"
    ):
        build_model(cfg, data, pretrained=True)
    state = _published("test_efficientnet")
    _fake_hub_cache(tmp_path / "hub", "timm/test_efficientnet.r160_in1k", state)
    student = build_model(cfg, data, pretrained=True)
    assert isinstance(student, Standardized)
    assert torch.equal(student.net.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert student.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    teacher = build_model(cfg, data, role="teacher", pretrained=True)  # another architecture: not model.pretrained
    assert _architecture(teacher) == "test_resnet"


def test_download_fills_the_cache_once(folders, tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        return str(_fake_hub_cache(tmp_path / "hub", repo_id, _published("test_resnet")))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(network, "unreachable", lambda url: None)  # the hub is faked: so is reaching it
    args = ["train", "--preset", "cifar10_4k", "--out", str(tmp_path / "run"), "--download", "--no-progress"]
    settings = [
        "data.name=folder",
        f"data.root={folders / 'labeled'}",
        "data.labeled_selection=all",
        "data.val_per_class=1",
        "data.batch_size=3",
        "data.mu=1",
        "data.workers=0",
        "data.image_size=32",
        "model.name=timm/test_resnet",
        "model.pretrained=cache",
        "train.steps=1",
        "train.eval_every=0",
        "finetune.steps=0",
    ]
    for setting in settings:
        args += ["--set", setting]
    assert main(args) == 0
    assert calls == [("timm/test_resnet.r160_in1k", "model.safetensors")]
    assert main([*args, "--restart"]) == 0 and len(calls) == 1  # in the cache now: nothing fetched again


def test_bad_pretrained_files_are_one_line(folders, tmp_path, capsys):
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(_published("test_efficientnet"), str(other))
    cfg = _config(folders, "model.name=timm/test_resnet", f"model.pretrained={other}")
    data = build_data(cfg.data, seed=0)
    with pytest.raises(CheckpointError, match=r"model.pretrained=.*other.safetensors.* does not fit timm/test_resnet"):
        build_model(cfg, data, pretrained=True)
    cfg.model.pretrained = str(tmp_path / "missing.pth")
    with pytest.raises(ConfigError, match=r"model.pretrained=.*missing.pth.*: no such file"):
        build_model(cfg, data, pretrained=True)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    cfg.model.pretrained = str(garbage)
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a readable safetensors file"):
        build_model(cfg, data, pretrained=True)
    cfg.model.teacher_name, cfg.model.teacher_pretrained = "timm/test_efficientnet", str(tmp_path / "t.pth")
    with pytest.raises(ConfigError, match=r"model.teacher_pretrained=.*t.pth.*: no such file"):
        build_model(cfg, data, role="teacher", pretrained=True)


def test_sgd_updates_every_weight_whatever_the_layout_of_its_gradient():
    """ConvNeXt's 2×2 stride-2 downsampling convs get channels-last weight gradients from autograd; torch's fused
    SGD pairs gradient and weight elements by memory order, so the update must hand it gradients in the weights'
    layout. One Updater step equals Nesterov SGD with weight decay written out by hand."""
    from metapl.core.optim import OptimSettings, Updater

    torch.manual_seed(0)
    model = timm.create_model("test_convnext", num_classes=4)
    updater = Updater(model, OptimSettings(lr=0.3, momentum=0.9, weight_decay=1e-3, total_steps=3))
    updater.set_step(0)
    grads = list(torch.autograd.grad(model(torch.randn(4, 3, 32, 32)).sum(), updater.params))
    assert any(g.stride() != p.stride() for p, g in zip(updater.params, grads))  # the case this test is about
    before = [p.detach().clone() for p in updater.params]
    decayed = updater._num_decay
    updater.apply(grads)
    for i, (p, g, old) in enumerate(zip(updater.params, grads, before)):
        d = g + 1e-3 * old if i < decayed else g
        torch.testing.assert_close(p.detach(), old - 0.3 * (d + 0.9 * d), rtol=1e-5, atol=1e-6)  # Nesterov, step 1
