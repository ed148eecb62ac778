"""Importer for the HEK293 rAAV8 triple-transfection study of Zehetner et al.

Source: github ``LeoZ93/hek293aav``, folder ``HEK293_AAV/`` (Apache-2.0): two HEK293 strains (high producer HP,
low producer LP), transfected (TR) or mock (MO), batch culture 0-72 h post transfection, four replicate samples
per condition and time point; plus a validation experiment (media supplementation, HIF1alpha inhibitor, reference).

`read_hek293_zehetner` turns the workbooks into `CampaignTables`. The import policy (sample -> condition mapping,
variable names, units, ``<LOQ`` handling, what is skipped) is written in ``docs/importers/hek293-zehetner.md``
and repeated, one decision per line, in ``CampaignTables.notes``.

Times are hours post transfection (hpt). Concentrations are kept in the units the workbooks state (umol/L for
metabolites, cells/mL for cell counts, vg/mL and capsid/mL for titres); conversion to canonical units happens
when the tables are validated.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cgt_twin.data.errors import CampaignValidationError, Problem
from cgt_twin.data.tables import (
    BATCH_COLUMNS,
    EVENT_COLUMNS,
    MEASUREMENT_COLUMNS,
    VARIABLE_COLUMNS,
    CampaignTables,
)
from cgt_twin.data.variables import CANONICAL_VARIABLES

__all__ = ["read_hek293_zehetner"]

# --- file names -------------------------------------------------------------------------------------------------
LAC_FILE = "lac_ammonia_glc_fitting.xlsx"
METABOLOMICS_FILE = "Results_Metabolomics_Media_1.xlsx"
HEK_DATA_FILE = "hek_data.xlsx"
VALIDATION_FILE = "aav_inh_results_final.xlsx"

# --- study design (datasets README; the authors' exchange_rates_calculation_final.R) ----------------------------
CONDITIONS: tuple[str, ...] = ("HP_TR", "HP_MO", "LP_TR", "LP_MO")
#: sampling times (h post transfection) of the 160-sample files (lac_ammonia_glc_fitting.xlsx, cc_raw)
TIMES_160: tuple[float, ...] = (0.0, 4.0, 21.0, 24.0, 27.0, 45.0, 48.0, 51.0, 69.0, 72.0)
#: sampling times of the 80-sample files (Results_Metabolomics_Media_1.xlsx, hek_data sheets)
TIMES_80: tuple[float, ...] = (0.0, 4.0, 24.0, 48.0, 72.0)
N_REPLICATES = 4

#: nominal working volume; the source does not state one (see the policy document)
NOMINAL_VOLUME_ML = 30.0

# lac_ammonia_glc_fitting.xlsx row label -> (variable, unit)
LAC_ROWS: dict[str, tuple[str, str]] = {
    "Nh3": ("ammonia", "umol/L"),
    "Glc": ("glucose", "umol/L"),
    "Lac": ("lactate", "umol/L"),
    "Pyr": ("pyruvate", "umol/L"),
    "Gly": ("glycine", "umol/L"),
    "Pro": ("proline", "umol/L"),
    "Bm": ("dry_weight", "g"),
}
LAC_DESCRIPTIONS: dict[str, str] = {
    "dry_weight": "dry weight of the cell pellet of one sample (g per pellet; the pelleted culture volume is "
    "not given) - the authors' biomass measure; lac_ammonia_glc_fitting.xlsx row 'Bm' "
    "(= hek_data.xlsx 'Dry_weight [g]')",
}

# Results_Metabolomics_Media_1.xlsx: the block with adduct 'x' (rows 'Glycine' ... 'Pyruvate' at the end) holds the
# in-house assays (the authors call them "our values"); these names map onto canonical variables.
INHOUSE_NAMES: dict[str, str] = {
    "Glycine": "glycine",
    "Proline": "proline",
    "Tryptophane": "tryptophan",
    "Cysteine": "cysteine",
    "Glutamine": "glutamine",
    "Ammonia": "ammonia",
    "Lactate": "lactate",
    "Galactose": "galactose",
    "Pyruvate": "pyruvate",
}
#: in-house rows that repeat lac_ammonia_glc_fitting.xlsx (checked equal, then not imported twice)
INHOUSE_DUPLICATES_OF_LAC: dict[str, str] = {
    "Glycine": "Gly",
    "Proline": "Pro",
    "Ammonia": "Nh3",
    "Lactate": "Lac",
    "Pyruvate": "Pyr",
}
#: LC-MS analytes that an in-house assay also measures: the LC-MS series gets the suffix ``_ms``
MS_DUPLICATES: dict[str, str] = {
    "Glucose": "glucose_ms",
    "Lactic acid": "lactate_ms",
    "Pyruvic acid": "pyruvate_ms",
    "Glycine": "glycine_ms",
    "Proline": "proline_ms",
    "Glutamine": "glutamine_ms",
    "Tryptophan": "tryptophan_ms",
}
#: LC-MS analyte -> variable name, where the generic snake_case rule is not used
MS_NAME_OVERRIDES: dict[str, str] = {
    "Aspartic acid": "aspartate",
    "1-Methylnicotinamide": "n1_methylnicotinamide",
    "2-Phosphoglyceric acid": "glycerate_2_phosphate",
    "3-Phosphoglyceric acid": "glycerate_3_phosphate",
    "3'-AMP": "amp_3prime",
    "5'-AMP": "amp_5prime",
    "3-Methyl-2-oxovaleric acid": "keto_methylvalerate",
    "4-Hydroxy-proline": "hydroxyproline",
    "5'-Methylthioadenosine": "methylthioadenosine",
    "5-Methyluridine": "methyluridine",
    "6-Phosphogluconic acid": "gluconate_6_phosphate",
    "GHS, Glutathione (reduced)": "glutathione_reduced",
    "GSSG, Glutathione (oxidized)": "glutathione_oxidized",
}

# hek_data.xlsx sheet 'hek_data': AAV titre rows -> (variable, unit, description)
AAV_ROWS: dict[str, tuple[str, str, str]] = {
    "AAV_VP_CT": ("capsid_titer_ct", "capsid/mL", "AAV8 capsids (viral particles), fraction labelled 'CT' "
                  "(cell/crude lysate; not defined in the source), per mL assumed; hek_data.xlsx row AAV_VP_CT"),
    "AAV_VP_SN": ("capsid_titer_sn", "capsid/mL", "AAV8 capsids (viral particles) in the supernatant ('SN'), "
                  "per mL assumed; hek_data.xlsx row AAV_VP_SN"),
    "AAV_VG_CT": ("vg_titer_ct", "vg/mL", "AAV8 vector genomes, fraction labelled 'CT' (cell/crude lysate; not "
                  "defined in the source), per mL assumed; hek_data.xlsx row AAV_VG_CT"),
    "AAV_VG_SN": ("vg_titer_sn", "vg/mL", "AAV8 vector genomes in the supernatant ('SN'), per mL assumed; "
                  "hek_data.xlsx row AAV_VG_SN"),
}

# aav_inh_results_final.xlsx, sheet Tabelle1: the six columns of each time point are three conditions in duplicate
# (the authors' validation script groups them as rep(1:6) -> 1,2 supplementation; 3,4 inhibitor; 5,6 reference)
VALIDATION_CONDITIONS: tuple[tuple[str, str], ...] = (
    ("VAL_SUP", "supplementation"),
    ("VAL_INH", "HIF1a_inhibitor"),
    ("VAL_REF", "reference"),
)
VALIDATION_ROWS: dict[str, tuple[str, str]] = {
    "VC (per ml)": ("capsid_titer", "capsid/mL"),
    "VG (per ml)": ("vg_titer", "vg/mL"),
    "CC (10^6/ml)": ("vcd", "1e6 cells/mL"),
}

LOQ_TOKEN = "<LOQ"
_NAME_OK = re.compile(r"^[a-z][a-z0-9_]*$")


# --- small helpers ---------------------------------------------------------------------------------------------
def _problem(file: Path | str, message: str, **kw: Any) -> Problem:
    return Problem(file=str(file), message=message, **kw)


def _col_letter(index0: int) -> str:
    """0-based column index -> spreadsheet letters (0 -> 'A')."""
    n = index0 + 1
    out = ""
    while n:
        n, rem = divmod(n - 1, 26)
        out = chr(65 + rem) + out
    return out


def _load_sheets(path: Path, sheets: Sequence[str], problems: list[Problem]) -> dict[str, list[tuple]] | None:
    """Read the named sheets (or the first sheet for ``""``) as lists of row tuples; record problems."""
    if not path.is_file():
        problems.append(_problem(path, "file not found"))
        return None
    try:
        import openpyxl

        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure is bad input
        problems.append(_problem(path, f"cannot read workbook: {exc}"))
        return None
    try:
        out: dict[str, list[tuple]] = {}
        for name in sheets:
            if name == "":
                ws = wb.worksheets[0] if wb.worksheets else None
            elif name in wb.sheetnames:
                ws = wb[name]
            else:
                ws = None
            if ws is None:
                problems.append(
                    _problem(path, f"sheet {name or '<first>'!r} missing (sheets: {', '.join(wb.sheetnames)})")
                )
                continue
            out[name] = [tuple(r) for r in ws.iter_rows(values_only=True)]
        return out
    finally:
        wb.close()


def _rows_by_label(rows: Sequence[tuple], start: int = 1) -> dict[str, tuple[int, tuple]]:
    """First-column label -> (1-based sheet row, row tuple); first occurrence wins."""
    out: dict[str, tuple[int, tuple]] = {}
    for i, row in enumerate(rows[start:], start=start + 1):
        if row and isinstance(row[0], str) and row[0].strip() and row[0].strip() not in out:
            out[row[0].strip()] = (i, row)
    return out


def _sample_numbers(
    header: tuple, first_col: int, n: int, file: Path, sheet: str, problems: list[Problem]
) -> list[int] | None:
    """Parse 'Sample 1' / 'Sample_1' / 'Sample1' headers into their numbers and check they run 1..n."""
    nums: list[int] = []
    for j in range(first_col, first_col + n):
        cell = header[j] if j < len(header) else None
        m = re.fullmatch(r"\s*Sample[ _]?(\d+)\s*", str(cell)) if cell is not None else None
        if m is None:
            problems.append(
                _problem(file, f"sheet {sheet!r}: expected a 'Sample N' header, found {cell!r}", row=1,
                         column=_col_letter(j))
            )
            return None
        nums.append(int(m.group(1)))
    if nums != list(range(1, n + 1)):
        problems.append(_problem(file, f"sheet {sheet!r}: sample headers are not Sample 1..{n} in order", row=1))
        return None
    return nums


def _map_160(sample: int) -> tuple[str, float, int]:
    """Sample number (1..160) of the 10-time-point files -> (condition, time_h, replicate).

    Per strain 80 columns; per time point 8 columns: 4 transfected, then 4 mock (datasets README).
    """
    half, k = divmod(sample - 1, 80)
    block, within = divmod(k, 8)
    strain = ("HP", "LP")[half]
    cond = f"{strain}_{'TR' if within < 4 else 'MO'}"
    return cond, TIMES_160[block], within % 4


def _map_80(sample: int) -> tuple[str, float, int]:
    """Sample number (1..80) of the 5-time-point files -> (condition, time_h, replicate)."""
    half, k = divmod(sample - 1, 40)
    block, within = divmod(k, 8)
    strain = ("HP", "LP")[half]
    cond = f"{strain}_{'TR' if within < 4 else 'MO'}"
    return cond, TIMES_80[block], within % 4


def _as_float(value: Any) -> float | None:
    """Number or numeric string -> float; None for blanks; raises ValueError for other text."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(repr(value))
    if isinstance(value, (int, float)):
        return None if (isinstance(value, float) and math.isnan(value)) else float(value)
    text = str(value).strip()
    if text == "":
        return None
    return float(text)


