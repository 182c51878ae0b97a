"""metapl: Meta Pseudo Labels (Pham et al., CVPR 2021) for PyTorch, with its baselines.

The public names are here, whatever module holds them (docs/api.md; docs/architecture.md draws the layout); each
loads on first use, so that `import metapl` (and the command line's start) does not import PyTorch until something
needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from metapl.core.errors import MetaplError
from metapl.core.registry import lazy_exports

__version__ = "0.2.0"

if TYPE_CHECKING:
    from metapl.commands.evaluate import evaluate_run as evaluate_run
    from metapl.commands.export import export_run as export_run
    from metapl.commands.finished_run import load_run as load_run
    from metapl.commands.predict import predict_run as predict_run
    from metapl.core.errors import CheckpointError as CheckpointError
    from metapl.core.errors import ConfigError as ConfigError
    from metapl.core.errors import DataError as DataError
    from metapl.core.errors import ExportError as ExportError
    from metapl.core.errors import TrainingError as TrainingError
    from metapl.core.optim import OptimSettings as OptimSettings
    from metapl.parts.data.registry import DATASETS as DATASETS
    from metapl.parts.methods import METHODS as METHODS
    from metapl.parts.methods import UDA as UDA
    from metapl.parts.methods import Batch as Batch
    from metapl.parts.methods import FeedbackSettings as FeedbackSettings
    from metapl.parts.methods import MetaPseudoLabels as MetaPseudoLabels
    from metapl.parts.methods import MPLSettings as MPLSettings
    from metapl.parts.methods import PseudoLabel as PseudoLabel
    from metapl.parts.methods import PseudoLabelSettings as PseudoLabelSettings
    from metapl.parts.methods import ReducedTeacherLosses as ReducedTeacherLosses
    from metapl.parts.methods import StoredBatch as StoredBatch
    from metapl.parts.methods import Supervised as Supervised
    from metapl.parts.methods import SupervisedSettings as SupervisedSettings
    from metapl.parts.methods import TeacherLosses as TeacherLosses
    from metapl.parts.methods import UDASettings as UDASettings
    from metapl.parts.methods.reduced_mpl import ReducedMetaPseudoLabels as ReducedMetaPseudoLabels
    from metapl.parts.methods.reduced_mpl import ReducedMPLSettings as ReducedMPLSettings
    from metapl.parts.methods.reduced_mpl import ReducedTeacher as ReducedTeacher
    from metapl.parts.methods.settings import from_flat as from_flat
    from metapl.parts.methods.supervised import finetuner as finetuner
    from metapl.parts.models import create_model as create_model
    from metapl.parts.models.registry import MODELS as MODELS

_EXPORTS = {
    "Supervised": "metapl.parts.methods",
    "SupervisedSettings": "metapl.parts.methods",
    "PseudoLabel": "metapl.parts.methods",
    "PseudoLabelSettings": "metapl.parts.methods",
    "UDA": "metapl.parts.methods",
    "UDASettings": "metapl.parts.methods",
    "MetaPseudoLabels": "metapl.parts.methods",
    "MPLSettings": "metapl.parts.methods",
    "FeedbackSettings": "metapl.parts.methods",
    "TeacherLosses": "metapl.parts.methods",
    "ReducedMetaPseudoLabels": "metapl.parts.methods.reduced_mpl",
    "ReducedMPLSettings": "metapl.parts.methods.reduced_mpl",
    "ReducedTeacher": "metapl.parts.methods.reduced_mpl",
    "ReducedTeacherLosses": "metapl.parts.methods",
    "from_flat": "metapl.parts.methods.settings",
    "finetuner": "metapl.parts.methods.supervised",
    "Batch": "metapl.parts.methods",
    "StoredBatch": "metapl.parts.methods",
    "OptimSettings": "metapl.core.optim",
    "METHODS": "metapl.parts.methods",
    "DATASETS": "metapl.parts.data.registry",
    "MODELS": "metapl.parts.models.registry",
    "create_model": "metapl.parts.models",
    "load_run": "metapl.commands.finished_run",
    "evaluate_run": "metapl.commands.evaluate",
    "predict_run": "metapl.commands.predict",
    "export_run": "metapl.commands.export",
    "ConfigError": "metapl.core.errors",
    "DataError": "metapl.core.errors",
    "CheckpointError": "metapl.core.errors",
    "TrainingError": "metapl.core.errors",
    "ExportError": "metapl.core.errors",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["MetaplError", "__version__", *_EXPORTS]
