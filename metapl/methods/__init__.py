"""Training methods behind one interface: Method.step(batch, step) -> metrics."""

from metapl.methods.base import Batch, Method
from metapl.methods.mpl import MetaPseudoLabels
from metapl.methods.pseudo_label import PseudoLabel
from metapl.methods.supervised import Supervised
from metapl.methods.uda import UDA, AuxLossSettings

__all__ = ["AuxLossSettings", "Batch", "Method", "MetaPseudoLabels", "PseudoLabel", "Supervised", "UDA"]
