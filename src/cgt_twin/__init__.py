"""cgt_twin: hybrid mechanistic–neural digital twins of cell and gene therapy and biologics manufacturing.

Importing the package switches JAX to float64 (DESIGN.md, "Numerics"): the material balances span many orders of
magnitude and are integrated over weeks. It also makes equinox's runtime checks return NaN instead of raising
(``EQX_ON_ERROR=nan``, unless the environment already sets it, and only if equinox was not imported first): a failed
solve is a status here, never an exception from inside JAX, and programs without host callbacks can be kept in JAX's
persistent compilation cache (measured: a 2-parameter CHO fit in a fresh process 12 s with the cache, 35–45 s
without).
"""

import os
from importlib.metadata import PackageNotFoundError, version

os.environ.setdefault("EQX_ON_ERROR", "nan")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from .data import (  # noqa: E402  (x64 must be on before anything else touches JAX)
    Campaign,
    CampaignTables,
    CampaignValidationError,
    Event,
    EventKind,
    Medium,
    Problem,
    Protocol,
    campaign_from_dataframe,
    campaign_from_tables,
    read_campaign,
    write_campaign,
)
from .data.importers import IMPORTERS, import_campaign  # noqa: E402

try:
    __version__ = version("cgt_twin")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "IMPORTERS", "Campaign", "CampaignTables", "CampaignValidationError", "Event", "EventKind", "Medium", "Problem",
    "Protocol", "__version__", "campaign_from_dataframe", "campaign_from_tables", "import_campaign", "read_campaign",
    "write_campaign",
]
