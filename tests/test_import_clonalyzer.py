"""Tests of the clonalyzer shake-flask importer against the real CSVs.

Expected values are read independently with the csv module, located by the code row (row 2) and the clone,
time and replicate columns.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from cgt_twin.data.errors import CampaignValidationError
from cgt_twin.data.importers.clonalyzer import read_clonalyzer

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FOLDER = DATASETS / "cho_clones_shakeflask"
BC_FILE = FOLDER / "2024-05-18_Clones_B_C_Kinetics.csv"
NOV_FILE = FOLDER / "Datos_cinetica_06nov2024.csv"
HAVE_DATA = BC_FILE.exists() and NOV_FILE.exists()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"clonalyzer CSVs not available at {FOLDER}")


def _load(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    codes = [c.strip() for c in rows[1]]
    return codes, rows[2:]


def raw(path: Path, clone: str, t: str, rep: str, code: str) -> str:
    """The cell of column `code` in the row of (clone, T, rep), as text."""
    codes, rows = _load(path)
    ci, ti, ri, k = codes.index("Clone"), codes.index("T"), codes.index("rep"), codes.index(code)
    hits = [r[k] for r in rows if r and r[ci] == clone and r[ti] == t and r[ri] == rep]
    assert len(hits) == 1, (clone, t, rep, code, hits)
    return hits[0]


@pytest.fixture(scope="module")
def folder_tables():
    if not HAVE_DATA:
        pytest.skip(f"clonalyzer CSVs not available at {FOLDER}")
    return read_clonalyzer(FOLDER)


@pytest.fixture(scope="module")
def bc_tables():
    if not HAVE_DATA:
        pytest.skip(f"clonalyzer CSVs not available at {FOLDER}")
    return read_clonalyzer(BC_FILE)


@pytest.fixture(scope="module")
def nov_tables():
    if not HAVE_DATA:
        pytest.skip(f"clonalyzer CSVs not available at {FOLDER}")
    return read_clonalyzer(NOV_FILE)


def one(tables, batch: str, variable: str, time_h: float, phase: str = "pre"):
    m = tables.measurements
    sel = m[(m["batch"] == batch) & (m["variable"] == variable) & (m["time_h"] == time_h) & (m["phase"] == phase)]
    assert len(sel) <= 1
    return None if sel.empty else (float(sel["value"].iloc[0]), sel["unit"].iloc[0])


@pytest.mark.realdata
@needs_data
def test_batches_single_file(bc_tables):
    b = bc_tables.batches.set_index("batch")
    assert list(b.index) == ["B_rep1", "B_rep2", "B_rep3", "C_rep1", "C_rep2", "C_rep3"]
    assert set(b["cell_type"]) == {"cho"}
    assert not b["feeds_known"].any()
    assert b.loc["B_rep1", "clone"] == "B" and b.loc["B_rep1", "flask"] == 1
    assert set(b["source_file"]) == {BC_FILE.name}
    assert bc_tables.events.empty


@pytest.mark.realdata
@needs_data
def test_clone_b_rep1_glucose_day1(bc_tables):
    expected = float(raw(BC_FILE, "B", "1", "1", "G"))
    assert one(bc_tables, "B_rep1", "glucose", 24.0) == (pytest.approx(expected), "g/L")


@pytest.mark.realdata
@needs_data
def test_clone_b_units(bc_tables):
    assert one(bc_tables, "C_rep2", "vcd", 96.0) == (pytest.approx(float(raw(BC_FILE, "C", "4", "2", "Xv"))),
                                                      "cells/mL")
    assert one(bc_tables, "C_rep2", "viability", 96.0) == (pytest.approx(float(raw(BC_FILE, "C", "4", "2", "V"))),
                                                            "percent")
    assert one(bc_tables, "B_rep3", "glutamine", 120.0) == (
        pytest.approx(float(raw(BC_FILE, "B", "5", "3", "Gln"))), "mM")
    assert one(bc_tables, "B_rep2", "titer", 72.0) == (pytest.approx(float(raw(BC_FILE, "B", "3", "2", "MAb"))),
                                                        "mg/mL")
    times = sorted(set(bc_tables.measurements["time_h"]))
    assert times == [24.0 * d for d in range(6)]


@pytest.mark.realdata
@needs_data
def test_glucose_converts_to_mM(bc_tables):
    from cgt_twin.data import campaign_from_tables

    campaign = campaign_from_tables(bc_tables)
    g_per_l = float(raw(BC_FILE, "B", "1", "1", "G"))
    got = float(campaign.data["glucose"].sel(batch="B_rep1", time=24.0, phase="pre", replicate=0))
    assert got == pytest.approx(g_per_l / 180.16 * 1000.0, rel=1e-6)
    viability = float(campaign.data["viability"].sel(batch="B_rep1", time=24.0, phase="pre", replicate=0))
    assert viability == pytest.approx(float(raw(BC_FILE, "B", "1", "1", "V")) / 100.0)


@pytest.mark.realdata
@needs_data
def test_post_feed_rows(nov_tables):
    # C rep 1: day 4 (pre) and 4.1 (post-feed re-measurement) -> both at 96 h
    pre = float(raw(NOV_FILE, "C", "4", "1", "G"))
    post = float(raw(NOV_FILE, "C", "4.1", "1", "G"))
    assert one(nov_tables, "C_rep1", "glucose", 96.0, "pre") == (pytest.approx(pre), "g/L")
    assert one(nov_tables, "C_rep1", "glucose", 96.0, "post") == (pytest.approx(post), "g/L")
    glu_post = float(raw(NOV_FILE, "X-E6", "6.2", "2", "Glu"))  # the day-6 post rows are labelled 6.2
    assert one(nov_tables, "X-E6_rep2", "glutamate", 144.0, "post") == (pytest.approx(glu_post), "mM")
    m = nov_tables.measurements
    post_rows = m[m["phase"] == "post"]
    assert set(post_rows["variable"]) <= {"glucose", "lactate", "glutamine", "glutamate", "titer"}
    assert not (m["time_h"] % 24).any()  # no fractional-day times
    # post rows at day 8 are copies of the pre rows (G and L identical) and are not imported
    assert raw(NOV_FILE, "C", "8.1", "1", "G") == raw(NOV_FILE, "C", "8", "1", "G")
    assert one(nov_tables, "C_rep1", "glucose", 192.0, "post") is None


@pytest.mark.realdata
@needs_data
def test_haemocytometer_file_imports_derived_columns(nov_tables):
    xv = float(raw(NOV_FILE, "X-D2", "3", "2", "Xv"))
    xm = float(raw(NOV_FILE, "X-D2", "3", "2", "Xm"))
    via = float(raw(NOV_FILE, "X-D2", "3", "2", "Viabilidad").rstrip("%"))
    assert one(nov_tables, "X-D2_rep2", "vcd", 72.0) == (pytest.approx(xv), "cells/mL")
    assert one(nov_tables, "X-D2_rep2", "dead_cells", 72.0) == (pytest.approx(xm), "cells/mL")
    assert one(nov_tables, "X-D2_rep2", "viability", 72.0) == (pytest.approx(via), "percent")
    # blank glucose (C rep 2, day 10) is skipped, not zero
    assert raw(NOV_FILE, "C", "10", "2", "G").strip() == ""
    assert one(nov_tables, "C_rep2", "glucose", 240.0) is None
    assert "titer" not in set(nov_tables.measurements["variable"])  # AcM column is empty


@pytest.mark.realdata
@needs_data
def test_folder_prefixes_file_stem(folder_tables):
    names = list(folder_tables.batches["batch"])
    assert len(names) == len(set(names)) == 14
    assert "2024-05-18_Clones_B_C_Kinetics_C_rep1" in names
    assert "Datos_cinetica_06nov2024_C_rep1" in names
    assert set(folder_tables.measurements["batch"]) == set(names)
    assert not folder_tables.batches["feeds_known"].any()


@pytest.mark.realdata
@needs_data
def test_folder_builds_a_valid_campaign(folder_tables):
    from cgt_twin.data import campaign_from_tables

    campaign = campaign_from_tables(folder_tables)
    assert len(campaign.data["batch"]) == 14
    assert all(isinstance(n, str) for n in folder_tables.notes)


def test_missing_path_raises(tmp_path):
    missing = tmp_path / "absent.csv"
    with pytest.raises(CampaignValidationError) as info:
        read_clonalyzer(missing)
    assert str(missing) in str(info.value)


def test_bad_csv_names_file_and_row(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Metadata:,,,\nClone,T,Xv,rep\nB,0,abc,1\n", encoding="utf-8")
    with pytest.raises(CampaignValidationError) as info:
        read_clonalyzer(bad)
    [problem] = info.value.problems
    assert problem.file == str(bad) and problem.row == 3 and problem.column == "Xv"


def test_csv_without_codes_is_rejected(tmp_path):
    bad = tmp_path / "nocodes.csv"
    bad.write_text("a,b,c\n1,2,3\n", encoding="utf-8")
    with pytest.raises(CampaignValidationError) as info:
        read_clonalyzer(bad)
    assert info.value.problems[0].file == str(bad)


def test_empty_folder_is_rejected(tmp_path):
    with pytest.raises(CampaignValidationError):
        read_clonalyzer(tmp_path)


def test_post_row_time_and_phase_synthetic(tmp_path):
    f = tmp_path / "tiny.csv"
    f.write_text(
        "Metadata:,,,,,\nClone,T,Xv,V,G,rep\n"
        "A,5,1.0E+06,95,3.0,1\nA,5.1,1.0E+06,95,5.0,1\nA,6,1.2E+06,94,4.0,1\n",
        encoding="utf-8",
    )
    t = read_clonalyzer(f)
    m = t.measurements
    post = m[m["phase"] == "post"]
    assert list(post["variable"]) == ["glucose"] and list(post["time_h"]) == [120.0]
    assert float(post["value"].iloc[0]) == 5.0
    assert math.isclose(float(m[(m["variable"] == "vcd") & (m["time_h"] == 144.0)]["value"].iloc[0]), 1.2e6)
