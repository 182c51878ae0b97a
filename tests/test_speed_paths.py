"""The fast paths of the step compute what the plain paths compute.

- teacher_graph="recompute" (the teacher's graph rebuilt after the student's update) gives the same update as
  "keep", in every feedback mode, with BatchNorm and dropout in both networks, and holds no teacher graph while
  the student runs;
- the fused/foreach optimiser step equals the textbook update (coupled weight decay, clipping, Nesterov);
- a step never reads a tensor back to the host (no .item(), bool(), float() on tensors), so a GPU never waits;
- benchmarks/speed.py runs, and its target checks read its rows correctly.
"""

from __future__ import annotations

import weakref

import pytest
import torch
from benchmark_scripts import load
from test_mpl_math import IN, K, make_batch
from test_mpl_math import make_mpl as basic_mpl
from torch import nn

from metapl.core.optim import OptimSettings, Updater
from metapl.parts.methods import MetaPseudoLabels
from metapl.parts.models.mlp import MLP

pytestmark = pytest.mark.usefixtures("float64")


def make_mpl(feedback: str, h: str, teacher_graph: str, seed: int = 0) -> MetaPseudoLabels:
    torch.manual_seed(seed)
    teacher = MLP(IN, K, hidden=(5,), activation="tanh", batch_norm=True, dropout=0.3)
    student = MLP(IN, K, hidden=(5,), activation="tanh", batch_norm=True, dropout=0.3)
    real = OptimSettings(lr=0.3, momentum=0.9, nesterov=True, weight_decay=0.01, grad_clip=5.0, schedule="constant")
    return basic_mpl(
        teacher,
        student,
        feedback,
        h,
        teacher_optim=real,
        student_optim=real,
        supervised_loss=True,  # the teacher's auxiliary losses on, as in a real run
        uda=True,
        uda_ramp_steps=0,
        uda_threshold=0.0,
        label_smoothing=0.1,
        student_label_smoothing=0.1,
        teacher_graph=teacher_graph,
    )


MODES = [("hard", "dot"), ("hard", "cosine"), ("hard", "taylor"), ("soft", "dot"), ("official", "dot")]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("feedback,h", MODES)
def test_recompute_gives_the_same_step_as_keep(feedback, h):
    """recompute: same pseudo labels, student, h, baseline, teacher update and BN statistics (counted once) as keep."""
    results = {}
    for schedule in ("keep", "recompute"):
        mpl = make_mpl(feedback, h, schedule)
        torch.manual_seed(42)
        metrics = [mpl.step(make_batch(s), s) for s in range(3)]  # momentum and the baseline carry over
        results[schedule] = (state(mpl.teacher), state(mpl.student), metrics)
    (t_keep, s_keep, m_keep), (t_re, s_re, m_re) = results["keep"], results["recompute"]
    initial = state(make_mpl(feedback, h, "keep").teacher)
    assert any(not torch.equal(t_keep[name], initial[name]) for name in initial)  # the teacher did move
    for name in t_keep:
        assert torch.allclose(t_re[name], t_keep[name], rtol=1e-12, atol=1e-14), name
    for name in s_keep:
        assert torch.allclose(s_re[name], s_keep[name], rtol=1e-12, atol=1e-14), name
    for keep, re in zip(m_keep, m_re):
        for key in ("teacher_loss", "teacher_mpl_loss", "student_loss") + (("h",) if "h" in keep else ()):
            assert torch.allclose(torch.as_tensor(re[key]), torch.as_tensor(keep[key]), rtol=1e-10, atol=1e-14), key


@pytest.mark.parametrize("schedule", ["keep", "recompute"])
def test_recompute_holds_no_teacher_graph_while_the_student_runs(schedule):
    """recompute: when the student's forward starts, no teacher output with an autograd graph is alive."""
    mpl = make_mpl("hard", "dot", schedule)
    teacher_outputs: list[weakref.ref] = []
    graph_alive_at_student_forward: list[bool] = []
    mpl.teacher.register_forward_hook(lambda m, i, out: teacher_outputs.append(weakref.ref(out)))

    def check(module, inputs):
        alive = [ref() for ref in teacher_outputs]
        graph_alive_at_student_forward.append(any(t is not None and t.grad_fn is not None for t in alive))

    mpl.student.register_forward_pre_hook(check)
    mpl.step(make_batch(1), 0)
    assert graph_alive_at_student_forward[0] is (schedule == "keep")


