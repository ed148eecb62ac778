"""pandas in: build a campaign from the DataFrames process scientists arrive with (long or wide).

The outward direction is `Campaign.to_dataframe`. Both directions go through the same checks as the folder
format (`campaign_from_tables`), so a DataFrame is held to the same contract as a CSV file.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .build import campaign_from_tables
from .campaign import Campaign
from .errors import CampaignValidationError, Problem
from .tables import EVENT_COLUMNS, MEDIA_COLUMNS, VARIABLE_COLUMNS, CampaignTables
from .variables import lookup

__all__ = ["campaign_from_dataframe", "wide_to_long"]

_INDEX_COLUMNS = ("batch", "time_h", "timestamp", "phase", "replicate")


def wide_to_long(wide: pd.DataFrame, units: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Turns a wide table (one column per variable) into the long measurement table.

    Args:
        wide: columns ``batch``, ``time_h`` (or ``timestamp``), optional ``phase`` and ``replicate``, and one column
            per variable.
        units: unit per variable column; a variable not named here is taken in its canonical unit.

    Returns:
        ``batch, time_h, variable, value, unit`` (+ the optional columns present), one row per non-missing value.
    """
    units = dict(units or {})
    index = [c for c in _INDEX_COLUMNS if c in wide.columns]
    value_columns = [c for c in wide.columns if c not in index]
    problems = [Problem("wide table", f"unit given for {name!r}, which is not a column")
                for name in units if name not in value_columns]
    for name in value_columns:
        if name not in units and lookup(str(name)) is None:
            problems.append(Problem("wide table", f"no unit for column {name!r}, which is not a canonical variable; "
                                                  "pass units={...}", column=str(name)))
    if problems:
        raise CampaignValidationError(problems)
    long = wide.melt(id_vars=index, value_vars=value_columns, var_name="variable", value_name="value")
    long = long[long["value"].notna()].copy()
    long["unit"] = [units.get(v) or lookup(str(v)).unit for v in long["variable"]]
    return long.reset_index(drop=True)


def campaign_from_dataframe(measurements: pd.DataFrame, batches: pd.DataFrame | None = None, *,
                            events: pd.DataFrame | None = None, media: pd.DataFrame | None = None,
                            variables: pd.DataFrame | None = None, units: Mapping[str, str] | None = None,
                            cell_type: str | None = None, initial_volume: float | None = None,
                            volume_unit: str = "L", notes: list[str] | None = None,
                            source: str = "<DataFrame>") -> Campaign:
    """A checked campaign from DataFrames.

    Args:
        measurements: long (``batch, time_h, variable, value, unit``) or wide (``batch, time_h`` and one column per
            variable, with `units`) table.
        batches: the batches table of the folder format; if omitted, one row per batch of `measurements` is made
            from `cell_type`, `initial_volume` and `volume_unit`.
        events, media, variables: the other tables of the folder format (optional).
        units: for a wide table, the unit of each variable column (canonical units where omitted).
        cell_type, initial_volume, volume_unit: used only when `batches` is omitted.
        notes: import notes kept with the campaign.
        source: label used in error messages.

    Raises:
        CampaignValidationError: with every problem found.
    """
    if not isinstance(measurements, pd.DataFrame):
        raise CampaignValidationError(Problem(source, f"measurements must be a DataFrame, got "
                                                      f"{type(measurements).__name__}"))
    is_long = {"variable", "value"} <= set(measurements.columns)
    long = measurements if is_long else wide_to_long(measurements, units)
    if batches is None:
        if cell_type is None or initial_volume is None:
            raise CampaignValidationError(Problem(source, "without a batches table, give cell_type and "
                                                          "initial_volume (and volume_unit)"))
        names = pd.unique(long["batch"].astype(str)) if "batch" in long.columns else []
        batches = pd.DataFrame({"batch": names, "cell_type": cell_type, "initial_volume": initial_volume,
                                "volume_unit": volume_unit})

    def table(frame, columns):
        return frame if frame is not None else pd.DataFrame({c: pd.Series(dtype=object) for c in columns})

    tables = CampaignTables(batches=batches, measurements=long, events=table(events, EVENT_COLUMNS),
                            media=table(media, MEDIA_COLUMNS), variables=table(variables, VARIABLE_COLUMNS),
                            notes=list(notes or []), source=source)
    return campaign_from_tables(tables)
