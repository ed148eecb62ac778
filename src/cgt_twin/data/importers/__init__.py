"""Importers for real data formats. Each turns a source into `CampaignTables` and documents its policy for what the
source leaves ambiguous (``docs/importers/``); `import_campaign` then checks the tables like any campaign folder."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from ..build import campaign_from_tables
from ..campaign import Campaign
from ..errors import CampaignValidationError, Problem
from ..tables import CampaignTables

__all__ = ["IMPORTERS", "import_campaign", "import_tables", "read_cdppy", "read_clonalyzer", "read_hek293_zehetner"]

IMPORTERS: dict[str, str] = {
    "cdppy": "cdppy:read_cdppy",
    "hek293-zehetner": "hek293_zehetner:read_hek293_zehetner",
    "clonalyzer": "clonalyzer:read_clonalyzer",
}
"""Format name (as the CLI's ``cgt-twin import FORMAT`` takes it) -> ``module:function`` of its reader (imported on
first use, so that reading a campaign folder does not load every importer)."""


def reader(format: str) -> Callable[[str | os.PathLike], CampaignTables]:
    """The reader function of an import format."""
    try:
        module, function = IMPORTERS[format].split(":")
    except KeyError:
        raise CampaignValidationError(Problem("<import>", f"unknown import format {format!r}; known: "
                                                          f"{', '.join(IMPORTERS)}")) from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)


def __getattr__(name: str):
    for format, target in IMPORTERS.items():
        if target.endswith(f":{name}"):
            return reader(format)
    raise AttributeError(name)


def import_tables(format: str, source: str | os.PathLike) -> CampaignTables:
    """The raw tables of `source` read by the importer named `format` (see `IMPORTERS`)."""
    return reader(format)(source)


def import_campaign(format: str, source: str | os.PathLike) -> Campaign:
    """Reads `source` with the importer named `format` and checks it into a `Campaign`.

    Raises:
        CampaignValidationError: if the source is missing or malformed, or the imported tables break the campaign
            contract.
    """
    return campaign_from_tables(import_tables(format, source))
