"""The campaign folder format as in-memory tables, before validation.

`CampaignTables` holds the five tables of a campaign folder (``batches.csv``, ``measurements.csv``,
``events.csv``, ``media.csv`` and the optional ``variables.csv``) as pandas DataFrames with the columns of
the documented contract (``docs/data-format.md``), values in whatever units their ``unit`` column names.
Readers of real formats (``cgt_twin.data.importers``) produce it; `cgt_twin.data.campaign_from_tables`
validates it and builds a `Campaign` with canonical units.
"""

from __future__ import annotations

import dataclasses

import pandas as pd

BATCH_COLUMNS: tuple[str, ...] = ("batch", "cell_type", "initial_volume", "volume_unit")
BATCH_OPTIONAL_COLUMNS: tuple[str, ...] = ("max_volume", "initial_medium", "start_time", "feeds_known")
MEASUREMENT_COLUMNS: tuple[str, ...] = ("batch", "time_h", "variable", "value", "unit")
MEASUREMENT_OPTIONAL_COLUMNS: tuple[str, ...] = ("phase", "timestamp", "censored", "replicate")
EVENT_COLUMNS: tuple[str, ...] = ("batch", "time_h", "kind", "target", "amount", "unit", "medium")
EVENT_OPTIONAL_COLUMNS: tuple[str, ...] = ("timestamp", "note")
MEDIA_COLUMNS: tuple[str, ...] = ("medium", "species", "concentration", "unit")
MEDIA_OPTIONAL_COLUMNS: tuple[str, ...] = ("inferred", "note")
VARIABLE_COLUMNS: tuple[str, ...] = ("variable", "unit", "description")

FILE_NAMES: dict[str, str] = {
    "batches": "batches.csv",
    "measurements": "measurements.csv",
    "events": "events.csv",
    "media": "media.csv",
    "variables": "variables.csv",
}


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


@dataclasses.dataclass
class CampaignTables:
    """The raw tables of one campaign, as read from a folder or produced by an importer.

    Attributes:
        batches: one row per batch (``batch, cell_type, initial_volume, volume_unit`` and optional columns;
            any further column is a batch covariate).
        measurements: long table ``batch, time_h, variable, value, unit`` (+ ``phase``, ``timestamp``,
            ``censored``, ``replicate``).
        events: ``batch, time_h, kind, target, amount, unit, medium`` (+ ``timestamp``, ``note``).
        media: ``medium, species, concentration, unit`` (+ ``inferred``, ``note``).
        variables: optional declarations ``variable, unit, description`` of analytes outside the canonical list.
        notes: the import policy decisions taken for this source (kept with the campaign, shown in summaries).
        source: a short description of where the tables came from (folder path, workbook name).
    """

    batches: pd.DataFrame
    measurements: pd.DataFrame
    events: pd.DataFrame = dataclasses.field(default_factory=lambda: _empty(EVENT_COLUMNS))
    media: pd.DataFrame = dataclasses.field(default_factory=lambda: _empty(MEDIA_COLUMNS))
    variables: pd.DataFrame = dataclasses.field(default_factory=lambda: _empty(VARIABLE_COLUMNS))
    notes: list[str] = dataclasses.field(default_factory=list)
    source: str = "<memory>"
