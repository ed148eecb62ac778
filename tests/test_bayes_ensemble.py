"""The neural residual's uncertainty as a deep ensemble: members differ, identical members add nothing, bands widen
far from the training data, it composes with a posterior, it is stored hashed beside the twin, and the CLI round trip."""

from __future__ import annotations

import hashlib
import json
import shutil

import jax
import numpy as np
import pandas as pd
import pytest
from test_bayes_toy import FAST_SOLVER, GrowthDeath
from typer.testing import CliRunner

from cgt_twin.bayes import Posterior, ResidualEnsemble, train_ensemble
from cgt_twin.cli import app
from cgt_twin.data import CampaignValidationError, Event, Protocol, write_campaign
from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
from cgt_twin.fit import TrainConfig, train_hybrid
from cgt_twin.hybrid import ResidualSpec, hybrid
from cgt_twin.io import (
    ArtifactError,
    load_ensemble,
    load_posterior,
    load_twin,
    read_provenance,
    save_twin,
    verify_provenance,
)
from cgt_twin.models import Twin
from cgt_twin.predict import predict

TEMPERATURES = {"A": 35.0, "B": 36.0, "C": 37.0, "D": 38.0, "E": 39.0}  # the training range, degC
INITIAL = {"vcd": 0.5, "glucose": 1.0, "dead_cells": 0.02}
NOISE = {"vcd": (1e-6, 0.05), "dead_cells": (1e-6, 0.05)}
SPEC = ResidualSpec(targets=("growth",), features=("temperature",), hidden=(8,))
CONFIG = TrainConfig(steps=40, learning_rate=3e-2, solver=FAST_SOLVER, progress=False)


def _protocol(temperature: float) -> Protocol:
    return Protocol(1.0, (Event(0.0, "setpoint", temperature, "degC", target="temperature"), Event(72.0, "harvest")))


def _mu(temperature: float) -> float:
    """The plant's growth rate, 1/h: the twin's mechanism (mu_max = 0.03 1/h) misses its temperature dependence."""
    return 0.03 * float(np.exp(0.08 * (temperature - 37.0)))


@pytest.fixture(scope="module")
def trained():
    campaign = synthetic_campaign(
        Twin(GrowthDeath()), {b: _protocol(t) for b, t in TEMPERATURES.items()},
        sampling=SamplingPlan(every_h=12.0, variables=("vcd", "dead_cells")),
        noise=NoiseModel({"vcd": (0.05, 0.0), "dead_cells": (0.05, 0.0)}), seed=0,
        initial_states={b: INITIAL for b in TEMPERATURES}, batch_params={b: {"mu_max": _mu(t)}
                                                                         for b, t in TEMPERATURES.items()})
    twin = Twin(hybrid(GrowthDeath(), SPEC, seed=1), {}, NOISE)
    ensemble = train_ensemble(twin, campaign, 4, CONFIG, seed=0, progress=False)
    return campaign, twin, ensemble


def _at(temperatures, twin, **kwargs):
    protocols = {f"T{t:g}": _protocol(t) for t in temperatures}
    return predict(twin, protocols, times=[0.0, 24.0, 48.0, 72.0], initial_states={b: INITIAL for b in protocols},
                   settings=FAST_SOLVER, **kwargs)


def _relative_width(prediction, batch):
    v = prediction["vcd"].sel(batch=batch, time=72.0, phase="pre")
    return float((v.sel(statistic="q95") - v.sel(statistic="q05")) / v.sel(statistic="mean"))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_members_differ_after_training(trained):
    campaign, twin, ensemble = trained
    assert ensemble.n_members == 4 and len(set(ensemble.seeds)) == 4
    assert ensemble.batches == campaign.batches and ensemble.spec == SPEC
    assert all(sum(c) == len(campaign.batches) for c in ensemble.counts)  # bootstrap: n draws with replacement
    assert len(set(ensemble.counts)) > 1
    first, second = _leaves(ensemble.residual(0)), _leaves(ensemble.residual(1))
    assert all(a.shape == b.shape for a, b in zip(first, second, strict=True))
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(first, second, strict=True)) > 1e-3
    assert float(np.max(np.abs(first[-2]))) > 0  # the zero-initialised last layer was trained
    member = ensemble.member(2)
    assert isinstance(member, Twin) and member.noise == twin.noise
    np.testing.assert_array_equal(_leaves(member.kinetics.residual)[0], _leaves(ensemble.residual(2))[0])
    assert all(np.isfinite(m["final_train"]) for m in ensemble.meta["members"])
    assert "4 members" in repr(ensemble) and "<table>" in ensemble._repr_html_()
    # the same seed gives the same ensemble
    again = train_ensemble(twin, campaign, 2, CONFIG, seed=0, progress=False)
    assert again.seeds == ensemble.seeds[:2] and again.counts == ensemble.counts[:2]
    np.testing.assert_array_equal(_leaves(again.residual(1))[0], _leaves(ensemble.residual(1))[0])


