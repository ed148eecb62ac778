"""Tests of the CDPpy importer against the UMN CHO fed-batch workbook.

Expected values are read independently from the workbook with openpyxl by explicit cell coordinates (sheet
``Measured Data``: run 11 = rows 3-15, 12 = 16-28, 13 = 29-41, 23 = 42-56, 22 = 57-71, 21 = 72-86, 31 = 87-101,
32 = 102-116, 33 = 117-131; columns A timestamp, G sample volume, J base, K viable cells, N IgG, O 'F01',
P 'F02', Q 'Feed 2', W / AC / AG glucose / lactate / NH3 before feeding, AU / BA after feeding).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from cgt_twin.data.errors import CampaignValidationError
from cgt_twin.data.importers.cdppy import read_cdppy

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
WORKBOOK = DATASETS / "umn_cho_fedbatch" / "fedbatch_9runs_3cell_lines.xlsx"

# first and last sheet row of each run
RUN_ROWS = {"11": (3, 15), "12": (16, 28), "13": (29, 41), "23": (42, 56), "22": (57, 71), "21": (72, 86),
            "31": (87, 101), "32": (102, 116), "33": (117, 131)}

_skip_without_workbook = pytest.mark.skipif(
    not WORKBOOK.exists(), reason=f"CDPpy workbook not available at {WORKBOOK} (shared datasets absent)")


def needs_workbook(test):
    """Marks a test as reading the real workbook (``realdata``) and skips it when the workbook is absent."""
    return pytest.mark.realdata(_skip_without_workbook(test))


@pytest.fixture(scope="module")
def tables():
    if not WORKBOOK.exists():
        pytest.skip(f"CDPpy workbook not available at {WORKBOOK}")
    return read_cdppy(WORKBOOK)


@pytest.fixture(scope="module")
def sheet():
    if not WORKBOOK.exists():
        pytest.skip(f"CDPpy workbook not available at {WORKBOOK}")
    import openpyxl

    workbook = openpyxl.load_workbook(WORKBOOK, data_only=True)
    yield workbook
    workbook.close()


def hours(sheet, run: str, row: int) -> float:
    """Hours of sheet row `row` since the run's first row, from column A."""
    ws = sheet["Measured Data"]
    first = ws[f"A{RUN_ROWS[run][0]}"].value
    return (ws[f"A{row}"].value - first).total_seconds() / 3600.0


def measured(tables, run: str, variable: str, time_h: float, phase: str = "pre"):
    m = tables.measurements
    hit = m[(m["batch"] == run) & (m["variable"] == variable) & (m["phase"] == phase)
            & ((m["time_h"] - time_h).abs() < 1e-3)]
    assert len(hit) == 1, f"expected one {variable} ({phase}) of run {run} at {time_h:.3f} h, found {len(hit)}"
    return float(hit["value"].iloc[0])


# ------------------------------------------------------------------------------------------------ batches
@needs_workbook
def test_nine_batches_with_cell_lines_and_volumes(tables, sheet):
    ws = sheet["Measured Data"]
    b = tables.batches.set_index("batch")
    assert sorted(b.index) == sorted(RUN_ROWS)
    for run, (first, _last) in RUN_ROWS.items():
        assert str(ws[f"C{first}"].value) == run
        assert b.loc[run, "cell_line"] == ws[f"B{first}"].value
        assert b.loc[run, "initial_volume"] == pytest.approx(ws[f"E{first}"].value)
        assert b.loc[run, "start_time"] == ws[f"A{first}"].value.isoformat(timespec="seconds")
    assert set(b["cell_type"]) == {"cho"}
    assert set(b["volume_unit"]) == {"mL"}
    assert b["max_volume"].isna().all()
    assert tables.source == str(WORKBOOK)


@needs_workbook
def test_feeds_known_false_only_for_cl3(tables):
    b = tables.batches.set_index("batch")
    for run in ("31", "32", "33"):
        assert not b.loc[run, "feeds_known"]
    for run in ("11", "12", "13", "21", "22", "23"):
        assert b.loc[run, "feeds_known"]
    assert any("feeds_known = False" in note for note in tables.notes)


