"""Simulation-based calibration (Talts et al. 2018) of NUTS on a 2-parameter ODE model.

Each replication draws the true parameters from the prior and a dataset from the model; the replications are the
batches of one unpooled model (``pooling="none"``: independent parameters per batch), so one vectorised NUTS run
gives every replication's posterior. The rank of each true value among the (thinned) posterior draws must be uniform:
a χ² test over rank bins fails for a biased or over/under-dispersed posterior (a negative control checks that the
test can fail).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats
from test_bayes_toy import FAST_SOLVER, NOISE, GrowthDeath, growth_campaign

from cgt_twin.bayes import BayesConfig, NutsConfig, build_model, sample_nuts
from cgt_twin.models import Twin

BINS = 4


def _ranks(replications: int, seed: int, warmup: int, draws: int):
    rng = np.random.default_rng(seed)
    specs = {p.name: p for p in GrowthDeath.parameters}
    truth = {f"R{i:02d}": {n: float(np.exp(np.log(s.default) + s.prior_sigma * rng.standard_normal()))
                           for n, s in specs.items()} for i in range(replications)}
    campaign = growth_campaign(truth, seed=seed)
    twin = Twin(GrowthDeath(), {}, NOISE)
    model = build_model(twin, campaign, BayesConfig(parameters=("mu_max", "k_d"), pooling="none", noise="fixed",
                                                    solver=FAST_SOLVER), forward_mode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = sample_nuts(model, NutsConfig(chains=2, warmup=warmup, draws=draws, seed=seed))
    ranks = []
    for name in specs:
        draws_ = posterior.flat(f"log_{name}")[::4]  # thinned: nearly independent draws
        true = np.log([truth[b][name] for b in posterior.meta["batches"]])
        ranks.append((draws_ < true[None, :]).mean(axis=0))  # normalised rank in [0, 1]
    return np.concatenate(ranks), posterior


def _uniformity_p(ranks: np.ndarray) -> float:
    counts = np.histogram(ranks, bins=BINS, range=(0.0, 1.0))[0]
    return float(stats.chisquare(counts).pvalue)


@pytest.mark.extended  # NUTS on 24 replications: not yet run to the end within CI's budget on 2 cores (issue 5)
def test_sbc_ranks_uniform():
    ranks, posterior = _ranks(replications=24, seed=11, warmup=150, draws=200)
    assert posterior.diagnostics["divergences"] <= 2
    assert ranks.size == 48
    assert _uniformity_p(ranks) > 0.01, np.histogram(ranks, bins=BINS, range=(0, 1))[0]


def test_rank_test_can_fail():
    """Negative control of the rank test: ranks of a biased posterior (shifted by 1.5 sd) and of an overconfident
    one (half the sd) are rejected; ranks of a calibrated one are not."""
    rng = np.random.default_rng(0)
    truth = rng.standard_normal(48)
    for shift, scale, rejected in ((0.0, 1.0, False), (1.5, 1.0, True), (0.0, 0.4, True)):
        posterior_mean = truth + rng.standard_normal(48)  # the data's estimate of each truth, sd 1
        draws = posterior_mean[None, :] + shift + scale * rng.standard_normal((100, 48))
        ranks = (draws < truth[None, :]).mean(axis=0)
        assert (_uniformity_p(ranks) < 0.01) == rejected, (shift, scale)


@pytest.mark.extended
def test_sbc_ranks_uniform_many_replications():
    ranks, _ = _ranks(replications=100, seed=5, warmup=300, draws=400)
    counts = np.histogram(ranks, bins=10, range=(0.0, 1.0))[0]
    assert stats.chisquare(counts).pvalue > 0.01, counts
