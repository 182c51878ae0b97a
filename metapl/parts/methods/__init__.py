"""Training methods behind one interface (parts/methods/base.py: Method), and their registry.

A method is one module that defines its class and `METHOD = MethodEntry(...)`, its settings dataclass in
parts/methods/settings.py (torch-free), plus one line in METHODS below (its module and its settings class). This package imports
no module of a method (nor PyTorch) until one is asked for, so that the command line can list the names quickly
and build a config (`metapl config`) without PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.core.registry import Registry, lazy_exports

if TYPE_CHECKING:
    from metapl.core.batch import Batch as Batch
    from metapl.core.batch import StoredBatch as StoredBatch
    from metapl.parts.methods.base import Method as Method
    from metapl.parts.methods.base import MethodEntry as MethodEntry
    from metapl.parts.methods.mpl import MetaPseudoLabels as MetaPseudoLabels
    from metapl.parts.methods.pseudo_label import PseudoLabel as PseudoLabel
    from metapl.parts.methods.reduced_mpl import ReducedMetaPseudoLabels as ReducedMetaPseudoLabels
    from metapl.parts.methods.settings import FeedbackSettings as FeedbackSettings
    from metapl.parts.methods.settings import MPLSettings as MPLSettings
    from metapl.parts.methods.settings import PseudoLabelSettings as PseudoLabelSettings
    from metapl.parts.methods.settings import ReducedMPLSettings as ReducedMPLSettings
    from metapl.parts.methods.settings import ReducedTeacherLosses as ReducedTeacherLosses
    from metapl.parts.methods.settings import SupervisedSettings as SupervisedSettings
    from metapl.parts.methods.settings import TeacherLosses as TeacherLosses
    from metapl.parts.methods.settings import UDASettings as UDASettings
    from metapl.parts.methods.supervised import Supervised as Supervised
    from metapl.parts.methods.uda import UDA as UDA

METHODS: Registry[MethodEntry] = Registry(
    "method",
    "method.name",
    {
        "supervised": "metapl.parts.methods.supervised:METHOD",
        "pseudo_label": "metapl.parts.methods.pseudo_label:METHOD",
        "uda": "metapl.parts.methods.uda:METHOD",
        "mpl": "metapl.parts.methods.mpl:METHOD",
        "reduced_mpl": "metapl.parts.methods.reduced_mpl:METHOD",
    },
    settings={  # each one's settings, torch-free (the same classes as their entries': tests check it)
        "supervised": "metapl.parts.methods.settings:SupervisedSettings",
        "pseudo_label": "metapl.parts.methods.settings:PseudoLabelSettings",
        "uda": "metapl.parts.methods.settings:UDASettings",
        "mpl": "metapl.parts.methods.settings:MPLSettings",
        "reduced_mpl": "metapl.parts.methods.settings:ReducedMPLSettings",
    },
)

# The image networks a finished run keeps: the evaluated model (model.pt, best_model.pt) and, for methods whose
# teacher is an image network, the teacher's final weights (teacher_model.pt); eval/predict/export --network.
NETWORKS = ("student", "teacher")

_EXPORTS = {
    "Batch": "metapl.core.batch",
    "StoredBatch": "metapl.core.batch",
    "Method": "metapl.parts.methods.base",
    "MethodEntry": "metapl.parts.methods.base",
    "FeedbackSettings": "metapl.parts.methods.settings",
    "MetaPseudoLabels": "metapl.parts.methods.mpl",
    "MPLSettings": "metapl.parts.methods.settings",
    "PseudoLabel": "metapl.parts.methods.pseudo_label",
    "PseudoLabelSettings": "metapl.parts.methods.settings",
    "ReducedMetaPseudoLabels": "metapl.parts.methods.reduced_mpl",
    "ReducedMPLSettings": "metapl.parts.methods.settings",
    "ReducedTeacherLosses": "metapl.parts.methods.settings",
    "Supervised": "metapl.parts.methods.supervised",
    "SupervisedSettings": "metapl.parts.methods.settings",
    "TeacherLosses": "metapl.parts.methods.settings",
    "UDA": "metapl.parts.methods.uda",
    "UDASettings": "metapl.parts.methods.settings",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["METHODS", "NETWORKS", *_EXPORTS]