def _slug(name: str) -> str:
    """Analyte name -> lower-case snake_case variable name that starts with a letter."""
    if name in MS_NAME_OVERRIDES:
        return MS_NAME_OVERRIDES[name]
    s = name.lower().replace("'", "").replace("+", "")
    s = re.sub(r"[^a-z0-9]+", "_", s).strip("_")
    m = re.match(r"^(\d+)_(.*)$", s)
    if m:  # leading locant: move it to the end ("3_methyl..." -> "methyl..._3")
        s = f"{m.group(2)}_{m.group(1)}"
    if not s or not s[0].isalpha():
        s = f"x_{s}"
    return s


# --- readers of the single workbooks ---------------------------------------------------------------------------
class _Collector:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.variables: dict[str, tuple[str, str]] = {}

    def add(self, batch: str, time_h: float, variable: str, value: float, unit: str, replicate: int) -> None:
        self.rows.append(
            {"batch": batch, "time_h": float(time_h), "variable": variable, "value": float(value), "unit": unit,
             "censored": "", "replicate": int(replicate)}
        )

    def declare(self, variable: str, unit: str, description: str) -> None:
        if variable not in CANONICAL_VARIABLES and variable not in self.variables:
            self.variables[variable] = (unit, description)


def _read_lac(path: Path, out: _Collector, problems: list[Problem], notes: list[str]) -> dict[str, list[Any]]:
    """lac_ammonia_glc_fitting.xlsx: 6 analytes (umol/L) + dry weight, 160 samples. Returns raw rows by label."""
    sheets = _load_sheets(path, [""], problems)
    if not sheets:
        return {}
    rows = sheets[""]
    if not rows or _sample_numbers(rows[0], 1, 160, path, "<first>", problems) is None:
        return {}
    unit_cell = str(rows[0][0] or "").strip()
    if unit_cell.replace("µ", "u") != "umol/L":
        problems.append(_problem(path, f"expected the unit 'umol/L' in cell A1, found {unit_cell!r}", row=1,
                                 column="A"))
        return {}
    labelled = _rows_by_label(rows)
    raw: dict[str, list[Any]] = {}
    missing: dict[int, list[str]] = {}
    for label, (variable, unit) in LAC_ROWS.items():
        if label not in labelled:
            problems.append(_problem(path, f"row {label!r} missing"))
            continue
        r, row = labelled[label]
        values = list(row[1:161]) + [None] * max(0, 161 - len(row))
        raw[label] = values
        for s in range(1, 161):
            try:
                v = _as_float(values[s - 1])
            except ValueError:
                problems.append(_problem(path, f"not a number: {values[s - 1]!r}", row=r, column=_col_letter(s)))
                continue
            if v is None:
                missing.setdefault(s, []).append(label)
                continue
            cond, t, rep = _map_160(s)
            out.add(cond, t, variable, v, unit, rep)
        if variable in LAC_DESCRIPTIONS:
            out.declare(variable, unit, LAC_DESCRIPTIONS[variable])
    if missing:
        where = "; ".join(
            f"Sample {s} = {_map_160(s)[0]} {_map_160(s)[1]:g} h replicate {_map_160(s)[2]}: {', '.join(labels)}"
            for s, labels in sorted(missing.items())
        )
        notes.append(f"{LAC_FILE}: empty cells skipped (not measured): {where}.")
    return raw


