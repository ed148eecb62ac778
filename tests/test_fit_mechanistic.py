"""Mechanistic fitting: likelihood with censoring, parameter recovery on noise-free data, input errors before
compilation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cgt_twin.data import CampaignValidationError, Event, Medium, Protocol
from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
from cgt_twin.fit import FitConfig, fit_mechanistic, negative_log_likelihood
from cgt_twin.models import CHOFedBatch, TCellExpansion, Twin

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
