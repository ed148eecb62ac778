"""Property-based tests of the campaign folder reader: malformed campaigns fail only with `CampaignValidationError`.

Hypothesis generates small valid campaigns (1-3 batches, measurements of canonical variables in convertible units,
samples / boluses / feeds / set-points / harvests), writes them as a folder and then

- plants 1-3 defects from a catalogue, each on a row of its own, and checks that the reader raises
  `CampaignValidationError` (nothing else) naming every defect: file, row and an identifier (the bad name, unit,
  value ...);
- throws junk at it (random text or bytes for whole CSV files, random column names, random cell values) and checks
  that it either reads or raises `CampaignValidationError`, never another exception;
- checks that a valid campaign round-trips: `write_campaign` then `read_campaign` gives the same long table.

Each test makes its own temporary folder (the function-scoped ``tmp_path`` fixture does not reset between
hypothesis examples).

Any exception other than `CampaignValidationError` fails these properties.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from cgt_twin.data import (
    CANONICAL_VARIABLES,
    CELL_TYPES,
    CampaignValidationError,
    EventKind,
    read_campaign,
    write_campaign,
)
from cgt_twin.data.units import UnitConversionError, convert

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MEASUREMENT_HEADER = ("batch", "time_h", "variable", "value", "unit", "phase", "censored", "timestamp")
EVENT_HEADER = ("batch", "time_h", "kind", "target", "amount", "unit", "medium")
BATCH_HEADER = ("batch", "cell_type", "initial_volume", "volume_unit", "max_volume", "initial_medium", "start_time",
                "clone")
MEDIA_HEADER = ("medium", "species", "concentration", "unit")
FILES = {"batches": "batches.csv", "measurements": "measurements.csv", "events": "events.csv", "media": "media.csv"}

# variable -> [(unit, smallest, largest)] in that unit; all of them convert to the canonical unit
VARIABLES: dict[str, list[tuple[str, float, float]]] = {
    "vcd": [("1e6 cells/mL", 0.0, 40.0), ("cells/mL", 0.0, 4e7)],
    "glucose": [("mM", 0.0, 60.0), ("g/L", 0.0, 10.0)],
    "lactate": [("mM", 0.0, 40.0)],
    "titer": [("mg/L", 0.0, 5000.0), ("g/L", 0.0, 5.0)],
    "viability": [("%", 0.0, 100.0), ("1", 0.0, 1.0)],
    "ammonia": [("mM", 0.0, 10.0)],
    "temperature": [("degC", 30.0, 38.0)],
    "ph": [("pH", 6.5, 7.6)],
}
TIMES = (0.0, 6.0, 12.5, 24.0, 36.0, 48.0, 71.25)
HARVEST_TIME = 100.0  # after every generated time
MEDIA_ROWS = [
    {"medium": "basal", "species": "glucose", "concentration": "30.0", "unit": "mM"},
    {"medium": "basal", "species": "glutamine", "concentration": "4.0", "unit": "mM"},
    {"medium": "feed_a", "species": "glucose", "concentration": "550.0", "unit": "mM"},
    # the same glucose again in g/L: duplicates that agree are accepted
    {"medium": "feed_a", "species": "glucose", "concentration": repr(550.0 * 180.16 / 1000.0), "unit": "g/L"},
]


def _raises_unit_error(unit: str, target: str, species: str | None) -> bool:
    try:
        convert(1.0, unit, target, species)
    except UnitConversionError:
        return True
    except Exception:  # a known crash (ZeroDivisionError / OverflowError): not a safe "bad unit" for the catalogue
        return False
    return False


_UNIT_POOL = ("L", "h", "vg/mL", "cells", "cells/mL", "degC", "mM", "mg/L", "g/L", "pH", "1/h", "m**2", "IU/mL",
              "bogus_unit", "mM)", "{", "0 mM", "nan mM", "1e-400 mM", "furlong/fortnight", "mL/h")
BAD_UNITS: dict[str, list[str]] = {
    name: [u for u in _UNIT_POOL if _raises_unit_error(u, CANONICAL_VARIABLES[name].unit, name)] for name in VARIABLES}
BAD_VOLUME_UNITS = [u for u in _UNIT_POOL if _raises_unit_error(u, "L", None)]
assert all(len(units) >= 3 for units in BAD_UNITS.values()) and len(BAD_VOLUME_UNITS) >= 3

WORD = st.from_regex(r"[a-z][a-z0-9_]{2,10}", fullmatch=True)
KNOWN_NAMES = {*CANONICAL_VARIABLES, *(k.value for k in EventKind), *CELL_TYPES, "basal", "feed_a"}


def _fmt(value: float) -> str:
    return repr(float(value))


# -- valid campaigns ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Tables:
    """A campaign as rows of text (as a spreadsheet holds it), plus bookkeeping for planting defects."""

    batches: list[dict[str, str]]
    measurements: list[dict[str, str]]
    events: list[dict[str, str]]
    media: list[dict[str, str]]
    touched: dict[str, set[int]] = dataclasses.field(default_factory=lambda: {k: set() for k in FILES})
    fresh: int = 0

    @property
    def batch_names(self) -> list[str]:
        return [row["batch"] for row in self.batches]

    def frame(self, key: str) -> pd.DataFrame:
        header = {"batches": BATCH_HEADER, "measurements": MEASUREMENT_HEADER, "events": EVENT_HEADER,
                  "media": MEDIA_HEADER}[key]
        return pd.DataFrame(getattr(self, key), columns=list(header), dtype=object).fillna("")

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for key, name in FILES.items():
            self.frame(key).to_csv(folder / name, index=False, lineterminator="\n")
        return folder

    def fresh_time(self) -> float:
        """A time no generated row uses (so fresh rows never collide with generated ones)."""
        self.fresh += 1
        return 1.0 + 0.01 * self.fresh


@st.composite
def measurement_rows(draw, batch: str) -> list[dict[str, str]]:
    keys = draw(st.lists(st.tuples(st.sampled_from(TIMES), st.sampled_from(sorted(VARIABLES)),
                                   st.sampled_from(("pre", "pre", "post"))), min_size=1, max_size=5, unique=True))
    rows = []
    for time, variable, phase in keys:
        unit, low, high = draw(st.sampled_from(VARIABLES[variable]))
        value = draw(st.floats(low, high, allow_nan=False, allow_infinity=False))
        censored = "<" if variable in ("titer", "ammonia") and draw(st.booleans()) else ""
        rows.append({"batch": batch, "time_h": _fmt(time), "variable": variable, "value": _fmt(value), "unit": unit,
                     "phase": phase, "censored": censored, "timestamp": ""})
    return rows


@st.composite
def event_rows(draw, batch: str) -> list[dict[str, str]]:
    def row(time, kind, amount="", unit="", target="", medium=""):
        return {"batch": batch, "time_h": _fmt(time), "kind": kind, "target": target, "amount": amount,
                "unit": unit, "medium": medium}

    amount = st.floats(0.0, 30.0, allow_nan=False).map(_fmt)
    choices = st.one_of(
        st.builds(lambda t, a: row(t, "sample", a, "mL"), st.sampled_from(TIMES), st.floats(0.0, 5.0).map(_fmt)),
        st.builds(lambda t, a: row(t, "bolus", a, "mL", medium="feed_a"), st.sampled_from(TIMES), amount),
        st.builds(lambda t, a: row(t, "bolus", a, "mmol", target="glucose"), st.sampled_from(TIMES), amount),
        st.builds(lambda t, a: row(t, "feed_rate", a, "mL/h", medium="feed_a"), st.sampled_from(TIMES),
                  st.floats(0.0, 1.0).map(_fmt)),
        st.builds(lambda t, a: row(t, "setpoint", a, "degC", target="temperature"), st.sampled_from(TIMES),
                  st.floats(30.0, 37.0).map(_fmt)),
    )
    rows = draw(st.lists(choices, max_size=3))
    if draw(st.booleans()):
        rows.append(row(HARVEST_TIME, "harvest"))
    return rows


@st.composite
def valid_tables(draw) -> Tables:
    names = draw(st.lists(st.from_regex(r"[A-Z][A-Za-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=3,
                          unique=True))
    batches, measurements, events = [], [], []
    for name in names:
        litres = draw(st.floats(0.5, 5.0))
        in_ml = draw(st.booleans())
        batches.append({
            "batch": name, "cell_type": draw(st.sampled_from(CELL_TYPES)),
            "initial_volume": _fmt(litres * 1000 if in_ml else litres), "volume_unit": "mL" if in_ml else "L",
            "max_volume": draw(st.sampled_from(["", _fmt(3 * litres * (1000 if in_ml else 1))])),
            "initial_medium": draw(st.sampled_from(["", "basal"])), "start_time": "",
            "clone": draw(st.sampled_from(["A", "B", "C7"])),
        })
        measurements += draw(measurement_rows(name))
        events += draw(event_rows(name))
    order = draw(st.permutations(range(len(measurements))))  # rows need not be sorted
    return Tables(batches, [measurements[i] for i in order], events, [dict(r) for r in MEDIA_ROWS])


# -- the defect catalogue ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Planted:
    """Where a planted defect must be reported: file, row and a text the problem must contain."""

    name: str
    file: str
    row: int
    token: str


Draw = Callable[[st.SearchStrategy], object]


def _row_number(index: int) -> int:
    return index + 2  # the header is row 1


def _pick(t: Tables, key: str, draw: Draw, fresh: Callable[[], dict[str, str]],
          accept: Callable[[dict[str, str]], bool] = lambda row: True) -> int:
    """Index of a row to corrupt: an untouched generated row that `accept`s, or a fresh valid row appended."""
    rows = getattr(t, key)
    candidates = [i for i, row in enumerate(rows) if i not in t.touched[key] and accept(row)]
    if candidates and draw(st.booleans()):
        index = draw(st.sampled_from(candidates))
    else:
        rows.append(fresh())
        index = len(rows) - 1
    t.touched[key].add(index)
    return index


def _fresh_measurement(t: Tables, draw: Draw) -> Callable[[], dict[str, str]]:
    def make():
        return {"batch": draw(st.sampled_from(t.batch_names)), "time_h": _fmt(t.fresh_time()), "variable": "lactate",
                "value": "1.5", "unit": "mM", "phase": "pre", "censored": "", "timestamp": ""}
    return make


def _fresh_event(t: Tables, draw: Draw) -> Callable[[], dict[str, str]]:
    def make():
        return {"batch": draw(st.sampled_from(t.batch_names)), "time_h": _fmt(t.fresh_time()), "kind": "sample",
                "target": "", "amount": "0.5", "unit": "mL", "medium": ""}
    return make


def _harvest(t: Tables, batch: str) -> float:
    """The batch's harvest time, adding a harvest event if it has none; the harvest row is never corrupted."""
    for index, row in enumerate(t.events):
        if row["batch"] == batch and row["kind"] == "harvest" and index not in t.touched["events"]:
            t.touched["events"].add(index)
            return float(row["time_h"])
    t.events.append({"batch": batch, "time_h": _fmt(HARVEST_TIME), "kind": "harvest", "target": "", "amount": "",
                     "unit": "", "medium": ""})
    t.touched["events"].add(len(t.events) - 1)
    return HARVEST_TIME


