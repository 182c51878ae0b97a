"""The docs' commands run as written: every ```bash block of README.md and docs/*.md that follows the marker
<!-- runnable: ... --> is run by bash (set -e), the blocks of one page in order in one fresh folder, so that a
page's later blocks use what its earlier ones made. Two things differ from a reader's run, both to fit a test's
budget: every `metapl train` gets a few steps (--set train.steps=24 ...; later --set wins), and the folder holds
`scans/`, a few digit images for the `predict` examples. A command, flag, key, path or file name that drifts from
the code fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MARKER = "<!-- runnable:"
SHORT = "--set train.steps=24 --set train.eval_every=12 --set train.log_every=12 --set finetune.steps=4"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def runnable_blocks(page: Path) -> list[str]:
    """The bash blocks that follow the marker, with line continuations joined."""
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith(MARKER):
            assert lines[i + 1] == "```bash", f"{page.name}:{i + 1}: the marker must stand right above a ```bash block"
            end = lines.index("```", i + 2)
            blocks.append("\n".join(lines[i + 2 : end]).replace("\\\n", " "))
    return blocks


def shortened(block: str) -> str:
    """The block with a short step budget added to every `metapl train` (before the line's comment)."""
    out = []
    for line in block.splitlines():
        command = re.sub(r"\s+#\s.*$", "", line)
        if re.match(r"\s*(torchrun .*-m )?metapl train\b", command):
            line = f"{command} {SHORT}"
        out.append(line)
    return "\n".join(out)


def test_the_marked_pages_have_blocks_and_each_block_is_found():
    found = {page.name: len(runnable_blocks(page)) for page in PAGES}
    assert found["README.md"] >= 2 and found["cli.md"] >= 3 and found["reduced-mpl.md"] >= 1, found
    assert "--set train.steps=24" in shortened("metapl train --preset digits --out runs/x   # a comment")


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if runnable_blocks(p)], ids=lambda p: p.name)
def test_a_pages_runnable_blocks_run_as_written(tmp_path, page):
    scans = tmp_path / "scans"
    scans.mkdir()
    for k in range(3):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(scans / f"{k}.png")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for number, block in enumerate(runnable_blocks(page), start=1):
        script = "set -euo pipefail\n" + shortened(block)
        result = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, f"{page.name} block {number} failed:\n{script}\n{result.stderr[-3000:]}"
        assert "Traceback" not in result.stderr
