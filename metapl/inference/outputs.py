"""Where a command may write: never over a file it reads, nor over a run's own files."""

from __future__ import annotations

from pathlib import Path

from metapl.engine.run_dir import RUN_OUTPUTS
from metapl.errors import ConfigError


def check_output(out: Path, runs: list[Path], inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an --out that is a directory, an input of the command, or one of a run's own files."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass a file name inside it")
    target = out.resolve()
    if any(Path(source).resolve() == target for source in inputs):
        raise ConfigError(f"--out {out} is the input file, which would be overwritten; pass another --out")
    for run in runs:
        name = target.name
        if target.parent == Path(run).resolve() and (name in RUN_OUTPUTS or name.startswith("checkpoint")):
            raise ConfigError(f"--out {out} would overwrite the run's own {name}; pass another --out")