def test_fused_update_equals_textbook_nesterov_with_decay_and_clipping():
    """Updater.apply: g + wd·θ (not on norm layers), global-norm clip, Nesterov momentum, at the scheduled LR."""
    torch.manual_seed(3)
    model = MLP(IN, K, hidden=(5,), activation="tanh", batch_norm=True)
    settings = OptimSettings(lr=0.2, momentum=0.9, nesterov=True, weight_decay=0.05, grad_clip=0.5, schedule="constant")
    updater = Updater(model, settings)
    updater.set_step(0)
    params = [p.detach().clone() for p in updater.params]
    buffers = [torch.zeros_like(p) for p in params]
    for _ in range(3):
        grads = [torch.randn_like(p) for p in params]
        given = [g.clone() for g in grads]
        updater.apply(grads)
        assert all(torch.equal(g, c) for g, c in zip(grads, given))  # the caller's gradients are left untouched
        decayed = [g + 0.05 * p if i < updater._num_decay else g for i, (g, p) in enumerate(zip(grads, params))]
        norm = torch.sqrt(sum(((d**2).sum() for d in decayed), torch.zeros(())))
        clipped = [d * min(1.0, 0.5 / (float(norm) + 1e-6)) for d in decayed]
        for i, d in enumerate(clipped):
            buffers[i] = 0.9 * buffers[i] + d
            params[i] = params[i] - 0.2 * (d + 0.9 * buffers[i])
        for p, expected in zip(updater.params, params):
            assert torch.allclose(p.detach(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("schedule", ["keep", "recompute"])
@pytest.mark.parametrize("feedback,h", MODES)
def test_step_never_reads_a_tensor_back_to_the_host(monkeypatch, feedback, h, schedule):
    """No .item(), bool(), int() or float() of a tensor inside a step: each would make a GPU wait for its queue."""
    mpl = make_mpl(feedback, h, schedule)
    batch = make_batch(2)
    mpl.step(batch, 0)  # first call: lazy initialisations are allowed

    def forbidden(*args, **kwargs):
        raise AssertionError("host sync inside the step")

    for name in ("item", "__bool__", "__int__", "__float__", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    mpl.step(batch, 1)


# ---------------------------------------------------------------------------------------------- the benchmark
def _load_speed():
    return load("speed")


def test_speed_benchmark_times_configurations_and_their_floor():
    """One interleaved round on the small CNN gives a step time, a floor and the ratios for each configuration."""
    speed = _load_speed()
    torch.set_default_dtype(torch.float32)
    configs = ["supervised", "uda", "mpl hard/taylor"]
    times = speed.time_model("small_cnn", configs, [False], rounds=1, warmup=0)
    rows = speed.build_rows("small_cnn", times, {}, [False], configs)
    assert [r["method"] for r in rows] == configs
    taylor = rows[-1]
    assert taylor["floor_passes"] == ["teacher fwd+bwd", "student fwd+bwd", "labeled fwd", "labeled fwd"]
    assert taylor["step_s"] > 0 and taylor["floor_s"] > 0
    assert taylor["x_uda"] == pytest.approx(taylor["step_s"] / rows[1]["step_s"])
    assert "| small_cnn | mpl hard/taylor | off |" in speed.markdown_table(rows)


def test_speed_targets_read_the_rows():
    speed = _load_speed()
    row = dict(model="wrn28_2", compiled=False, floor_s=1.0, x_supervised=20.0)
    rows = [
        {**row, "method": "supervised", "step_s": 0.1, "x_floor": 1.0, "x_uda": 0.05, "peak_delta_mib": 100.0},
        {**row, "method": "uda", "step_s": 2.0, "x_floor": 1.0, "x_uda": 1.0, "peak_delta_mib": 1000.0},
        {
            **row,
            "method": "mpl hard/taylor",
            "step_s": 2.9,
            "x_floor": 1.04,
            "x_uda": 1.45,
            "peak_delta_mib": 1200.0,
            "peak_rss_mib": 2000.0,
        },
        {**row, "method": "mpl hard/dot", "step_s": 3.1, "x_floor": 1.12, "x_uda": 1.55},
    ]
    targets = {t["target"]: t["holds"] for t in speed.check_targets(rows)}
    assert targets["wrn28_2: mpl hard/taylor ≤ 1.05 × floor"] is True
    assert targets["wrn28_2: mpl hard/taylor ≤ 1.55 × UDA"] is True
    assert targets["wrn28_2: mpl hard/dot ≤ 1.10 × floor"] is False
    assert targets["wrn28_2: mpl hard/taylor: peak Δ < UDA's + supervised's"] is False
    assert targets["wrn28_2: mpl hard/taylor ≥ 1.3× faster than the reference's 3.9 s"] is True
    assert targets["wrn28_2: mpl hard/taylor: peak RSS < the reference's 2.3 GiB"] is True
