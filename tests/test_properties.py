"""Property-based tests (hypothesis): splits and config overrides hold their invariants for any valid input."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from metapl.parts.data import make_split
from metapl.run.config import build_config, from_dict


@st.composite
def labelled_pools(draw):
    classes = draw(st.integers(2, 6))
    counts = draw(st.lists(st.integers(4, 30), min_size=classes, max_size=classes))
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)])
    labels = draw(st.permutations(labels.tolist()))
    per_class = draw(st.integers(1, min(counts) // 2))
    val = draw(st.integers(0, min(counts) - per_class))
    return np.array(labels), per_class, val


@settings(max_examples=60, deadline=None)
@given(labelled_pools(), st.integers(0, 2**32 - 1), st.booleans())
def test_split_invariants(pool, seed, include_labeled):
    labels, per_class, val = pool
    split = make_split(labels, per_class, val, seed, include_labeled)
    labeled, unlabeled, validation = (
        np.array(x, dtype=int) for x in (split.labeled, split.unlabeled, split.validation)
    )
    assert all(0 <= i < len(labels) for i in np.concatenate([labeled, unlabeled, validation]))
    assert len(set(labeled)) == len(labeled) and len(set(validation)) == len(validation)
    assert not set(validation) & (set(labeled) | set(unlabeled))  # validation never trains
    assert set(labeled) <= set(unlabeled) if include_labeled else not set(labeled) & set(unlabeled)
    assert set(labeled) | set(unlabeled) | set(validation) == set(range(len(labels)))  # nothing is lost
    for k in np.unique(labels):
        assert (labels[labeled] == k).sum() == per_class
        assert (labels[validation] == k).sum() == val
    assert make_split(labels, per_class, val, seed, include_labeled) == split  # deterministic for a seed


@settings(max_examples=40, deadline=None)
@given(
    steps=st.integers(1, 10**6),
    lr=st.floats(1e-6, 10.0, allow_nan=False),
    mu=st.integers(1, 32),
    threshold=st.floats(0.0, 1.0),
    hidden=st.lists(st.integers(1, 512), min_size=1, max_size=4),
    baseline=st.booleans(),
)
def test_overrides_apply_and_round_trip(steps, lr, mu, threshold, hidden, baseline):
    cfg = build_config(
        "digits",
        [
            f"train.steps={steps}",
            f"teacher.lr={lr!r}",
            f"data.mu={mu}",
            f"method.uda_threshold={threshold!r}",
            f"model.hidden={hidden}",
            f"method.baseline={str(baseline).lower()}",
        ],
    )
    assert (cfg.train.steps, cfg.teacher.lr, cfg.data.mu) == (steps, lr, mu)
    assert (
        cfg.method.settings.teacher_losses.uda_threshold,
        cfg.model.settings.hidden,
        cfg.method.settings.feedback.baseline,
    ) == (
        threshold,
        hidden,
        baseline,
    )
    assert from_dict(cfg.to_dict()) == cfg
