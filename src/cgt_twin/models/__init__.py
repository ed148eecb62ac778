"""The model library: generic reactor balance, parameters, and the kinetics of each cell type."""

from .balance import EventCode, apply_event, vector_field
from .cho import CHOFedBatch
from .covariates import CovariateEncoding
from .hek293 import HEK293Lentivirus, HEK293TripleTransfection
from .kinetics import AbstractKinetics, Inputs, InternalState, Rates, StateLayout
from .parameters import Parameter, defaults, from_unconstrained, read_parameter_file, to_unconstrained
from .tcell import TCellExpansion
from .twin import Twin

__all__ = ["AbstractKinetics", "CHOFedBatch", "CovariateEncoding", "EventCode", "HEK293Lentivirus", "HEK293TripleTransfection", "Inputs", "InternalState", "Parameter", "Rates",
           "StateLayout", "TCellExpansion", "Twin", "apply_event", "defaults", "from_unconstrained", "read_parameter_file",
           "to_unconstrained", "vector_field"]
