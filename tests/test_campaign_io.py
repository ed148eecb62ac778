"""The campaign in memory and its ways in and out: folder, netCDF, pandas long/wide."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import pytest

import cgt_twin
from cgt_twin.data import Campaign, CampaignValidationError, campaign_from_dataframe, read_campaign, write_campaign
from cgt_twin.data import folder as folder_module


@pytest.fixture(scope="module")
def example(example_folder) -> Campaign:
    return read_campaign(example_folder)


def _long_sorted(campaign: Campaign) -> pd.DataFrame:
    return campaign.to_dataframe("long").sort_values(["batch", "time_h", "variable", "phase", "replicate"]) \
        .reset_index(drop=True)


def test_example_is_in_canonical_units(example, example_folder):
    raw = pd.read_csv(example_folder / "measurements.csv")
    row = raw[(raw.batch == "EX1") & (raw.time_h == 48) & (raw.variable == "glucose")].iloc[0]
    assert row.unit == "g/L"
    stored = example.data["glucose"].sel(batch="EX1", time=48.0, phase="pre", replicate=0).item()
    assert stored == pytest.approx(row.value * 1000 / 180.16, rel=1e-12)
    viability = raw[(raw.batch == "EX1") & (raw.time_h == 0) & (raw.variable == "viability")].iloc[0]
    assert viability.unit == "%"
    assert example.data["viability"].sel(batch="EX1", time=0.0, phase="pre", replicate=0).item() == \
        pytest.approx(viability.value / 100)
    assert example.data["glucose"].attrs["units"] == "mM"
    assert example.data.coords["initial_volume"].sel(batch="EX1").item() == pytest.approx(1.0)  # 1000 mL -> 1 L


def test_post_feed_values_are_kept_apart(example):
    post = example.data["glucose"].sel(batch="EX1", phase="post", replicate=0)
    pre = example.data["glucose"].sel(batch="EX1", phase="pre", replicate=0)
    fed = np.isfinite(post.values)
    assert fed.sum() == 10  # days 3..12
    assert np.all(post.values[fed] > pre.values[fed])  # the feed raised glucose


def test_protocol_events_in_canonical_units(example):
    protocol = example.protocols["EX2"]
    boluses = protocol.events_of("bolus")
    assert len(boluses) == 10
    assert boluses[0].unit == "L" and boluses[0].amount == pytest.approx(0.04)
    assert boluses[0].time_h == 72.0
    assert protocol.harvest_time == 336.0
    shift = protocol.events_of("setpoint")[0]
    assert (shift.target, shift.amount, shift.unit) == ("temperature", 34.0, "degC")
    assert protocol.max_volume == pytest.approx(2.0)
    assert protocol.media["feed_a"].concentrations["glucose"] == 550.0


def test_folder_round_trip_is_lossless(example, tmp_path):
    out = write_campaign(example, tmp_path / "copy")
    again = read_campaign(out)
    pd.testing.assert_frame_equal(_long_sorted(example), _long_sorted(again), rtol=1e-13)
    assert again.protocols == example.protocols
    assert again.notes == example.notes
    assert again.batch_metadata().equals(example.batch_metadata())


def test_netcdf_round_trip_is_lossless(example, tmp_path):
    path = tmp_path / "campaign.nc"
    example.to_netcdf(path)
    again = Campaign.from_netcdf(path)
    pd.testing.assert_frame_equal(_long_sorted(example), _long_sorted(again), rtol=0)
    assert again.protocols == example.protocols
    assert dict(again.media) == dict(example.media)
    assert again.notes == example.notes
    assert list(again.covariates) == list(example.covariates)


def test_netcdf_rejects_foreign_and_newer_files(example, tmp_path):
    foreign = tmp_path / "foreign.nc"
    example.data.to_netcdf(foreign, engine="netcdf4")
    with pytest.raises(CampaignValidationError, match="not a cgt_twin campaign"):
        Campaign.from_netcdf(foreign)
    newer = example.to_dataset()
    newer.attrs["cgt_twin_format_version"] = 99
    with pytest.raises(CampaignValidationError, match="newer"):
        Campaign.from_dataset(newer)
    garbage = tmp_path / "garbage.nc"
    garbage.write_bytes(b"not netcdf at all")
    with pytest.raises(CampaignValidationError, match="not a readable netCDF"):
        Campaign.from_netcdf(garbage)


def test_pandas_long_round_trip(example):
    long = example.to_dataframe("long")
    batches = example.to_tables().batches
    again = campaign_from_dataframe(long, batches, events=example.to_tables().events,
                                    media=example.to_tables().media)
    pd.testing.assert_frame_equal(_long_sorted(example), _long_sorted(again), rtol=0)


def test_pandas_wide_in_with_units():
    wide = pd.DataFrame({"batch": ["A", "A", "B"], "time_h": [0.0, 24.0, 0.0],
                         "glucose": [5.0, 4.0, np.nan], "vcd": [0.3e6, 0.9e6, 0.4e6]})
    campaign = campaign_from_dataframe(wide, units={"glucose": "g/L", "vcd": "cells/mL"}, cell_type="cho",
                                       initial_volume=250, volume_unit="mL")
    assert campaign.batches == ("A", "B")
    assert campaign.data["vcd"].sel(batch="A", time=24.0, phase="pre", replicate=0).item() == pytest.approx(0.9)
    assert campaign.data["glucose"].sel(batch="A", time=0.0, phase="pre", replicate=0).item() == \
        pytest.approx(5000 / 180.16)
    assert np.isnan(campaign.data["glucose"].sel(batch="B", time=0.0, phase="pre", replicate=0).item())
    wide_out = campaign.to_dataframe("wide")
    assert set(wide_out.columns) >= {"batch", "time_h", "phase", "replicate", "glucose", "vcd"}
    assert len(wide_out) == 3


def test_pandas_wide_rejects_unknown_columns_without_units():
    wide = pd.DataFrame({"batch": ["A"], "time_h": [0.0], "mystery": [1.0]})
    with pytest.raises(CampaignValidationError, match="no unit for column 'mystery'"):
        campaign_from_dataframe(wide, cell_type="cho", initial_volume=1.0)


def test_timestamps_become_hours_from_start():
    measurements = pd.DataFrame({
        "batch": ["A", "A", "A"], "timestamp": ["2024-05-18T09:00", "2024-05-19T09:00", "2024-05-19T21:00"],
        "variable": "vcd", "value": [0.3, 0.6, 0.9], "unit": "1e6 cells/mL"})
    campaign = campaign_from_dataframe(measurements, cell_type="cho", initial_volume=1.0)
    np.testing.assert_allclose(campaign.times, [0.0, 24.0, 36.0])
    batches = pd.DataFrame({"batch": ["A"], "cell_type": ["cho"], "initial_volume": [1.0], "volume_unit": ["L"],
                            "start_time": ["2024-05-18T08:00"]})
    shifted = campaign_from_dataframe(measurements, batches)
    np.testing.assert_allclose(shifted.times, [1.0, 25.0, 37.0])


def test_replicates_and_censoring_are_kept():
    measurements = pd.DataFrame({
        "batch": ["A"] * 4, "time_h": [24.0] * 4, "variable": ["ammonia"] * 3 + ["glutamine"],
        "value": [1.0, 1.2, 1.1, 0.05], "unit": "mM", "replicate": [0, 1, 2, 0], "censored": ["", "", "", "<"]})
    campaign = campaign_from_dataframe(measurements, cell_type="hek293", initial_volume=0.03)
    assert campaign.data.sizes["replicate"] == 3
    np.testing.assert_allclose(campaign.data["ammonia"].sel(batch="A", time=24.0, phase="pre").values,
                               [1.0, 1.2, 1.1])
    assert campaign.censored["glutamine"].sel(batch="A", time=24.0, phase="pre", replicate=0).item() == -1
    long = campaign.to_dataframe("long")
    assert long.loc[long.variable == "glutamine", "censored"].tolist() == ["<"]
    assert campaign.summary().censored == 1


def test_declared_variables(tmp_path):
    measurements = pd.DataFrame({"batch": ["A"], "time_h": [0.0], "variable": ["citrate"], "value": [200.0],
                                 "unit": "umol/L"})
    declared = pd.DataFrame({"variable": ["citrate"], "unit": ["mM"], "description": ["citric acid"]})
    campaign = campaign_from_dataframe(measurements, variables=declared, cell_type="hek293", initial_volume=0.03)
    assert campaign.data["citrate"].attrs["units"] == "mM"
    assert campaign.data["citrate"].sel(batch="A", time=0.0, phase="pre", replicate=0).item() == pytest.approx(0.2)
    again = read_campaign(write_campaign(campaign, tmp_path / "c"))
    assert "citrate" in again.declared


def test_sel_and_drop(example):
    sub = example.sel(["EX2"])
    assert sub.batches == ("EX2",) and list(sub.protocols) == ["EX2"]
    assert example.drop(["EX1"]).batches == ("EX2", "EX3")
    with pytest.raises(KeyError, match="unknown batches"):
        example.sel(["nope"])


def test_write_refuses_to_overwrite_and_is_atomic(example, tmp_path, monkeypatch):
    target = tmp_path / "campaign"
    write_campaign(example, target)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_campaign(example, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    # An interrupted write (the process dies while writing a table) leaves the old folder intact and no debris.
    calls = {"n": 0}
    original = pd.DataFrame.to_csv

    def failing_to_csv(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill mid-write")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing_to_csv)
    with pytest.raises(KeyboardInterrupt):
        write_campaign(example.sel(["EX1"]), target, overwrite=True)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in target.iterdir()}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["campaign"]

    write_campaign(example.sel(["EX1"]), target, overwrite=True)
    assert read_campaign(target).batches == ("EX1",)
    assert sorted(os.listdir(tmp_path)) == ["campaign"]


def test_summary_and_repr(example):
    summary = example.summary()
    assert summary.n_batches == 3
    assert summary.cell_types == {"cho": 3}
    assert summary.time_span_h == (0.0, 336.0)
    assert summary.events["bolus"] == 30
    assert "glucose [mM]" in str(summary)
    assert "3 batches" in repr(example)
    assert "<table>" in example._repr_html_()


def test_top_level_api_is_reexported():
    for name in ("Campaign", "read_campaign", "write_campaign", "campaign_from_dataframe", "import_campaign",
                 "CampaignValidationError", "Protocol", "Event"):
        assert hasattr(cgt_twin, name)
    import jax.numpy as jnp

    assert jnp.zeros(1).dtype == jnp.float64  # the package enables float64


def test_read_tables_keeps_text(example_folder, tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(example_folder, copy)
    tables = folder_module.read_tables(copy)
    assert tables.measurements["value"].map(type).eq(str).all()
