"""cgt-twin sample / predict / report with a posterior: a new artifact, the input untouched, bands from the
posterior unless --no-posterior."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from test_bayes_toy import NOISE, GrowthDeath, growth_campaign
from typer.testing import CliRunner

from cgt_twin.cli import _inherited_fit_settings, app
from cgt_twin.data import write_campaign
from cgt_twin.io import campaign_hash, load_posterior, read_provenance, save_twin, verify_provenance
from cgt_twin.models import Twin

runner = CliRunner()


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


SOLVER_AND_SAMPLER = '[model.solver]\nmax_steps = 64\nrtol = 1e-5\natol = 1e-7\n[sampler]\nchains = 1\ndraws = 300\n'


def _campaign():
    return growth_campaign({"A": {"mu_max": 0.028}, "B": {"mu_max": 0.033}}, seed=2)


def _sample(tmp_path, model_toml: str, **artifact):
    """A two-batch growth campaign and a twin artifact (`save_twin` keywords `artifact`); `cgt-twin sample` with a
    Laplace `bayes.toml` whose ``[model]`` table is `model_toml`: ``(result, campaign folder, twin folder, config file,
    output folder, digest of the twin folder before)``."""
    folder = write_campaign(_campaign(), tmp_path / "campaign")
    twin_dir = save_twin(Twin(GrowthDeath(), {}, NOISE), tmp_path / "twin", **artifact)
    before = _digest(twin_dir)
    config = tmp_path / "bayes.toml"
    # forward mode given: "auto" (two extra gradient compilations, about half of each test's time) is tested in
    # test_bayes_sbc
    config.write_text(f'method = "laplace"\nforward_mode = true\n[model]\n{model_toml}' + SOLVER_AND_SAMPLER)
    out = tmp_path / "sampled"
    result = runner.invoke(app, ["sample", str(twin_dir), str(folder), "--config", str(config), "--out", str(out)])
    return result, folder, twin_dir, config, out, before


def test_sample_writes_new_artifact(tmp_path):
    result, folder, twin_dir, config, out, before = _sample(tmp_path, 'parameters = ["mu_max", "k_d"]\n')
    assert result.exit_code == 0, result.output
    assert "sampled" in result.output and "held at the twin's values" in result.output
    assert _digest(twin_dir) == before  # the input artifact is untouched
    posterior = load_posterior(out)
    assert posterior.method == "laplace" and posterior.parameters == ("mu_max", "k_d")
    assert 0.026 < float(np.median(posterior.parameter_values()["mu_max"])) < 0.034
    verify_provenance(out)
    record = read_provenance(out)[-1]
    assert record["command"].startswith("sample") and record["details"]["input_content_hash"].startswith("sha256:")
    assert record["details"]["initial_states"] == "the data's"  # no fit stored in the artifact

    table_file = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(out), str(folder), "--out", str(table_file)])
    assert result.exit_code == 0, result.output
    assert "posterior predictive" in result.output
    with_posterior = pd.read_csv(table_file)
    result = runner.invoke(app, ["predict", str(out), str(folder), "--out", str(tmp_path / "q.csv"),
                                 "--no-posterior"])
    assert result.exit_code == 0, result.output
    point = pd.read_csv(tmp_path / "q.csv")
    assert list(with_posterior.columns) == list(point.columns)
    assert not (with_posterior["q95"].to_numpy() == point["q95"].to_numpy()).all()

    result = runner.invoke(app, ["sample", str(twin_dir), str(folder), "--config", str(config), "--out", str(out)])
    assert result.exit_code == 2  # exists
    bad = tmp_path / "bad.toml"
    bad.write_text('[model]\nhierarchical = ["mu_max"]\nparameters = ["k_d"]\n')
    result = runner.invoke(app, ["sample", str(twin_dir), str(folder), "--config", str(bad), "--out",
                                 str(tmp_path / "x")])
    assert result.exit_code == 2 and "varies between batches" in result.output
    assert not (tmp_path / "x").exists()
    assert json.loads((out / "twin.json").read_text())["posterior_hash"].startswith("sha256:")


def test_sample_records_the_carried_parameters(tmp_path):
    """With the Laplace correction the provenance says which held parameters' uncertainty was carried; on the
    campaign the twin was fitted on, the fit's initial states (stored by `cgt-twin fit`) are held, not the first
    samples."""
    campaign = _campaign()
    first = campaign.data["vcd"].isel(time=0)
    fitted = {b: {"vcd": 0.5 * float(np.nanmean(first.sel(batch=b).values))} for b in campaign.batches}  # half: μ must rise to catch up
    result, _, _, _, out, _ = _sample(tmp_path, 'parameters = ["mu_max"]\nheld_uncertainty = "laplace"\n',
                                      data_hash=campaign_hash(campaign), fit_settings={"initial_states": fitted})
    assert result.exit_code == 0, result.output
    assert "initial states of A, B at the fit's values" in result.output
    details = read_provenance(out)[-1]["details"]
    posterior = load_posterior(out)
    assert details["carried"] == sorted(posterior.carried) and "k_d" in details["carried"]
    assert "k_d" not in details["held"]
    assert details["initial_states"] == "the fit's"
    assert float(np.median(posterior.parameter_values()["mu_max"])) > 0.036
    # the new artifact keeps them for this campaign; one derived on another campaign drops them
    assert json.loads((out / "twin.json").read_text())["fit_settings"]["initial_states"] == fitted
    source = {"data_hash": "sha256:fitted-on", "fit_settings": {"initial_states": fitted, "seed": 1}}
    assert _inherited_fit_settings(source, "sha256:other", sample={}) == {"seed": 1, "sample": {}}
    assert _inherited_fit_settings(source, "sha256:fitted-on")["initial_states"] == fitted


def test_predict_starts_the_fitted_batches_from_the_fit(tmp_path):
    """`cgt-twin predict` (and `report`) on the campaign the twin was fitted on starts each fitted batch from the
    fit's initial states, as the fit did; ``--initial-states data`` from the first samples; on another campaign
    (another data hash) from the first samples; an unknown choice is refused before anything runs."""
    campaign = _campaign()
    folder = write_campaign(campaign, tmp_path / "campaign")
    first = {b: float(campaign.data["vcd"].sel(batch=b).isel(time=0).values.ravel()[0]) for b in campaign.batches}
    fitted = {"A": {"vcd": 0.5 * first["A"]}}  # only A was fitted: B keeps its first sample
    twin_dir = save_twin(Twin(GrowthDeath(), {}, NOISE), tmp_path / "twin", data_hash=campaign_hash(campaign),
                         fit_settings={"initial_states": fitted})

    def start(*extra, twin=twin_dir):
        table = tmp_path / "p.csv"
        result = runner.invoke(app, ["predict", str(twin), str(folder), "--out", str(table), "--overwrite", *extra])
        assert result.exit_code == 0, result.output
        rows = pd.read_csv(table).query("variable == 'vcd' and time_h == 0 and phase == 'pre'")
        return result.output, dict(zip(rows["batch"], rows["mean"], strict=True))

    output, values = start()
    assert "initial states of A at the fit's values" in output
    assert values == pytest.approx({"A": fitted["A"]["vcd"], "B": first["B"]}, rel=1e-9)
    assert read_provenance(twin_dir)[-1]["details"]["initial_states"] == "the fit's"
    output, values = start("--initial-states", "data")
    assert "fit's values" not in output and values == pytest.approx(first, rel=1e-9)
    assert read_provenance(twin_dir)[-1]["details"]["initial_states"] == "the data's"
    other = save_twin(Twin(GrowthDeath(), {}, NOISE), tmp_path / "other", data_hash="sha256:another-campaign",
                      fit_settings={"initial_states": fitted})
    assert start(twin=other)[1] == pytest.approx(first, rel=1e-9)
    result = runner.invoke(app, ["report", str(twin_dir), str(folder), "--out", str(tmp_path / "r"),
                                 "--initial-states", "first"])
    assert result.exit_code == 2 and "must be 'fit' or 'data'" in result.output
    assert not (tmp_path / "r").exists()