def _read_metabolomics(
    path: Path, lac_raw: dict[str, list[Any]], out: _Collector, problems: list[Problem], notes: list[str]
) -> None:
    """Results_Metabolomics_Media_1.xlsx: LC-MS analytes + in-house block, 80 samples."""
    sheets = _load_sheets(path, [""], problems)
    if not sheets:
        return
    rows = sheets[""]
    if not rows:
        problems.append(_problem(path, "sheet is empty"))
        return
    header = rows[0]
    if [str(c).strip() if c is not None else "" for c in header[:3]] != ["Analyte", "Adduct", "Unit"]:
        problems.append(_problem(path, f"expected columns Analyte, Adduct, Unit in A1:C1, found {header[:3]!r}",
                                 row=1))
        return
    if _sample_numbers(header, 3, 80, path, "<first>", problems) is None:
        return

    # rows such as 'Mannose | sum parameter with | Glucose' carry no values: their analyte is included in another row
    summed_into: dict[str, list[str]] = {}
    for row in rows[1:]:
        if row and len(row) > 2 and str(row[1] or "").strip().lower().startswith("sum parameter"):
            target = str(row[2]).strip()
            target = {"Guanosine monophosphate": "GMP"}.get(target, target)
            summed_into.setdefault(target, []).append(str(row[0]).strip())

    loq_counts: dict[str, int] = {}
    all_loq: list[str] = []
    sum_params: list[str] = []
    used_names: dict[str, str] = {}
    inhouse_mismatch: list[str] = []
    for r, row in enumerate(rows[1:], start=2):
        if not row or row[0] is None or str(row[0]).strip() == "":
            continue
        analyte = str(row[0]).strip()
        adduct = str(row[1] or "").strip()
        unit_text = str(row[2] or "").strip()
        if adduct.lower().startswith("sum parameter"):
            sum_params.append(f"{analyte} (sum with {unit_text})")
            continue
        inhouse = adduct == "x"
        if inhouse:
            if analyte not in INHOUSE_NAMES:
                problems.append(_problem(path, f"unknown analyte {analyte!r} in the in-house block", row=r,
                                         column="A"))
                continue
            if analyte in INHOUSE_DUPLICATES_OF_LAC and INHOUSE_DUPLICATES_OF_LAC[analyte] in lac_raw:
                lac_vals = lac_raw[INHOUSE_DUPLICATES_OF_LAC[analyte]]
                for s in range(1, 81):
                    cond, t, rep = _map_80(s)
                    idx160 = (0 if cond.startswith("HP") else 80) + TIMES_160.index(t) * 8 + (
                        0 if cond.endswith("TR") else 4) + rep
                    a, b = (row[2 + s] if 2 + s < len(row) else None), lac_vals[idx160]
                    same = (a is None and b is None) or (
                        isinstance(a, (int, float)) and isinstance(b, (int, float))
                        and math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
                    )
                    if not same:
                        inhouse_mismatch.append(f"{analyte} Sample{s}")
                continue
            variable, unit = INHOUSE_NAMES[analyte], "umol/L"
            description = (f"{analyte} (in-house assay block of {METABOLOMICS_FILE}; labelled mmol/L there, "
                           "values are umol/L)")
        else:
            if unit_text.replace("µ", "u") == "umol/L":
                unit = "umol/L"
            elif unit_text == "mmol/L":
                unit = "mM"
            else:
                problems.append(_problem(path, f"unknown unit {unit_text!r} for {analyte!r}", row=r, column="C"))
                continue
            variable = MS_DUPLICATES.get(analyte) or _slug(analyte)
            description = f"{analyte} (LC-MS, adduct {adduct}; {METABOLOMICS_FILE})"
            if analyte in summed_into:
                description += f"; reported as a sum with {' and '.join(summed_into[analyte])}"
        if not _NAME_OK.match(variable):
            problems.append(_problem(path, f"cannot make a variable name from {analyte!r}", row=r, column="A"))
            continue
        if variable in used_names:
            problems.append(_problem(path, f"analytes {used_names[variable]!r} and {analyte!r} both map to "
                                           f"variable {variable!r}", row=r, column="A"))
            continue
        used_names[variable] = analyte

        n_numeric = 0
        n_loq = 0
        for s in range(1, 81):
            cell = row[2 + s] if 2 + s < len(row) else None
            if isinstance(cell, str) and cell.strip().upper() == LOQ_TOKEN.upper():
                n_loq += 1
                continue
            try:
                v = _as_float(cell)
            except ValueError:
                problems.append(_problem(path, f"not a number or {LOQ_TOKEN!r}: {cell!r}", row=r,
                                         column=_col_letter(2 + s)))
                continue
            if v is None:
                continue
            cond, t, rep = _map_80(s)
            out.add(cond, t, variable, v, unit, rep)
            n_numeric += 1
        if n_loq:
            loq_counts[variable] = n_loq
        if n_numeric == 0:
            all_loq.append(analyte)
            continue
        out.declare(variable, unit, description)

    n_loq_total = sum(loq_counts.values())
    notes.append(
        f"{METABOLOMICS_FILE}: {n_loq_total} '<LOQ' entries omitted - the workbook gives no limit of "
        "quantification, so no censored row can carry a limit value (the smallest reported value is not a LOQ); "
        f"{len(all_loq)} analytes below LOQ in every sample are not imported: {', '.join(all_loq)}."
    )
    if sum_params:
        notes.append(f"{METABOLOMICS_FILE}: rows reported only as a sum with another analyte are skipped: "
                     f"{'; '.join(sum_params)}.")
    if inhouse_mismatch:
        notes.append(f"{METABOLOMICS_FILE}: in-house rows differ from {LAC_FILE} at "
                     f"{', '.join(inhouse_mismatch[:10])}; the {LAC_FILE} values were used.")


