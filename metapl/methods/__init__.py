"""Training methods behind one interface (methods/base.py: Method), and their registry.

A method is one module that defines its class and `METHOD = MethodEntry(...)`, its settings dataclass in
methods/settings.py (torch-free), plus one line in METHODS below (its module and its settings class). This package imports
no module of a method (nor PyTorch) until one is asked for, so that the command line can list the names quickly
and build a config (`metapl config`) without PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.registry import Registry, lazy_exports

if TYPE_CHECKING:
    from metapl.batch import Batch as Batch
    from metapl.batch import StoredBatch as StoredBatch
    from metapl.methods.base import Method as Method
    from metapl.methods.base import MethodEntry as MethodEntry
    from metapl.methods.mpl import MetaPseudoLabels as MetaPseudoLabels
    from metapl.methods.pseudo_label import PseudoLabel as PseudoLabel
    from metapl.methods.reduced_mpl import ReducedMetaPseudoLabels as ReducedMetaPseudoLabels
    from metapl.methods.settings import FeedbackSettings as FeedbackSettings
    from metapl.methods.settings import MPLSettings as MPLSettings
    from metapl.methods.settings import PseudoLabelSettings as PseudoLabelSettings
    from metapl.methods.settings import ReducedMPLSettings as ReducedMPLSettings
    from metapl.methods.settings import ReducedTeacherLosses as ReducedTeacherLosses
    from metapl.methods.settings import SupervisedSettings as SupervisedSettings
    from metapl.methods.settings import TeacherLosses as TeacherLosses
    from metapl.methods.settings import UDASettings as UDASettings
    from metapl.methods.supervised import Supervised as Supervised
    from metapl.methods.uda import UDA as UDA

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
    settings={  # each one's settings, torch-free (the same classes as their entries': tests check it)
        "supervised": "metapl.methods.settings:SupervisedSettings",
        "pseudo_label": "metapl.methods.settings:PseudoLabelSettings",
        "uda": "metapl.methods.settings:UDASettings",
        "mpl": "metapl.methods.settings:MPLSettings",
        "reduced_mpl": "metapl.methods.settings:ReducedMPLSettings",
    },
)

# The image networks a finished run keeps: the evaluated model (model.pt, best_model.pt) and, for methods whose
# teacher is an image network, the teacher's final weights (teacher_model.pt); eval/predict/export --network.
NETWORKS = ("student", "teacher")

_EXPORTS = {
    "Batch": "metapl.batch",
    "StoredBatch": "metapl.batch",
    "Method": "metapl.methods.base",
    "MethodEntry": "metapl.methods.base",
    "FeedbackSettings": "metapl.methods.settings",
    "MetaPseudoLabels": "metapl.methods.mpl",
    "MPLSettings": "metapl.methods.settings",
    "PseudoLabel": "metapl.methods.pseudo_label",
    "PseudoLabelSettings": "metapl.methods.settings",
    "ReducedMetaPseudoLabels": "metapl.methods.reduced_mpl",
    "ReducedMPLSettings": "metapl.methods.settings",
    "ReducedTeacherLosses": "metapl.methods.settings",
    "Supervised": "metapl.methods.supervised",
    "SupervisedSettings": "metapl.methods.settings",
    "TeacherLosses": "metapl.methods.settings",
    "UDA": "metapl.methods.uda",
    "UDASettings": "metapl.methods.settings",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["METHODS", "NETWORKS", *_EXPORTS]
