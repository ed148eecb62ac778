"""Simulation-based calibration (Talts et al. 2018) of NUTS on a 2-parameter ODE model.

Each replication draws the true parameters from the prior and a dataset from the model: the ODE solved at the truth,
plus normal noise of the twin's combined error model (the likelihood's), from the known initial state the model holds.
The replications are the batches of one unpooled model (``pooling="none"``: independent parameters per batch), and
each batch's posterior is sampled on its own (``NutsConfig(independent_batches=True)``: its own chains, step size and
mass matrix), all batches vectorised in one kernel. The rank of each true value among the (thinned) posterior draws
must be uniform: a χ² test over rank bins fails for a biased or over/under-dispersed posterior (a negative control
checks that the test can fail).
"""

from __future__ import annotations

import functools
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import log_density
from scipy import stats
from test_bayes_toy import FAST_SOLVER, INITIAL_STATE, NOISE, GrowthDeath, growth_campaign

from cgt_twin.bayes import BayesConfig, NutsConfig, build_model, sample_nuts
from cgt_twin.data import Campaign
from cgt_twin.data.errors import CampaignValidationError
from cgt_twin.models import Twin

BINS = 4
SAMPLED = ("mu_max", "k_d")


@functools.cache
def _replications(n: int, seed: int) -> tuple[dict, Campaign]:
    """True parameters of `n` replications drawn from the prior, and their data simulated from the model (cached:
    the tests here share one simulation)."""
    rng = np.random.default_rng(seed)
    specs = {p.name: p for p in GrowthDeath.parameters}
    truth = {f"R{i:03d}": {name: float(np.exp(np.log(specs[name].default) + specs[name].prior_sigma
                                              * rng.standard_normal())) for name in SAMPLED} for i in range(n)}
    exact = growth_campaign(truth, seed=seed, rel_sd=0.0)  # the ODE's solution at each truth, no noise
    data = exact.data.copy()
    for variable, (sigma_abs, sigma_rel) in NOISE.items():  # the likelihood's normal error model (its σ_abs floor,
        # 1e-6 of the data's scale, is negligible next to σ_rel·ŷ ≥ 2e-3)
        clean = data[variable].values
        data[variable].values = clean + np.sqrt(sigma_abs ** 2 + (sigma_rel * clean) ** 2) * rng.standard_normal(
            clean.shape)
    return truth, Campaign(data, exact.censored, exact.protocols, exact.media, exact.declared, exact.notes,
                           exact.source)


def _model(truth, campaign):
    config = BayesConfig(parameters=SAMPLED, pooling="none", noise="fixed", solver=FAST_SOLVER)
    return build_model(Twin(GrowthDeath(), {}, NOISE), campaign, config,
                       initial_states={b: INITIAL_STATE for b in truth})  # the known initial state, not the data's


