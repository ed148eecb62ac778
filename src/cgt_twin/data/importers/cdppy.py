"""Importer for CDPpy input workbooks (University of Minnesota Cell-culture Data Pipeline, github lu000285/CDPpy).

A CDPpy workbook holds a campaign of fed-batch runs on one sheet, ``Measured Data``: two header rows (a group row —
``Experiment Data``, ``Feed Volume (mL)``, ``Concentration Before Feeding``, ``Concentration After Feeding``,
``Calculated Cumulative Concentration`` — and a column row), then one row per sample. The sheet
``Feed Concentration`` holds the composition (mM) of each feed per run; ``Polynomial Degree`` holds the original
tool's smoothing settings and is ignored.

`read_cdppy` turns it into `CampaignTables` in the units the workbook states (volumes mL, cells 1e6 cells/mL,
IgG mg/L, metabolites mM). Every policy decision is written to ``CampaignTables.notes``; the reasons are in
``docs/importers/cdppy.md``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
import zipfile
from collections.abc import Sequence
from typing import Any

import pandas as pd

from cgt_twin.data.errors import CampaignValidationError, Problem, ProblemCollector
from cgt_twin.data.tables import (
    BATCH_COLUMNS,
    EVENT_COLUMNS,
    MEASUREMENT_COLUMNS,
    MEDIA_COLUMNS,
    VARIABLE_COLUMNS,
    CampaignTables,
)

__all__ = ["read_cdppy", "ANALYTE_NAMES"]

MEASURED_SHEET = "Measured Data"
FEED_SHEET = "Feed Concentration"
IGNORED_SHEETS = ("Polynomial Degree",)

CELL_TYPE = "cho"
BASE_MEDIUM = "base"
BASE_FREE_OF = ("glucose", "lactate", "glutamine", "ammonia")  # species listed at 0 mM in the base

# Workbook analyte name (lower case, without unit) -> canonical variable name.
ANALYTE_NAMES: dict[str, str] = {
    "alanine": "alanine", "ala": "alanine",
    "arginine": "arginine", "arg": "arginine",
    "asparagine": "asparagine", "asn": "asparagine",
    "aspartate": "aspartate", "aspartic acid": "aspartate", "asp": "aspartate",
    "cysteine": "cysteine", "cys": "cysteine",
    "cystine": "cystine", "cys2": "cystine",
    "glucose": "glucose", "glc": "glucose",
    "glutamine": "glutamine", "gln": "glutamine",
    "glutamate": "glutamate", "glutamic acid": "glutamate", "glu": "glutamate",
    "glycine": "glycine", "gly": "glycine",
    "histidine": "histidine", "his": "histidine",
    "isoleucine": "isoleucine", "ile": "isoleucine",
    "lactate": "lactate", "lactic acid": "lactate", "lac": "lactate",
    "leucine": "leucine", "leu": "leucine",
    "lysine": "lysine", "lys": "lysine",
    "methionine": "methionine", "met": "methionine",
    "nh3": "ammonia", "nh4": "ammonia", "nh4+": "ammonia", "ammonia": "ammonia", "ammonium": "ammonia",
    "phenylalanine": "phenylalanine", "phe": "phenylalanine",
    "proline": "proline", "pro": "proline",
    "serine": "serine", "ser": "serine",
    "threonine": "threonine", "thr": "threonine",
    "tryptophan": "tryptophan", "trp": "tryptophan",
    "tyrosine": "tyrosine", "tyr": "tyrosine",
    "valine": "valine", "val": "valine",
    "ethanolamine": "ethanolamine", "etn": "ethanolamine",
    "pyruvate": "pyruvate", "pyr": "pyruvate",
}

# Groups of the first header row (normalised) -> role.
_GROUPS = {
    "experiment data": "experiment",
    "feed volume": "feed",
    "concentration before feeding": "pre",
    "concentration after feeding": "post",
    "calculated cumulative concentration": "cumulative",
}

# Experiment-data columns: role -> normalised header prefixes (the part before the unit in parentheses).
_EXPERIMENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "date": ("date", "timestamp", "date time", "datetime"),
    "cell_line": ("cell line",),
    "id": ("id", "run id", "run"),
    "name": ("name",),
    "initial_volume": ("initial volume",),
    "sample_number": ("sample #", "sample number", "sample no"),
    "sample_volume": ("sample volume",),
    "volume_before": ("volume before sampling",),
    "volume_after": ("volume after sampling",),
    "base": ("base added",),
    "vcd": ("viable cell concentration", "viable cell density", "vcd"),
    "dead": ("dead cell concentration", "dead cell density"),
    "total": ("total cell concentration", "total cell density"),
    "igg": ("igg", "titer", "titre", "product"),
}
_REQUIRED_EXPERIMENT: dict[str, str] = {  # role -> the header CDPpy writes
    "date": "Date (MM/DD/YY H:MM:SS AM/PM)", "cell_line": "Cell Line", "id": "ID",
    "initial_volume": "Initial Volume (mL)", "vcd": "Viable Cell Concentration (10^6 cells/mL)",
}

_TIMESTAMP_FORMATS = (
    "%m/%d/%y %I:%M:%S %p", "%m/%d/%Y %I:%M:%S %p", "%m/%d/%y %I:%M %p", "%m/%d/%Y %I:%M %p",
    "%m/%d/%y %H:%M:%S", "%m/%d/%Y %H:%M:%S", "%m/%d/%y %H:%M", "%m/%d/%Y %H:%M",
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M",
)


# ------------------------------------------------------------------------------------------------ small helpers
def _norm(text: Any) -> str:
    return re.sub(r"\s+", " ", str(text if text is not None else "")).strip().lower()


def _split_unit(header: Any) -> tuple[str, str | None]:
    """``'Alanine (mM)'`` -> ``('alanine', 'mM')``; ``'F01'`` -> ``('f01', None)``."""
    text = re.sub(r"\s+", " ", str(header)).strip()
    match = re.match(r"^(.*?)\s*\(([^()]*)\)\s*$", text)
    if match:
        return match.group(1).strip().lower(), _unit(match.group(2))
    return text.lower(), None


def _unit(text: str) -> str:
    unit = text.strip()
    unit = re.sub(r"^10\s*\^\s*(\d+)\s*", r"1e\1 ", unit)  # "10^6 cells/mL" -> "1e6 cells/mL"
    return re.sub(r"\s+", " ", unit)


def _compact(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "", str(name))


def _trailing_number(name: str) -> int | None:
    match = re.search(r"(\d+)\s*$", str(name))
    return int(match.group(1)) if match else None


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _run_id(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _sort_key(batch: str) -> tuple[int, float, str]:
    try:
        return (0, float(batch), batch)
    except ValueError:
        return (1, 0.0, batch)


def _col(index: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(index + 1)


def _iso(ts: _dt.datetime) -> str:
    return ts.isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------ reading
def _open_workbook(path: str | os.PathLike, file: str):
    import openpyxl

    if not os.path.exists(path):
        raise CampaignValidationError([Problem(file=file, message="file not found")])
    if os.path.isdir(path):
        raise CampaignValidationError([Problem(file=file, message="is a folder, expected a CDPpy .xlsx workbook")])
    if not zipfile.is_zipfile(path):
        raise CampaignValidationError([Problem(
            file=file, message="not an Excel .xlsx workbook (expected a CDPpy input workbook)")])
    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as err:  # openpyxl raises several types for damaged or foreign zip files
        raise CampaignValidationError([Problem(
            file=file, message=f"cannot be read as an .xlsx workbook ({type(err).__name__}: {err})")]) from err


def _sheet_rows(workbook, name: str) -> list[tuple[Any, ...]]:
    rows = [tuple(row) for row in workbook[name].iter_rows(values_only=True)]
    while rows and all(_is_blank(v) for v in rows[-1]):
        rows.pop()
    return rows


def _parse_timestamp(value: Any) -> _dt.datetime | None:
    """A wall-clock timestamp from a cell: a datetime, an Excel serial number or a string; None if unparseable."""
    if isinstance(value, _dt.datetime):
        ts = value
    elif isinstance(value, _dt.date):
        ts = _dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        from openpyxl.utils.datetime import from_excel

        ts = from_excel(value)
        if not isinstance(ts, _dt.datetime):
            return None
    elif isinstance(value, str):
        text = re.sub(r"\s+", " ", value.strip())
        ts = None
        for fmt in _TIMESTAMP_FORMATS:
            try:
                ts = _dt.datetime.strptime(text, fmt)
                break
            except ValueError:
                continue
        if ts is None:
            return None
    else:
        return None
    # Excel stores times as fractions of a day (e.g. 19:57:58.99); keep whole seconds.
    ts = ts.replace(tzinfo=None)
    rounded = ts.replace(microsecond=0)
    if ts.microsecond >= 500_000:
        rounded += _dt.timedelta(seconds=1)
    return rounded


def _number(value: Any, file: str, row: int, column: str, batch: str | None,
            problems: ProblemCollector) -> float | None:
    """A cell as a float; None for a blank cell; a problem for text that is not a number."""
    if _is_blank(value):
        return None
    if isinstance(value, bool):
        problems.add(file, f"expected a number, got {value!r}", row=row, batch=batch, column=column)
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            problems.add(file, f"expected a number, got {value!r}", row=row, batch=batch, column=column)
            return None
    if not math.isfinite(number):
        problems.add(file, f"expected a finite number, got {value!r}", row=row, batch=batch, column=column)
        return None
    return number


class _Layout:
    """Where things are on the ``Measured Data`` sheet (0-based column indices)."""

    def __init__(self) -> None:
        self.experiment: dict[str, int] = {}
        self.units: dict[str, str | None] = {}
        self.feeds: list[tuple[int, str]] = []  # (column, header as written)
        self.feed_unit: str | None = None  # from the group header 'Feed Volume (mL)'
        self.cumulative: list[tuple[int, str]] = []  # (column, header): derived, not imported
        self.pre: list[tuple[int, str, str, str]] = []  # (column, header, variable, unit)
        self.post: list[tuple[int, str, str, str]] = []
        self.unknown_analytes: dict[str, tuple[str, str]] = {}  # variable -> (header, unit)
        self.ignored: list[str] = []


def _layout(rows: list[tuple[Any, ...]], file: str, problems: ProblemCollector) -> _Layout:
    layout = _Layout()
    if len(rows) < 2:
        problems.add(file, f"sheet {MEASURED_SHEET!r} needs two header rows (groups, columns) and data rows",
                     row=1)
        return layout
    groups, headers = rows[0], rows[1]
    width = max(len(groups), len(headers))
    group = None
    seen_groups = set()
    for index in range(width):
        raw_group = groups[index] if index < len(groups) else None
        if not _is_blank(raw_group):
            key, group_unit = _split_unit(raw_group)
            group = _GROUPS.get(_norm(key), "unknown")
            if group == "feed":
                layout.feed_unit = group_unit
            seen_groups.add(group)
            if group == "unknown":
                layout.ignored.append(f"column group {raw_group!r} (from column {_col(index)})")
        header = headers[index] if index < len(headers) else None
        if _is_blank(header):
            continue
        name, unit = _split_unit(header)
        if group == "experiment":
            role = next((r for r, prefixes in _EXPERIMENT_COLUMNS.items()
                         if any(name == p or name.startswith(p + " ") for p in prefixes)), None)
            if role is None or role in layout.experiment:
                layout.ignored.append(f"column {_col(index)} {str(header).strip()!r}")
                continue
            layout.experiment[role] = index
            layout.units[role] = unit
        elif group == "feed":
            layout.feeds.append((index, str(header).strip()))
        elif group in ("pre", "post"):
            variable = ANALYTE_NAMES.get(name)
            if unit is None:
                problems.add(file, f"analyte column {str(header).strip()!r} states no unit, expected e.g. "
                                   f"'{str(header).strip()} (mM)'", row=2, column=_col(index))
                continue
            if variable is None:
                variable = re.sub(r"[^0-9a-z]+", "_", name).strip("_")
                layout.unknown_analytes.setdefault(variable, (str(header).strip(), unit))
            target = layout.pre if group == "pre" else layout.post
            if any(v == variable for _i, _h, v, _u in target):
                problems.add(file, f"analyte {variable!r} appears twice in the group of column {_col(index)}",
                             row=2, column=_col(index))
                continue
            target.append((index, str(header).strip(), variable, unit))
        elif group == "cumulative":
            layout.cumulative.append((index, str(header).strip()))
        elif group is None:
            layout.ignored.append(f"column {_col(index)} {str(header).strip()!r} (no column group)")
    if "experiment" not in seen_groups:
        problems.add(file, f"sheet {MEASURED_SHEET!r}: no 'Experiment Data' column group in header row 1", row=1)
    for role, wanted in _REQUIRED_EXPERIMENT.items():
        if role not in layout.experiment:
            problems.add(file, f"sheet {MEASURED_SHEET!r}: missing column {wanted!r} under 'Experiment Data' "
                               f"(header row 2)", row=2, column=wanted)
    return layout


# ------------------------------------------------------------------------------------------------ feed media
def _feed_compositions(rows: list[tuple[Any, ...]], file: str, problems: ProblemCollector):
    """Parses ``Feed Concentration``: returns ``{(cell_line, run, feed_name): {species: (value, unit)}}`` (ordered)."""
    compositions: dict[tuple[str, str, str], dict[str, tuple[float, str]]] = {}
    if len(rows) < 3:
        problems.add(file, f"sheet {FEED_SHEET!r} needs rows 'Cell Line', 'ID' and 'Feed Name'", row=1)
        return compositions, {}
    labels = [_norm(r[0] if r else None) for r in rows[:3]]
    if not (labels[0].startswith("cell line") and labels[1] in ("id", "run id") and labels[2].startswith("feed")):
        problems.add(file, f"sheet {FEED_SHEET!r}: rows 1-3 must be labelled 'Cell Line', 'ID', 'Feed Name' in "
                           f"column A, got {[r[0] if r else None for r in rows[:3]]!r}", row=1, column="A")
        return compositions, {}
    width = max(len(r) for r in rows[:3])
    columns = {}
    for j in range(1, width):
        cell_line, run, feed = (rows[i][j] if j < len(rows[i]) else None for i in range(3))
        if all(_is_blank(v) for v in (cell_line, run, feed)):
            continue
        if any(_is_blank(v) for v in (cell_line, run, feed)):
            problems.add(file, f"sheet {FEED_SHEET!r}: column {_col(j)} needs a cell line, an ID and a feed name",
                         row=1, column=_col(j))
            continue
        key = (str(cell_line).strip(), _run_id(run), str(feed).strip())
        compositions[key] = {}
        columns[key] = _col(j)
    for i, row in enumerate(rows[3:], start=4):
        if not row or _is_blank(row[0]):
            continue
        name, unit = _split_unit(row[0])
        species = ANALYTE_NAMES.get(name) or re.sub(r"[^0-9a-z]+", "_", name).strip("_")
        for key in compositions:
            j = _column_index(columns[key])
            value = row[j] if j < len(row) else None
            number = _number(value, file, i, columns[key], key[1], problems)
            if number is None:
                continue
            if unit is None:
                problems.add(file, f"sheet {FEED_SHEET!r}: species {row[0]!r} states no unit", row=i, column="A")
                continue
            if number < 0:
                problems.add(file, f"sheet {FEED_SHEET!r}: negative concentration {number!r}", row=i,
                             column=columns[key], batch=key[1])
                continue
            compositions[key][species] = (number, unit)
    return compositions, columns


def _column_index(letters: str) -> int:
    from openpyxl.utils import column_index_from_string

    return column_index_from_string(letters) - 1


def _match_feed(header: str, candidates: Sequence[str]) -> tuple[str | None, str]:
    """The composition-sheet feed name for a ``Feed Volume`` column header of a run: exact, else by feed number."""
    for candidate in candidates:
        if _compact(candidate).lower() == _compact(header).lower():
            return candidate, "name"
    number = _trailing_number(header)
    if number is not None:
        matches = [c for c in candidates if _trailing_number(c) == number]
        if len(matches) == 1:
            return matches[0], "number"
    return None, ""


def _after_feed_check(batch: str, records: list[dict[str, Any]], feed_medium: dict[str, str],
                      composition: dict[str, dict[str, float]], start: _dt.datetime,
                      initial_volume: float) -> list[str]:
    """Compares recorded feed compositions with the jump between before- and after-feed values.

    At a sample where every medium added has a recorded composition, species absent from all of them only dilute:
    their after/before ratio is V/(V+F), which gives the culture volume V. A species in exactly one of the media then
    implies that medium's concentration, c = (post*(V+F) - pre*V) / F_medium. Mismatches over 5 % are returned as
    text (the composition is imported as recorded, not corrected), as are implied volumes more than 1 % off the
    sheet's own bookkeeping (initial volume - samples + feeds + base).
    """
    findings = []
    booked = initial_volume
    for r in records:
        booked -= r["sample_volume"] or 0.0
        added = {feed_medium[h]: v for h, (_i, v, _p) in r["feeds"].items() if v and h in feed_medium}
        booked_here = booked
        booked += sum(v for (_i, v, _p) in r["feeds"].values() if v) + (r["base"] or 0.0)
        if not added or any(not composition.get(m) for m in added):
            continue
        pairs = {var: (pre, r["post"].get(var, (None, None))[0]) for var, (pre, _u) in r["pre"].items()}
        pairs = {k: v for k, v in pairs.items() if v[0] is not None and v[1] is not None and v[0] > 0}
        tracers = [post / pre for var, (pre, post) in pairs.items()
                   if all(composition[m].get(var, 0.0) == 0.0 for m in added)]
        if not tracers:
            continue
        tracers.sort()
        d = tracers[len(tracers) // 2]
        if not 0.0 < d < 1.0:
            continue
        total = sum(added.values())
        volume = total * d / (1.0 - d)
        t = (r["timestamp"] - start).total_seconds() / 3600.0
        if abs(volume - booked_here) > 0.01 * booked_here:
            findings.append(f"run {batch} at {t:.1f} h (row {r['row']}): the dilution of species absent from the "
                            f"feeds implies a culture volume of {volume:.1f} mL before the feed; the recorded "
                            f"samples and additions give {booked_here:.1f} mL")
        for var, (pre, post) in pairs.items():
            holders = [m for m in added if composition[m].get(var, 0.0) > 0.0]
            if len(holders) != 1:
                continue
            medium = holders[0]
            implied = (post * (volume + total) - pre * volume) / added[medium]
            recorded = composition[medium][var]
            if abs(implied - recorded) > 0.05 * recorded:
                findings.append(f"run {batch} at {t:.1f} h (row {r['row']}): {var} implies {implied:.4g} mM in "
                                f"{medium!r}, recorded {recorded:g} mM (culture volume implied by dilution "
                                f"{volume:.1f} mL)")
    return findings


# ------------------------------------------------------------------------------------------------ main
def read_cdppy(path: str | os.PathLike) -> CampaignTables:
    """Reads a CDPpy input workbook (sheets ``Measured Data`` and ``Feed Concentration``) into campaign tables.

    Units are those the workbook states: volumes in mL, cells in 1e6 cells/mL, IgG (``titer``) in mg/L,
    metabolites and amino acids in mM, viability as a fraction ("1") computed as viable / total cells. Times are
    hours since each batch's first sample (``time_h``); wall-clock timestamps are kept as ISO strings.

    Args:
        path: the ``.xlsx`` workbook.

    Returns:
        `CampaignTables` with ``batches`` (covariate ``cell_line``), ``measurements`` (``phase`` ``pre``/``post``),
        ``events`` (``sample``, feed ``bolus`` per feed column, base ``bolus`` of medium ``base``), ``media`` (from
        ``Feed Concentration``), ``notes`` (every import decision) and ``source`` (the path).

    Raises:
        CampaignValidationError: the file is missing, not a workbook, lacks the ``Measured Data`` sheet or its
            required columns, or holds cells that are not what their column needs (every problem listed, with
            1-based spreadsheet rows).
    """
    file = str(os.fspath(path))
    problems = ProblemCollector()
    workbook = _open_workbook(path, file)
    try:
        sheetnames = list(workbook.sheetnames)
        if MEASURED_SHEET not in sheetnames:
            raise CampaignValidationError([Problem(
                file=file, message=f"no sheet {MEASURED_SHEET!r} (sheets: {sheetnames}); not a CDPpy workbook")])
        measured = _sheet_rows(workbook, MEASURED_SHEET)
        feed_rows = _sheet_rows(workbook, FEED_SHEET) if FEED_SHEET in sheetnames else None
    finally:
        workbook.close()

    notes: list[str] = []
    layout = _layout(measured, file, problems)
    problems.raise_if_any(header=f"{file}: not a readable CDPpy workbook")
    for sheet in sheetnames:
        if sheet in IGNORED_SHEETS:
            notes.append(f"Sheet {sheet!r} (the original tool's smoothing settings) is ignored.")
        elif sheet not in (MEASURED_SHEET, FEED_SHEET):
            notes.append(f"Sheet {sheet!r} is not part of the CDPpy format and is ignored.")
    for item in layout.ignored:
        notes.append(f"Ignored {item} of sheet {MEASURED_SHEET!r}.")
    if "name" in layout.experiment:
        notes.append("Column 'Name' (anonymised placeholders such as 'XXX XXX') is not imported.")

    compositions, composition_columns = ({}, {})
    if feed_rows is None:
        notes.append(f"No sheet {FEED_SHEET!r}: feed media are imported without composition.")
    else:
        compositions, composition_columns = _feed_compositions(feed_rows, file, problems)

    # ---- data rows, grouped by run
    ex = layout.experiment
    runs: dict[str, list[dict[str, Any]]] = {}
    for row_number, row in enumerate(measured[2:], start=3):
        if all(_is_blank(v) for v in row):
            continue

        def cell(index: int | None, row=row) -> Any:
            return None if index is None or index >= len(row) else row[index]

        raw_id = cell(ex["id"])
        if _is_blank(raw_id):
            problems.add(file, "row has data but no run ID", row=row_number, column=_col(ex["id"]))
            continue
        batch = _run_id(raw_id)
        raw_ts = cell(ex["date"])
        timestamp = _parse_timestamp(raw_ts)
        if timestamp is None:
            problems.add(file, f"cannot read the timestamp {raw_ts!r} (expected a date-time cell or "
                               f"'MM/DD/YY H:MM:SS AM/PM')", row=row_number, batch=batch, column=_col(ex["date"]))
        cell_line = cell(ex["cell_line"])
        if _is_blank(cell_line):
            problems.add(file, "no cell line", row=row_number, batch=batch, column=_col(ex["cell_line"]))

        def num(role: str, row=row, row_number=row_number, batch=batch) -> float | None:
            index = ex.get(role)
            if index is None:
                return None
            return _number(cell(index, row), file, row_number, _col(index), batch, problems)

        record = {
            "row": row_number, "timestamp": timestamp,
            "cell_line": None if _is_blank(cell_line) else str(cell_line).strip(),
            **{role: num(role) for role in ("initial_volume", "sample_volume", "volume_before", "volume_after",
                                            "base", "vcd", "dead", "total", "igg", "sample_number")},
            "feeds": {header: (index, _number(cell(index), file, row_number, _col(index), batch, problems),
                               not _is_blank(cell(index)))
                      for index, header in layout.feeds},
            "pre": {variable: (_number(cell(index), file, row_number, _col(index), batch, problems), unit)
                    for index, _h, variable, unit in layout.pre},
            "post": {variable: (_number(cell(index), file, row_number, _col(index), batch, problems), unit)
                     for index, _h, variable, unit in layout.post},
        }
        for role in ("sample_volume", "base", "vcd", "dead", "total", "igg", "volume_before", "volume_after"):
            if record[role] is not None and record[role] < 0:
                problems.add(file, f"negative value {record[role]!r}", row=row_number, batch=batch,
                             column=_col(ex[role]))
        for index, value, _present in record["feeds"].values():
            if value is not None and value < 0:
                problems.add(file, f"negative feed volume {value!r}", row=row_number, batch=batch,
                             column=_col(index))
        record["cumulative"] = [header for index, header in layout.cumulative if not _is_blank(cell(index))]
        runs.setdefault(batch, []).append(record)

    if not runs and not problems:
        problems.add(file, f"sheet {MEASURED_SHEET!r} has no data rows", row=3)

    # ---- per-run consistency
    for batch, records in runs.items():
        lines = {r["cell_line"] for r in records if r["cell_line"] is not None}
        if len(lines) > 1:
            problems.add(file, f"run has several cell lines {sorted(lines)}", row=records[0]["row"], batch=batch,
                         column=_col(ex["cell_line"]))
        volumes = {r["initial_volume"] for r in records if r["initial_volume"] is not None}
        if not volumes:
            problems.add(file, "no initial volume", row=records[0]["row"], batch=batch,
                         column=_col(ex["initial_volume"]))
        elif len(volumes) > 1:
            problems.add(file, f"initial volume differs between rows of the run: {sorted(volumes)}",
                         row=records[0]["row"], batch=batch, column=_col(ex["initial_volume"]))
        stamps = [r["timestamp"] for r in records if r["timestamp"] is not None]
        if len(set(stamps)) != len(stamps):
            duplicated = sorted({s for s in stamps if stamps.count(s) > 1})
            problems.add(file, f"two samples of the run have the same timestamp {_iso(duplicated[0])}",
                         row=records[0]["row"], batch=batch, column=_col(ex["date"]))
    problems.raise_if_any(header=f"{file}: problems in the CDPpy workbook")

    volume_unit = layout.units.get("initial_volume") or "mL"

    # ---- media: one medium per (cell line, feed) if identical across the line's runs, else per run
    medium_names: dict[tuple[str, str, str], str] = {}
    by_line: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for key in compositions:
        by_line.setdefault((key[0], key[2]), []).append(key)
    media_rows: list[dict[str, Any]] = []
    for (cell_line, feed), keys in by_line.items():
        same = all(compositions[k] == compositions[keys[0]] for k in keys)
        for k in keys:
            medium_names[k] = f"{cell_line}_{_compact(feed)}" if same else f"{cell_line}_{k[1]}_{_compact(feed)}"
        groups_ = [keys] if same else [[k] for k in keys]
        for group_keys in groups_:
            name = medium_names[group_keys[0]]
            cols = ", ".join(composition_columns[k] for k in group_keys)
            runs_text = ", ".join(k[1] for k in group_keys)
            composition = compositions[group_keys[0]]
            if not composition:
                media_rows.append({"medium": name, "species": None, "concentration": math.nan, "unit": None,
                                   "inferred": False,
                                   "note": f"composition not recorded ({FEED_SHEET} {cell_line} {feed!r} blank)"})
                notes.append(f"Medium {name!r} ({cell_line} {feed!r}, runs {runs_text}): its composition is blank "
                             f"in sheet {FEED_SHEET!r} (columns {cols}); listed with no species (one row, species "
                             f"blank: composition unknown, not zero) - to be inferred from the after-feed "
                             f"measurements, not invented here.")
            for species, (value, unit) in composition.items():
                media_rows.append({"medium": name, "species": species, "concentration": value, "unit": unit,
                                   "inferred": False,
                                   "note": f"{FEED_SHEET} {cell_line} {feed!r}, runs {runs_text} (columns {cols})"})
    if compositions:
        notes.append(f"Media from sheet {FEED_SHEET!r}: named <cell line>_<feed name> (spaces dropped) where the "
                     f"runs of a cell line share the composition; blank composition cells are not imported (a "
                     f"species without a row is absent from the feed); explicit zeros are kept.")

    medium_composition: dict[str, dict[str, float]] = {}
    for m in media_rows:
        if m["species"] is not None:
            medium_composition.setdefault(m["medium"], {})[m["species"]] = m["concentration"]

    # ---- batches, measurements, events
    after_feed_findings: list[str] = []
    batch_rows, measurement_rows, event_rows = [], [], []
    dropped_zero: list[str] = []
    dropped_copies: dict[str, int] = {}
    volume_issues: list[str] = []
    feed_column_notes: set[str] = set()
    base_used = False
    unknown_feed_runs: list[str] = []
    unmatched_feeds: set[str] = set()

    for batch in sorted(runs, key=_sort_key):
        records = sorted(runs[batch], key=lambda r: r["timestamp"])
        if [r["row"] for r in records] != sorted(r["row"] for r in records):
            notes.append(f"Run {batch}: rows are not in time order in the sheet; sorted by timestamp.")
        start = records[0]["timestamp"]
        cell_line = next((r["cell_line"] for r in records if r["cell_line"]), None)
        initial_volume = next(r["initial_volume"] for r in records if r["initial_volume"] is not None)
        any_feed_cell = any(present for r in records for (_i, _v, present) in r["feeds"].values())
        feeds_known = bool(any_feed_cell)
        if not feeds_known:
            unknown_feed_runs.append(batch)
        batch_rows.append({
            "batch": batch, "cell_type": CELL_TYPE, "initial_volume": initial_volume, "volume_unit": volume_unit,
            "max_volume": math.nan, "initial_medium": None, "start_time": _iso(start), "feeds_known": feeds_known,
            "cell_line": cell_line,
        })

        # feed column -> medium name, for this run
        run_feeds = [k for k in compositions if k[1] == batch and k[0] == cell_line]
        feed_medium: dict[str, str] = {}
        for index, header in layout.feeds:
            used = any(r["feeds"][header][1] for r in records)
            if not used:
                continue
            match, how = _match_feed(header, [k[2] for k in run_feeds])
            if match is not None:
                key = next(k for k in run_feeds if k[2] == match)
                feed_medium[header] = medium_names[key]
                if how == "number":
                    feed_column_notes.add(
                        f"Run(s) of {cell_line}: volumes in Feed Volume column {_col(index)} {header!r} are taken "
                        f"as {match!r} of sheet {FEED_SHEET!r} (matched by feed number; no feed named {header!r} "
                        f"for this run) -> medium {medium_names[key]!r}.")
            else:
                name = f"{cell_line}_{_compact(header)}"
                feed_medium[header] = name
                unmatched_feeds.add(name)
                if not any(m["medium"] == name for m in media_rows):
                    media_rows.append({"medium": name, "species": None, "concentration": math.nan, "unit": None,
                                       "inferred": False, "note": "composition not recorded"})

        after_feed_findings.extend(_after_feed_check(batch, records, feed_medium, medium_composition, start,
                                                     initial_volume))

        # measurements
        run_measurements: list[dict[str, Any]] = []
        for r in records:
            t = (r["timestamp"] - start).total_seconds() / 3600.0
            stamp = _iso(r["timestamp"])

            def add(variable: str, value: float | None, unit: str, phase: str, t=t, stamp=stamp,
                    batch=batch, run_measurements=run_measurements) -> None:
                if value is None:
                    return
                run_measurements.append({"batch": batch, "time_h": t, "variable": variable, "value": value,
                                         "unit": unit, "phase": phase, "timestamp": stamp})

            cells_unit = layout.units.get("vcd") or "1e6 cells/mL"
            add("vcd", r["vcd"], cells_unit, "pre")
            add("dead_cells", r["dead"], layout.units.get("dead") or cells_unit, "pre")
            total = r["total"]
            if total is None and r["vcd"] is not None and r["dead"] is not None:
                total = r["vcd"] + r["dead"]
            if r["vcd"] is not None and total is not None and total > 0:
                add("viability", r["vcd"] / total, "1", "pre")
            add("titer", r["igg"], layout.units.get("igg") or "mg/L", "pre")
            add("volume", r["volume_before"], layout.units.get("volume_before") or volume_unit, "pre")
            for variable, (value, unit) in r["pre"].items():
                add(variable, value, unit, "pre")
            fed_here = any(v for (_i, v, _p) in r["feeds"].values())
            for variable, (value, unit) in r["post"].items():
                pre_value = r["pre"].get(variable, (None, None))[0]
                if value is not None and not fed_here and pre_value is not None and value == pre_value:
                    dropped_copies[batch] = dropped_copies.get(batch, 0) + 1
                    continue
                add(variable, value, unit, "post")

        # a variable that is exactly 0 at every sample of the run (per phase) is missing, not zero
        frame = pd.DataFrame(run_measurements)
        if not frame.empty:
            keep = pd.Series(True, index=frame.index)
            for (variable, phase), part in frame.groupby(["variable", "phase"], sort=False):
                if variable == "viability":
                    continue
                if (part["value"] == 0).all():
                    keep[part.index] = False
                    dropped_zero.append(f"{batch}:{variable}" + ("" if phase == "pre" else f"({phase})"))
            # viability from an all-zero (missing) dead-cell column would read 1: drop it too
            if any(item == f"{batch}:dead_cells" for item in dropped_zero) and "total" not in ex:
                keep[frame["variable"] == "viability"] = False
            measurement_rows.extend(frame[keep].to_dict("records"))

        # events: at one sample time the sample first, then feed boluses (column order), then base
        for r in records:
            t = (r["timestamp"] - start).total_seconds() / 3600.0
            stamp = _iso(r["timestamp"])
            if r["sample_volume"]:
                event_rows.append({"batch": batch, "time_h": t, "kind": "sample", "target": None,
                                   "amount": r["sample_volume"],
                                   "unit": layout.units.get("sample_volume") or volume_unit, "medium": None,
                                   "timestamp": stamp, "note": None})
            for index, header in layout.feeds:
                volume = r["feeds"][header][1]
                if volume:
                    event_rows.append({"batch": batch, "time_h": t, "kind": "bolus", "target": None,
                                       "amount": volume, "unit": layout.feed_unit or volume_unit,
                                       "medium": feed_medium[header],
                                       "timestamp": stamp,
                                       "note": f"Feed Volume column {_col(index)} {header!r}"})
            if r["base"]:
                base_used = True
                event_rows.append({"batch": batch, "time_h": t, "kind": "bolus", "target": None,
                                   "amount": r["base"], "unit": layout.units.get("base") or volume_unit,
                                   "medium": BASE_MEDIUM, "timestamp": stamp,
                                   "note": "base addition (pH control); volume only"})

        # volume bookkeeping check (where the sheet records volumes)
        expected = None
        mismatches = []
        same_before_after = 0
        for r in records:
            before, after, sample = r["volume_before"], r["volume_after"], r["sample_volume"] or 0.0
            if expected is not None and before is not None and abs(before - expected) > 1e-6 * max(1.0, before):
                mismatches.append(f"{r['row']}")
            if before is not None and after is not None and sample > 0 and after == before:
                same_before_after += 1
            if after is not None:
                expected = after + sum(v for (_i, v, _p) in r["feeds"].values() if v) + (r["base"] or 0.0)
            else:
                expected = None
        if same_before_after:
            volume_issues.append(
                f"run {batch}: 'Volume After Sampling' equals 'Volume Before Sampling' at {same_before_after} "
                f"samples although the sample volume is > 0")
        if mismatches:
            volume_issues.append(
                f"run {batch}: 'Volume Before Sampling' differs from the previous row's 'Volume After Sampling' "
                f"plus recorded additions at {len(mismatches)} samples (rows {', '.join(mismatches)})")

    filled: dict[str, list[str]] = {}
    for batch in sorted(runs, key=_sort_key):
        for header in dict.fromkeys(h for r in runs[batch] for h in r["cumulative"]):
            filled.setdefault(header, []).append(batch)
    if layout.cumulative:
        text = "; ".join(f"{header!r} filled for runs {', '.join(batches_)}" for header, batches_ in filled.items())
        notes.append("Columns 'Calculated Cumulative Concentration' (cumulative consumption) are derived by the "
                     "original tool, not measured: not imported" + (f" ({text})." if text else " (all blank)."))
    if unknown_feed_runs:
        notes.append(f"Runs {', '.join(unknown_feed_runs)}: every Feed Volume cell is blank -> feeds_known = False "
                     f"and no bolus events. The feeds are unknown, not absent (e.g. glucose rises between samples "
                     f"and the recorded volume grows); such a batch must not be simulated as unfed.")
    if "volume_before" in ex:
        notes.append("'Volume Before Sampling' is imported as measurement 'volume' (phase pre, mL) where given; "
                     "'Volume After Sampling' is not imported (it is the same quantity after the sample event, "
                     "which the events table already holds).")
    if volume_issues:
        notes.append("Volume bookkeeping in the sheet is inconsistent and is imported as recorded, not "
                     "corrected: " + "; ".join(volume_issues) + ".")
    for text in sorted(feed_column_notes):
        notes.append(text)
    for name in sorted(unmatched_feeds):
        notes.append(f"Medium {name!r}: feed volumes recorded but no matching feed in sheet {FEED_SHEET!r}; "
                     f"imported without composition.")
    if base_used:
        for species in BASE_FREE_OF:
            media_rows.append({"medium": BASE_MEDIUM, "species": species, "concentration": 0.0, "unit": "mM",
                               "inferred": True,
                               "note": "base for pH control ('Base Added'); composition not recorded; taken as "
                                       "free of metabolites (a volume-only addition)"})
        notes.append(f"'Base Added' (mL) is imported as a bolus of medium {BASE_MEDIUM!r} after the sample at that "
                     f"time. Its composition is not recorded; a pH titrant (carbonate/hydroxide) carries none of the "
                     f"measured metabolites, so {BASE_MEDIUM!r} is listed with {', '.join(BASE_FREE_OF)} at 0 mM, "
                     f"flagged inferred: a volume-only addition (dilution).")
    if dropped_zero:
        notes.append("Variables exactly 0 at every sample of a run are missing data, not zero; their rows are "
                     "dropped: " + ", ".join(dropped_zero) + ". Isolated zeros inside a run are kept as recorded "
                     "(e.g. depleted glutamine), as is IgG = 0 at inoculation.")
    if layout.post:
        post_runs = sorted({m["batch"] for m in measurement_rows if m["phase"] == "post"}, key=_sort_key)
        no_post = sorted((b for b in runs if b not in post_runs), key=_sort_key)
        notes.append("'Concentration After Feeding' is imported as phase 'post' (after the sample and all additions "
                     f"at that time); runs with post rows: {', '.join(post_runs) or 'none'}; runs whose after-feed "
                     f"cells are all blank (no post rows): {', '.join(no_post) or 'none'}.")
        if dropped_copies:
            notes.append("At samples without a feed, after-feed values identical to the before-feed value are "
                         "copies, not second measurements, and are dropped: " +
                         ", ".join(f"run {b}: {n}" for b, n in sorted(dropped_copies.items(),
                                                                      key=lambda kv: _sort_key(kv[0]))) + ".")
    if after_feed_findings:
        notes.append("The after-feed values disagree with the recorded feed compositions or volumes (imported as "
                     "recorded, not corrected; see docs/importers/cdppy.md): " + "; ".join(after_feed_findings) + ".")
    notes.append("Viability is not a column of the workbook: imported as viable / total cells (fraction). "
                 "Total cells are not imported (viable + dead).")
    notes.append("time_h = hours since each run's first sample (taken as inoculation); start_time is that "
                 "sample's wall-clock timestamp (time zone not recorded; rounded to the second, Excel stores "
                 "times as fractions of a day). max_volume and initial_medium are not recorded (blank).")
    notes.append("Sample volumes of 0 or blank produce no sample event; feed volumes of 0 or blank produce no "
                 "bolus.")

    measurements = pd.DataFrame(measurement_rows, columns=[*MEASUREMENT_COLUMNS, "phase", "timestamp"])
    if not measurements.empty:
        measurements["_phase"] = (measurements["phase"] == "post").astype(int)
        order = {b: i for i, b in enumerate(sorted(runs, key=_sort_key))}
        measurements["_batch"] = measurements["batch"].map(order)
        measurements = (measurements.sort_values(["_batch", "time_h", "_phase"], kind="stable")
                        .drop(columns=["_phase", "_batch"]).reset_index(drop=True))
    measurements["value"] = measurements["value"].astype(float)
    measurements["time_h"] = measurements["time_h"].astype(float)

    events = pd.DataFrame(event_rows, columns=[*EVENT_COLUMNS, "timestamp", "note"])
    events["amount"] = events["amount"].astype(float)
    events["time_h"] = events["time_h"].astype(float)

    batches = pd.DataFrame(batch_rows, columns=[*BATCH_COLUMNS, "max_volume", "initial_medium", "start_time",
                                                "feeds_known", "cell_line"])
    batches["feeds_known"] = batches["feeds_known"].astype(bool)
    batches["initial_volume"] = batches["initial_volume"].astype(float)
    batches["max_volume"] = batches["max_volume"].astype(float)

    media = pd.DataFrame(media_rows, columns=[*MEDIA_COLUMNS, "inferred", "note"])
    media["concentration"] = media["concentration"].astype(float)
    media["inferred"] = media["inferred"].astype(bool)

    variable_rows = [{"variable": variable, "unit": unit,
                      "description": f"{header} (CDPpy column not in the canonical list)"}
                     for variable, (header, unit) in layout.unknown_analytes.items()]
    variables = pd.DataFrame(variable_rows, columns=list(VARIABLE_COLUMNS))
    for variable, (header, _) in layout.unknown_analytes.items():
        notes.append(f"Analyte column {header!r} is not a canonical variable: imported as {variable!r} and "
                     f"declared in the variables table.")

    return CampaignTables(batches=batches, measurements=measurements, events=events, media=media,
                          variables=variables, notes=notes, source=file)
