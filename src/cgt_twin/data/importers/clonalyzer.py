"""Importer for the clonalyzer shake-flask kinetics CSVs (github ``ebalderasr/clonalyzer``, ``data/``; MIT).

CHO mAb clones in shake flasks, sampled daily. Each CSV has a row of short column codes (``Clone, T, Xv, V, G, L,
Gln, Glu, MAb, rep`` or, with raw haemocytometer counts, ``Clone, T, V, M, C, dil, Xv, Xm, Viabilidad, rep, AcM,
G, L, Gln, Glu``), preceded by a row of Spanish headers or ``Metadata:``. Rows at ``T = d.1`` (or ``d.2``) are
re-measurements after the feed of day ``d``.

`read_clonalyzer` turns one CSV, or every CSV of a folder, into `CampaignTables`: one batch per clone and replicate
flask, times in hours (``24 * T``), values in the units the source documents (cells/mL, percent, g/L, mM, mg/mL).
The import policy is in ``docs/importers/clonalyzer.md`` and, one decision per line, in ``CampaignTables.notes``.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cgt_twin.data.errors import CampaignValidationError, Problem
from cgt_twin.data.tables import BATCH_COLUMNS, MEASUREMENT_COLUMNS, VARIABLE_COLUMNS, CampaignTables

__all__ = ["read_clonalyzer"]

CELL_TYPE = "cho"
#: nominal working volume; the source does not state one (see the policy document)
NOMINAL_VOLUME_ML = 30.0
#: a fractional day in (0, POST_FEED_MAX_FRACTION] marks a post-feed re-measurement of that day (.1, .2)
POST_FEED_MAX_FRACTION = 0.3

# analyte codes -> (variable, unit); units as documented by the source (datasets README, clonalyzer README)
ANALYTES: dict[str, tuple[str, str]] = {
    "G": ("glucose", "g/L"),
    "L": ("lactate", "g/L"),
    "Gln": ("glutamine", "mM"),
    "Glu": ("glutamate", "mM"),
    "MAb": ("titer", "mg/mL"),  # 2024-05-18 file: 'Anticuerpo Monoclonal (mg/mL)'
    "AcM": ("titer", "g/L"),  # 06nov2024 file: clonalyzer README 'Monoclonal antibody concentration (g/L)'
}
# cell codes -> (variable, unit); 'V' is the viability in the short layout, a raw count in the haemocytometer layout
CELLS: dict[str, tuple[str, str]] = {
    "Xv": ("vcd", "cells/mL"),
    "Xm": ("dead_cells", "cells/mL"),
    "Viabilidad": ("viability", "percent"),
}
RAW_COUNT_CODES = ("V", "M", "C", "dil")
REQUIRED_CODES = ("Clone", "T", "rep")


def _problem(file: Path | str, message: str, **kw: Any) -> Problem:
    return Problem(file=str(file), message=message, **kw)


def _number(text: str) -> float | None:
    """CSV cell -> float; None for blank; ValueError for text. Accepts a trailing '%'."""
    t = text.strip()
    if t == "":
        return None
    if t.endswith("%"):
        t = t[:-1].strip()
    value = float(t)
    if math.isnan(value):
        return None
    return value


@dataclass
class _FileResult:
    path: Path
    rows: list[dict[str, Any]] = field(default_factory=list)  # measurement rows with 'key' = (clone, rep)
    batches: dict[tuple[str, int], int] = field(default_factory=dict)  # (clone, rep) -> first data row
    notes: list[str] = field(default_factory=list)


def _read_file(path: Path, problems: list[Problem]) -> _FileResult | None:
    if not path.is_file():
        problems.append(_problem(path, "file not found"))
        return None
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            lines = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        problems.append(_problem(path, f"cannot read CSV: {exc}"))
        return None

    # the code row: the first of the first five rows holding the codes 'Clone' and 'T'
    header_index = None
    for i, line in enumerate(lines[:5]):
        cells = [c.strip() for c in line]
        if "Clone" in cells and "T" in cells:
            header_index = i
            break
    if header_index is None:
        problems.append(_problem(path, "no row of column codes (Clone, T, ..., rep) in the first 5 rows"))
        return None
    codes = [c.strip() for c in lines[header_index]]
    col: dict[str, int] = {}
    for j, code in enumerate(codes):
        if code and code not in col:
            col[code] = j
    header_row = header_index + 1
    missing = [c for c in REQUIRED_CODES if c not in col]
    if missing:
        problems.append(_problem(path, f"missing column code{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                                 row=header_row))
        return None
    haemocytometer = all(c in col for c in ("C", "dil"))
    cell_codes = {c: v for c, v in CELLS.items() if c in col}
    if not haemocytometer and "V" in col:
        cell_codes["V"] = ("viability", "percent")  # short layout: V = viability %
    analyte_codes = {c: v for c, v in ANALYTES.items() if c in col}
    if not analyte_codes and not any(c in col for c in cell_codes):
        problems.append(_problem(path, "no measurement columns (expected some of Xv, V, G, L, Gln, Glu, MAb)",
                                 row=header_row))
        return None
    known = {*REQUIRED_CODES, *cell_codes, *analyte_codes, *(RAW_COUNT_CODES if haemocytometer else ())}
    ignored = [c for c in col if c not in known]

    result = _FileResult(path)
    pre: dict[tuple[str, int, int], dict[str, float]] = {}  # (clone, rep, day) -> analyte values of the pre row
    post_rows: list[tuple[int, str, int, int, dict[str, float]]] = []
    seen: dict[tuple[str, int, float, str], int] = {}
    n_post = 0
    for i, line in enumerate(lines[header_index + 1:], start=header_row + 1):
        if not any(c.strip() for c in line):
            continue
        cell = lambda code, line=line: line[col[code]] if col[code] < len(line) else ""  # noqa: E731
        clone = cell("Clone").strip()
        if not clone:
            problems.append(_problem(path, "empty clone", row=i, column="Clone"))
            continue
        try:
            t = _number(cell("T"))
            rep_value = _number(cell("rep"))
        except ValueError:
            problems.append(_problem(path, f"time or replicate is not a number: T={cell('T')!r}, "
                                           f"rep={cell('rep')!r}", row=i, column="T"))
            continue
        if t is None or rep_value is None or rep_value != int(rep_value) or t < 0:
            problems.append(_problem(path, f"needs a time T >= 0 and a whole replicate number, got "
                                           f"T={cell('T')!r}, rep={cell('rep')!r}", row=i, column="T"))
            continue
        rep = int(rep_value)
        day = math.floor(t + 1e-9)
        fraction = t - day
        if fraction < 1e-9:
            phase, time_d = "pre", float(day)
        elif fraction <= POST_FEED_MAX_FRACTION + 1e-9:
            phase, time_d = "post", float(day)
        else:
            phase, time_d = "pre", t
        key = (clone, rep, time_d, phase)
        if key in seen:
            problems.append(_problem(path, f"clone {clone} rep {rep} has two {phase} rows at day {time_d:g} "
                                           f"(first in row {seen[key]})", row=i, batch=f"{clone} rep {rep}"))
            continue
        seen[key] = i
        result.batches.setdefault((clone, rep), i)

        values: dict[str, float] = {}
        codes_here = {**analyte_codes} if phase == "post" else {**cell_codes, **analyte_codes}
        for code in codes_here:
            text = cell(code)
            try:
                v = _number(text)
            except ValueError:
                problems.append(_problem(path, f"{code}: not a number: {text!r}", row=i, column=code))
                continue
            if v is not None:
                values[code] = v
        if phase == "post":
            n_post += 1
            post_rows.append((i, clone, rep, day, values))
            continue
        if fraction < 1e-9:
            pre[(clone, rep, day)] = {c: values[c] for c in analyte_codes if c in values}
        for code, v in values.items():
            variable, unit = cell_codes.get(code) or analyte_codes[code]
            result.rows.append({"key": (clone, rep), "time_h": 24.0 * time_d, "variable": variable, "value": v,
                                "unit": unit, "phase": phase})

    copies: list[str] = []
    for i, clone, rep, day, values in post_rows:
        before = pre.get((clone, rep, day), {})
        if all(c in values and c in before and values[c] == before[c] for c in ("G", "L")):
            copies.append(f"row {i} ({clone} rep {rep}, day {day})")
            continue
        for code, v in values.items():
            variable, unit = analyte_codes[code]
            result.rows.append({"key": (clone, rep), "time_h": 24.0 * day, "variable": variable, "value": v,
                                "unit": unit, "phase": "post"})

    name = path.name
    layout = ("haemocytometer layout (raw counts V, M, C, dil not imported; the derived Xv, Xm, Viabilidad "
              "columns are)" if haemocytometer else "short layout (V = viability %)")
    result.notes.append(f"{name}: {layout}; {len(result.batches)} batches, {n_post} post-feed rows.")
    if copies:
        result.notes.append(
            f"{name}: {len(copies)} post-feed rows repeat the pre-feed glucose and lactate exactly (copied, not "
            f"re-measured) and are not imported: {', '.join(copies)}."
        )
    if ignored:
        result.notes.append(f"{name}: columns not imported: {', '.join(ignored)}.")
    if "AcM" in analyte_codes and not any(r["variable"] == "titer" for r in result.rows):
        result.notes.append(f"{name}: the antibody column AcM is empty.")
    return result


def _batch_name(clone: str, rep: int) -> str:
    return f"{clone}_rep{rep}"


def read_clonalyzer(path: str | os.PathLike[str]) -> CampaignTables:
    """Read clonalyzer shake-flask kinetics into campaign tables.

    Args:
        path: one clonalyzer CSV, or a folder: then every ``*.csv`` in it (e.g.
            ``../shared/datasets/cho_clones_shakeflask``). If two files hold the same clone and replicate, every
            batch name is prefixed by its file's stem.

    Returns:
        `CampaignTables` with one batch per clone x replicate flask (``"<clone>_rep<n>"``), cell type ``cho``,
        ``feeds_known = False`` (the cultures are fed, the feeds are not recorded), no events. Measurements:
        vcd and dead_cells (cells/mL), viability (percent), glucose and lactate (g/L), glutamine and glutamate
        (mM), titer (mg/mL or g/L); ``time_h = 24 * T``; post-feed re-measurements (``T = d.1``, ``d.2``) have
        ``phase = "post"`` at day ``d``.

    Raises:
        CampaignValidationError: the path is missing, a CSV cannot be read, or lacks the expected columns or values.
    """
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
        if not files:
            raise CampaignValidationError([_problem(root, "no .csv files in this folder")])
    elif root.is_file():
        files = [root]
    else:
        raise CampaignValidationError([_problem(root, "file or folder not found")])

    problems: list[Problem] = []
    results = [r for r in (_read_file(f, problems) for f in files) if r is not None]
    if problems:
        raise CampaignValidationError(problems)

    keys = [(r.path, k) for r in results for k in r.batches]
    plain = [_batch_name(*k) for _, k in keys]
    prefix = len(set(plain)) != len(plain)

    def name_of(file: Path, key: tuple[str, int]) -> str:
        return f"{file.stem}_{_batch_name(*key)}" if prefix else _batch_name(*key)

    notes: list[str] = [
        "One batch per clone and replicate flask (each flask is followed over time); batch name '<clone>_rep<n>'"
        + (", prefixed by '<file stem>_' because two files hold the same clone and replicate" if prefix else "")
        + "; covariates clone, flask (the source's replicate number 'rep'; not called 'replicate', which is the "
        "campaign's dimension of repeated measurements) and source_file.",
        "Time: T is in days (the clonalyzer README; the 06nov2024 header 'Tiempo en horas' is wrong, its values "
        "run 0-13 like days), time_h = 24 * T. The time of day of sampling is not given.",
        f"Post-feed rows: T = d.1 or d.2 (fraction <= {POST_FEED_MAX_FRACTION:g}) is the re-measurement after the "
        "feed of day d, imported with phase = 'post' at time 24 * d. Only its analytes (glucose, lactate, "
        "glutamine, glutamate, antibody) are imported: its cell counts are not re-measured (copied from the "
        "pre-feed row, or the pre-feed raw counts multiplied by 0.9), so vcd, dead_cells and viability come "
        "from pre-feed rows only.",
        "Feeds: the cultures are fed (post-feed re-measurements exist; the datasets README says so for the "
        "2024-05-18 file too, although the stored copy of it ends with the day-5 pre-feed sample), but feed "
        "volumes, times and compositions are not recorded: feeds_known = False for every batch, no bolus events "
        "are invented. (In the 06nov2024 file the post-feed raw counts are the pre-feed counts x 0.9, which "
        "suggests a feed of about 1/9 of the culture volume; this is not used.)",
        f"Volume: not given; initial_volume is a nominal {NOMINAL_VOLUME_ML:g} mL (typical working volume of a "
        "125 mL shake flask). Concentrations do not depend on it; with unknown feeds, volumes and totals are not "
        "modelled from this source.",
        "Units as documented by the source: Xv and Xm cells/mL (vcd, dead_cells), V / Viabilidad viability in percent, "
        "G glucose and L lactate g/L (lactate converted as lactic acid, 90.08 g/mol), Gln and Glu mmol/L, MAb mg/mL "
        "and AcM g/L (titer). Zeros (e.g. glutamine exhausted, MAb before day 3) are kept as reported values, not "
        "censored: no detection limit is stated.",
        "Haemocytometer layout (06nov2024): Xv = V/C x dil x 1e4 cells/mL holds for every pre-feed row, but the "
        "header does not state the chamber factor, so the file's derived Xv, Xm and Viabilidad columns are imported "
        "and the raw counts V, M, C, dil are not.",
    ]
    for r in results:
        notes.extend(r.notes)

    batch_rows = []
    for r in results:
        for key in r.batches:
            batch_rows.append(
                {"batch": name_of(r.path, key), "cell_type": CELL_TYPE, "initial_volume": NOMINAL_VOLUME_ML,
                 "volume_unit": "mL", "max_volume": math.nan, "initial_medium": "", "start_time": "",
                 "feeds_known": False, "clone": key[0], "flask": key[1], "source_file": r.path.name}
            )
    batches = pd.DataFrame(
        batch_rows,
        columns=[*BATCH_COLUMNS, "max_volume", "initial_medium", "start_time", "feeds_known", "clone", "flask",
                 "source_file"],
    )

    meas_rows = []
    for r in results:
        for row in r.rows:
            meas_rows.append({"batch": name_of(r.path, row["key"]), "time_h": row["time_h"],
                              "variable": row["variable"], "value": row["value"], "unit": row["unit"],
                              "phase": row["phase"]})
    measurements = pd.DataFrame(meas_rows, columns=[*MEASUREMENT_COLUMNS, "phase"])
    order = {b: i for i, b in enumerate(batches["batch"])}
    rank = {"batch": order, "phase": {"pre": 0, "post": 1}}
    measurements = measurements.sort_values(
        ["batch", "variable", "time_h", "phase"], key=lambda s: s.map(rank[s.name]) if s.name in rank else s,
        kind="stable",
    ).reset_index(drop=True)

    return CampaignTables(
        batches=batches,
        measurements=measurements,
        variables=pd.DataFrame({c: pd.Series(dtype=object) for c in VARIABLE_COLUMNS}),
        notes=notes,
        source=f"clonalyzer:{root}",
    )
