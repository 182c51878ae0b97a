"""metapl: Meta Pseudo Labels (Pham et al., CVPR 2021) for PyTorch, with its baselines.

The names below load on first use, so that `import metapl` (and the command line's start) does not import
PyTorch until something needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.errors import MetaplError
from metapl.registry import lazy_exports

__version__ = "0.2.0"

if TYPE_CHECKING:
    from metapl.inference import load_run as load_run
    from metapl.methods import UDA as UDA
    from metapl.methods import Batch as Batch
    from metapl.methods import FeedbackSettings as FeedbackSettings
    from metapl.methods import MetaPseudoLabels as MetaPseudoLabels
    from metapl.methods import MPLSettings as MPLSettings
    from metapl.methods import PseudoLabel as PseudoLabel
    from metapl.methods import PseudoLabelSettings as PseudoLabelSettings
    from metapl.methods import ReducedTeacherLosses as ReducedTeacherLosses
    from metapl.methods import StoredBatch as StoredBatch
    from metapl.methods import Supervised as Supervised
    from metapl.methods import SupervisedSettings as SupervisedSettings
    from metapl.methods import TeacherLosses as TeacherLosses
    from metapl.methods import UDASettings as UDASettings
    from metapl.methods.reduced_mpl import ReducedMetaPseudoLabels as ReducedMetaPseudoLabels
    from metapl.methods.reduced_mpl import ReducedMPLSettings as ReducedMPLSettings
    from metapl.methods.reduced_mpl import ReducedTeacher as ReducedTeacher
    from metapl.methods.supervised import finetuner as finetuner
    from metapl.models import create_model as create_model
    from metapl.optim import OptimSettings as OptimSettings

_EXPORTS = {
    "Batch": "metapl.methods",
    "FeedbackSettings": "metapl.methods",
    "MetaPseudoLabels": "metapl.methods",
    "MPLSettings": "metapl.methods",
    "PseudoLabel": "metapl.methods",
    "PseudoLabelSettings": "metapl.methods",
    "ReducedTeacherLosses": "metapl.methods",
    "StoredBatch": "metapl.methods",
    "TeacherLosses": "metapl.methods",
    "Supervised": "metapl.methods",
    "SupervisedSettings": "metapl.methods",
    "UDA": "metapl.methods",
    "UDASettings": "metapl.methods",
    "ReducedMetaPseudoLabels": "metapl.methods.reduced_mpl",
    "ReducedMPLSettings": "metapl.methods.reduced_mpl",
    "ReducedTeacher": "metapl.methods.reduced_mpl",
    "finetuner": "metapl.methods.supervised",
    "load_run": "metapl.inference",
    "create_model": "metapl.models",
    "OptimSettings": "metapl.optim",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["MetaplError", "__version__", *_EXPORTS]
