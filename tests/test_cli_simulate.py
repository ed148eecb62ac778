"""cgt-twin simulate: the long CSV, parameter files, options, skipped batches, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cgt_twin.cli import app
from cgt_twin.data import read_campaign
from cgt_twin.models import CHOFedBatch, Twin
from cgt_twin.simulate import simulate

runner = CliRunner()


@pytest.fixture(scope="module")
def cho_folder(example_folder):
    return example_folder.parent / "cho_fedbatch_synthetic"


def test_simulate_writes_the_long_csv_matching_the_library(cho_folder, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"mu_max": {"value": 0.84, "unit": "1/d"}, "q_p": 1.2}))
    out = tmp_path / "trajectory.csv"
    result = runner.invoke(app, ["simulate", str(cho_folder), "--model", "cho", "--option",
                                 "lactate_consumption=true", "--params", str(params), "--out", str(out),
                                 "--grid-h", "12"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert list(table.columns) == ["batch", "time_h", "variable", "value", "unit", "phase"]
    campaign = read_campaign(cho_folder)
    assert set(table["batch"]) == set(campaign.batches)
    times = set(table["time_h"])
    assert set(campaign.times) <= times and {12.0, 36.0} <= times  # measurement times and the regular grid
    expected = simulate(Twin(CHOFedBatch(lactate_consumption=True), {"mu_max": 0.035, "q_p": 1.2}), campaign,
                        np.union1d(campaign.times, np.arange(0, 337, 12.0)))
    row = table[(table.batch == "C1-MID") & (table.time_h == 96.0) & (table.variable == "glucose")
                & (table.phase == "pre")]
    assert row["value"].item() == pytest.approx(expected["glucose"].sel(batch="C1-MID", time=96.0,
                                                                         phase="pre").item(), rel=1e-9)
    assert row["unit"].item() == "mM"


@pytest.mark.parametrize(("args", "phrase"), [
    (["--model", "yeast"], "unknown model 'yeast'"),
    (["--model", "cho", "--option", "bogus=1"], "has no options ['bogus']"),
])
def test_bad_model_or_option_is_bad_input(cho_folder, tmp_path, args, phrase):
    result = runner.invoke(app, ["simulate", str(cho_folder), *args, "--out", str(tmp_path / "t.csv")])
    assert result.exit_code == 2, result.output
    assert phrase in result.output


def test_bad_parameter_file_names_the_problem(cho_folder, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"mu_maxx": 0.03, "K_glc": -1, "q_p": {"value": 1, "unit": "cells"}}))
    result = runner.invoke(app, ["simulate", str(cho_folder), "--model", "cho", "--params", str(params), "--out",
                                 str(tmp_path / "t.csv")])
    assert result.exit_code == 2, result.output
    assert "q_p" in result.output and "does not convert" in result.output
    params.write_text(json.dumps({"mu_maxx": 0.03, "K_glc": -1}))
    result = runner.invoke(app, ["simulate", str(cho_folder), "--model", "cho", "--params", str(params), "--out",
                                 str(tmp_path / "t.csv")])
    assert "unknown parameter 'mu_maxx'" in result.output and "did you mean 'mu_max'" in result.output
    assert "K_glc" in result.output and "outside its bounds" in result.output


def test_refuses_to_overwrite(cho_folder, tmp_path):
    out = tmp_path / "t.csv"
    out.write_text("keep me")
    result = runner.invoke(app, ["simulate", str(cho_folder), "--model", "cho", "--out", str(out)])
    assert result.exit_code == 2 and "overwrite" in result.output
    assert out.read_text() == "keep me"


def test_batches_with_unknown_feeds_are_skipped_and_reported(shared_datasets, tmp_path):
    source = shared_datasets / "umn_cho_fedbatch" / "fedbatch_9runs_3cell_lines.xlsx"
    campaign_dir = tmp_path / "umn"
    assert runner.invoke(app, ["import", "cdppy", str(source), "--out", str(campaign_dir)]).exit_code == 0
    out = tmp_path / "umn.csv"
    result = runner.invoke(app, ["simulate", str(campaign_dir), "--model", "cho", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for batch in ("31", "32", "33"):
        assert f"skipped batch {batch}: feeds not recorded" in result.output
    assert set(pd.read_csv(out, dtype={"batch": str})["batch"]) == {"11", "12", "13"}  # CL2: Feed 1 unknown
