"""Every registered method and model passes the same checks, so that a part added by one module and one registry
line is tested the moment it is registered: a method is built from its entry, takes one step with finite metrics
and moves its networks, and its state round trip continues exactly as the method it was saved from; a model
(every entry, and one architecture of each family) gives logits of the right shape, trains one step, and reloads
its weights exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from metapl.parts.data import build_data
from metapl.parts.data.loaders import BatchStream
from metapl.parts.methods import METHODS
from metapl.parts.models import MODELS, create_model
from metapl.parts.models.registry import image_channels
from metapl.run.build import build_method
from metapl.run.config import build_config

# One architecture of each family of names (MODELS's families), small enough for a test.
FAMILY_EXAMPLES = {"timm/": "timm/resnet10t"}


@pytest.fixture(scope="module")
def digits_store(digits_run, tmp_path_factory):
    """A label store of the shared digits run: Reduced MPL's input."""
    from metapl.commands.cli import main

    labels = tmp_path_factory.mktemp("registries") / "labels"
    assert main(["label", str(digits_run), "--out", str(labels), "--no-progress"]) == 0
    return labels


def _tensors(state) -> list[torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in _tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in _tensors(item)]
    return []


# Besides every registered method: full MPL with the shuffled-h control, whose buffer of earlier h is state too.
VARIANTS: list[tuple[str, list[str]]] = [(name, []) for name in METHODS.names()] + [
    ("mpl", ["method.feedback.teacher_signal=shuffled"])
]


@pytest.mark.parametrize("name, variant", VARIANTS, ids=[" ".join([n, *v]) for n, v in VARIANTS])
def test_every_method_steps_and_its_state_round_trip_continues_exactly(name, variant, digits_store):
    extra = [f"data.label_dir={digits_store}"] if name == "reduced_mpl" else []
    settings = ["model.hidden=[16]", "data.batch_size=8", "data.mu=2", "train.steps=10", *extra, *variant]
    cfg = build_config("digits", settings, name)
    data = build_data(cfg.data, 0)
    torch.manual_seed(0)
    method = build_method(cfg, data, torch.device("cpu"))
    assert set(method.networks()) and method.eval_model() is not None
    stream = BatchStream(data, 8, 2, seed=0, labeled_only=not method.uses_unlabeled)
    before = [p.detach().clone() for net in method.networks().values() for p in net.parameters()]
    metrics = method.step(next(stream), 0)
    assert metrics and all(torch.isfinite(torch.as_tensor(v, dtype=torch.float64)).all() for v in metrics.values())
    after = [p.detach() for net in method.networks().values() for p in net.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "one step moved no network"

    saved = copy.deepcopy(method.state_dict())
    torch.manual_seed(1)
    restored = build_method(cfg, data, torch.device("cpu"))  # other initial weights, then the saved state
    restored.load_state_dict(copy.deepcopy(saved))
    assert all(torch.equal(a, b) for a, b in zip(_tensors(restored.state_dict()), _tensors(saved)))
    batch = next(stream)
    torch.manual_seed(2)
    method.step(batch, 1)
    torch.manual_seed(2)
    restored.step(batch, 1)
    for a, b in zip(_tensors(method.state_dict()), _tensors(restored.state_dict())):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", [*MODELS.names(), *FAMILY_EXAMPLES.values()])
def test_every_model_trains_a_step_and_reloads_exactly(name):
    if name.startswith("timm/"):
        pytest.importorskip("timm")
    image = name != "mlp"
    shape = (3, 32, 32) if image else (64,)
    if image:
        assert image_channels(name, shape) == 3
    torch.manual_seed(0)
    net = create_model(name, 5, shape, dropout=0.0)
    net.train()
    x = torch.rand(4, *shape)
    logits = net(x)
    assert logits.shape == (4, 5) and torch.isfinite(logits).all()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 4, 1, 2])).backward()
    before = [p.detach().clone() for p in net.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters()))
    torch.manual_seed(1)
    again = create_model(name, 5, shape, dropout=0.0)
    again.load_state_dict(net.state_dict())
    net.eval(), again.eval()
    with torch.no_grad():
        reloaded = again(x)
        assert torch.isfinite(reloaded).all() and torch.equal(net(x), reloaded)


def test_every_family_has_an_example_here():
    assert set(FAMILY_EXAMPLES) == set(MODELS._families)
    assert all(name in MODELS for name in FAMILY_EXAMPLES.values())