def _ranks(replications: int, seed: int, warmup: int, draws: int, chains: int = 2, thin: int = 2):
    """Normalised ranks r/(L+1) of the true values among L thinned draws (L + 1 a multiple of 20, so the rank bins
    of the tests hold equally many rank values); one per replication and parameter."""
    truth, campaign = _replications(replications, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few draws per replication: ESS warnings by design
        posterior = sample_nuts(_model(truth, campaign), NutsConfig(chains=chains, warmup=warmup, draws=draws,
                                                                    seed=seed, independent_batches=True))
    ranks = []
    for name in SAMPLED:
        draws_ = posterior.flat(f"log_{name}")[::thin]  # chains merged, then thinned: nearly independent draws
        n = (len(draws_) + 1) // 20 * 20 - 1
        draws_ = draws_[:n]
        true = np.log([truth[b][name] for b in posterior.meta["batches"]])
        ranks.append((draws_ < true[None, :]).sum(axis=0) / (n + 1))
    return np.concatenate(ranks), posterior


def _uniformity_p(ranks: np.ndarray, bins: int = BINS) -> float:
    counts = np.histogram(ranks, bins=bins, range=(0.0, 1.0))[0]
    return float(stats.chisquare(counts).pvalue)


def test_sbc_ranks_uniform():
    """64 replications × 2 parameters, one chain each (all 64 chains vectorised), 40 thinned draws per rank."""
    ranks, posterior = _ranks(replications=64, seed=11, warmup=100, draws=80, chains=1)
    d = posterior.diagnostics
    assert ranks.size == 128 and posterior.samples["log_mu_max"].shape == (1, 80, 64)
    assert d["divergences"] == 0 and d["solver_failures"] == 0 and d["tree_depth_saturation"] == 0.0
    ess = az.ess(posterior.to_arviz(), var_names=[f"log_{p}" for p in SAMPLED], method="bulk")
    assert all(np.median(ess[f"log_{p}"].values) > 40 for p in SAMPLED), ess  # of 80: thinned by 2, ~independent
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


def test_batch_alone_is_a_factor_of_the_unpooled_model():
    """``model(batch=b)`` is batch b's own model: the unpooled model's log density is the sum of its batches'. A model
    whose batches are not independent is refused before anything is compiled."""
    truth, campaign = _replications(64, 11)  # the simulation of `test_sbc_ranks_uniform`
    twin_model = _model(truth, campaign)
    z = {f"log_{p}": jnp.log(jnp.asarray([truth[b][p] for b in twin_model.batches])) + 0.1 for p in SAMPLED}

    @jax.jit
    def both(z):
        joint = log_density(twin_model.model, (), {}, z)[0]
        alone = jax.vmap(lambda b: log_density(twin_model.model, (), {"batch": b},
                                               {k: jax.lax.dynamic_slice_in_dim(v, b, 1) for k, v in z.items()})[0])
        return joint, alone(jnp.arange(len(twin_model.batches)))

    joint, alone = both(z)
    assert np.isfinite(joint)
    np.testing.assert_allclose(float(jnp.sum(alone)), float(joint), rtol=1e-10)
    pooled = build_model(Twin(GrowthDeath(), {}, NOISE), campaign, BayesConfig(parameters=SAMPLED, noise="fixed"))
    with pytest.raises(CampaignValidationError, match="independent"):
        sample_nuts(pooled, NutsConfig(independent_batches=True))


@pytest.mark.extended
def test_sbc_ranks_uniform_many_replications():
    ranks, posterior = _ranks(replications=256, seed=5, warmup=200, draws=200)  # 2 chains each
    d = posterior.diagnostics
    assert d["divergences"] == 0 and d["r_hat_max"] < 1.1, d
    counts = np.histogram(ranks, bins=10, range=(0.0, 1.0))[0]
    assert stats.chisquare(counts).pvalue > 0.01, counts


def test_laplace_matches_an_independent_optimiser():
    """The Laplace approximation's mode and covariance (the damped Newton search shared with the independent
    batches' starting points) against scipy's L-BFGS-B on the same potential and a finite-difference Hessian of it."""
    from scipy.optimize import approx_fprime, minimize

    from cgt_twin.bayes import laplace, potential

    truth, campaign = _replications(64, 11)
    truth = {b: truth[b] for b in list(truth)[:2]}
    twin_model = _model(truth, campaign.sel(list(truth)))
    x0, fn, unravel, _ = potential(twin_model)
    value, grad = jax.jit(fn), jax.jit(jax.jacfwd(fn))  # the model's solver is differentiated in forward mode

    def scipy_fn(x):
        return float(value(jnp.asarray(x))), np.asarray(grad(jnp.asarray(x)), dtype=float)

    reference = minimize(scipy_fn, np.asarray(x0), jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 0})
    gradient = lambda x: scipy_fn(x)[1]  # noqa: E731
    hessian = np.stack([approx_fprime(reference.x, lambda x, i=i: gradient(x)[i], 1e-5) for i in range(x0.size)])
    covariance = np.linalg.inv(0.5 * (hessian + hessian.T))

    approx = laplace(twin_model, draws=4000, seed=3)
    np.testing.assert_allclose(approx.meta["settings"]["mode_potential"], reference.fun, rtol=0, atol=1e-7)
    mode, sd = unravel(jnp.asarray(reference.x)), unravel(jnp.sqrt(jnp.diag(jnp.asarray(covariance))))
    assert set(mode) == {f"log_{p}" for p in SAMPLED}
    for site in mode:
        draws = approx.samples[site].reshape(-1, 2)  # (draw, batch)
        error = np.abs(draws.mean(axis=0) - np.asarray(mode[site]))
        assert np.all(error < 4 * np.asarray(sd[site]) / np.sqrt(4000)), (site, draws.mean(axis=0), mode[site])
        np.testing.assert_allclose(draws.std(axis=0), np.asarray(sd[site]), rtol=0.06)


def test_auto_mode_times_both_gradients_and_uses_the_faster():
    """``forward_mode="auto"`` (the default): both gradients timed, the faster mode used and recorded; the posterior
    is the one the chosen mode gives when asked for directly."""
    from cgt_twin.bayes import sample

    truth, campaign = _replications(64, 11)
    batches = list(truth)[:2]
    twin = Twin(GrowthDeath(), {}, NOISE)
    config = BayesConfig(parameters=SAMPLED, pooling="none", noise="fixed", solver=FAST_SOLVER)
    known = {b: INITIAL_STATE for b in batches}
    auto = sample(twin, campaign.sel(batches), config, NutsConfig(chains=1, draws=200), method="laplace",
                  initial_states=known)
    settings = auto.meta["settings"]
    times = settings["gradient_ms"]
    assert set(times) == {"forward", "reverse"} and all(t > 0 for t in times.values())
    assert settings["forward_mode"] == (times["forward"] <= times["reverse"])
    direct = sample(twin, campaign.sel(batches), config, NutsConfig(chains=1, draws=200), method="laplace",
                    forward_mode=settings["forward_mode"], initial_states=known)
    np.testing.assert_allclose(auto.samples["log_mu_max"], direct.samples["log_mu_max"], rtol=1e-8)
    with pytest.raises(CampaignValidationError, match="forward_mode"):
        sample(twin, campaign.sel(batches), config, method="laplace", forward_mode="fast", initial_states=known)
