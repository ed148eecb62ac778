"""The campaign data layer: units, variables, protocols, the campaign, its folder format and importers."""

from .build import CELL_TYPES, campaign_from_tables
from .campaign import DIMS, PHASES, Campaign, CampaignSummary
from .errors import CampaignValidationError, Problem
from .folder import read_campaign, read_tables, write_campaign, write_tables
from .frames import campaign_from_dataframe, wide_to_long
from .protocol import Event, EventKind, Medium, Protocol
from .tables import CampaignTables
from .units import MOLAR_MASSES, UnitConversionError, convert, ureg
from .variables import AMINO_ACIDS, CANONICAL_VARIABLES, VariableSpec

__all__ = [
    "AMINO_ACIDS", "CANONICAL_VARIABLES", "CELL_TYPES", "DIMS", "MOLAR_MASSES", "PHASES", "Campaign",
    "CampaignSummary", "CampaignTables", "CampaignValidationError", "Event", "EventKind", "Medium", "Problem",
    "Protocol", "UnitConversionError", "VariableSpec", "campaign_from_dataframe", "campaign_from_tables", "convert",
    "read_campaign", "read_tables", "ureg", "wide_to_long", "write_campaign", "write_tables",
]