# ------------------------------------------------------------------------------------------------ measurements
@pytest.mark.parametrize("run,row,column,variable", [
    ("11", 3, "W", "glucose"),   # run 11's first glucose
    ("11", 10, "AC", "lactate"),
    ("11", 12, "K", "vcd"),
    ("11", 14, "N", "titer"),
    ("12", 22, "W", "glucose"),
    ("13", 41, "N", "titer"),
    ("23", 48, "W", "glucose"),
    ("22", 63, "K", "vcd"),
    ("21", 80, "AC", "lactate"),
    ("21", 86, "N", "titer"),
    ("31", 101, "N", "titer"),
    ("31", 95, "K", "vcd"),
    ("32", 110, "AC", "lactate"),
    ("33", 125, "W", "glucose"),
    ("33", 131, "K", "vcd"),
])
@needs_workbook
def test_values_match_the_sheet(tables, sheet, run, row, column, variable):
    expected = sheet["Measured Data"][f"{column}{row}"].value
    assert measured(tables, run, variable, hours(sheet, run, row)) == pytest.approx(expected, rel=1e-12)


@needs_workbook
def test_units(tables):
    units = tables.measurements.groupby("variable")["unit"].unique().to_dict()
    assert list(units["vcd"]) == ["1e6 cells/mL"]
    assert list(units["dead_cells"]) == ["1e6 cells/mL"]
    assert list(units["titer"]) == ["mg/L"]
    assert list(units["viability"]) == ["1"]
    assert list(units["volume"]) == ["mL"]
    for name in ("glucose", "lactate", "ammonia", "glutamine", "alanine", "cystine", "tyrosine"):
        assert list(units[name]) == ["mM"]
    assert "ethanolamine" not in units  # exactly 0 in every run: missing


@needs_workbook
def test_viability_is_viable_over_total(tables, sheet):
    ws = sheet["Measured Data"]
    for run, row in (("11", 13), ("22", 70), ("33", 131)):
        expected = ws[f"K{row}"].value / ws[f"M{row}"].value
        assert measured(tables, run, "viability", hours(sheet, run, row)) == pytest.approx(expected)
    v = tables.measurements.query("variable == 'viability'")["value"]
    assert ((v >= 0) & (v <= 1)).all()


@needs_workbook
def test_ammonia_of_runs_32_33_absent(tables, sheet):
    ws = sheet["Measured Data"]
    for run in ("32", "33"):
        first, last = RUN_ROWS[run]
        assert all(ws[f"AG{r}"].value == 0 for r in range(first, last + 1))  # precondition: all zero in the sheet
        m = tables.measurements
        assert m[(m["batch"] == run) & (m["variable"] == "ammonia")].empty
    assert measured(tables, "31", "ammonia", hours(sheet, "31", 90)) == pytest.approx(ws["AG90"].value)
    assert any("32:ammonia" in note and "33:ammonia" in note for note in tables.notes)


@needs_workbook
def test_isolated_zero_is_kept(tables, sheet):
    ws = sheet["Measured Data"]
    assert ws["X12"].value == 0  # run 11 glutamine depleted at sample 9
    assert measured(tables, "11", "glutamine", hours(sheet, "11", 12)) == 0.0


@needs_workbook
def test_post_rows_only_for_cl2(tables, sheet):
    m = tables.measurements
    assert set(m["phase"]) == {"pre", "post"}
    post_batches = set(m.loc[m["phase"] == "post", "batch"])
    assert post_batches == {"21", "22", "23"}
    ws = sheet["Measured Data"]
    # run 23, sample 6 (row 48): Feed 1 + Feed 2, glucose jumps
    assert measured(tables, "23", "glucose", hours(sheet, "23", 48), "post") == pytest.approx(ws["AU48"].value)
    assert measured(tables, "23", "glucose", hours(sheet, "23", 48), "pre") == pytest.approx(ws["W48"].value)
    assert ws["AU48"].value > ws["W48"].value + 10
    assert measured(tables, "21", "lactate", hours(sheet, "21", 75), "post") == pytest.approx(ws["BA75"].value)


@needs_workbook
def test_post_copies_without_feed_dropped(tables, sheet):
    ws = sheet["Measured Data"]
    assert ws["AU47"].value == ws["W47"].value and not ws["O47"].value  # run 23 sample 5: no feed, a copy
    m = tables.measurements
    t = hours(sheet, "23", 47)
    assert m[(m["batch"] == "23") & (m["phase"] == "post") & ((m["time_h"] - t).abs() < 1e-3)].empty


@needs_workbook
def test_times_start_at_zero_and_do_not_decrease(tables):
    for frame in (tables.measurements, tables.events):
        for run, part in frame.groupby("batch"):
            times = part["time_h"].to_numpy()
            assert (times[1:] >= times[:-1]).all(), run
    first = tables.measurements.groupby("batch")["time_h"].min()
    assert (first == 0.0).all()