def _read_hek_data(path: Path, out: _Collector, problems: list[Problem], notes: list[str]) -> None:
    """hek_data.xlsx: cell counts (cc_raw, 160 samples) and AAV titres (hek_data, 80 samples)."""
    sheets = _load_sheets(path, ["cc_raw", "hek_data_raw", "hek_data"], problems)
    if not sheets or len(sheets) < 3:
        return
    # cell counts: cc_raw holds all 160 samples in one row (its row label 'HP_TR' is not meaningful)
    cc = sheets["cc_raw"]
    if len(cc) < 2 or _sample_numbers(cc[0], 1, 160, path, "cc_raw", problems) is None:
        if len(cc) < 2:
            problems.append(_problem(path, "sheet 'cc_raw' has no data row"))
        return
    vcd: dict[tuple[str, float, int], float] = {}
    for s in range(1, 161):
        cell = cc[1][s] if s < len(cc[1]) else None
        try:
            v = _as_float(cell)
        except ValueError:
            problems.append(_problem(path, f"sheet 'cc_raw': not a number: {cell!r}", row=2, column=_col_letter(s)))
            continue
        if v is None:
            continue
        key = _map_160(s)
        vcd[key] = v
        out.add(key[0], key[1], "vcd", v, "cells/mL", key[2])

    # cross-check against hek_data_raw (condition rows x 20 samples, 'Timepoint' row)
    raw = _rows_by_label(sheets["hek_data_raw"])
    mismatches = 0
    checked = 0
    if "Timepoint" in raw and all(c in raw for c in CONDITIONS):
        times = raw["Timepoint"][1][1:21]
        for cond in CONDITIONS:
            values = raw[cond][1][1:21]
            for j, (t, v) in enumerate(zip(times, values, strict=True)):
                if not isinstance(t, (int, float)) or not isinstance(v, (int, float)):
                    continue
                checked += 1
                if vcd.get((cond, float(t), j % 4)) != float(v):
                    mismatches += 1
    notes.append(
        "Cell counts (vcd, cells/mL) come from hek_data.xlsx sheet cc_raw (160 samples), mapped with the README "
        "column order (per time point 4 TR then 4 MO columns). Sheet hek_data_raw agrees with this mapping "
        f"({checked - mismatches} of {checked} values checked equal), and so do the AAV titres and plasmid marks "
        "of sheet hek_data (present only in TR columns). Sheet cc_raw_grouped is NOT used: it assigns "
        "samples 5-8 (HP_MO 0 h under the README order) to HP_TR 4 h, i.e. it groups the columns as TR t_a, TR t_b, "
        "MO t_a, MO t_b, which contradicts the other sheets."
    )
    if mismatches:
        problems.append(_problem(path, f"sheet 'hek_data_raw' disagrees with cc_raw at {mismatches} of {checked} "
                                       "values: the sample -> condition mapping cannot be trusted"))

    # AAV titres (sheet hek_data, columns Sample_1..Sample_80)
    hd = sheets["hek_data"]
    if not hd or _sample_numbers(hd[0], 1, 80, path, "hek_data", problems) is None:
        return
    labelled = _rows_by_label(hd)
    n_loq = 0
    for label, (variable, unit, description) in AAV_ROWS.items():
        if label not in labelled:
            problems.append(_problem(path, f"sheet 'hek_data': row {label!r} missing"))
            continue
        r, row = labelled[label]
        n_numeric = 0
        for s in range(1, 81):
            cell = row[s] if s < len(row) else None
            if isinstance(cell, str) and cell.strip().upper() == LOQ_TOKEN.upper():
                n_loq += 1
                continue
            try:
                v = _as_float(cell)
            except ValueError:
                problems.append(_problem(path, f"sheet 'hek_data': not a number: {cell!r}", row=r,
                                         column=_col_letter(s)))
                continue
            if v is None:
                continue
            cond, t, rep = _map_80(s)
            out.add(cond, t, variable, v, unit, rep)
            n_numeric += 1
        if n_numeric:
            out.declare(variable, unit, description)
    notes.append(
        "AAV titres of the main study come from hek_data.xlsx sheet hek_data rows AAV_VP_CT/SN (capsids) and "
        "AAV_VG_CT/SN (genomes), TR conditions at 24/48/72 h. The source states no unit (per mL assumed, as in "
        f"{VALIDATION_FILE}) and does not define 'CT' (cell or crude lysate) - so they are declared variables "
        "capsid_titer_ct, capsid_titer_sn, vg_titer_ct, vg_titer_sn, not the canonical capsid_titer / vg_titer. "
        f"{n_loq} '<LOQ' entries omitted (no limit given)."
    )