def _unknown(draw: Draw, known) -> str:
    return draw(WORD.filter(lambda w: w not in known and w.lower() not in known))


def d_unknown_variable(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    name = draw(st.one_of(st.sampled_from(["glucos", "Glucose", "NaN", "null", "lactic_acid"]),
                          WORD.filter(lambda w: w not in CANONICAL_VARIABLES)))
    t.measurements[i]["variable"] = name
    return Planted("unknown variable", "measurements.csv", _row_number(i), f"unknown variable {name!r}")


def d_bad_unit(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    unit = draw(st.sampled_from(BAD_UNITS[t.measurements[i]["variable"]]))
    t.measurements[i]["unit"] = unit
    return Planted("unit does not convert", "measurements.csv", _row_number(i), repr(unit))


def d_bad_value(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    raw = draw(st.sampled_from(["abc", "inf", "-inf", "nan", "NaN", "1,5", "1e999", "--2", "0x1F", "five", "1.2.3"]))
    t.measurements[i]["value"] = raw
    return Planted("non-numeric value", "measurements.csv", _row_number(i), f"got {raw!r}")


def d_negative_value(t: Tables, draw: Draw) -> Planted:
    def bounded_below(row):
        spec = CANONICAL_VARIABLES[row["variable"]]
        return spec.lower == 0 and row["censored"] == ""
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw), bounded_below)
    t.measurements[i]["value"] = _fmt(-draw(st.floats(0.01, 1e6)))
    return Planted("negative value", "measurements.csv", _row_number(i), "negative value")


def d_fraction_above_one(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    t.measurements[i].update(variable="viability", unit="1", value=_fmt(draw(st.floats(1.01, 1e6))))
    return Planted("fraction above 1", "measurements.csv", _row_number(i), "a fraction must lie in 0..1")


def d_measurement_unknown_batch(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    name = "zz_" + draw(WORD)
    t.measurements[i]["batch"] = name
    return Planted("measurement for unknown batch", "measurements.csv", _row_number(i), f"unknown batch {name!r}")


def d_time_before_zero(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    t.measurements[i]["time_h"] = _fmt(-draw(st.floats(0.01, 1000.0)))
    return Planted("time before 0", "measurements.csv", _row_number(i), "before inoculation")


def d_time_not_a_number(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    t.measurements[i]["time_h"] = draw(st.sampled_from(["day 2", "inf", "nan", "12h", "1e999"]))
    return Planted("time not a number", "measurements.csv", _row_number(i), "time_h must be a finite number")


def d_measurement_after_harvest(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw))
    harvest = _harvest(t, t.measurements[i]["batch"])
    t.measurements[i]["time_h"] = _fmt(harvest + draw(st.floats(0.5, 1000.0)))
    return Planted("measurement after harvest", "measurements.csv", _row_number(i), "after the harvest")


def d_duplicate_disagrees(t: Tables, draw: Draw) -> Planted:
    def unbounded(row):
        return CANONICAL_VARIABLES[row["variable"]].upper is None
    i = _pick(t, "measurements", draw, _fresh_measurement(t, draw), unbounded)
    duplicate = dict(t.measurements[i], value=_fmt(float(t.measurements[i]["value"]) * 2 + 1))
    t.measurements.append(duplicate)
    t.touched["measurements"].add(len(t.measurements) - 1)
    return Planted("duplicate that disagrees", "measurements.csv", len(t.measurements) + 1,
                   "given twice with different values")


def d_event_unknown_batch(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "events", draw, _fresh_event(t, draw))
    name = "zz_" + draw(WORD)
    t.events[i]["batch"] = name
    return Planted("event for unknown batch", "events.csv", _row_number(i), f"unknown batch {name!r}")


def d_event_unknown_kind(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "events", draw, _fresh_event(t, draw))
    kind = draw(st.one_of(st.sampled_from(["feeed", "feed", "bolsu", "harvested", "temp_shift"]),
                          _unknown_kind_strategy()))
    t.events[i]["kind"] = kind
    return Planted("unknown event kind", "events.csv", _row_number(i), f"unknown event kind {kind!r}")


def _unknown_kind_strategy():
    kinds = {k.value for k in EventKind}
    return WORD.filter(lambda w: w not in kinds)


def d_event_unknown_medium(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "events", draw, _fresh_event(t, draw))
    medium = "zz_" + draw(WORD)
    t.events[i]["medium"] = medium
    return Planted("event naming an unknown medium", "events.csv", _row_number(i), f"unknown medium {medium!r}")


def d_event_negative_amount(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "events", draw, _fresh_event(t, draw), lambda row: row["kind"] in ("sample", "bolus", "feed_rate"))
    t.events[i]["amount"] = _fmt(-draw(st.floats(0.01, 1e4)))
    return Planted("negative event amount", "events.csv", _row_number(i), "negative amount")


def d_event_bad_amount(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "events", draw, _fresh_event(t, draw))
    raw = draw(st.sampled_from(["lots", "inf", "-inf", "1e999", "2,5"]))
    t.events[i]["amount"] = raw
    return Planted("non-numeric event amount", "events.csv", _row_number(i), f"got {raw!r}")


def d_event_bad_unit(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "events", draw, _fresh_event(t, draw), lambda row: row["kind"] == "sample")
    unit = draw(st.sampled_from(BAD_VOLUME_UNITS))
    t.events[i]["unit"] = unit
    return Planted("event unit does not convert", "events.csv", _row_number(i), repr(unit))


def d_event_before_zero(t: Tables, draw: Draw) -> Planted:
    i = _pick(t, "events", draw, _fresh_event(t, draw), lambda row: row["kind"] != "harvest")
    t.events[i]["time_h"] = _fmt(-draw(st.floats(0.01, 1000.0)))
    return Planted("event before 0", "events.csv", _row_number(i), "before inoculation")


def d_event_after_harvest(t: Tables, draw: Draw) -> Planted:
    make = _fresh_event(t, draw)
    row = make()
    harvest = _harvest(t, row["batch"])
    row["time_h"] = _fmt(harvest + draw(st.floats(0.5, 1000.0)))
    t.events.append(row)
    t.touched["events"].add(len(t.events) - 1)
    return Planted("event after harvest", "events.csv", len(t.events) + 1, "after the harvest")


def _untouched_batch(t: Tables) -> bool:
    return len(t.touched["batches"]) < len(t.batches)


def _pick_batch(t: Tables, draw: Draw) -> int:
    index = draw(st.sampled_from([i for i in range(len(t.batches)) if i not in t.touched["batches"]]))
    t.touched["batches"].add(index)
    return index


def d_unknown_cell_type(t: Tables, draw: Draw) -> Planted:
    i = _pick_batch(t, draw)
    cell_type = _unknown(draw, set(CELL_TYPES))
    t.batches[i]["cell_type"] = cell_type
    return Planted("unknown cell_type", "batches.csv", _row_number(i), f"got {cell_type!r}")


def d_nonpositive_volume(t: Tables, draw: Draw) -> Planted:
    i = _pick_batch(t, draw)
    t.batches[i]["initial_volume"] = draw(st.sampled_from(["0", "-1", "-0.5", "-1000"]))
    return Planted("initial volume <= 0", "batches.csv", _row_number(i), "initial_volume must be > 0")


def d_bad_volume_unit(t: Tables, draw: Draw) -> Planted:
    i = _pick_batch(t, draw)
    unit = draw(st.sampled_from(BAD_VOLUME_UNITS))
    t.batches[i]["volume_unit"] = unit
    return Planted("volume unit not a volume", "batches.csv", _row_number(i), repr(unit))


def d_media_unknown_species(t: Tables, draw: Draw) -> Planted:
    species = _unknown(draw, set(CANONICAL_VARIABLES))
    t.media.append({"medium": draw(st.sampled_from(["basal", "feed_a"])), "species": species, "concentration": "1.0",
                    "unit": "mM"})
    t.touched["media"].add(len(t.media) - 1)
    return Planted("unknown species in a medium", "media.csv", len(t.media) + 1, f"unknown species {species!r}")


def d_media_bad_concentration(t: Tables, draw: Draw) -> Planted:
    raw = draw(st.sampled_from(["x", "inf", "nan"]))
    t.media.append({"medium": "basal", "species": "lactate", "concentration": raw, "unit": "mM"})
    t.touched["media"].add(len(t.media) - 1)
    return Planted("medium concentration not a number", "media.csv", len(t.media) + 1,
                   "concentration must be a finite number")


MEASUREMENT_DEFECTS = [d_unknown_variable, d_bad_unit, d_bad_value, d_negative_value, d_fraction_above_one,
                       d_measurement_unknown_batch, d_time_before_zero, d_time_not_a_number,
                       d_measurement_after_harvest, d_duplicate_disagrees]
EVENT_DEFECTS = [d_event_unknown_batch, d_event_unknown_kind, d_event_unknown_medium, d_event_negative_amount,
                 d_event_bad_amount, d_event_bad_unit, d_event_before_zero, d_event_after_harvest]
BATCH_DEFECTS = [d_unknown_cell_type, d_nonpositive_volume, d_bad_volume_unit]
MEDIA_DEFECTS = [d_media_unknown_species, d_media_bad_concentration]
CATALOGUE = MEASUREMENT_DEFECTS + EVENT_DEFECTS + BATCH_DEFECTS + MEDIA_DEFECTS


@SETTINGS
@given(tables=valid_tables(), data=st.data())
def test_planted_defects_are_all_reported(tables: Tables, data: st.DataObject) -> None:
    planted: list[Planted] = []
    for _ in range(data.draw(st.integers(1, 3), label="number of defects")):
        catalogue = [d for d in CATALOGUE if d not in BATCH_DEFECTS or _untouched_batch(tables)]
        defect = data.draw(st.sampled_from(catalogue), label="defect")
        planted.append(defect(tables, data.draw))
    note(f"planted: {planted}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = tables.write(Path(tmp) / "campaign")
        with pytest.raises(CampaignValidationError) as info:  # any other exception propagates and fails the test
            read_campaign(folder)
    error = info.value
    text = str(error)
    assert len(error.problems) >= len(planted)
    for defect in planted:
        assert defect.token in text, f"{defect} not in:\n{text}"
        assert any(Path(p.file).name == defect.file and p.row == defect.row and defect.token in str(p)
                   for p in error.problems), f"no problem at {defect.file} row {defect.row} for {defect}:\n{text}"


# -- junk --------------------------------------------------------------------------------------------------------------
def _read_or_validation_error(folder: Path) -> None:
    try:
        read_campaign(folder)
    except CampaignValidationError as error:
        assert error.problems
        event("CampaignValidationError")
    else:
        event("read")


junk_text = st.text(max_size=300)
junk_csv = st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
                             min_size=1, max_size=6), max_size=6).map(
    lambda rows: "\n".join(",".join(cells) for cells in rows))
junk_bytes = st.binary(max_size=300)


@SETTINGS
@given(tables=valid_tables(), data=st.data())
def test_junk_files_raise_only_validation_errors(tables: Tables, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = tables.write(Path(tmp) / "campaign")
        keys = data.draw(st.sets(st.sampled_from(sorted(FILES)), min_size=1), label="files replaced")
        for key in sorted(keys):
            content = data.draw(st.one_of(junk_text.map(str.encode), junk_csv.map(str.encode), junk_bytes),
                                label=f"{key} content")
            (folder / FILES[key]).write_bytes(content)
        _read_or_validation_error(folder)


column_name = st.one_of(st.text(max_size=15), st.sampled_from([*MEASUREMENT_HEADER, *EVENT_HEADER, *BATCH_HEADER,
                                                                *MEDIA_HEADER, "Unnamed: 0", "", " ", "batch.1"]))


@SETTINGS
@given(tables=valid_tables(), data=st.data())
def test_random_column_names_raise_only_validation_errors(tables: Tables, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = tables.write(Path(tmp) / "campaign")
        for key in sorted(data.draw(st.sets(st.sampled_from(sorted(FILES)), min_size=1), label="tables")):
            frame = tables.frame(key)
            names = data.draw(st.lists(column_name, min_size=len(frame.columns), max_size=len(frame.columns)),
                              label=f"{key} new names")
            keep = data.draw(st.lists(st.booleans(), min_size=len(names), max_size=len(names)), label="renamed")
            names = [new if not k else old for new, old, k in zip(names, frame.columns, keep, strict=True)]
            frame.columns = names
            frame.to_csv(folder / FILES[key], index=False, lineterminator="\n")
        _read_or_validation_error(folder)


cell_value = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "nan", "NaN", "inf", "-1", "0", "1e999", "None",
                                                              "True", "2024-13-01", "9999-99-99T99:99", "<", ">",
                                                              "post", "pre", "1e6 cells/mL", "%", "mM", "degC"]))


@SETTINGS
@given(tables=valid_tables(), data=st.data())
def test_random_cell_values_raise_only_validation_errors(tables: Tables, data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(1, 6), label="cells changed")):
        key = data.draw(st.sampled_from(sorted(FILES)), label="table")
        rows = getattr(tables, key)
        if not rows:
            continue
        row = data.draw(st.sampled_from(rows), label="row")
        column = data.draw(st.sampled_from(sorted(row)), label="column")
        row[column] = data.draw(cell_value, label="value")
    with tempfile.TemporaryDirectory() as tmp:
        _read_or_validation_error(tables.write(Path(tmp) / "campaign"))


# -- round trip --------------------------------------------------------------------------------------------------------
@SETTINGS
@given(tables=valid_tables())
def test_valid_campaign_round_trips(tables: Tables) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        first = read_campaign(tables.write(Path(tmp) / "in"))  # a generated campaign is valid
        write_campaign(first, Path(tmp) / "out")
        second = read_campaign(Path(tmp) / "out")
    a, b = first.to_dataframe("long"), second.to_dataframe("long")
    assert len(a) == sum(1 for _ in tables.measurements)
    assert list(a.columns) == list(b.columns)
    text = [c for c in a.columns if c != "value"]
    pd.testing.assert_frame_equal(a[text], b[text])
    np.testing.assert_allclose(b["value"].to_numpy(float), a["value"].to_numpy(float), rtol=1e-12, atol=0)
    assert first.batches == second.batches
    pd.testing.assert_frame_equal(first.batch_metadata(), second.batch_metadata())
    for batch in first.batches:
        p, q = first.protocols[batch], second.protocols[batch]
        assert len(p.events) == len(q.events)
        for e, f in zip(p.events, q.events, strict=True):
            assert (e.time_h, e.kind, e.unit, e.target, e.medium) == (f.time_h, f.kind, f.unit, f.target, f.medium)
            assert (math.isnan(e.amount) and math.isnan(f.amount)) or math.isclose(e.amount, f.amount, rel_tol=1e-12)
        assert math.isclose(p.initial_volume, q.initial_volume, rel_tol=1e-12)
        assert p.max_volume == q.max_volume or math.isclose(p.max_volume, q.max_volume, rel_tol=1e-12)
        assert p.initial_medium == q.initial_medium
    assert dict(first.media) == dict(second.media)