def test_identical_members_add_no_spread(trained):
    campaign, twin, _ = trained
    same = ResidualEnsemble.from_residuals(twin, [twin.kinetics.residual] * 3)
    point = predict(twin, campaign, settings=FAST_SOLVER)
    with_ensemble = predict(twin, campaign, settings=FAST_SOLVER, ensemble=same)
    for name in ("vcd", "dead_cells", "viability", "total_cells"):
        np.testing.assert_allclose(with_ensemble[name].values, point[name].values, rtol=1e-12, atol=1e-12)
    assert list(with_ensemble["status"].values) == ["ok"] * 5 and with_ensemble.attrs["ensemble"] == 3
    parameter = predict(twin, campaign, settings=FAST_SOLVER, ensemble=same, band="parameter")
    v = parameter["vcd"].values
    np.testing.assert_allclose(v[1], v[0], rtol=1e-12)
    np.testing.assert_allclose(v[2], v[0], rtol=1e-12)


def test_bands_widen_far_outside_the_training_data(trained):
    _, twin, ensemble = trained
    point = _at([37.0, 50.0], twin)
    widened = _at([37.0, 50.0], twin, ensemble=ensemble)
    # without the ensemble the band is the noise model's, the same relative width anywhere
    assert _relative_width(point, "T50") == pytest.approx(_relative_width(point, "T37"), rel=1e-6)
    inside, outside = _relative_width(widened, "T37"), _relative_width(widened, "T50")
    assert inside < 1.5 * _relative_width(point, "T37")  # inside the training range the members agree
    assert outside > 2.5 * inside


def _posterior(campaign, twin, n=200, seed=0) -> Posterior:
    """A Laplace-like posterior of mu_max and k_d (log-normal draws around the twin's values, noise scales near 0),
    made by hand to keep these tests fast (the samplers have their own tests)."""
    rng = np.random.default_rng(seed)
    samples = {f"log_{p}": (np.log(float(twin.params[p])) + sd * rng.standard_normal((1, n)))
               for p, sd in (("mu_max", 0.03), ("k_d", 0.2))}
    samples["noise_scale"] = 0.1 * rng.standard_normal((1, n, 2))
    meta = {"method": "laplace", "parameters": ["mu_max", "k_d"], "units": {"mu_max": "1/h", "k_d": "1/h"},
            "held": {}, "hierarchical": [], "group": None, "group_levels": [], "batches": list(campaign.batches),
            "groups": [], "variables": ["vcd", "dead_cells"], "base_noise": {k: list(v) for k, v in NOISE.items()},
            "initial_states": [], "settings": {}, "seconds": 0.0}
    return Posterior(samples, {}, meta, {"method": "laplace"})


def test_a_posterior_and_an_ensemble_compose(trained):
    campaign, twin, ensemble = trained
    posterior = _posterior(campaign, twin)
    alone = _at([37.0, 50.0], twin, posterior=posterior, n_draws=60)
    same = ResidualEnsemble.from_residuals(twin, [twin.kinetics.residual] * 2)
    paired = _at([37.0, 50.0], twin, posterior=posterior, n_draws=60, ensemble=same)
    for name in ("vcd", "dead_cells"):  # identical members: the same draws, the same noise, the same bands
        np.testing.assert_allclose(paired[name].values, alone[name].values, rtol=1e-12, atol=1e-12)
    both = _at([37.0, 50.0], twin, posterior=posterior, n_draws=60, ensemble=ensemble)
    assert both.attrs["ensemble"] == 4 and both.attrs["n_draws"] == 60
    assert _relative_width(both, "T50") > 2 * _relative_width(alone, "T50")
    with pytest.raises(CampaignValidationError, match="no neural residual"):
        _at([37.0, 50.0], Twin(GrowthDeath(), {}, NOISE), ensemble=ensemble)