def _read_validation(path: Path, out: _Collector, problems: list[Problem], notes: list[str]) -> None:
    """aav_inh_results_final.xlsx sheet Tabelle1: 3 conditions x 2 cultures x 4 time points."""
    sheets = _load_sheets(path, ["Tabelle1"], problems)
    if not sheets:
        return
    rows = sheets["Tabelle1"]
    labelled = _rows_by_label(rows)
    need = ["Timepoint", *VALIDATION_ROWS]
    missing = [lab for lab in need if lab not in labelled]
    if missing:
        problems.append(_problem(path, f"sheet 'Tabelle1': rows {missing} missing"))
        return
    _, trow = labelled["Timepoint"]
    columns_by_time: dict[float, list[int]] = {}
    for j in range(1, len(trow)):
        try:
            t = _as_float(trow[j])
        except ValueError:
            problems.append(_problem(path, f"sheet 'Tabelle1': time is not a number: {trow[j]!r}",
                                     row=labelled["Timepoint"][0], column=_col_letter(j)))
            continue
        if t is not None:
            columns_by_time.setdefault(t, []).append(j)
    per_time = 2 * len(VALIDATION_CONDITIONS)
    for t, cols in columns_by_time.items():
        if len(cols) != per_time:
            problems.append(_problem(path, f"sheet 'Tabelle1': {len(cols)} columns at {t:g} h, expected {per_time}"))
            return
    for label, (variable, unit) in VALIDATION_ROWS.items():
        r, row = labelled[label]
        for t, cols in sorted(columns_by_time.items()):
            for i, j in enumerate(cols):
                cell = row[j] if j < len(row) else None
                try:
                    v = _as_float(cell)  # titres are partly stored as text, e.g. '2.563e+9'
                except ValueError:
                    problems.append(_problem(path, f"sheet 'Tabelle1': not a number: {cell!r}", row=r,
                                             column=_col_letter(j)))
                    continue
                if v is None:
                    continue
                batch = VALIDATION_CONDITIONS[i // 2][0]
                out.add(batch, t, variable, v, unit, i % 2)
    notes.append(
        f"{VALIDATION_FILE} sheet Tabelle1 is a separate validation experiment (README of the source: titres after "
        "media supplementation and HIF1alpha inhibitor): 3 batches VAL_SUP, VAL_INH, VAL_REF; within each time "
        "point columns 1-2 = supplementation, 3-4 = inhibitor, 5-6 = reference (grouping of the authors' "
        "validation script); the two columns are replicate measurements (replicate 0, 1). VC -> capsid_titer "
        "(capsid/mL), VG -> vg_titer (vg/mL), CC -> vcd (1e6 cells/mL). The 0 h titres are reported as 0 and kept. "
        "The strain is not stated (the study links HIF1alpha to the LP strain, but the file does not say): "
        "covariate strain left blank. Times and amounts of the supplement / inhibitor additions are not given: "
        "no events for them."
    )
    notes.append(
        f"{VALIDATION_FILE} sheet Tabelle2 (experiment 'EDP2324', vessels V1-V8, supernatant titres at 24-90 h) "
        "is not imported: its design is not documented, its VC column is not aligned with its VG column (rows "
        "mix T03_72 and T04_90 samples and include cell-associated 'YCTCP' capsids), and no cell counts exist."
    )


# --- public API -------------------------------------------------------------------------------------------------
def read_hek293_zehetner(folder: str | os.PathLike[str], *, include_validation: bool = True) -> CampaignTables:
    """Read the Zehetner et al. HEK293 rAAV8 study into campaign tables.

    Args:
        folder: the ``HEK293_AAV`` folder (e.g. ``../shared/datasets/hek293_aav8_zehetner``) holding
            ``lac_ammonia_glc_fitting.xlsx``, ``Results_Metabolomics_Media_1.xlsx``, ``hek_data.xlsx`` and
            (for the validation runs) ``aav_inh_results_final.xlsx``.
        include_validation: also import the validation experiment (batches ``VAL_SUP``, ``VAL_INH``,
            ``VAL_REF``) from ``aav_inh_results_final.xlsx``.

    Returns:
        `CampaignTables` with batches ``HP_TR``, ``HP_MO``, ``LP_TR``, ``LP_MO`` (+ validation batches); times in h
        post transfection; metabolites in umol/L, cell counts in cells/mL (validation: 1e6 cells/mL), titres
        in capsid/mL and vg/mL. Replicate samples of one condition and time are repeated measurements of one
        batch (``replicate`` 0..3). ``notes`` lists every import policy decision.

    Raises:
        CampaignValidationError: a file is missing or unreadable, or lacks an expected sheet, row or column.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CampaignValidationError([_problem(root, "dataset folder not found")])

    problems: list[Problem] = []
    notes: list[str] = []
    out = _Collector()

    lac_raw = _read_lac(root / LAC_FILE, out, problems, notes)
    _read_metabolomics(root / METABOLOMICS_FILE, lac_raw, out, problems, notes)
    _read_hek_data(root / HEK_DATA_FILE, out, problems, notes)
    if include_validation:
        _read_validation(root / VALIDATION_FILE, out, problems, notes)
    if problems:
        raise CampaignValidationError(problems)

    notes[:0] = [
        "One batch per condition (HP_TR, HP_MO, LP_TR, LP_MO = strain x transfected/mock); the 4 samples of a "
        "condition at one time point are repeated measurements of that batch (replicate 0-3 = position of the "
        "sample among the 4 columns). A replicate index does not identify the same flask across time points or "
        "files.",
        "Sample -> condition mapping (datasets README, the authors' exchange_rates_calculation_final.R): 160-sample "
        "files (times 0,4,21,24,27,45,48,51,69,72 h): HP = samples 1-80, LP = 81-160, per time point 8 columns = "
        "4 TR then 4 MO; 80-sample files (times 0,4,24,48,72 h): HP = 1-40, LP = 41-80, same 4 TR + 4 MO blocks.",
        "time_h is hours post transfection (the 0 h sample is taken before transfection); the time of inoculation "
        "is not given, start_time left blank.",
        f"Volume: the source gives none; initial_volume is a nominal {NOMINAL_VOLUME_ML:g} mL (typical working "
        "volume of a 125 mL shake flask). Batch culture without feeds (feeds_known = True, no bolus events); "
        "concentrations do not depend on the nominal volume, totals do - do not use it for mass totals.",
        "Transfection: a 'transfection' event at 0 h for every transfected batch (TR and validation batches); "
        "the plasmid dose is not given, amount left blank (NaN, unit ug/mL nominal). Mock (MO) batches get a "
        "'transfection' event with amount 0 (no plasmid DNA); whether transfection reagent was added is not "
        "stated in the source.",
        f"Metabolites: {LAC_FILE} (in-house assays; NH3, glucose, lactate, pyruvate, glycine, proline in umol/L, "
        "10 time points) gives the canonical ammonia, glucose, lactate, pyruvate, glycine, proline; its 'Bm' row "
        "is imported as the declared variable dry_weight (g per pellet). Exact zeros (glucose and pyruvate "
        "depleted at 45-72 h; galactose and cysteine of the in-house block) are kept as reported values 0, not "
        "censored, because no detection limit is stated.",
        f"{METABOLOMICS_FILE}: the last block (adduct 'x': Glycine, Proline, Tryptophane, Cysteine, Glutamine, "
        "Ammonia, Lactate, Galactose, Pyruvate) are the authors' in-house assays; it is labelled mmol/L but its "
        f"values equal {LAC_FILE} (umol/L), so it is read as umol/L. Its glycine, proline, ammonia, lactate and "
        f"pyruvate repeat {LAC_FILE} and are not imported twice; tryptophan, cysteine, glutamine (the authors "
        "replace the LC-MS glutamine by this one) and galactose are imported under canonical names.",
        f"{METABOLOMICS_FILE}: LC-MS analytes (umol/L) use lower-case snake_case names (amino acids by English name; "
        "'Aspartic acid' -> aspartate; names starting with a locant are rewritten, e.g. '3-Phosphoglyceric acid' "
        "-> glycerate_3_phosphate). Where an in-house assay measures the same analyte the LC-MS series gets the "
        "suffix _ms: glucose_ms (glucose+mannose sum; about 4x lower than the in-house glucose), lactate_ms, "
        "pyruvate_ms, glycine_ms, proline_ms, glutamine_ms, tryptophan_ms. Non-canonical names are declared in "
        "the variables table with the original analyte name.",
        "Not imported: gln_depletion.xlsx (cell-free glutamine decay control, not a culture), growth_results.csv "
        "(fitted rates, derived), hek_data.xlsx biomass-composition rows (DNA, RNA, protein, lipid, pellet "
        "glucose) and the lipidomics sheets (per-pellet composition, not culture state).",
    ]

    meas = pd.DataFrame(out.rows, columns=[*MEASUREMENT_COLUMNS, "censored", "replicate"])
    meas = meas.sort_values(["batch", "variable", "time_h", "replicate"], kind="stable").reset_index(drop=True)
    meas["replicate"] = meas["replicate"].astype(int)

    batch_rows = []
    for cond in CONDITIONS:
        strain, mode = cond.split("_")
        batch_rows.append(
            {"batch": cond, "cell_type": "hek293", "initial_volume": NOMINAL_VOLUME_ML, "volume_unit": "mL",
             "max_volume": math.nan, "initial_medium": "", "start_time": "", "feeds_known": True,
             "strain": strain, "transfected": mode == "TR", "condition": mode, "experiment": "main"}
        )
    if include_validation:
        for batch, condition in VALIDATION_CONDITIONS:
            batch_rows.append(
                {"batch": batch, "cell_type": "hek293", "initial_volume": NOMINAL_VOLUME_ML, "volume_unit": "mL",
                 "max_volume": math.nan, "initial_medium": "", "start_time": "", "feeds_known": True,
                 "strain": "", "transfected": True, "condition": condition, "experiment": "validation"}
            )
    batches = pd.DataFrame(
        batch_rows,
        columns=[*BATCH_COLUMNS, "max_volume", "initial_medium", "start_time", "feeds_known", "strain",
                 "transfected", "condition", "experiment"],
    )

    event_rows = []
    for row in batch_rows:
        if row["transfected"]:
            event_rows.append(
                {"batch": row["batch"], "time_h": 0.0, "kind": "transfection", "target": "plasmid",
                 "amount": math.nan, "unit": "ug/mL", "medium": "",
                 "note": "triple transfection; plasmid dose not given in the source"}
            )
        else:
            event_rows.append(
                {"batch": row["batch"], "time_h": 0.0, "kind": "transfection", "target": "plasmid",
                 "amount": 0.0, "unit": "ug/mL", "medium": "",
                 "note": "mock transfection: no plasmid DNA"}
            )
    events = pd.DataFrame(event_rows, columns=[*EVENT_COLUMNS, "note"])

    variables = pd.DataFrame(
        [{"variable": v, "unit": u, "description": d} for v, (u, d) in sorted(out.variables.items())],
        columns=list(VARIABLE_COLUMNS),
    )
    return CampaignTables(
        batches=batches,
        measurements=meas,
        events=events,
        variables=variables,
        notes=notes,
        source=f"hek293_zehetner:{root}",
    )

