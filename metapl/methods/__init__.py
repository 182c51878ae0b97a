"""Training methods behind one interface (methods/base.py: Method), and their registry.

A method is one module that defines its class and `METHOD = MethodEntry(...)`, its settings dataclass in
methods/settings.py (torch-free), plus one line in METHODS and one in METHOD_SETTINGS below. This package imports
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
)

# The image networks a finished run keeps: the evaluated model (model.pt, best_model.pt) and, for methods whose
# teacher is an image network, the teacher's final weights (teacher_model.pt); eval/predict/export --network.
NETWORKS = ("student", "teacher")

# metapl's methods' settings dataclasses (the config's `method` section), without importing the method (nor
# PyTorch); the same classes as METHODS.get(name).settings (tests/test_config.py checks it).
METHOD_SETTINGS: Registry[type] = Registry(
    "method",
    "method.name",
    {
        "supervised": "metapl.methods.settings:SupervisedSettings",
        "pseudo_label": "metapl.methods.settings:PseudoLabelSettings",
        "uda": "metapl.methods.settings:UDASettings",
        "mpl": "metapl.methods.settings:MPLSettings",
        "reduced_mpl": "metapl.methods.settings:ReducedMPLSettings",
    },
)


def settings_class(name: str) -> type:
    """The settings dataclass of method `name` (a registered name); torch-free for metapl's own methods, while a
    method registered from outside (METHODS.add) is imported to read its MethodEntry."""
    return METHOD_SETTINGS.get(name) if name in METHOD_SETTINGS else METHODS.get(name).settings


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


__all__ = ["METHODS", "METHOD_SETTINGS", "NETWORKS", "settings_class", *_EXPORTS]
