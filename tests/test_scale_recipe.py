"""docs/scale.md's recipe, run as the page writes it: the block under the marker
`<!-- recipe: tests/test_scale_recipe.py runs this block on tiny data -->` is read from the page and its commands
run in order in a fresh folder holding tiny data where the recipe expects it (`data/imagenet/{train,val}`,
`photos/unlabeled`, `photos/new`). Only what a test cannot have is substituted, each substitution asserted to
find its text on the page: timm's tiny test networks for the real ones, a local weights file for `cache` (no
network, so no `--download`), 2 processes for 8; small sizes are appended. A drifted command, flag or key fails."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_datasets import write_class_folders, write_unlabeled_folder
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "scale.md"
MARKER = "<!-- recipe: tests/test_scale_recipe.py runs this block on tiny data -->"
CLASSES = ["n01440764", "n01443537", "n01484850"]
TEACHER_WEIGHTS = "teacher-pretrained.safetensors"
SUBSTITUTIONS = [  # (the page's text, the test's): a test has no network, no GPUs and little time
    ("timm/efficientnet_b3.ra2_in1k", "timm/test_efficientnet"),
    ("model.pretrained=cache", f"model.pretrained={TEACHER_WEIGHTS}"),
    (" --download", ""),
    ("model.name=timm/resnet50", "model.name=timm/test_resnet"),
    ("--nproc_per_node 8", "--standalone --nproc_per_node 2"),
]
SMALL = {  # appended to each command by its kind (a later --set wins)
    "shard": ["--shard-size", "3", "--no-progress"],
    "label": ["--no-progress", "--set", "data.workers=1"],
    "train": [
        *("--no-progress", "--no-tensorboard"),
        *("--set", "data.image_size=32", "--set", "data.batch_size=4", "--set", "data.mu=2"),
        *("--set", "data.val_per_class=1", "--set", "data.labeled_per_class=2", "--set", "data.workers=1"),
        *("--set", "train.eval_batch_size=8", "--set", "train.steps=4", "--set", "train.eval_every=2"),
        *("--set", "train.log_every=2", "--set", "finetune.steps=2", "--set", "finetune.batch_size=4"),
        *("--set", "student.wait_steps=0"),
    ],
    "eval": ["--batch-size", "8"],
    "predict": [],
}


def recipe_commands() -> list[str]:
    """The recipe block's commands: continuation lines joined, comments and blank lines dropped."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(MARKER)
    assert lines[start + 1] == "```bash", "the marker must stand right above a ```bash block"
    end = lines.index("```", start + 2)
    block = "\n".join(lines[start + 2 : end]).replace("\\\n", " ")
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def substituted(commands: list[str]) -> list[list[str]]:
    """Each command as an argument list, with SUBSTITUTIONS made and SMALL appended."""
    text = "\n".join(commands)
    for page, test in SUBSTITUTIONS:
        assert page in text, f"docs/scale.md's recipe no longer says {page!r}: update the page or this test"
        text = text.replace(page, test)
    out = []
    for line in text.splitlines():
        args = shlex.split(line)
        kind = next(word for word in args if word in SMALL)
        out.append(args + SMALL[kind])
    return out


def test_the_recipe_block_is_found_in_order():
    kinds = [next(w for w in shlex.split(c) if w in SMALL) for c in recipe_commands()]
    assert kinds == ["shard", "train", "label", "train", "eval", "predict"]


def _tiny_data(folder: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    write_class_folders(folder / "data" / "imagenet" / "train", CLASSES, per_class=4, side=40)
    write_class_folders(folder / "data" / "imagenet" / "val", CLASSES, per_class=1, side=40)
    write_unlabeled_folder(folder / "photos" / "unlabeled", 12, side=40)
    (folder / "photos" / "new").mkdir(parents=True)
    for k in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * k, np.uint8)).save(folder / "photos" / "new" / f"{k}.png")
    torch.manual_seed(0)
    state = timm.create_model("test_efficientnet", num_classes=1000).state_dict()  # as timm publishes it
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / TEACHER_WEIGHTS))


@pytest.mark.slow
def test_the_scale_recipe_runs_end_to_end(tmp_path):
    pytest.importorskip("timm")
    _tiny_data(tmp_path)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    for args in substituted(recipe_commands()):
        result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{shlex.join(args)} failed:\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr
    manifest = json.loads((tmp_path / "labels" / "teacher" / "manifest.json").read_text())
    assert manifest["pool_size"] == 12 and manifest["source"]["kind"] == "run"
    assert sum(entry["count"] for entry in manifest["unlabeled_shards"]["files"]) == 12
    assert len(manifest["unlabeled_shards"]["files"]) == 4  # 12 images in shards of 3
    summary = json.loads((tmp_path / "runs" / "student" / "summary.json").read_text())
    assert summary["method"] == "reduced_mpl" and summary["train_steps"] == 4
    inputs = json.loads((tmp_path / "runs" / "student" / "inputs.json").read_text())["inputs"]
    assert set(inputs) >= {"data.unlabeled_shards", "data.label_dir"}
    predictions = (tmp_path / "runs" / "student" / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 1 + 2 and predictions[0].startswith("input,class,label")
