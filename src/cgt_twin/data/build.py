"""From raw tables to a checked `Campaign`: every check of the campaign format, then conversion to canonical units.

`campaign_from_tables` is where bad input is stopped. It runs each check explicitly, collects every problem (file,
row, batch, column, what was expected) and raises one `CampaignValidationError`; only a fully valid campaign is
built, never a partial one.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
import xarray as xr

from .campaign import DIMS, PHASES, Campaign
from .errors import ProblemCollector
from .protocol import EventKind, Medium, Protocol, amount_unit
from .tables import BATCH_COLUMNS, FILE_NAMES, MEDIA_COLUMNS, VARIABLE_COLUMNS, CampaignTables
from .units import UnitConversionError, convert, parse_unit
from .variables import CANONICAL_VARIABLES, VariableSpec, lookup, suggest

__all__ = ["campaign_from_tables", "CELL_TYPES"]

CELL_TYPES: tuple[str, ...] = ("cho", "hek293", "tcell")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


def _blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    if value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, str) and value.strip() == ""


def _text(value) -> str:
    return "" if _blank(value) else str(value).strip()


def _number(value) -> float | None:
    """The value as a float, or None if it is not a number (blank counts as NaN)."""
    if _blank(value):
        return math.nan
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, str) and "_" in value:  # Python accepts "1_000"; a data file should not
        return None
    try:
        return float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, OverflowError):
        return None


class _Checker:
    """Holds the collector and the file labels while the tables are checked."""

    def __init__(self, tables: CampaignTables):
        self.tables = tables
        self.problems = ProblemCollector()
        source = str(tables.source or "")
        if source and os.path.isdir(source):  # a campaign folder: name its files
            self.file = {key: os.path.join(source, name) for key, name in FILE_NAMES.items()}
        elif source and source != "<memory>":  # an importer's source: name the table
            self.file = {key: f"{source} [{key} table]" for key in FILE_NAMES}
        else:
            self.file = dict(FILE_NAMES)

    def add(self, table: str, message: str, row: int | None = None, batch=None, column: str | None = None):
        self.problems.add(self.file[table], message, row=row, batch=batch, column=column)

    def columns(self, table: str, frame: pd.DataFrame, required: tuple[str, ...]) -> bool:
        if not isinstance(frame, pd.DataFrame):
            self.add(table, f"expected a table, got {type(frame).__name__}")
            return False
        names = [str(c).strip() for c in frame.columns]
        missing = [c for c in required if c not in names]
        if missing:
            self.add(table, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                            f"(required: {', '.join(required)})", row=1, column=missing[0])
            return False
        return True


def _rows(frame: pd.DataFrame):
    """(row number in the file, row as dict); the header is row 1, so the first data row is row 2."""
    frame = frame.rename(columns=lambda c: str(c).strip())
    for position, record in enumerate(frame.to_dict("records")):
        yield position + 2, record


def _declared_variables(check: _Checker, frame: pd.DataFrame) -> dict[str, VariableSpec]:
    declared: dict[str, VariableSpec] = {}
    if frame is None or len(frame) == 0:
        return declared
    if not check.columns("variables", frame, VARIABLE_COLUMNS[:2]):
        return declared
    for row, rec in _rows(frame):
        name, unit = _text(rec.get("variable")), _text(rec.get("unit"))
        if not _NAME.match(name):
            check.add("variables", f"variable name {name!r} must be lower-case letters, digits and '_' and start "
                                   "with a letter", row, column="variable")
            continue
        try:
            parse_unit(unit)
        except UnitConversionError as exc:
            check.add("variables", str(exc), row, column="unit")
            continue
        canonical = CANONICAL_VARIABLES.get(name)
        if canonical is not None:
            check.add("variables", f"{name!r} is a canonical variable (unit {canonical.unit}); do not declare it",
                      row, column="variable")
            continue
        if name in declared:
            check.add("variables", f"variable {name!r} declared twice", row, column="variable")
            continue
        declared[name] = VariableSpec(name, unit, _text(rec.get("description")) or name, lower=None, declared=True)
    return declared


def _known_names(declared: Mapping[str, VariableSpec]) -> list[str]:
    return [*CANONICAL_VARIABLES, *declared]


def _parse_bool(value) -> bool | None:
    if isinstance(value, bool | np.bool_):
        return bool(value)
    text = _text(value).lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def _parse_timestamp(value) -> pd.Timestamp | None:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    if stamp is pd.NaT or pd.isna(stamp):
        return None
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp


def _batches(check: _Checker, frame: pd.DataFrame, declared: Mapping[str, VariableSpec]) -> dict[str, dict]:
    batches: dict[str, dict] = {}
    if not check.columns("batches", frame, BATCH_COLUMNS):
        return batches
    standard = {*BATCH_COLUMNS, "max_volume", "initial_medium", "start_time", "feeds_known"}
    covariates = [str(c).strip() for c in frame.columns if str(c).strip() not in standard]
    reserved = {*DIMS, *CANONICAL_VARIABLES, *declared}
    for name in covariates:
        if name in reserved:
            what = "a dimension" if name in DIMS else "a variable"
            check.add("batches", f"covariate column {name!r} has the name of {what} of the campaign; rename it "
                                 f"(e.g. {name}_id)", row=1, column=name)
    covariates = [c for c in covariates if c not in reserved]
    for row, rec in _rows(frame):
        batch = _text(rec.get("batch"))
        if not batch:
            check.add("batches", "empty batch name", row, column="batch")
            continue
        if batch in batches:
            check.add("batches", f"batch {batch!r} listed twice (first in row {batches[batch]['row']})", row, batch,
                      "batch")
            continue
        info = {"row": row}
        cell_type = _text(rec.get("cell_type")).lower()
        if cell_type not in CELL_TYPES:
            check.add("batches", f"cell_type must be one of {', '.join(CELL_TYPES)}, got {rec.get('cell_type')!r}"
                      + suggest(cell_type, CELL_TYPES), row, batch, "cell_type")
        info["cell_type"] = cell_type
        unit = _text(rec.get("volume_unit"))
        factor = None
        try:
            factor = float(convert(1.0, unit, "L"))
        except UnitConversionError as exc:
            check.add("batches", f"volume_unit: {exc}; expected a volume unit such as mL or L", row, batch,
                      "volume_unit")
        for column in ("initial_volume", "max_volume"):
            raw = rec.get(column)
            value = _number(raw)
            if value is None or (column == "initial_volume" and not math.isfinite(value)) or \
                    (value is not None and math.isinf(value)):
                check.add("batches", f"{column} must be a finite number, got {raw!r}", row, batch, column)
                value = math.nan
            elif math.isfinite(value) and value <= 0:
                check.add("batches", f"{column} must be > 0, got {value:g}", row, batch, column)
            info[column] = value * factor if factor is not None else math.nan
        info["initial_medium"] = _text(rec.get("initial_medium")) or None
        start = rec.get("start_time")
        info["start_time"] = None
        if not _blank(start):
            stamp = _parse_timestamp(start)
            if stamp is None:
                check.add("batches", f"start_time {start!r} is not a date-time (expected ISO 8601, e.g. "
                                     "2024-05-18T09:30)", row, batch, "start_time")
            info["start_time"] = stamp
        known = rec.get("feeds_known")
        if _blank(known):
            info["feeds_known"] = True
        else:
            parsed = _parse_bool(known)
            if parsed is None:
                check.add("batches", f"feeds_known must be true or false, got {known!r}", row, batch, "feeds_known")
            info["feeds_known"] = bool(parsed) if parsed is not None else True
        info["covariates"] = {c: rec.get(c) for c in covariates}
        batches[batch] = info
    if not batches and not check.problems:
        check.add("batches", "the campaign is empty: no batches")
    return batches


def _media(check: _Checker, frame: pd.DataFrame, declared) -> dict[str, Medium]:
    if frame is None or (len(frame) == 0 and len(frame.columns) == 0):
        return {}
    if not check.columns("media", frame, MEDIA_COLUMNS):
        return {}
    concentrations: dict[str, dict[str, float]] = {}
    inferred: dict[str, set[str]] = {}
    notes: dict[str, str] = {}
    seen: dict[tuple[str, str], tuple[int, float]] = {}
    for row, rec in _rows(frame):
        name = _text(rec.get("medium"))
        if not name:
            check.add("media", "empty medium name", row, column="medium")
            continue
        concentrations.setdefault(name, {})
        inferred.setdefault(name, set())
        if _text(rec.get("note")):
            notes[name] = _text(rec.get("note"))
        species = _text(rec.get("species"))
        raw = rec.get("concentration")
        if not species and _blank(raw):
            continue  # a medium listed with no composition (recorded as unknown)
        spec = lookup(species, declared)
        if spec is None:
            check.add("media", f"unknown species {species!r}{suggest(species, _known_names(declared))}; declare it "
                               "in variables.csv if it is not a canonical variable", row, column="species")
            continue
        value = _number(raw)
        if value is None or not math.isfinite(value):
            check.add("media", f"concentration must be a finite number, got {raw!r}", row, column="concentration")
            continue
        try:
            value = float(convert(value, _text(rec.get("unit")), spec.unit, species))
        except UnitConversionError as exc:
            check.add("media", f"{exc}; expected a unit convertible to {spec.unit}", row, column="unit")
            continue
        if value < 0:
            check.add("media", f"negative concentration {value:g} {spec.unit} of {species}", row,
                      column="concentration")
            continue
        key = (name, species)
        if key in seen and not math.isclose(seen[key][1], value, rel_tol=1e-9, abs_tol=1e-12):
            check.add("media", f"{species} in medium {name!r} given twice with different values (row {seen[key][0]}: "
                               f"{seen[key][1]:g}, here: {value:g} {spec.unit})", row, column="concentration")
            continue
        seen[key] = (row, value)
        concentrations[name][species] = value
        if _parse_bool(rec.get("inferred")):
            inferred[name].add(species)
    return {name: Medium(name, concentrations[name], frozenset(inferred[name]), notes.get(name, ""))
            for name in concentrations}


def _time(check: _Checker, table: str, rec: dict, row: int, batch: str, batches, first_stamp) -> float | None:
    """Hours from inoculation from ``time_h`` or, failing that, ``timestamp`` (relative to the batch start)."""
    raw = rec.get("time_h")
    if not _blank(raw):
        value = _number(raw)
        if value is None or not math.isfinite(value):
            check.add(table, f"time_h must be a finite number of hours, got {raw!r}", row, batch, "time_h")
            return None
        return value
    stamp_raw = rec.get("timestamp")
    if _blank(stamp_raw):
        check.add(table, "no time: give time_h (hours from inoculation) or timestamp", row, batch, "time_h")
        return None
    stamp = _parse_timestamp(stamp_raw)
    if stamp is None:
        check.add(table, f"timestamp {stamp_raw!r} is not a date-time (expected ISO 8601)", row, batch, "timestamp")
        return None
    start = batches[batch]["start_time"] if batch in batches else None
    start = start if start is not None else first_stamp.get(batch)
    return (stamp - start).total_seconds() / 3600.0


def _first_timestamps(frames: list[pd.DataFrame]) -> dict[str, pd.Timestamp]:
    """The earliest timestamp of each batch over the tables (the batch start when batches.csv gives none)."""
    first: dict[str, pd.Timestamp] = {}
    for frame in frames:
        if frame is None or "timestamp" not in frame.columns or "batch" not in frame.columns:
            continue
        for batch, raw in zip(frame["batch"], frame["timestamp"], strict=True):
            stamp = None if _blank(raw) else _parse_timestamp(raw)
            if stamp is not None:
                key = _text(batch)
                first[key] = min(first.get(key, stamp), stamp)
    return first


def _measurements(check: _Checker, frame: pd.DataFrame, batches, declared, harvest, first_stamp):
    records = []
    if not check.columns("measurements", frame, ("batch", "variable", "value", "unit")):
        return records
    if "time_h" not in frame.columns and "timestamp" not in frame.columns:
        check.add("measurements", "missing column time_h (or timestamp)")
        return records
    known = _known_names(declared)
    for row, rec in _rows(frame):
        batch = _text(rec.get("batch"))
        if batch not in batches:
            check.add("measurements", f"unknown batch {batch!r} (not in batches.csv)" + suggest(batch, batches), row,
                      batch or None, "batch")
            continue
        time = _time(check, "measurements", rec, row, batch, batches, first_stamp)
        variable = _text(rec.get("variable"))
        spec = lookup(variable, declared)
        if spec is None:
            check.add("measurements", f"unknown variable {variable!r}{suggest(variable, known)}; declare it in "
                                      "variables.csv if it is not a canonical variable", row, batch, "variable")
            continue
        raw, unit = rec.get("value"), _text(rec.get("unit"))
        value = _number(raw)
        if value is None or not math.isfinite(value):
            check.add("measurements", f"{variable}: value must be a finite number, got {raw!r}", row, batch, "value")
            continue
        try:
            value = float(convert(value, unit, spec.unit, variable))
        except UnitConversionError as exc:
            check.add("measurements", f"{variable}: {exc}; expected a unit convertible to {spec.unit}", row, batch,
                      "unit")
            continue
        phase = _text(rec.get("phase")).lower() or "pre"
        if phase not in PHASES:
            check.add("measurements", f"phase must be 'pre' or 'post', got {rec.get('phase')!r}", row, batch, "phase")
            continue
        flag = _text(rec.get("censored"))
        if flag not in ("", "<", ">"):
            check.add("measurements", f"censored must be '<' (below the limit given as value), '>' or empty, got "
                                      f"{flag!r}", row, batch, "censored")
            continue
        replicate_raw = rec.get("replicate")
        replicate = 0
        if not _blank(replicate_raw):
            number = _number(replicate_raw)
            if number is None or not math.isfinite(number) or number < 0 or number != int(number):
                check.add("measurements", f"replicate must be a whole number >= 0, got {replicate_raw!r}", row, batch,
                          "replicate")
                continue
            replicate = int(number)
        if spec.lower is not None and value < spec.lower:
            what = "negative" if spec.lower == 0 else f"below {spec.lower:g}"
            check.add("measurements", f"{variable}: {what} value {value:g} {spec.unit}", row, batch, "value")
            continue
        if spec.upper is not None and value > spec.upper:
            check.add("measurements", f"{variable}: value {value:g} {spec.unit} above {spec.upper:g} (a fraction "
                                      "must lie in 0..1; give percentages with unit %)", row, batch, "value")
            continue
        if time is None:
            continue
        if time < 0:
            check.add("measurements", f"time {time:g} h is before inoculation (0 h)", row, batch, "time_h")
            continue
        if harvest.get(batch) is not None and time > harvest[batch] + 1e-9:
            check.add("measurements", f"time {time:g} h is after the harvest at {harvest[batch]:g} h", row, batch,
                      "time_h")
            continue
        if variable == "volume" and batches[batch]["max_volume"] is not None and \
                math.isfinite(batches[batch]["max_volume"]) and value > batches[batch]["max_volume"] * (1 + 1e-9):
            check.add("measurements", f"measured volume {value:g} L above max_volume "
                                      f"{batches[batch]['max_volume']:g} L", row, batch, "value")
            continue
        records.append((row, batch, time, variable, phase, replicate, value, -1 if flag == "<" else int(flag == ">")))
    seen: dict[tuple, tuple[int, float, int]] = {}
    unique = []
    for row, batch, time, variable, phase, replicate, value, flag in records:
        key = (batch, time, variable, phase, replicate)
        if key in seen:
            first_row, first_value, first_flag = seen[key]
            if not (math.isclose(first_value, value, rel_tol=1e-9, abs_tol=1e-12) and first_flag == flag):
                check.add("measurements", f"{variable} at {time:g} h ({phase}) given twice with different values "
                                          f"(row {first_row}: {first_value:g}, here: {value:g}); number repeated "
                                          "measurements in a 'replicate' column", row, batch, "value")
            continue
        seen[key] = (row, value, flag)
        unique.append((batch, time, variable, phase, replicate, value, flag))
    return unique


def _events(check: _Checker, frame: pd.DataFrame, batches, media, declared, first_stamp):
    events: dict[str, list] = {b: [] for b in batches}
    if frame is None or (len(frame) == 0 and len(frame.columns) == 0):
        return events
    if not check.columns("events", frame, ("batch", "kind", "amount", "unit")):
        return events
    if "time_h" not in frame.columns and "timestamp" not in frame.columns:
        check.add("events", "missing column time_h (or timestamp)")
        return events
    from .protocol import Event

    kinds = [k.value for k in EventKind]
    for row, rec in _rows(frame):
        batch = _text(rec.get("batch"))
        if batch not in batches:
            check.add("events", f"event for unknown batch {batch!r}" + suggest(batch, batches), row, batch or None,
                      "batch")
            continue
        time = _time(check, "events", rec, row, batch, batches, first_stamp)
        kind_text = _text(rec.get("kind")).lower()
        if kind_text not in kinds:
            check.add("events", f"unknown event kind {rec.get('kind')!r}{suggest(kind_text, kinds)} (known: "
                                f"{', '.join(kinds)})", row, batch, "kind")
            continue
        kind = EventKind(kind_text)
        target = _text(rec.get("target")) or None
        medium = _text(rec.get("medium")) or None
        if medium is not None and medium not in media:
            check.add("events", f"unknown medium {medium!r} (not in media.csv){suggest(medium, media)}", row, batch,
                      "medium")
            continue
        if kind is EventKind.BOLUS and target not in (None, "medium", "volume") and lookup(target, declared) is None:
            check.add("events", f"bolus of unknown species {target!r}{suggest(target, _known_names(declared))}", row,
                      batch, "target")
            continue
        raw, unit = rec.get("amount"), _text(rec.get("unit"))
        amount = _number(raw)
        if amount is None or math.isinf(amount):
            check.add("events", f"{kind.value}: amount must be a finite number, got {raw!r}", row, batch, "amount")
            continue
        canonical = amount_unit(kind, target, unit or None, declared)
        if canonical is None:
            if kind is EventKind.SETPOINT:
                check.add("events", f"set-point target must be temperature, ph or do, got {target!r}", row, batch,
                          "target")
            else:
                check.add("events", f"{kind.value}: unknown target {target!r}", row, batch, "target")
            continue
        if math.isfinite(amount):
            if amount < 0:
                check.add("events", f"{kind.value}: negative amount {amount:g} {unit}", row, batch, "amount")
                continue
            try:
                amount = float(convert(amount, unit or "1", canonical, target))
            except UnitConversionError as exc:
                check.add("events", f"{kind.value}: {exc}; expected a unit convertible to {canonical}", row, batch,
                          "unit")
                continue
        elif kind not in (EventKind.HARVEST, EventKind.TRANSFECTION):
            check.add("events", f"{kind.value}: needs an amount", row, batch, "amount")
            continue
        if time is None:
            continue
        if time < 0:
            check.add("events", f"time {time:g} h is before inoculation (0 h)", row, batch, "time_h")
            continue
        events[batch].append((row, Event(time, kind, amount, canonical, target, medium, _text(rec.get("note")))))
    return events


def _harvest_times(events: Mapping[str, list]) -> dict[str, float | None]:
    harvest = {}
    for batch, items in events.items():
        times = [e.time_h for _, e in items if e.kind is EventKind.HARVEST]
        harvest[batch] = min(times) if times else None
    return harvest


def _covariate_values(values: list):
    numbers = [_number(v) for v in values]
    if all(n is not None for n in numbers) and not all(_blank(v) for v in values):
        return np.asarray(numbers, dtype=np.float64)
    bools = [v if isinstance(v, bool | np.bool_) else None for v in values]
    if all(b is not None for b in bools):
        return np.asarray(bools, dtype=bool)
    return np.asarray([_text(v) for v in values], dtype=object)


def campaign_from_tables(tables: CampaignTables) -> Campaign:
    """Checks raw campaign tables and builds a `Campaign` in canonical units.

    Raises:
        CampaignValidationError: with every problem found (file, row, batch, column, what was expected).
    """
    check = _Checker(tables)
    declared = _declared_variables(check, tables.variables)
    batches = _batches(check, tables.batches, declared)
    media = _media(check, tables.media, declared)
    first_stamp = _first_timestamps([tables.measurements, tables.events])
    events = _events(check, tables.events, batches, media, declared, first_stamp) if batches else {}
    harvest = _harvest_times(events)
    for batch, info in batches.items():
        if info["initial_medium"] is not None and info["initial_medium"] not in media:
            check.add("batches", f"initial_medium {info['initial_medium']!r} is not in media.csv"
                      + suggest(info["initial_medium"], media), info["row"], batch, "initial_medium")
    measurements = _measurements(check, tables.measurements, batches, declared, harvest, first_stamp) \
        if batches else []
    if batches and not measurements and not check.problems:
        check.add("measurements", "the campaign is empty: no measurements")
    protocols: dict[str, Protocol] = {}
    for batch, info in batches.items():
        volume_valid = math.isfinite(info["initial_volume"]) and info["initial_volume"] > 0
        ordered = sorted(events[batch], key=lambda item: item[1].sort_key)  # the order Protocol keeps
        max_volume = info["max_volume"] if math.isfinite(info["max_volume"]) else None
        protocol, problems = Protocol.checked(
            file=check.file["events"], batch=batch, event_rows=[row for row, _ in ordered],
            batch_file=check.file["batches"], batch_row=info["row"], initial_volume=info["initial_volume"],
            events=tuple(e for _, e in ordered), media=media, max_volume=max_volume,
            initial_medium=info["initial_medium"] if info["initial_medium"] in media else None,
            feeds_known=info["feeds_known"], declared=declared)
        if not volume_valid:  # the volume itself is already reported against batches.csv; its events are checked
            problems = [p for p in problems if not (p.column == "initial_volume" and p.row == info["row"])]
        if protocol is None:
            check.problems.extend(problems)
        else:
            protocols[batch] = protocol
    check.problems.raise_if_any(header=f"invalid campaign {tables.source}")
    return _assemble(tables, batches, measurements, protocols, media, declared)


def _assemble(tables, batches, measurements, protocols, media, declared) -> Campaign:
    names = list(batches)
    times = np.unique(np.asarray([m[1] for m in measurements], dtype=np.float64))
    n_rep = 1 + max((m[4] for m in measurements), default=0)
    variables = sorted({m[2] for m in measurements}, key=lambda v: (list(CANONICAL_VARIABLES).index(v)
                                                                    if v in CANONICAL_VARIABLES else 10_000, v))
    shape = (len(names), len(times), len(PHASES), n_rep)
    values = {v: np.full(shape, np.nan) for v in variables}
    flags = {v: np.zeros(shape, dtype=np.int8) for v in variables}
    b_index = {b: i for i, b in enumerate(names)}
    t_index = {t: i for i, t in enumerate(times.tolist())}
    p_index = {p: i for i, p in enumerate(PHASES)}
    for batch, time, variable, phase, replicate, value, flag in measurements:
        at = (b_index[batch], t_index[time], p_index[phase], replicate)
        values[variable][at] = value
        flags[variable][at] = flag
    coords = {"batch": np.asarray(names, dtype=object), "time": times, "phase": list(PHASES),
              "replicate": np.arange(n_rep)}
    data = xr.Dataset({v: (DIMS, values[v], {"units": lookup(v, declared).unit,
                                             "long_name": lookup(v, declared).description}) for v in variables},
                      coords=coords)
    censored = xr.Dataset({v: (DIMS, flags[v]) for v in variables}, coords=coords)
    data["time"].attrs = {"units": "h", "long_name": "time from inoculation"}
    meta = {
        "cell_type": np.asarray([batches[b]["cell_type"] for b in names], dtype=object),
        "initial_volume": np.asarray([batches[b]["initial_volume"] for b in names], dtype=np.float64),
        "max_volume": np.asarray([batches[b]["max_volume"] for b in names], dtype=np.float64),
        "initial_medium": np.asarray([batches[b]["initial_medium"] or "" for b in names], dtype=object),
        "start_time": np.asarray([batches[b]["start_time"].isoformat() if batches[b]["start_time"] is not None
                                  else "" for b in names], dtype=object),
        "feeds_known": np.asarray([batches[b]["feeds_known"] for b in names], dtype=bool),
    }
    covariate_names = list(next(iter(batches.values()))["covariates"]) if batches else []
    for name in covariate_names:
        meta[name] = _covariate_values([batches[b]["covariates"][name] for b in names])
    for name, array in meta.items():
        data.coords[name] = ("batch", array)
        censored.coords[name] = ("batch", array)
    data.coords["initial_volume"].attrs["units"] = "L"
    data.coords["max_volume"].attrs["units"] = "L"
    return Campaign(data, censored, protocols, media, declared, tables.notes, tables.source)