def test_storage_round_trip_and_tampering(trained, tmp_path):
    campaign, twin, ensemble = trained
    folder = save_twin(twin, tmp_path / "twin", ensemble=ensemble)
    document = json.loads((folder / "twin.json").read_text())
    assert document["ensemble_hash"].startswith("sha256:") and document["ensemble_for"] == document["content_hash"]
    with np.load(folder / "ensemble.npz", allow_pickle=False) as arrays:
        assert all(arrays[k].shape[0] == 4 for k in arrays.files)
    loaded = load_ensemble(folder)
    assert (loaded.seeds, loaded.batches, loaded.counts) == (ensemble.seeds, ensemble.batches, ensemble.counts)
    assert loaded.meta == ensemble.meta
    for a, b in zip(_leaves(loaded.residuals), _leaves(ensemble.residuals), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(_at([37.0, 50.0], twin, ensemble=loaded)["vcd"].values,
                                  _at([37.0, 50.0], twin, ensemble=ensemble)["vcd"].values)
    assert load_ensemble(save_twin(twin, tmp_path / "plain")) is None
    other = Twin(hybrid(GrowthDeath(), ResidualSpec(targets=("growth",), features=("vcd",), hidden=(8,))), {}, NOISE)
    with pytest.raises(ValueError, match="residual specification"):
        save_twin(other, tmp_path / "other", ensemble=ensemble)

    def damaged(name, change):
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        change(copy)
        with pytest.raises(ArtifactError) as info:
            load_ensemble(copy)
        return str(info.value)

    def flip(copy):
        raw = bytearray((copy / "ensemble.npz").read_bytes())
        raw[-60] ^= 0xFF
        (copy / "ensemble.npz").write_bytes(bytes(raw))

    def edit_json(copy):
        doc = json.loads((copy / "ensemble.json").read_text())
        doc["seeds"][0] += 1
        (copy / "ensemble.json").write_text(json.dumps(doc))

    def rehash(copy):  # a consistent ensemble.json of other content: twin.json records another hash
        from cgt_twin.bayes.posterior import _hash

        doc = json.loads((copy / "ensemble.json").read_text())
        doc["seeds"][0] += 1
        body = {k: v for k, v in doc.items() if k != "content_hash"}
        doc["content_hash"] = _hash(body, (copy / "ensemble.npz").read_bytes())
        (copy / "ensemble.json").write_text(json.dumps(doc))

    def foreign(copy):
        doc = json.loads((copy / "twin.json").read_text())
        doc["ensemble_for"] = "sha256:" + "0" * 64
        (copy / "twin.json").write_text(json.dumps(doc))

    def added(copy):
        for name in ("ensemble.json", "ensemble.npz"):
            shutil.copy(copy / name, tmp_path / "plain" / name)

    assert "ensemble content hash mismatch" in damaged("flip", flip)
    assert "ensemble content hash mismatch" in damaged("edit", edit_json)
    assert "ensemble hash mismatch" in damaged("rehash", rehash)
    assert "made for another twin" in damaged("foreign", foreign)
    added(folder)
    with pytest.raises(ArtifactError, match="added afterwards"):
        load_ensemble(tmp_path / "plain")


def test_bad_input_is_rejected_before_training(trained):
    campaign, twin, _ = trained
    with pytest.raises(CampaignValidationError, match="at least 2 members"):
        train_ensemble(twin, campaign, 1, CONFIG, progress=False)
    with pytest.raises(CampaignValidationError, match="no neural residual"):
        train_ensemble(Twin(GrowthDeath(), {}, NOISE), campaign, 3, CONFIG, progress=False)
    with pytest.raises(CampaignValidationError) as info:
        train_hybrid(twin, campaign, NOISE, CONFIG, batch_weights={"A": -1, "nope": 1})
    assert "not a training batch" in str(info.value) and "finite number >= 0" in str(info.value)
    with pytest.raises(CampaignValidationError, match="every training batch has weight 0"):
        train_hybrid(twin, campaign, NOISE, CONFIG, batch_weights=dict.fromkeys(campaign.batches, 0))


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_cli_round_trip(trained, tmp_path):
    campaign, twin, _ = trained
    runner = CliRunner()
    data = write_campaign(campaign, tmp_path / "campaign")
    twin_dir = save_twin(twin, tmp_path / "twin", posterior=_posterior(campaign, twin))
    before = _digest(twin_dir)
    out = tmp_path / "with_ensemble"
    config = tmp_path / "fit.toml"
    config.write_text('[training]\nlearning_rate = 0.03\n[training.solver]\nmax_steps = 64\nrtol = 1e-5\n'
                      'atol = 1e-7\n')
    result = runner.invoke(app, ["ensemble", str(twin_dir), str(data), "--members", "2", "--steps", "5",
                                 "--config", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 residuals" in result.output
    assert _digest(twin_dir) == before  # the input artifact is untouched
    assert load_ensemble(out).n_members == 2
    assert load_posterior(out).parameters == ("mu_max", "k_d")  # the input's posterior is carried over
    verify_provenance(out)
    record = read_provenance(out)[-1]
    assert record["command"].startswith("ensemble") and record["details"]["members"] == 2

    result = runner.invoke(app, ["predict", str(out), str(data), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert "ensemble of 2 members" in result.output and "posterior predictive" in result.output
    result = runner.invoke(app, ["predict", str(out), str(data), "--out", str(tmp_path / "q.csv"), "--no-ensemble"])
    assert result.exit_code == 0 and "ensemble" not in result.output.split("predicted")[0]
    assert "posterior predictive" in result.output
    with_ensemble, point = pd.read_csv(tmp_path / "p.csv"), pd.read_csv(tmp_path / "q.csv")
    assert list(with_ensemble.columns) == list(point.columns) and len(with_ensemble) == len(point)
    assert not np.allclose(with_ensemble["q95"].to_numpy(), point["q95"].to_numpy())

    result = runner.invoke(app, ["ensemble", str(twin_dir), str(data), "--out", str(out)])
    assert result.exit_code == 2  # exists
    plain = save_twin(Twin(GrowthDeath(), {}, NOISE), tmp_path / "plain")
    result = runner.invoke(app, ["ensemble", str(plain), str(data), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no neural residual" in result.output
    assert not (tmp_path / "x").exists()
    assert load_twin(out).kinetics.spec == SPEC
