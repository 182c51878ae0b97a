"""`python -m metapl.torchrun ARGS`: torchrun (torch.distributed.run, the same arguments) whose Ctrl-C ends in one
line and exit code 130, not in torchrun's own traceback.

Ctrl-C sends SIGINT to torchrun and to every rank. The ranks stop after the same step and each prints one line
(run/loop.py); torchrun's agent, interrupted as well, stops its workers and then raises SignalException, which
plain torchrun prints as a traceback of its own code and exit code 1. This launcher runs the same torchrun and turns
that exception into one line and the signal's exit code (128 + the signal's number).
"""

from __future__ import annotations

import signal
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as stop:
        name = signal.Signals(stop.sigval).name
        print(f"metapl: torchrun: {name} stopped the workers; their lines above say what was saved", file=sys.stderr)
        return 128 + int(stop.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
