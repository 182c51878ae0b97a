"""Data parallelism: two gloo processes, each on half of every global batch, give the same h, b and weights on
both ranks, equal to one process on the whole batch."""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from metapl import Batch, FeedbackSettings, MetaPseudoLabels, MPLSettings, OptimSettings, TeacherLosses
from metapl.core import distributed

pytestmark = pytest.mark.slow  # end-to-end runs or subprocesses: `make test-fast` skips them

STEPS = 6
FEEDBACKS = [("hard", "dot"), ("hard", "taylor"), ("soft", "dot")]


def _models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 4))  # noqa: E731
    return make(), make()


def _method(teacher: nn.Module, student: nn.Module, feedback: str, h: str) -> MetaPseudoLabels:
    optim = OptimSettings(lr=0.3, momentum=0.9, weight_decay=1e-3, total_steps=STEPS)
    return MetaPseudoLabels(
        teacher,
        student,
        4,
        MPLSettings(
            FeedbackSettings(mode=feedback, h=h, sampling="argmax"),
            TeacherLosses(label_smoothing=0.1, uda_ramp_steps=0, uda_threshold=0.0),
        ),
        teacher_optim=optim,
        student_optim=optim,
    )


def _global_batches() -> list[Batch]:
    g = torch.Generator().manual_seed(1)
    return [
        Batch(
            torch.randn(8, 3, generator=g),
            torch.randint(0, 4, (8,), generator=g),
            torch.randn(24, 3, generator=g),
            torch.randn(24, 3, generator=g),
        )
        for _ in range(STEPS)
    ]


def _share(batch: Batch, rank: int, world: int) -> Batch:
    def part(t: torch.Tensor) -> torch.Tensor:
        n = len(t) // world
        return t[rank * n : (rank + 1) * n]

    x_u_weak, x_u_strong = batch.unlabeled()
    return Batch(part(batch.x_l), part(batch.y_l), part(x_u_weak), part(x_u_strong))


def _run(method: MetaPseudoLabels, rank: int, world: int) -> dict:
    hs, bs = [], []
    for step, batch in enumerate(_global_batches()):
        metrics = method.step(_share(batch, rank, world), step)
        hs.append(float(metrics.get("h", 0.0)))
        bs.append(float(metrics.get("baseline", 0.0)))
    return {"h": hs, "b": bs, "student": method.student.state_dict(), "teacher": method.teacher.state_dict()}


def _threads() -> list[str]:
    """The names of this process's native threads (Linux)."""
    return sorted(Path(task, "comm").read_text().strip() for task in glob.glob("/proc/self/task/*"))


def _worker(rank: int, world: int, port: int, feedback: str, h: str, out: str) -> None:
    # Joined and left as `metapl train` under torchrun does (distributed.setup_from_env / cleanup).
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    distributed.setup_from_env()
    try:
        result = _run(_method(*_models(), feedback, h), rank, world)
    finally:
        distributed.cleanup()
    # A group that outlives cleanup keeps gloo threads that can abort the process at exit (SIGABRT, about 1 run in
    # 5 on 2 cores before setup_from_env imported torch._dynamo first): none may be left.
    result["threads_after_cleanup"] = _threads() if sys.platform == "linux" else []
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("feedback, h", FEEDBACKS)
def test_two_gloo_ranks_match_one_process(tmp_path, feedback, h):
    mp.spawn(_worker, args=(2, _free_port(), feedback, h, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = _run(_method(*_models(), feedback, h), 0, 1)
    finally:
        torch.set_default_dtype(previous)
    for r in ranks:
        assert not [name for name in r.pop("threads_after_cleanup") if "gloo" in name]
    assert ranks[0]["h"] == ranks[1]["h"] and ranks[0]["b"] == ranks[1]["b"]  # identical on every rank
    assert any(abs(x) > 1e-8 for x in single["h"]) or feedback == "soft"
    torch.testing.assert_close(torch.tensor(ranks[0]["h"]), torch.tensor(single["h"]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.tensor(ranks[0]["b"]), torch.tensor(single["b"]), rtol=1e-9, atol=1e-12)
    for net in ("student", "teacher"):
        for key, value in single[net].items():
            assert torch.equal(ranks[0][net][key], ranks[1][net][key])
            torch.testing.assert_close(ranks[0][net][key], value, rtol=1e-9, atol=1e-12)


def test_ctrl_c_under_torchrun_is_one_line_per_rank_and_exit_130(tmp_path):
    """Ctrl-C sends SIGINT to the launcher and every rank at once: the ranks stop after the same step, rank 0 saves
    the checkpoint, each rank prints one line, the launcher (metapl.torchrun: torchrun without its traceback) one
    more, and the exit code is 130."""
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "metapl.torchrun",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "metapl",
        "train",
    ]
    command += ["--preset", "digits", "--no-progress", "--no-tensorboard", "--out", str(out)]
    command += ["--set", "train.steps=100000", "--set", "train.checkpoint_every=20", "--set", "model.hidden=[32]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoint.pt").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint was written"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("metapl:")]
    assert len(lines) == 3, stderr
    rank0 = next(line for line in lines if "after step" in line and "rank 1" not in line)
    step = int(rank0.split("after step ")[1].split(";")[0])
    assert (
        rank0
        == f"metapl: SIGINT stopped train after step {step}; a checkpoint was saved: run the same command to resume"
    )
    assert f"metapl: rank 1: SIGINT stopped train after step {step}, with rank 0, which saved a checkpoint" in lines
    assert lines[-1] == "metapl: torchrun: SIGINT stopped the workers; their lines above say what was saved"
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == step


# -------------------------------------------------------------------------------------- torchrun
@pytest.mark.slow
def test_torchrun_two_processes_only_rank0_writes(tmp_path):
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",  # a free port of its own: tests run side by side (pytest -n)
            "--nproc_per_node",
            "2",
            "-m",
            "metapl",
            "train",
            "--preset",
            "twomoon",
            "--set",
            "train.steps=12",
            "--set",
            "train.eval_every=6",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("run directory:") == 1
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["phase"] == "train_eval"] == [6, 12]  # one writer, no duplicates
    assert json.loads((out / "summary.json").read_text())["train_steps"] == 12