@needs_workbook
def test_cumulative_columns_not_imported(tables, sheet):
    # the cumulative glucose of run 31 (column BS, filled for CL3 only) is derived and must not appear as a value
    ws = sheet["Measured Data"]
    cumulative = [ws[f"BS{r}"].value for r in range(88, 102)]
    m = tables.measurements
    glucose = m[(m["batch"] == "31") & (m["variable"] == "glucose")]
    assert len(glucose) == 15
    assert list(glucose["value"]) == pytest.approx([ws[f"W{r}"].value for r in range(87, 102)])
    assert not any(math.isclose(v, c) for v in glucose["value"] for c in cumulative)
    assert any("Cumulative" in note for note in tables.notes)


# ------------------------------------------------------------------------------------------------ events
def _events(tables, run, kind=None, medium=None):
    e = tables.events
    sel = e["batch"] == run
    if kind is not None:
        sel &= e["kind"] == kind
    if medium is not None:
        sel &= e["medium"] == medium
    return e[sel]


@pytest.mark.parametrize("run,row,column,medium", [
    ("11", 8, "O", "CL1_F01"),
    ("11", 8, "P", "CL1_F02"),
    ("12", 24, "O", "CL1_F01"),
    ("13", 40, "P", "CL1_F02"),
    ("23", 45, "O", "CL2_Feed1"),
    ("22", 63, "O", "CL2_Feed1"),
    ("22", 63, "Q", "CL2_Feed2"),
    ("21", 84, "Q", "CL2_Feed2"),
])
@needs_workbook
def test_feed_volumes_and_times(tables, sheet, run, row, column, medium):
    expected = sheet["Measured Data"][f"{column}{row}"].value
    assert expected > 0
    e = _events(tables, run, "bolus", medium)
    hit = e[(e["time_h"] - hours(sheet, run, row)).abs() < 1e-3]
    assert len(hit) == 1
    assert hit["amount"].iloc[0] == pytest.approx(expected)
    assert hit["unit"].iloc[0] == "mL"


@needs_workbook
def test_bolus_counts_match_the_sheet(tables, sheet):
    ws = sheet["Measured Data"]
    for run, (first, last) in RUN_ROWS.items():
        expected = sum(1 for r in range(first, last + 1) for c in "OPQ"
                       if isinstance(ws[f"{c}{r}"].value, (int, float)) and ws[f"{c}{r}"].value > 0)
        got = _events(tables, run, "bolus")
        assert len(got[got["medium"] != "base"]) == expected, run
    assert sum(len(_events(tables, r, "bolus", "CL1_F01")) for r in ("11", "12", "13")) == 21  # 7 per run


@needs_workbook
def test_cl3_has_no_bolus(tables):
    for run in ("31", "32", "33"):
        assert _events(tables, run, "bolus").empty
        assert len(_events(tables, run, "sample")) == 15


@needs_workbook
def test_samples_and_base(tables, sheet):
    ws = sheet["Measured Data"]
    e = _events(tables, "11", "sample")
    hit = e[(e["time_h"] - hours(sheet, "11", 10)).abs() < 1e-3]
    assert hit["amount"].iloc[0] == pytest.approx(ws["G10"].value)  # the 10 mL sample
    base = _events(tables, "21", "bolus", "base")
    assert len(base) == 1
    assert base["amount"].iloc[0] == pytest.approx(ws["J73"].value)
    assert base["time_h"].iloc[0] == pytest.approx(hours(sheet, "21", 73))
    assert "base" in set(tables.media["medium"])


@needs_workbook
def test_sample_comes_before_boluses_at_one_time(tables):
    for run, part in tables.events.groupby("batch", sort=False):
        for _t, group in part.groupby("time_h", sort=False):
            kinds = list(group["kind"])
            if "sample" in kinds:
                assert kinds[0] == "sample", (run, kinds)


# ------------------------------------------------------------------------------------------------ media
@needs_workbook
def test_media_compositions(tables, sheet):
    ws = sheet["Feed Concentration"]
    media = tables.media
    known = media[media["species"].notna()]
    f01 = known[known["medium"] == "CL1_F01"].set_index("species")["concentration"]
    assert f01["glucose"] == pytest.approx(ws["B9"].value)
    assert f01["leucine"] == pytest.approx(ws["B16"].value)
    assert f01["cystine"] == pytest.approx(ws["B8"].value)
    f02 = known[known["medium"] == "CL1_F02"].set_index("species")["concentration"]
    assert dict(f02) == {"glutamine": pytest.approx(ws["C10"].value)}
    feed2 = known[known["medium"] == "CL2_Feed2"].set_index("species")["concentration"]
    assert dict(feed2) == {"glucose": pytest.approx(ws["I9"].value)}
    assert set(media["unit"].dropna()) == {"mM"}
    # CL2 Feed 1: composition blank in the sheet -> listed, no species, not invented
    assert all(ws.cell(row=r, column=8).value is None for r in range(4, 28))
    feed1 = media[media["medium"] == "CL2_Feed1"]
    assert len(feed1) == 1 and feed1["species"].isna().all()
    assert any("CL2_Feed1" in note for note in tables.notes)


