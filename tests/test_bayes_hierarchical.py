"""Hierarchical batch effects: the posterior of the between-batch spread of the growth rate covers the truth, and a
new batch of a known group and a batch of an unseen group get different predictive spreads; the `Posterior` reports
diagnostics, exports to ArviZ and survives a save/load in a twin artifact."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from test_bayes_toy import FAST_SOLVER, GrowthDeath, growth_campaign

from cgt_twin.bayes import BayesConfig, NutsConfig, Posterior, build_model, laplace, sample_nuts
from cgt_twin.data import Event, Protocol
from cgt_twin.io import ArtifactError, load_posterior, load_twin, save_twin
from cgt_twin.models import Twin
from cgt_twin.predict import predict

Z = np.array([-1.4, -0.8, -0.3, 0.0, 0.25, 0.6, 1.0, 1.5])  # standardised batch effects of mu_max
TAU = 0.25  # between-batch sd of log mu_max
REL_SD = 0.25  # measurement noise: per-batch information comparable to TAU (non-centred effects sample well there)

# NUTS on an ODE model: about 3 minutes on the shared 2-core machine (compile included)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted():
    effects = TAU * Z
    realised = float(np.std(effects, ddof=1))
    batches = {f"B{i}": {"mu_max": 0.03 * float(np.exp(e))} for i, e in enumerate(effects)}
    lines = {f"B{i}": {"cell_line": "CL1" if i % 2 else "CL2"} for i in range(len(Z))}
    campaign = growth_campaign(batches, seed=4, covariates=lines, rel_sd=REL_SD)
    twin = Twin(GrowthDeath(), {}, {"vcd": (1e-6, REL_SD), "dead_cells": (1e-6, REL_SD)})
    config = BayesConfig(parameters=("mu_max", "k_d"), hierarchical=("mu_max",), group="cell_line", noise="fixed",
                         solver=FAST_SOLVER)
    model = build_model(twin, campaign, config, forward_mode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        posterior = sample_nuts(model, NutsConfig(chains=2, warmup=150, draws=150, target_accept=0.9, seed=1))
    return twin, campaign, model, posterior, realised


def test_between_batch_spread_is_recovered(fitted):
    _, _, _, posterior, realised = fitted
    tau = posterior.flat("tau_batch")[:, 0]
    low, high = np.quantile(tau, [0.025, 0.975])
    assert low < realised < high, (low, realised, high)
    # the batch effects are recovered in order (the data inform each batch's growth rate)
    effects = posterior.flat("tau_batch")[:, :1] * posterior.flat("z_batch")[:, :, 0]
    if "z_group" in posterior.samples:
        levels = posterior.meta["group_levels"]
        gi = [levels.index(g) for g in posterior.meta["groups"]]
        effects = effects + posterior.flat("tau_group")[:, :1] * posterior.flat("z_group")[:, gi, 0]
    mean = effects.mean(axis=0)
    # 4 values per batch at 25 % noise inform each batch's effect at about 2 sd: ordered, not exactly
    assert np.corrcoef(mean, Z)[0, 1] > 0.5


def test_diagnostics_reported_and_exported(fitted):
    _, _, model, posterior, _ = fitted
    d = posterior.diagnostics
    for key in ("r_hat_max", "ess_bulk_min", "ess_tail_min", "divergences", "e_bfmi", "tree_depth_saturation"):
        assert key in d
    assert d["divergences"] <= 5 and d["r_hat_max"] < 1.1
    assert posterior.check() == (not posterior.problems)
    idata = posterior.to_arviz()
    assert idata.posterior["mu_max"].shape[:2] == (2, 150)
    assert "diverging" in idata.sample_stats and "tree_depth" in idata.sample_stats
    table = posterior.summary()
    assert "mu_max" in table.index and "r_hat" in table.columns
    assert "mu_max" in posterior.report() and "held" in model.describe()


def test_new_batch_of_unseen_group_is_wider(fitted):
    twin, campaign, _, posterior, _ = fitted
    protocols = {"new-known": Protocol(1.0, (Event(72, "harvest"),)), "new-unseen": Protocol(1.0, (Event(72, "harvest"),))}
    init = {b: {"vcd": 0.5, "glucose": 1.0, "dead_cells": 0.02} for b in protocols}
    groups = {"new-known": "CL1", "new-unseen": "CL9"}
    out = predict(twin, protocols, np.arange(0, 73, 24.0), initial_states=init, posterior=posterior,
                  band="parameter", n_draws=300, groups=groups, settings=FAST_SOLVER)
    kinds = json.loads(out.attrs["batch_kinds"])
    assert kinds == {"new-known": "new batch, known group", "new-unseen": "new batch, new group"}
    vcd = out["vcd"].sel(time=72.0, phase="pre")
    width = (vcd.sel(statistic="q95") - vcd.sel(statistic="q05")).values
    assert width[1] > width[0] > 0
    conditioned = predict(twin, campaign, posterior=posterior, band="measurement", n_draws=100, settings=FAST_SOLVER)
    assert json.loads(conditioned.attrs["batch_kinds"])["B0"] == "conditioned"
    assert conditioned["vcd"].dims == ("statistic", "batch", "time", "phase")
    v = conditioned["vcd"].sel(phase="pre").values
    ok = np.isfinite(v[0])
    assert np.all(v[1][ok] <= v[0][ok] + 1e-12) and np.all(v[0][ok] <= v[2][ok] + 1e-12)


def test_posterior_saved_with_artifact(fitted, tmp_path):
    from cgt_twin.models.registry import MODELS

    twin, _, _, posterior, _ = fitted
    assert "test-growth-death" in MODELS
    path = save_twin(twin, tmp_path / "twin", posterior=posterior)
    loaded = load_posterior(path)
    assert isinstance(loaded, Posterior) and loaded.parameters == posterior.parameters
    np.testing.assert_array_equal(loaded.samples["tau_batch"], posterior.samples["tau_batch"])
    assert loaded.diagnostics["divergences"] == posterior.diagnostics["divergences"]
    load_twin(path)  # the twin's own hash still checks
    document = json.loads((path / "posterior.json").read_text())
    document["meta"]["held"] = {"k_d": 1.0}  # tamper
    (path / "posterior.json").write_text(json.dumps(document))
    with pytest.raises(ArtifactError, match="hash"):
        load_posterior(path)
    assert load_posterior(save_twin(twin, tmp_path / "plain")) is None


def test_laplace_has_the_same_api(fitted):
    _, _, model, posterior, _ = fitted
    approx = laplace(model, draws=400)
    assert approx.method == "laplace" and approx.n_draws == 400
    mu_nuts = np.median(posterior.flat("log_mu_max"))
    mu_laplace = np.median(approx.flat("log_mu_max"))
    assert abs(mu_nuts - mu_laplace) < 0.1
    assert "mu_max" in approx.summary().index
