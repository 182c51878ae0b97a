"""The one way the tests reach benchmarks/: a script's path (to run it as a command) or the script as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str) -> Path:
    """benchmarks/NAME.py, to run as `python SCRIPT ...`."""
    return BENCHMARKS / f"{name}.py"


def load(name: str) -> ModuleType:
    """benchmarks/NAME.py imported once per process, as the module `benchmarks.NAME` (registered before it runs:
    dataclasses look their module up while the file executes)."""
    key = f"benchmarks.{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, script(name))
    assert spec is not None and spec.loader is not None, script(name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module
