"""The injected biases of `metapl label --bias` (metapl/commands/label.py): a shift's margin and fraction, the half bias
as it always was, and one line for every bad spec. Fast: distributions made here, no training."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import one_line_error

from metapl.commands.label import Bias, inject_bias, parse_bias
from metapl.core.errors import ConfigError


def _probs(rows: int, classes: int = 10, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(3 * torch.randn(rows, classes, generator=generator), -1)


@pytest.mark.parametrize("delta", [0.05, 0.5, 2.0, 10.0])
def test_shift_sets_the_requested_margin(delta):
    probs = _probs(2000)
    biased = inject_bias(probs, parse_bias(f"shift:3>8,4>9:delta={delta}"), list(range(2000)))
    assigned = probs.argmax(-1)
    for a, b in [(3, 8), (4, 9)]:
        rows = assigned == a
        assert rows.sum() > 100
        margin = biased[rows, b].log() - biased[rows, a].log()
        assert torch.allclose(margin, torch.full_like(margin, delta), atol=1e-4)
        assert torch.all(biased[rows].argmax(-1) == b)  # b now wins, by δ over a (a was the largest)
        others = [c for c in range(10) if c != b]
        # every other class keeps its odds against a: only b's logit moved
        ratio = biased[rows][:, others].log() - probs[rows][:, others].log()
        assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)
    untouched = (assigned != 3) & (assigned != 4)
    assert torch.equal(biased[untouched], probs[untouched])
    assert torch.allclose(biased.sum(-1), torch.ones(2000), atol=1e-6)


def test_shift_fraction_is_respected_and_fixed_per_image():
    probs = _probs(20_000)
    ids = list(range(20_000))
    bias = parse_bias("shift:3>8:delta=2:fraction=0.3")
    biased = inject_bias(probs, bias, ids)
    on_a = probs.argmax(-1) == 3
    shifted = on_a & (biased.argmax(-1) == 8)
    assert abs(shifted.sum().item() / on_a.sum().item() - 0.3) < 0.03
    assert torch.equal(biased[on_a & ~shifted], probs[on_a & ~shifted])
    # the same image is shifted or not whatever batch it comes in (ids, not positions, decide)
    halves = torch.cat([inject_bias(probs[:7000], bias, ids[:7000]), inject_bias(probs[7000:], bias, ids[7000:])])
    assert torch.equal(halves, biased)
    with pytest.raises(ValueError, match="one id"):
        inject_bias(probs, bias)


def test_half_bias_is_unchanged_and_named():
    probs = _probs(500)
    legacy = parse_bias("3:8,4:9")
    assert legacy == parse_bias("half:3>8,4>9") == Bias(((3, 8), (4, 9)))
    biased = inject_bias(probs, legacy)
    rows = probs.argmax(-1) == 3
    assert torch.allclose(biased[rows, 3], probs[rows, 3] / 2)
    assert torch.allclose(biased[rows, 8], probs[rows, 8] + probs[rows, 3] / 2)
    assert legacy.record() == [[3, 8], [4, 9]]  # what stores recorded before named biases: they still resume
    assert parse_bias("shift:3>8:delta=2:fraction=0.5").record() == {
        "kind": "shift",
        "pairs": [[3, 8]],
        "delta": 2.0,
        "fraction": 0.5,
    }
    assert not parse_bias("") and not parse_bias("  ")


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("3-8", "'3-8' is not A:B"),
        ("shift:3>8", "shift needs its margin, delta=D"),
        ("shift:3:8:delta=2", "'3' is not A>B"),
        ("shift:3>8:delta=0", "delta=0 is impossible"),
        ("shift:3>8:delta=-1", "delta=-1 is impossible"),
        ("shift:3>8:delta=inf", "delta=inf is impossible"),
        ("shift:3>8:delta=2:fraction=0", "fraction=0 is impossible"),
        ("shift:3>8:delta=2:fraction=1.5", "fraction=1.5 is impossible"),
        ("shift:3>8:delta=two", "'delta=two' is not KEY=NUMBER"),
        ("shift:3>8:delta=2:scale=3", "shift takes only delta and fraction, not 'scale'"),
        ("half:3>8:delta=2", "half takes no options, not 'delta'"),
        ("shift:3>8,3>9:delta=2", "moves each class A once"),
        ("half:", "names no pair"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, says):
    with pytest.raises(ConfigError) as caught:
        parse_bias(spec)
    message = str(caught.value)
    assert says in message and repr(spec) in message and "\n" not in message


def test_label_refuses_a_bad_spec_in_one_line(capsys, tmp_path):
    out = tmp_path / "labels"
    line = one_line_error(capsys, "label", "mlp", "--out", out, "--bias", "shift:3>8:delta=0")
    assert "delta=0 is impossible" in line
    assert not out.exists()


def test_label_stores_a_shift_on_the_images_it_names(capsys, tmp_path):
    """metapl label --bias shift:...: the store differs from the unbiased one exactly on the images the teacher
    assigns to A that the fraction's hash picks, where B leads A by δ; the manifest records the spec."""
    import json

    from cli_helpers import succeeds

    from metapl.commands.label import shifted_rows
    from metapl.parts.data import bundle_from_split
    from metapl.parts.data.label_store import MANIFEST, read_store
    from metapl.parts.data.registry import DATASETS
    from metapl.parts.data.splits import Split
    from metapl.run.build import build_model
    from metapl.run.config import build_config

    torch.manual_seed(0)
    cfg = build_config("digits")
    loaded = DATASETS.get("digits").load(cfg.data, 0)
    shapes = bundle_from_split(loaded.dataset, Split([0], [0], []), None, None, None)
    shapes.normalization = loaded.normalization
    weights = tmp_path / "mlp.pt"
    torch.save(build_model(cfg, shapes).state_dict(), weights)
    args = ["label", "mlp", "--weights", weights, "--preset", "digits", "--precision", "fp32", "--no-progress"]
    succeeds(capsys, *args, "--out", tmp_path / "clean")
    spec = "shift:3>8:delta=2:fraction=0.5"
    succeeds(capsys, *args, "--out", tmp_path / "biased", "--bias", spec, "--shard-size", "500")
    assert json.loads((tmp_path / "biased" / MANIFEST).read_text())["bias"] == parse_bias(spec).record()
    clean = read_store(tmp_path / "clean", loaded.dataset).dense()
    biased = read_store(tmp_path / "biased", loaded.dataset).dense()
    expected = (clean.argmax(-1) == 3) & shifted_rows(len(clean), 0.5, list(range(len(clean))))
    assert expected.sum() > 0
    changed = (biased - clean).abs().sum(-1) > 1e-6
    assert torch.equal(changed, expected)  # shards of 500 images: the same images as one pass would pick
    margin = biased[expected, 8].log() - biased[expected, 3].log()
    assert torch.allclose(margin, torch.full_like(margin, 2.0), atol=1e-3)
