"""Tests of the HEK293 rAAV8 (Zehetner et al.) importer against the real workbooks.

Expected values are read independently with openpyxl by explicit cell coordinates:

* ``lac_ammonia_glc_fitting.xlsx`` (one sheet): row 2 Nh3, 3 Glc, 4 Lac, 5 Pyr, 6 Gly, 7 Pro, 8 Bm; column B =
  Sample 1 ... FE = Sample 160. HP_TR at 24 h (4th time point) = Samples 25-28 = columns Z, AA, AB, AC.
* ``Results_Metabolomics_Media_1.xlsx`` (one sheet): column D = Sample1 ... CE = Sample80; row 15 Alanine,
  row 56 Glucose (LC-MS), row 62 Glycine (LC-MS), row 134 Glutamine (in-house). LP_MO at 72 h = Samples 77-80 =
  columns CB-CE; HP_TR at 24 h = Samples 17-20 = columns T-W.
* ``hek_data.xlsx`` sheet ``cc_raw`` row 2, column B = Sample_1 (cell counts); sheet ``hek_data`` rows 10-13 AAV
  titres (VP_CT, VP_SN, VG_CT, VG_SN), HP_TR 72 h = Sample_33-36 = columns AH-AK.
* ``aav_inh_results_final.xlsx`` sheet ``Tabelle1``: row 2 time, row 3 VC, row 4 VG, row 5 CC; 72 h = columns T-Y.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cgt_twin.data.errors import CampaignValidationError
from cgt_twin.data.importers.hek293_zehetner import read_hek293_zehetner

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
FOLDER = DATASETS / "hek293_aav8_zehetner"
FILES = ("lac_ammonia_glc_fitting.xlsx", "Results_Metabolomics_Media_1.xlsx", "hek_data.xlsx",
         "aav_inh_results_final.xlsx")
HAVE_DATA = all((FOLDER / f).exists() for f in FILES)
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"HEK293 rAAV8 dataset not available at {FOLDER}")


@pytest.fixture(scope="module")
def tables():
    if not HAVE_DATA:
        pytest.skip(f"HEK293 rAAV8 dataset not available at {FOLDER}")
    return read_hek293_zehetner(FOLDER)


@pytest.fixture(scope="module")
def books():
    if not HAVE_DATA:
        pytest.skip(f"HEK293 rAAV8 dataset not available at {FOLDER}")
    import openpyxl

    opened = {name: openpyxl.load_workbook(FOLDER / name, data_only=True) for name in FILES}
    yield opened
    for wb in opened.values():
        wb.close()


def cells(ws, row: int, columns: str) -> list:
    return [ws[f"{c}{row}"].value for c in columns.split()]


def values(tables, batch: str, variable: str, time_h: float) -> list[tuple[int, float, str]]:
    m = tables.measurements
    sel = m[(m["batch"] == batch) & (m["variable"] == variable) & (m["time_h"] == time_h)]
    return sorted(zip(sel["replicate"], sel["value"], sel["unit"], strict=True))


@pytest.mark.realdata
@needs_data
def test_batches_and_covariates(tables):
    b = tables.batches.set_index("batch")
    assert list(b.index) == ["HP_TR", "HP_MO", "LP_TR", "LP_MO", "VAL_SUP", "VAL_INH", "VAL_REF"]
    assert set(b["cell_type"]) == {"hek293"}
    assert b.loc["HP_TR", "strain"] == "HP" and b.loc["LP_MO", "strain"] == "LP"
    assert bool(b.loc["HP_TR", "transfected"]) and not bool(b.loc["LP_MO", "transfected"])
    assert b.loc["VAL_INH", "condition"] == "HIF1a_inhibitor"
    assert (b["initial_volume"] > 0).all() and set(b["volume_unit"]) == {"mL"}
    assert b["feeds_known"].all()


@pytest.mark.realdata
@needs_data
def test_glucose_hp_tr_24h_replicates(tables, books):
    ws = books["lac_ammonia_glc_fitting.xlsx"].worksheets[0]
    assert cells(ws, 1, "Z AC") == ["Sample 25", "Sample 28"]
    expected = cells(ws, 3, "Z AA AB AC")
    got = values(tables, "HP_TR", "glucose", 24.0)
    assert [r for r, _, _ in got] == [0, 1, 2, 3]
    assert [u for _, _, u in got] == ["umol/L"] * 4
    assert [v for _, v, _ in got] == pytest.approx(expected, rel=1e-12)


@pytest.mark.realdata
@needs_data
def test_mock_columns_and_lp_half(tables, books):
    ws = books["lac_ammonia_glc_fitting.xlsx"].worksheets[0]
    # HP_MO at 24 h = Samples 29-32 (AD-AG); LP_TR at 0 h = Samples 81-84 (CD-CG); NH3 in row 2
    assert [v for _, v, _ in values(tables, "HP_MO", "lactate", 24.0)] == pytest.approx(
        cells(ws, 4, "AD AE AF AG"), rel=1e-12)
    assert [v for _, v, _ in values(tables, "LP_TR", "ammonia", 0.0)] == pytest.approx(
        cells(ws, 2, "CD CE CF CG"), rel=1e-12)


@pytest.mark.realdata
@needs_data
def test_empty_cell_is_skipped_not_zero(tables, books):
    ws = books["lac_ammonia_glc_fitting.xlsx"].worksheets[0]
    assert ws["AH1"].value == "Sample 33" and ws["AH3"].value is None  # HP_TR 27 h replicate 0
    reps = [r for r, _, _ in values(tables, "HP_TR", "glucose", 27.0)]
    assert reps == [1, 2, 3]


@pytest.mark.realdata
@needs_data
def test_metabolomics_analyte_and_loq(tables, books):
    ws = books["Results_Metabolomics_Media_1.xlsx"].worksheets[0]
    assert ws["A15"].value == "Alanine" and ws["CB1"].value == "Sample77"
    got = values(tables, "LP_MO", "alanine", 72.0)
    assert [v for _, v, _ in got] == pytest.approx(cells(ws, 15, "CB CC CD CE"), rel=1e-12)
    # LC-MS glycine of HP_TR 0 h: Sample2 and Sample4 are '<LOQ' -> omitted (no limit given), others kept
    assert ws["A62"].value == "Glycine" and cells(ws, 62, "D E F G")[1] == "<LOQ"
    raw = cells(ws, 62, "D E F G")
    got = values(tables, "HP_TR", "glycine_ms", 0.0)
    assert [(r, v) for r, v, _ in got] == [(i, pytest.approx(x)) for i, x in enumerate(raw) if x != "<LOQ"]
    assert (tables.measurements["censored"] == "").all()


@pytest.mark.realdata
@needs_data
def test_inhouse_glutamine_is_canonical_and_umol(tables, books):
    ws = books["Results_Metabolomics_Media_1.xlsx"].worksheets[0]
    assert (ws["A134"].value, ws["B134"].value) == ("Glutamine", "x")
    got = values(tables, "HP_TR", "glutamine", 24.0)  # Samples 17-20 = columns T-W
    assert [v for _, v, _ in got] == pytest.approx(cells(ws, 134, "T U V W"), rel=1e-12)
    assert {u for _, _, u in got} == {"umol/L"}
    assert "glutamine_ms" in set(tables.variables["variable"])


@pytest.mark.realdata
@needs_data
def test_declared_variables_cover_noncanonical(tables):
    from cgt_twin.data.variables import CANONICAL_VARIABLES

    emitted = set(tables.measurements["variable"])
    declared = set(tables.variables["variable"])
    assert emitted - set(CANONICAL_VARIABLES) == declared
    assert not declared & set(CANONICAL_VARIABLES)
    assert {"glucose_ms", "dry_weight", "vg_titer_sn", "capsid_titer_ct"} <= declared


@pytest.mark.realdata
@needs_data
def test_cell_counts(tables, books):
    ws = books["hek_data.xlsx"]["cc_raw"]
    # LP_MO 72 h = Samples 157-160 = columns FB-FE
    assert ws["FE1"].value == "Sample_160"
    got = values(tables, "LP_MO", "vcd", 72.0)
    assert [v for _, v, _ in got] == pytest.approx(cells(ws, 2, "FB FC FD FE"))
    assert {u for _, _, u in got} == {"cells/mL"}


@pytest.mark.realdata
@needs_data
def test_main_study_titres(tables, books):
    ws = books["hek_data.xlsx"]["hek_data"]
    assert ws["A13"].value == "AAV_VG_SN" and ws["AH1"].value == "Sample_33"
    got = values(tables, "HP_TR", "vg_titer_sn", 72.0)
    assert [v for _, v, _ in got] == pytest.approx(cells(ws, 13, "AH AI AJ AK"), rel=1e-12)
    assert {u for _, _, u in got} == {"vg/mL"}
    assert values(tables, "HP_MO", "vg_titer_sn", 72.0) == []  # mock: no titres


@pytest.mark.realdata
@needs_data
def test_validation_titres(tables, books):
    ws = books["aav_inh_results_final.xlsx"]["Tabelle1"]
    assert cells(ws, 2, "T Y") == [72, 72]
    vc = [float(x) for x in cells(ws, 3, "T U V W X Y")]  # partly stored as text, e.g. '1.659e+10'
    vg = [float(x) for x in cells(ws, 4, "T U V W X Y")]
    cc = cells(ws, 5, "T U V W X Y")
    for k, batch in enumerate(["VAL_SUP", "VAL_INH", "VAL_REF"]):
        assert [v for _, v, _ in values(tables, batch, "capsid_titer", 72.0)] == pytest.approx(vc[2 * k:2 * k + 2])
        assert [v for _, v, _ in values(tables, batch, "vg_titer", 72.0)] == pytest.approx(vg[2 * k:2 * k + 2])
        got = values(tables, batch, "vcd", 72.0)
        assert [v for _, v, _ in got] == pytest.approx(cc[2 * k:2 * k + 2])
        assert {u for _, _, u in got} == {"1e6 cells/mL"}


@pytest.mark.realdata
@needs_data
def test_transfection_events(tables):
    ev = tables.events.set_index("batch")
    assert set(ev["kind"]) == {"transfection"} and (ev["time_h"] == 0).all()
    assert math.isnan(ev.loc["HP_TR", "amount"]) and ev.loc["HP_MO", "amount"] == 0.0
    assert "VAL_REF" in ev.index


@pytest.mark.realdata
@needs_data
def test_builds_a_valid_campaign(tables):
    from cgt_twin.data import campaign_from_tables

    campaign = campaign_from_tables(tables)
    assert len(campaign.data["batch"]) == 7
    # umol/L -> mM in the campaign
    ws_value = values(tables, "HP_TR", "glucose", 24.0)[0][1]
    got = float(campaign.data["glucose"].sel(batch="HP_TR", time=24.0, phase="pre", replicate=0))
    assert got == pytest.approx(ws_value / 1000.0)
    assert tables.notes and all(isinstance(n, str) for n in tables.notes)


def test_missing_folder_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CampaignValidationError) as info:
        read_hek293_zehetner(missing)
    assert str(missing) in str(info.value)


def test_missing_and_bad_files_are_named(tmp_path):
    (tmp_path / "lac_ammonia_glc_fitting.xlsx").write_text("not a workbook")
    with pytest.raises(CampaignValidationError) as info:
        read_hek293_zehetner(tmp_path)
    files = {p.file for p in info.value.problems}
    assert str(tmp_path / "lac_ammonia_glc_fitting.xlsx") in files
    assert str(tmp_path / "hek_data.xlsx") in files
    assert any("file not found" in p.message for p in info.value.problems)


def test_missing_sheet_is_reported(tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.title = "something_else"
    wb.save(tmp_path / "hek_data.xlsx")
    with pytest.raises(CampaignValidationError) as info:
        read_hek293_zehetner(tmp_path)
    messages = [p.message for p in info.value.problems if p.file == str(tmp_path / "hek_data.xlsx")]
    assert any("cc_raw" in m for m in messages)
