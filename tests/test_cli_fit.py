"""cgt-twin fit / predict / report: a calibration script's path from a campaign folder to an artifact, predictions
and a report."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cgt_twin.cli import app
from cgt_twin.io import load_twin, read_provenance, verify_provenance

runner = CliRunner()


@pytest.fixture(scope="module")
def small_campaign(example_folder, tmp_path_factory):
    from cgt_twin.data import read_campaign, write_campaign

    campaign = read_campaign(example_folder.parent / "cho_fedbatch_synthetic").sel(["C1-LOW", "C1-MID", "C2-LOW"])
    return write_campaign(campaign, tmp_path_factory.mktemp("c") / "campaign")


def _config(path, extra="", top="", initial="[]"):
    path.write_text(top + '[mechanistic]\nparameters = ["mu_max", "q_p", "Y_lac_glc"]\nmax_steps = 15\n'
                    f'initial_states = {initial}\n' + extra)
    return path


def test_fit_predict_report(small_campaign, tmp_path):
    twin_dir = tmp_path / "twin"
    result = runner.invoke(app, ["fit", str(small_campaign), "--model", "cho", "--holdout", "C2-LOW", "--config",
                                 str(_config(tmp_path / "fit.toml", initial='["vcd"]')), "--out", str(twin_dir)])
    assert result.exit_code == 0, result.output
    assert "fitted 2 batches" in result.output
    twin = load_twin(twin_dir)
    assert set(twin.noise) >= {"vcd", "glucose", "titer"}
    document = json.loads((twin_dir / "twin.json").read_text())
    assert document["fit_settings"]["holdout"] == ["C2-LOW"] and document["data_hash"].startswith("sha256:")
    fitted = document["fit_settings"]["initial_states"]  # what `sample` holds on this campaign
    assert sorted(fitted) == ["C1-LOW", "C1-MID"] and all(0 < v["vcd"] < 10 for v in fitted.values())

    predictions = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(twin_dir), str(small_campaign), "--batches", "C2-LOW", "--out",
                                 str(predictions)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(predictions)
    assert list(table.columns) == ["batch", "time_h", "variable", "mean", "q05", "q95", "unit", "phase"]
    assert set(table["batch"]) == {"C2-LOW"}
    glucose = table[(table.variable == "glucose") & (table.phase == "pre")]
    assert (glucose["q05"] <= glucose["mean"]).all() and (glucose["mean"] <= glucose["q95"]).all()
    assert (glucose["q95"] > glucose["q05"]).any()

    report_dir = tmp_path / "report"
    result = runner.invoke(app, ["report", str(twin_dir), str(small_campaign), "--out", str(report_dir)])
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(report_dir / "metrics.csv")
    assert {"C1-LOW", "C1-MID", "C2-LOW", "ALL"} <= set(metrics["batch"])
    for picture in ("prediction.png", "parity.png"):
        assert (report_dir / picture).read_bytes()[:4] == b"\x89PNG"
    assert "NRMSE" in (report_dir / "report.md").read_text()
    assert [r["command"].split()[0] for r in read_provenance(twin_dir)] == ["fit", "predict"]
    verify_provenance(twin_dir)


@pytest.mark.parametrize(("extra", "phrase"), [
    ("[mechanistic]\nwrong = 1\n", None),
    ("unknown_table = 3\n", "unknown section or setting 'unknown_table'"),
    ("[training]\nstepz = 3\n", "[training] has no setting 'stepz'"),
])
def test_bad_config_is_bad_input(small_campaign, tmp_path, extra, phrase):
    config = tmp_path / "fit.toml"
    if phrase is None:
        config.write_text("[mechanistic\n")  # broken TOML
        phrase = "not valid TOML"
    elif extra.startswith("unknown_table"):
        _config(config, top=extra)
    else:
        _config(config, extra)
    result = runner.invoke(app, ["fit", str(small_campaign), "--model", "cho", "--config", str(config), "--out",
                                 str(tmp_path / "twin")])
    assert result.exit_code == 2, result.output
    assert phrase in result.output
    assert not (tmp_path / "twin").exists()


def test_fit_rejects_bad_holdout_and_variables(small_campaign, tmp_path):
    result = runner.invoke(app, ["fit", str(small_campaign), "--model", "cho", "--holdout",
                                 "C1-LOW,C1-MID,C2-LOW", "--out", str(tmp_path / "twin")])
    assert result.exit_code == 2 and "no batches left to fit" in result.output
    result = runner.invoke(app, ["fit", str(small_campaign), "--model", "tcell", "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and "not tcell cultures" in result.output


@pytest.mark.slow
def test_hybrid_fit_saves_a_residual(small_campaign, tmp_path):
    config = _config(tmp_path / "fit.toml", "[training]\nsteps = 3\nprogress = false\n"
                                            "[residual]\ntargets = [\"growth\"]\nfeatures = [\"vcd\", \"glucose\"]\n"
                                            "hidden = [4]\n")
    twin_dir = tmp_path / "twin"
    result = runner.invoke(app, ["fit", str(small_campaign), "--model", "cho", "--hybrid", "--config", str(config),
                                 "--out", str(twin_dir)])
    assert result.exit_code == 0, result.output
    twin = load_twin(twin_dir)
    assert type(twin.kinetics).__name__ == "HybridKinetics"
    assert twin.kinetics.spec.targets == ("growth",)


def test_crossval_writes_held_out_metrics(small_campaign, tmp_path):
    out_dir = tmp_path / "cv"
    result = runner.invoke(app, ["crossval", str(small_campaign), "--model", "cho", "--scheme", "lobo", "--config", str(_config(tmp_path / "fit.toml", "rounds = 1\n")),
                                 "--out", str(out_dir)])
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(out_dir / "metrics.csv")
    assert set(metrics["fold"]) == {"C1-LOW", "C1-MID", "C2-LOW"}
    for fold in ("C1-LOW", "C1-MID", "C2-LOW"):  # only the held-out batch is scored in its fold
        assert set(metrics.loc[metrics["fold"] == fold, "batch"]) == {fold}
    assert metrics["nrmse"].between(0, 5).all()
    summary = pd.read_csv(out_dir / "summary.csv", index_col=0)
    assert {"vcd", "glucose", "titer"} <= set(summary.index)


@pytest.mark.parametrize(("args", "phrase"), [
    (["--scheme", "loo"], "unknown scheme 'loo'"),
    (["--scheme", "logo", "--by", "donor"], "no batch covariate 'donor'"),
    (["--scheme", "kfold", "--k", "9"], "needs at least 9 batches"),
])
def test_crossval_bad_input_exits_2(small_campaign, tmp_path, args, phrase):
    result = runner.invoke(app, ["crossval", str(small_campaign), "--model", "cho", "--out", str(tmp_path / "cv"),
                                 *args])
    assert result.exit_code == 2, result.output
    assert phrase in result.output
