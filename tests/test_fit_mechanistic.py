"""Mechanistic fitting: likelihood with censoring, parameter recovery on noise-free data, input errors before
compilation."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from cgt_twin.data import CampaignValidationError, Event, Medium, Protocol
from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
from cgt_twin.fit import FitConfig, fit_mechanistic, negative_log_likelihood
from cgt_twin.models import CHOFedBatch, TCellExpansion, Twin
from cgt_twin.simulate import SolverSettings

FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})


def _protocol(fraction: float) -> Protocol:
    events = tuple(Event(24.0 * d + 1, "bolus", fraction, "L", medium="feed") for d in range(2, 7))
    return Protocol(1.0, (*events, Event(192.0, "harvest")), {"feed": FEED}, max_volume=2.0)


TRUTH = {"mu_max": 0.034, "q_p": 1.3}
VARIABLES = ("vcd", "glucose", "lactate", "titer")


@pytest.fixture(scope="module")
def noise_free():
    twin = Twin(CHOFedBatch(), TRUTH)
    zero = NoiseModel({v: (0.0, 0.0) for v in VARIABLES})
    states = {b: {"vcd": 0.4, "glucose": 30.0, "glutamine": 4.0} for b in ("A", "B")}
    return synthetic_campaign(twin, {"A": _protocol(0.02), "B": _protocol(0.04)},
                              sampling=SamplingPlan(every_h=24.0, variables=VARIABLES), noise=zero, seed=0,
                              initial_states=states)


def test_likelihood_matches_scipy_with_censoring():
    prediction = np.array([1.0, 2.0, 0.3, 5.0])
    values = np.array([1.2, 1.7, 0.5, 4.0])
    censored = np.array([0, 0, -1, 1])
    mask = np.array([True, True, True, True])
    sigma_abs, sigma_rel = 0.1, 0.05
    sd = np.sqrt(sigma_abs ** 2 + (sigma_rel * prediction) ** 2)
    expected = -(stats.norm.logpdf(values[0], prediction[0], sd[0]) + stats.norm.logpdf(values[1], prediction[1], sd[1])
                 + stats.norm.logcdf(values[2], prediction[2], sd[2]) + stats.norm.logsf(values[3], prediction[3], sd[3]))
    got = float(negative_log_likelihood(prediction, values, mask, censored, sigma_abs, sigma_rel))
    assert got == pytest.approx(expected, rel=1e-12)
    # missing values contribute nothing, even with a NaN prediction
    masked = float(negative_log_likelihood(np.append(prediction, np.nan), np.append(values, 0.0),
                                           np.append(mask, False), np.append(censored, 0), sigma_abs, sigma_rel))
    assert masked == pytest.approx(expected, rel=1e-12)


def test_recovers_parameters_from_noise_free_data(noise_free):
    start = Twin(CHOFedBatch())  # defaults: mu_max 0.029, q_p 1.51
    result = fit_mechanistic(start, noise_free, FitConfig(variables=VARIABLES, parameters=("mu_max", "q_p"),
                                                          initial_states=(), prior_weight=0.0))
    assert result.status == "ok", result
    assert float(result.twin.params["mu_max"]) == pytest.approx(TRUTH["mu_max"], rel=1e-3)
    assert float(result.twin.params["q_p"]) == pytest.approx(TRUTH["q_p"], rel=1e-3)
    assert set(result.metrics) == {"A", "B"} and result.metrics["A"]["titer"][0] < 1e-3
    assert set(result.standard_errors) == {"mu_max", "q_p"} and result.not_identifiable == ()
    assert result.correlations.shape == (2, 2)


def test_a_parameter_at_its_bound_stays_inside_it(noise_free):
    """exp(log(10)) rounds to 10.000000000000002: a fitted value pinned at its upper bound is returned at the bound,
    not a rounding error past it (which the twin then refused). Found when a UMN fold pinned K_glc_shift at 100 mM."""
    start = Twin(CHOFedBatch(), {"K_gln": 10.0})  # at its upper bound; the data below barely inform it
    result = fit_mechanistic(start, noise_free, FitConfig(variables=("vcd",), parameters=("K_gln",),
                                                          initial_states=(), prior_weight=0.0, max_steps=2,
                                                          rounds=1))
    assert float(result.twin.params["K_gln"]) <= 10.0


@pytest.mark.parametrize(("config", "phrase"), [
    (FitConfig(variables=("il2",)), "cannot predict 'il2'"),
    (FitConfig(variables=("ammonia",)), "'ammonia' has no measured values"),
    (FitConfig(holdout=("A", "B")), "no batches left to fit"),
    (FitConfig(holdout=("Z",)), "unknown batches ['Z']"),
    (FitConfig(parameters=("mu_maxx",)), "unknown parameter 'mu_maxx'"),
    (FitConfig(initial_states=("biomass",)), "unknown state 'biomass'"),
])
def test_bad_input_is_rejected_before_compiling(noise_free, config, phrase):
    with pytest.raises(CampaignValidationError) as info:
        fit_mechanistic(Twin(CHOFedBatch()), noise_free, config)
    assert phrase in str(info.value)


def test_mismatched_cell_type_is_rejected(noise_free):
    with pytest.raises(CampaignValidationError, match="not tcell cultures"):
        fit_mechanistic(Twin(TCellExpansion()), noise_free)


# a solver budget so tight (64 steps a segment) that the defaults simulate and mu_max at its upper bound (0.2 1/h) does
# not; priors off, so nothing but the data steers the least squares
TIGHT = FitConfig(variables=VARIABLES, parameters=("mu_max", "q_p"), initial_states=(), prior_weight=0.0, rounds=2,
                  max_steps=30, solver=SolverSettings(max_steps=64))


@pytest.mark.parametrize(("failing_round", "kept"), [(1, "the start"), (2, "the optimum of round 1")])
def test_an_optimum_that_cannot_be_simulated_falls_back_to_the_best_point_that_can(noise_free, monkeypatch,
                                                                                  failing_round, kept):
    # A Levenberg–Marquardt step never accepts a failed solve when its start simulates (a failed solve costs 1e3 per
    # residual), so the step is forced: in `failing_round` it returns mu_max at its upper bound, where the tight solver
    # fails.
    from cgt_twin.fit import mechanistic

    real = mechanistic._programs
    calls = []

    def programs(*key):
        compiled = real(*key)

        def least_squares(z, args):
            calls.append(1)
            if len(calls) == failing_round:
                return {**z, "params": z["params"].at[0].set(math.log(0.2))}, jnp.asarray(True), jnp.asarray(3)
            return compiled.least_squares(z, args)

        return SimpleNamespace(predict=compiled.predict, jacobian=compiled.jacobian, least_squares=least_squares)

    monkeypatch.setattr(mechanistic, "_programs", programs)
    start = Twin(CHOFedBatch())
    result = fit_mechanistic(start, noise_free, TIGHT)
    assert result.status == (f"fallback: the least-squares optimum cannot be simulated (round {failing_round}); kept "
                             f"{kept}, the best simulatable point"), result
    assert math.isfinite(result.objective) and len(calls) == failing_round
    assert result.stages[-1].endswith(f"kept {kept}")
    if failing_round == 1:  # the start, with its noise estimated as after a round
        assert float(result.twin.params["mu_max"]) == pytest.approx(float(start.params["mu_max"]), rel=1e-12)
        assert all(rel != pytest.approx(0.05) for _, rel in result.noise.values())  # not the initial guess
    else:  # round 1 reached the truth
        assert float(result.twin.params["mu_max"]) == pytest.approx(TRUTH["mu_max"], rel=1e-3)


def test_a_start_that_cannot_be_simulated_is_named_and_a_simulatable_start_wins(noise_free):
    start = Twin(CHOFedBatch(), {"mu_max": 0.2})  # fails with 64 steps a segment
    alone = fit_mechanistic(start, noise_free, TIGHT)
    assert "no start can be simulated" in alone.status and "max_steps 64 a segment" in alone.status, alone.status
    assert float(alone.twin.params["mu_max"]) == 0.2 and alone.objective == math.inf
    two = fit_mechanistic(start, noise_free, dataclasses.replace(TIGHT, n_starts=2))  # the second drawn from the priors
    assert two.starts[0] == math.inf and math.isfinite(two.starts[1]) and two.objective == two.starts[1]
    assert two.status in ("ok", "maximum steps reached"), two.status
    assert float(two.twin.params["mu_max"]) == pytest.approx(TRUTH["mu_max"], rel=1e-2)
