"""metapl: Meta Pseudo Labels (Pham et al., CVPR 2021) for PyTorch, with its baselines."""

from metapl.errors import MetaplError
from metapl.methods import UDA, AuxLossSettings, Batch, MetaPseudoLabels, PseudoLabel, Supervised
from metapl.models import create_model
from metapl.optim import OptimSettings

__version__ = "0.1.0"

__all__ = [
    "AuxLossSettings",
    "Batch",
    "MetaPseudoLabels",
    "MetaplError",
    "OptimSettings",
    "PseudoLabel",
    "Supervised",
    "UDA",
    "create_model",
]
