"""The layout's one rule (docs/architecture.md#the-layers): imports point downward only.

    commands  →  run  →  parts (data, models, methods)  →  core

A module imports its own layer or the layers below it; within parts, a family (data, models, methods) imports its
own modules and the core, never another family. Imports for type checking alone (`if TYPE_CHECKING:`) are not
arrows at run time and are left out. The package root (metapl/__init__.py, the public names; __main__.py and
torchrun.py, the entry points) stands above all.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "metapl"
LAYERS = ("core", "parts", "run", "commands")
FAMILIES = ("data", "models", "methods")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _place(module: str) -> tuple[int, str] | None:
    """(layer index, the family within parts or '') of a metapl module; None for the package root."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return None
    layer = LAYERS.index(parts[1])
    family = parts[2] if parts[1] == "parts" and len(parts) > 2 else ""
    return layer, family


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported metapl module) of every import the module runs, at its top or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _type_checking_only(node)
        for n in ast.walk(node)
        if n is not node
    }
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("metapl"):
            # `from metapl.parts.data import splits` imports the module metapl.parts.data.splits
            submodules = [f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}")]
            found.extend((node.lineno, m) for m in submodules or [node.module])
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.startswith("metapl"))
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _violations(path: Path) -> list[str]:
    own = _place(_module_name(path))
    if own is None:
        return []
    wrong = []
    for line, module in _imports(path):
        target = _place(module)
        if target is None:
            if module == "metapl":
                continue  # `from metapl import __version__`: the root's own attribute, read below
            if module.count(".") == 1:  # metapl.x where x is an attribute of the root module (checked by import)
                continue
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}, which is in no layer")
            continue
        upward = target[0] > own[0]
        sideways = own[0] == target[0] == LAYERS.index("parts") and own[1] != target[1] and target[1]
        if upward or sideways:
            wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
    return wrong


def test_every_module_is_in_a_layer():
    stray = [p.relative_to(PACKAGE) for p in _modules() if _place(_module_name(p)) is None]
    assert sorted(map(str, stray)) == ["__init__.py", "__main__.py", "torchrun.py"]


def test_imports_point_downward_only():
    wrong = [v for p in _modules() for v in _violations(p)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from metapl.run.config import Config\n", 1),  # core → run: upward
        ("from metapl.parts.methods.base import Method\n", 1),  # core → parts: upward
        ("def f():\n    from metapl.commands.cli import main\n", 1),  # inside a function still counts
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from metapl.run.config import Config\n", 0),
        ("from metapl.core.errors import ConfigError\n", 0),
    ],
)
def test_the_check_sees_an_upward_import(tmp_path, monkeypatch, source, expected):
    """The rule can fail: a planted import from the core upward is found, one for type checking alone is not."""
    fake = tmp_path / "metapl" / "core" / "planted.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "metapl")
    assert len(_violations(fake)) == expected


def test_a_family_of_parts_does_not_import_another(tmp_path, monkeypatch):
    fake = tmp_path / "metapl" / "parts" / "data" / "planted.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from metapl.parts.methods.base import Method\nfrom metapl.parts.data.splits import Split\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "metapl")
    assert _violations(fake) == [f"{Path('metapl/parts/data/planted.py')}:1 imports metapl.parts.methods.base"]


def _depth(line: str) -> int:
    return len(line) - len(line.lstrip())


def _chunk(lines: list[str], head: str, indent: str) -> str:
    """The lines from the one that starts with `head` to the next that is not indented deeper than `indent`."""
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i].strip() and _depth(lines[i]) <= len(indent)),
        len(lines),
    )
    return "\n".join(lines[start:end])


def test_the_architecture_page_draws_every_module_in_its_layer():
    """docs/architecture.md's diagram names every module of metapl under its layer (and its family within parts), so
    a module added or moved without the page fails here."""
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = page.split("## The layers", 1)[1].split("```")[3]  # the second code block: the modules
    lines = block.splitlines()
    missing = []
    for path in _modules():
        relative = path.relative_to(PACKAGE)
        if path.name == "__init__.py" and len(relative.parts) > 1:
            continue  # a layer's or family's __init__ is its folder
        if len(relative.parts) == 1:
            chunk = block if f"metapl/{path.name}" in block else ""
        elif relative.parts[0] == "parts":
            chunk = _chunk(lines, f"  {relative.parts[1]}/", "  ")
        else:
            chunk = _chunk(lines, f"{relative.parts[0]}/", "")
        if path.name not in chunk:
            missing.append(str(relative))
    assert not missing, f"docs/architecture.md's layers do not show: {', '.join(missing)}"
