"""The held parameters' uncertainty carried into a posterior by the Laplace correction
(``BayesConfig(held_uncertainty="laplace")``, `cgt_twin.bayes.held`).

The toy: growth and death (`GrowthDeath`) with a death rate half the growth rate and dead cells weighed little by the
likelihood, so the data pin the net growth rate μ − k_d and leave k_d loosely known: log μ and log k_d are strongly
correlated and the posterior of log μ given k_d is about 3.5 times narrower than its marginal. Sampling μ with k_d
held at the mode, the correction must give μ the marginal's spread (that of NUTS over both), the uncorrected
posterior must not, and every consumer (predictive, control, storage, summaries) must see each draw's own k_d.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from test_bayes_toy import FAST_SOLVER, GrowthDeath, growth_campaign

from cgt_twin.bayes import (
    BayesConfig,
    Curvature,
    NutsConfig,
    Posterior,
    batch_parameter_draws,
    build_model,
    curvature_at_twin,
    held_correction,
    laplace,
    sample,
    sample_nuts,
)
from cgt_twin.bayes import inference as inference_module
from cgt_twin.bayes.config import read_bayes_config
from cgt_twin.bayes.held import HeldCorrection, apply_correction, laplace_correction
from cgt_twin.control import Predictor, PredictorSettings
from cgt_twin.data.errors import CampaignValidationError
from cgt_twin.io import load_posterior, save_twin
from cgt_twin.models import Twin
from cgt_twin.predict import predict
from cgt_twin.simulate import SolverSettings

KD = 0.015  # true death rate (1/h); growth rate 0.03 1/h: net growth 0.015 1/h
NOISE = {"vcd": (1e-6, 0.1), "dead_cells": (1e-6, 0.5)}  # (σ_abs, σ_rel): dead cells weighed little
FULL = BayesConfig(parameters=("mu_max", "k_d"), noise="fixed", solver=FAST_SOLVER)
CARRIED = BayesConfig(parameters=("mu_max",), noise="fixed", solver=FAST_SOLVER, held_uncertainty="laplace")
HELD = dataclasses.replace(CARRIED, held_uncertainty="none")


def _log_sd(posterior: Posterior, name: str) -> float:
    return float(np.std(posterior.flat(f"log_{name}")))


@pytest.fixture(scope="module")
def toy():
    """(campaign, twin at the posterior mode, the full model's Laplace posterior)."""
    campaign = growth_campaign({b: {"k_d": KD} for b in "ABC"}, seed=3, end_h=96.0)
    full = laplace(build_model(Twin(GrowthDeath(), {"k_d": KD}, NOISE), campaign, FULL), draws=4000)
    mode = {p: float(np.exp(np.mean(full.flat(f"log_{p}")))) for p in ("mu_max", "k_d")}
    return campaign, Twin(GrowthDeath(), mode, NOISE), full


@pytest.fixture(scope="module")
def corrected(toy):
    """The Laplace posterior of μ with k_d held at the mode, with and without the correction."""
    campaign, twin, _ = toy
    return (laplace(build_model(twin, campaign, CARRIED), draws=4000),
            laplace(build_model(twin, campaign, HELD), draws=4000))


def test_correction_is_the_joint_laplace_covariance(toy):
    campaign, twin, full = toy
    correction = held_correction(build_model(twin, campaign, CARRIED))
    assert correction.sampled == ("mu_max",) and correction.held == ("k_d",)
    joint = np.cov(np.stack([full.flat("log_mu_max"), full.flat("log_k_d")]))  # 4000 draws of the full Laplace
    np.testing.assert_allclose(correction.covariance[0, 0], joint[1, 1], rtol=0.1)
    np.testing.assert_allclose(correction.gain[0, 0], joint[0, 1] / joint[1, 1], rtol=0.1)
    assert correction.gain[0, 0] > 0.3  # μ follows k_d along the ridge of the net growth rate
    np.testing.assert_allclose(correction.centre, [np.log(float(twin.params["k_d"]))])
    assert held_correction(build_model(twin, campaign, HELD)) is None  # nothing carried without the option


def test_a_curvature_computed_once_is_reused(toy, monkeypatch):
    """The correction from a curvature computed elsewhere — over more parameters, in another order — is the one it
    computes itself, and `sample` without a subset or standard errors takes the Hessian once, not twice."""
    campaign, twin, _ = toy
    model = build_model(twin, campaign, CARRIED)
    alone = held_correction(model)
    own = curvature_at_twin(model.joint)
    assert own.names == ("k_d", "mu_max")
    wider = np.zeros((3, 3))  # an extra parameter "a_extra" first, coupled to both
    wider[1:, 1:] = own.hessian
    wider[0] = wider[:, 0] = [5.0, 0.3, -0.2]
    wider[0, 0] = 5.0
    bigger = Curvature(("a_extra", *own.names), np.concatenate([[0.0], own.log_values]), own.value, wider)
    np.testing.assert_array_equal(bigger.block(["mu_max", "k_d"]), own.hessian[::-1, ::-1])
    reused = held_correction(model, bigger)
    np.testing.assert_allclose(reused.gain, alone.gain, rtol=1e-12)
    np.testing.assert_allclose(reused.covariance, alone.covariance, rtol=1e-12)
    np.testing.assert_allclose(reused.centre, alone.centre, rtol=1e-12)
    with pytest.raises(ValueError, match="does not cover k_d"):
        held_correction(model, Curvature(("mu_max",), own.log_values[1:], own.value, own.hessian[1:, 1:]))

    calls = []
    for name in ("curvature_at_twin", "curvature_at_mode"):
        counted = getattr(inference_module, name)
        monkeypatch.setattr(inference_module, name,
                            lambda m, counted=counted, name=name, **kw: calls.append((name, m.parameters))
                            or counted(m, **kw))
    choose = dataclasses.replace(CARRIED, parameters=None, max_parameters=1, shrinkage=1.0)
    posterior = sample(twin, campaign, choose, NutsConfig(draws=500, chains=1), method="laplace", forward_mode=True)
    assert posterior.parameters == ("mu_max",) and set(posterior.carried) == {"k_d"}
    # once, at the mode, over every candidate; the subset was chosen from it and the correction took its block
    assert calls == [("curvature_at_mode", ("mu_max", "k_d"))]


def test_sample_centres_the_correction_at_the_mode(toy):
    """A twin off the mode (a fit stopped short): `sample` moves the parameters to the mode before the correction,
    centres the carried draws there, records and reports the move, and leaves the twin passed in unchanged."""
    campaign, at_mode, full = toy
    mode_kd = float(at_mode.params["k_d"])
    off = at_mode.with_params(k_d=1.3 * mode_kd)
    posterior = sample(off, campaign, CARRIED, NutsConfig(draws=4000, chains=1), method="laplace",
                       forward_mode=True)
    assert posterior.carried["k_d"] == pytest.approx(mode_kd, rel=1e-3)
    assert float(np.exp(np.median(posterior.flat("log_k_d")))) == pytest.approx(mode_kd, rel=0.05)
    np.testing.assert_allclose(_log_sd(posterior, "mu_max"), _log_sd(full, "mu_max"), rtol=0.08)
    search = posterior.meta["held_uncertainty"]["mode"]
    assert search["values"]["k_d"]["twin"] == pytest.approx(1.3 * mode_kd)
    assert search["values"]["k_d"]["change"] == pytest.approx(1 / 1.3 - 1, rel=1e-2)
    assert search["potential"][1] < search["potential"][0]
    assert "centred at the posterior mode" in posterior.report() and "k_d -23 %" in posterior.report()
    assert "k_d -23 %" in posterior._repr_html_()
    assert float(off.params["k_d"]) == 1.3 * mode_kd
    # at the mode already, nothing moves
    found = off.with_params(**{n: v["mode"] for n, v in search["values"].items()})
    still = sample(found, campaign, CARRIED, NutsConfig(draws=500, chains=1), method="laplace", forward_mode=True)
    assert all(abs(v["change"]) < 1e-4 for v in still.meta["held_uncertainty"]["mode"]["values"].values())
    assert "no parameter moved" in still.report()


def test_laplace_posterior_gets_the_marginal_spread(toy, corrected):
    _, _, full = toy
    with_correction, without = corrected
    assert with_correction.carried == pytest.approx({"k_d": float(toy[1].params["k_d"])})
    assert without.carried == {} and "k_d" in without.held and "k_d" not in with_correction.held
    np.testing.assert_allclose(_log_sd(with_correction, "mu_max"), _log_sd(full, "mu_max"), rtol=0.08)
    np.testing.assert_allclose(_log_sd(with_correction, "k_d"), _log_sd(full, "k_d"), rtol=0.08)
    assert _log_sd(without, "mu_max") < 0.5 * _log_sd(full, "mu_max")  # held: far too narrow
    rho = np.corrcoef(with_correction.flat("log_mu_max"), with_correction.flat("log_k_d"))[0, 1]
    assert rho > 0.8


def test_corrected_nuts_matches_nuts_over_both_parameters(toy):
    """The correction's purpose: NUTS on μ alone, k_d held and then carried, against NUTS on both."""
    campaign, twin, _ = toy
    nuts = NutsConfig(chains=2, warmup=200, draws=600, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short run's ESS warnings
        both = sample_nuts(build_model(twin, campaign, FULL), nuts)
        carried = sample_nuts(build_model(twin, campaign, CARRIED), nuts)
    reference = _log_sd(both, "mu_max")
    np.testing.assert_allclose(_log_sd(carried, "mu_max"), reference, rtol=0.15)
    np.testing.assert_allclose(_log_sd(carried, "k_d"), _log_sd(both, "k_d"), rtol=0.15)
    gain = carried.meta["held_uncertainty"]["gain"]["mu_max"]["k_d"]
    delta = carried.flat("log_k_d") - np.log(carried.carried["k_d"])
    conditional = carried.flat("log_mu_max") - gain * delta  # NUTS's own draws, before the correction
    assert np.std(conditional) < 0.5 * reference
    assert "Laplace" in carried.report() and "before the correction" in carried.report()
    assert "log_k_d" not in carried.sampled_sites  # diagnostics are the sampler's


def test_draws_are_seeded_and_kept_inside_the_support():
    correction = HeldCorrection(("a",), ("b",), np.array([0.0]), np.array([[2.0]]), np.array([[4.0]]),
                                {"a": (-1.0, 1.0), "b": (-3.0, 3.0)})
    samples = {"log_a": np.zeros((2, 500)), "noise_scale": np.zeros((2, 500, 3))}
    one, again, other = (apply_correction(samples, correction, seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(one["log_b"], again["log_b"])
    assert not np.array_equal(one["log_b"], other["log_b"])
    assert one["log_b"].shape == (2, 500) and one["log_b"].min() >= -3.0 and one["log_b"].max() <= 3.0
    assert one["log_a"].min() >= -1.0 and one["log_a"].max() <= 1.0 and np.ptp(one["log_a"]) > 0
    inside = np.abs(one["log_b"]) < 0.5  # where nothing is clipped the shift is exactly the gain times the offset
    np.testing.assert_allclose(one["log_a"][inside], 2.0 * one["log_b"][inside])
    assert samples["log_a"].max() == 0.0  # the input is not modified


def test_bad_curvature_is_named_not_a_traceback():
    names = ["mu_max", "k_d", "K_glc"]
    indefinite = np.diag([4.0, 1.0, -2.0])
    with pytest.raises(CampaignValidationError, match="not positive definite") as exc:
        laplace_correction(indefinite, names, ["mu_max"], ["k_d", "K_glc"], dict.fromkeys(names, 0.0),
                           dict.fromkeys(names, (-5.0, 5.0)))
    assert "along K_glc" in str(exc.value)
    broken = np.eye(3)
    broken[1, :] = np.nan
    with pytest.raises(CampaignValidationError, match="not finite for k_d"):
        laplace_correction(broken, names, ["mu_max"], ["k_d", "K_glc"], dict.fromkeys(names, 0.0),
                           dict.fromkeys(names, (-5.0, 5.0)))


def test_failed_solve_at_the_twin_is_named(toy):
    campaign, _, _ = toy
    starved = dataclasses.replace(CARRIED, solver=SolverSettings(max_steps=2))  # runs out of steps in every batch
    with pytest.raises(CampaignValidationError, match="solve fails at the twin's values"):
        held_correction(build_model(toy[1], campaign, starved))


def test_option_is_checked_and_read_from_bayes_toml(toy, tmp_path):
    campaign, twin, _ = toy
    with pytest.raises(CampaignValidationError, match="held_uncertainty"):
        build_model(twin, campaign, dataclasses.replace(CARRIED, held_uncertainty="bootstrap"))
    with pytest.raises(CampaignValidationError, match="unpooled"):
        build_model(twin, campaign, dataclasses.replace(CARRIED, pooling="none"))
    path = tmp_path / "bayes.toml"
    path.write_text('[model]\nheld_uncertainty = "laplace"\n', encoding="utf-8")
    assert read_bayes_config(path).model.held_uncertainty == "laplace"
    model = build_model(twin, campaign, CARRIED)
    assert model.carried == ("k_d",) and "Laplace" in model.describe()
    everything = build_model(twin, campaign, dataclasses.replace(CARRIED, parameters=("mu_max", "k_d")))
    assert everything.joint is None and held_correction(everything) is None  # nothing held: nothing to carry


def test_saved_and_loaded_with_the_twin(toy, corrected, tmp_path):
    _, twin, _ = toy
    posterior = corrected[0]
    save_twin(twin, tmp_path / "twin", posterior=posterior)
    loaded = load_posterior(tmp_path / "twin")
    assert loaded.carried == posterior.carried and loaded.held == posterior.held
    np.testing.assert_array_equal(loaded.samples["log_k_d"], posterior.samples["log_k_d"])
    np.testing.assert_array_equal(loaded.samples["log_mu_max"], posterior.samples["log_mu_max"])
    assert loaded.meta["held_uncertainty"] == posterior.meta["held_uncertainty"]
    assert loaded.meta["held_uncertainty"]["seconds"] > 0 and "computed in" in loaded.report()
    idata = loaded.to_arviz()
    assert "k_d" in idata.posterior and float(idata.posterior["k_d"].std()) > 0
    assert "k_d" in loaded.summary().index
    html = loaded._repr_html_()
    assert "carried by the Laplace correction (log sd at the fit): k_d" in html
    assert "carried by the Laplace correction" in repr(loaded)


def test_predictive_and_control_use_each_draws_held_value(toy, corrected):
    campaign, twin, _ = toy
    with_correction, without = corrected
    values, index, _ = batch_parameter_draws(with_correction, twin, ["A", "new"], n_draws=300)
    expected = np.exp(with_correction.flat("log_k_d")[index])
    np.testing.assert_allclose(values["k_d"][:, 0], expected)
    np.testing.assert_allclose(values["k_d"][:, 1], expected)
    assert np.ptp(values["k_d"]) > 0
    plain, _, _ = batch_parameter_draws(without, twin, ["A"], n_draws=300)
    assert np.ptp(plain["k_d"]) == 0.0
    predictor = Predictor(twin, with_correction, PredictorSettings(n_particles=64), compile=False)
    assert "k_d" in predictor._varying  # the particles carry each draw's own k_d

    def width(posterior):
        band = predict(twin, campaign, batches=["A"], posterior=posterior, band="parameter", n_draws=200)
        dead = band["dead_cells"].sel(batch="A", phase="pre", time=96.0)
        return float(dead.sel(statistic="q95") - dead.sel(statistic="q05"))

    assert width(with_correction) > 1.5 * width(without)  # dead cells follow k_d, which only the correction varies


def test_hierarchical_effects_compose_with_the_correction(toy):
    campaign, twin, _ = toy
    config = dataclasses.replace(CARRIED, hierarchical=("mu_max",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = laplace(build_model(twin, campaign, config), draws=2000)
    assert posterior.carried.keys() == {"k_d"}
    population, held = posterior.flat("log_mu_max"), posterior.flat("log_k_d")
    gain = posterior.meta["held_uncertainty"]["gain"]["mu_max"]["k_d"]
    delta = held - np.log(posterior.carried["k_d"])
    assert gain > 0.3 and np.corrcoef(population, delta)[0, 1] > 0.15  # the population value is shifted ...
    assert abs(np.corrcoef(population - gain * delta, delta)[0, 1]) < 0.1  # ... by the gain times the offset
    values, index, kinds = batch_parameter_draws(posterior, twin, ["A"], n_draws=200)
    effect = posterior.flat("tau_batch")[index, 0] * posterior.flat("z_batch")[index, 0, 0]
    np.testing.assert_allclose(values["mu_max"][:, 0], np.exp(population[index] + effect))  # effects unchanged
    np.testing.assert_allclose(values["k_d"][:, 0], np.exp(held[index]))
    assert kinds["A"] == "conditioned"