@needs_workbook
def test_tables_build_a_campaign(tables):
    from cgt_twin.data.build import campaign_from_tables

    campaign = campaign_from_tables(tables)
    assert campaign is not None


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.xlsx"
    with pytest.raises(CampaignValidationError) as info:
        read_cdppy(path)
    assert str(path) in str(info.value)
    assert info.value.problems[0].file == str(path)


def test_not_a_workbook(tmp_path):
    path = tmp_path / "fake.xlsx"
    path.write_text("batch,time\n1,2\n")
    with pytest.raises(CampaignValidationError) as info:
        read_cdppy(path)
    assert str(path) in str(info.value)


def test_wrong_workbook(tmp_path):
    import openpyxl

    path = tmp_path / "other.xlsx"
    workbook = openpyxl.Workbook()
    workbook.active.title = "Sheet1"
    workbook.active["A1"] = "hello"
    workbook.save(path)
    with pytest.raises(CampaignValidationError) as info:
        read_cdppy(path)
    assert str(path) in str(info.value)
    assert "Measured Data" in str(info.value)


def test_missing_header_column(tmp_path):
    import openpyxl

    path = tmp_path / "broken.xlsx"
    workbook = openpyxl.Workbook()
    ws = workbook.active
    ws.title = "Measured Data"
    ws.append(["Experiment Data", None, None, None])
    ws.append(["Date (MM/DD/YY H:MM:SS AM/PM)", "Cell Line", "Initial Volume (mL)",
               "Viable Cell Concentration (10^6 cells/mL)"])  # no ID column
    ws.append(["08/16/19 5:29:00 PM", "CL1", 74, 0.25])
    workbook.save(path)
    with pytest.raises(CampaignValidationError) as info:
        read_cdppy(path)
    problems = info.value.problems
    assert any(p.file == str(path) and p.row == 2 and p.column == "ID" for p in problems)


def test_bad_cells_reported_with_rows(tmp_path):
    import openpyxl

    path = tmp_path / "cells.xlsx"
    workbook = openpyxl.Workbook()
    ws = workbook.active
    ws.title = "Measured Data"
    ws.append(["Experiment Data", None, None, None, None, "Concentration Before Feeding"])
    ws.append(["Date (MM/DD/YY H:MM:SS AM/PM)", "Cell Line", "ID", "Initial Volume (mL)",
               "Viable Cell Concentration (10^6 cells/mL)", "Glucose (mM)"])
    ws.append(["08/16/19 5:29:00 PM", "CL1", 11, 74, 0.25, 30.0])
    ws.append(["08/17/19 5:29:00 PM", "CL1", 11, 74, "n.d.", 28.0])
    ws.append(["yesterday", "CL1", 11, 74, 0.5, 27.0])
    workbook.save(path)
    with pytest.raises(CampaignValidationError) as info:
        read_cdppy(path)
    rows = {(p.row, p.column) for p in info.value.problems}
    assert (4, "E") in rows and (5, "A") in rows


def test_minimal_workbook_reads(tmp_path):
    import openpyxl

    path = tmp_path / "small.xlsx"
    workbook = openpyxl.Workbook()
    ws = workbook.active
    ws.title = "Measured Data"
    ws.append(["Experiment Data", None, None, None, None, "Concentration Before Feeding", None])
    ws.append(["Date (MM/DD/YY H:MM:SS AM/PM)", "Cell Line", "ID", "Initial Volume (mL)",
               "Viable Cell Concentration (10^6 cells/mL)", "Glc (mM)", "NH3 (mM)"])
    ws.append(["08/16/19 5:29:00 PM", "CL9", 7, 50, 0.25, 30.0, 0])
    ws.append(["08/17/19 5:29:00 PM", "CL9", 7, 50, 0.5, 28.0, 0])
    workbook.save(path)
    tables = read_cdppy(path)
    assert list(tables.batches["batch"]) == ["7"]
    assert not tables.batches["feeds_known"].iloc[0]  # no feed columns at all
    glucose = tables.measurements.query("variable == 'glucose'")
    assert list(glucose["time_h"]) == [0.0, 24.0]
    assert tables.measurements.query("variable == 'ammonia'").empty  # all zero: missing
