"""Training methods behind one interface (methods/base.py: Method), and their registry.

A method is one module that defines its settings dataclass, its class and `METHOD = MethodEntry(...)`, plus
one line in METHODS below. This package imports no module of a method (nor PyTorch) until one is asked for,
so that the command line can list the names quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metapl.registry import Registry

if TYPE_CHECKING:
    from metapl.methods.base import Batch as Batch
    from metapl.methods.base import Method as Method
    from metapl.methods.base import MethodEntry as MethodEntry
    from metapl.methods.mpl import FeedbackSettings as FeedbackSettings
    from metapl.methods.mpl import MetaPseudoLabels as MetaPseudoLabels
    from metapl.methods.mpl import MPLSettings as MPLSettings
    from metapl.methods.pseudo_label import PseudoLabel as PseudoLabel
    from metapl.methods.pseudo_label import PseudoLabelSettings as PseudoLabelSettings
    from metapl.methods.reduced_mpl import ReducedMetaPseudoLabels as ReducedMetaPseudoLabels
    from metapl.methods.reduced_mpl import ReducedMPLSettings as ReducedMPLSettings
    from metapl.methods.supervised import Supervised as Supervised
    from metapl.methods.supervised import SupervisedSettings as SupervisedSettings
    from metapl.methods.uda import UDA as UDA
    from metapl.methods.uda import UDASettings as UDASettings

METHODS: Registry[MethodEntry] = Registry(
    "method",
    "method.name",
    {
        "supervised": "metapl.methods.supervised:METHOD",
        "pseudo_label": "metapl.methods.pseudo_label:METHOD",
        "uda": "metapl.methods.uda:METHOD",
        "mpl": "metapl.methods.mpl:METHOD",
        "reduced_mpl": "metapl.methods.reduced_mpl:METHOD",
    },
)

# The image networks a finished run keeps: the evaluated model (model.pt, best_model.pt) and, for methods whose
# teacher is an image network, the teacher's final weights (teacher_model.pt); eval/predict/export --network.
NETWORKS = ("student", "teacher")

_EXPORTS = {
    "Batch": "metapl.methods.base",
    "Method": "metapl.methods.base",
    "MethodEntry": "metapl.methods.base",
    "FeedbackSettings": "metapl.methods.mpl",
    "MetaPseudoLabels": "metapl.methods.mpl",
    "MPLSettings": "metapl.methods.mpl",
    "PseudoLabel": "metapl.methods.pseudo_label",
    "PseudoLabelSettings": "metapl.methods.pseudo_label",
    "ReducedMetaPseudoLabels": "metapl.methods.reduced_mpl",
    "ReducedMPLSettings": "metapl.methods.reduced_mpl",
    "Supervised": "metapl.methods.supervised",
    "SupervisedSettings": "metapl.methods.supervised",
    "UDA": "metapl.methods.uda",
    "UDASettings": "metapl.methods.uda",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHODS", "NETWORKS", *_EXPORTS]
