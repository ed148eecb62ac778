"""Bad input is rejected before sampling starts, with every problem listed (CampaignValidationError)."""

from __future__ import annotations

import math

import pytest
from test_bayes_toy import NOISE, GrowthDeath, growth_campaign

from cgt_twin.bayes import BayesConfig, NutsConfig, Prior, build_model
from cgt_twin.bayes.config import read_bayes_config
from cgt_twin.data.errors import CampaignValidationError
from cgt_twin.models import Twin


@pytest.fixture(scope="module")
def campaign():
    return growth_campaign({"A": {}, "B": {}, "C": {}}, covariates={"A": {"donor": "D1"}, "B": {"donor": "D2"}})


def _messages(exc) -> str:
    return " | ".join(p.message for p in exc.value.problems)


def test_improper_and_inconsistent_priors(campaign):
    twin = Twin(GrowthDeath(), {}, NOISE)
    config = BayesConfig(parameters=("mu_max", "k_d"), priors={"mu_max": Prior(0.03, 0.0),
                                                                "k_d": Prior(0.005, 0.5, lower=1.0, upper=0.1)},
                         tau_sigma=-1.0)
    with pytest.raises(CampaignValidationError) as exc:
        build_model(twin, campaign, config)
    text = _messages(exc)
    assert "improper prior" in text and "inconsistent support" in text and "tau_sigma" in text
    with pytest.raises(CampaignValidationError, match="cannot build"):
        build_model(twin, campaign, BayesConfig(parameters=("mu_max",), priors={"mu_max": Prior(math.inf, 0.3)}))


def test_group_covariate_missing_for_some_batches(campaign):
    twin = Twin(GrowthDeath(), {}, NOISE)
    with pytest.raises(CampaignValidationError) as exc:
        build_model(twin, campaign, BayesConfig(parameters=("mu_max",), hierarchical=("mu_max",), group="donor"))
    assert "missing for batches ['C']" in _messages(exc)
    with pytest.raises(CampaignValidationError, match="cannot build") as exc:
        build_model(twin, campaign, BayesConfig(parameters=("mu_max",), hierarchical=("mu_max",), group="clone"))
    assert "unknown batch covariate 'clone'" in _messages(exc)


def test_twin_values_outside_prior_support(campaign):
    twin = Twin(GrowthDeath(), {"mu_max": 0.5}, NOISE)  # within the spec's bounds, outside this prior's support
    config = BayesConfig(parameters=("mu_max",), priors={"mu_max": Prior(0.03, 0.3, lower=0.01, upper=0.1)})
    with pytest.raises(CampaignValidationError) as exc:
        build_model(twin, campaign, config)
    assert "outside the prior support" in _messages(exc)


def test_unknown_names(campaign):
    twin = Twin(GrowthDeath(), {}, NOISE)
    with pytest.raises(CampaignValidationError) as exc:
        build_model(twin, campaign, BayesConfig(parameters=("mu_max", "nope"), hierarchical=("k_d",),
                                                variables=("titer",)))
    text = _messages(exc)
    assert "unknown parameter 'nope'" in text and "'k_d' varies between batches" in text and "titer" in text


def test_config_file_errors(tmp_path):
    path = tmp_path / "bayes.toml"
    path.write_text('method = "nuts"\n[model]\nparameter = ["mu_max"]\n[sampler]\nchain = 4\n')
    with pytest.raises(CampaignValidationError) as exc:
        read_bayes_config(path)
    assert "'parameter'" in _messages(exc) and "'chain'" in _messages(exc)
    path.write_text('method = "laplace"\n[model]\nparameters = ["mu_max"]\n[model.priors.mu_max]\nmedian = 0.03\n'
                    'sigma = 0.2\n[sampler]\nchains = 2\n')
    settings = read_bayes_config(path, seed=3)
    assert settings.method == "laplace" and settings.model.parameters == ("mu_max",)
    assert settings.model.priors["mu_max"].sigma == 0.2 and settings.sampler.seed == 3
    path.write_text('[sampler]\nchains = "4"\nindependent_batches = "yes"\ntarget_accept = true\n')
    with pytest.raises(CampaignValidationError) as exc:
        read_bayes_config(path)
    text = _messages(exc)
    assert "chains must be an integer" in text and "independent_batches must be true or false" in text
    assert "target_accept must be a number" in text
    path.write_text('[sampler]\nindependent_batches = true\ntarget_accept = 0.95\nmode_steps = 0\n')
    sampler = read_bayes_config(path).sampler
    assert sampler.independent_batches is True and sampler.target_accept == 0.95 and sampler.mode_steps == 0
    path.write_text('[sampler]\nchains = 0\ntarget_accept = 1\nmode_steps = -1\nchain_method = "pmap"\n')
    with pytest.raises(CampaignValidationError) as exc:
        read_bayes_config(path)
    text = _messages(exc)
    assert str(path) in str(exc.value) and "[sampler]: chains must be an integer >= 1, got 0" in text
    assert "target_accept must be in (0, 1), got 1" in text and "mode_steps must be an integer >= 0" in text
    assert "chain_method must be one of 'vectorized', 'sequential', 'parallel', got 'pmap'" in text
    with pytest.raises(CampaignValidationError, match="init_jitter must be a finite number"):
        NutsConfig(init_jitter=math.inf)
    path.write_text('forward_mode = "fast"\n')
    with pytest.raises(CampaignValidationError, match="forward_mode must be true, false or"):
        read_bayes_config(path)
    path.write_text('forward_mode = false\n')
    assert read_bayes_config(path).forward_mode is False
    path.write_text('method = "nuts"\n')  # not given: time both modes, use the faster
    assert read_bayes_config(path).forward_mode == "auto"


def test_noise_floor_bounds_sigma_abs_and_is_checked(campaign):
    """`noise_floor` raises each σ_abs to a fraction of the variable's typical magnitude (the 95th percentile of its
    measured values), leaves σ_rel and larger σ_abs alone, and the likelihood uses the floored value; a floor outside
    [0, 1) is rejected before sampling."""
    import jax
    import numpy as np

    from cgt_twin.bayes import potential

    twin = Twin(GrowthDeath(), {}, NOISE)
    plain = build_model(twin, campaign, BayesConfig(parameters=("mu_max",), noise="fixed"))
    floored = build_model(twin, campaign, BayesConfig(parameters=("mu_max",), noise="fixed", noise_floor=0.02))
    assert plain.base_noise["vcd"] == NOISE["vcd"]
    i = floored.variables.index("vcd")
    values = np.asarray(floored.observations.values)[i][np.asarray(floored.observations.mask)[i]]
    expected = 0.02 * np.percentile(np.abs(values), 95)
    assert floored.base_noise["vcd"] == pytest.approx((expected, NOISE["vcd"][1]))
    loose = build_model(Twin(GrowthDeath(), {}, {"vcd": (10 * expected, 0.1), "dead_cells": (1e-6, 0.1)}), campaign,
                        BayesConfig(parameters=("mu_max",), noise="fixed", noise_floor=0.02))
    assert loose.base_noise["vcd"][0] == pytest.approx(10 * expected)
    x0, plain_fn, _, _ = potential(plain)
    _, floored_fn, _, _ = potential(floored)
    assert float(jax.jit(floored_fn)(x0)) != pytest.approx(float(jax.jit(plain_fn)(x0)), rel=1e-6)
    for bad in (-0.1, 1.0, math.nan, "0.01"):
        with pytest.raises(CampaignValidationError, match="noise_floor"):
            build_model(twin, campaign, BayesConfig(parameters=("mu_max",), noise_floor=bad))


def test_fixed_group_spread_is_checked_and_kept_out_of_the_sampled_sites():
    """`group_tau` fixes the between-group spread: bad values and a spread without groups are rejected; with it,
    τ_group is no sample site (a deterministic one at the value), the diagnostics and summary leave it out, and a
    new batch of an unseen group is still wider than one of a known group."""
    import json

    import jax
    import numpy as np
    from numpyro.infer.util import initialize_model
    from test_bayes_toy import FAST_SOLVER

    from cgt_twin.bayes import laplace
    from cgt_twin.data import Event, Protocol
    from cgt_twin.predict import predict

    twin = Twin(GrowthDeath(), {}, NOISE)
    lines = {b: {"cell_line": "CL1" if i % 2 else "CL2"} for i, b in enumerate("ABCD")}
    grouped = growth_campaign({b: {"mu_max": 0.03 * (1.1 if i % 2 else 0.9)} for i, b in enumerate("ABCD")},
                              covariates=lines)
    base = dict(parameters=("mu_max",), hierarchical=("mu_max",), group="cell_line", noise="fixed",
                solver=FAST_SOLVER)
    for bad in (0.0, -0.1, math.nan):
        with pytest.raises(CampaignValidationError, match="cannot build") as exc:
            build_model(twin, grouped, BayesConfig(**{**base, "group_tau": bad}))
        assert "fixed between-group spread must be finite and > 0" in _messages(exc)
    with pytest.raises(CampaignValidationError) as exc:
        build_model(twin, grouped, BayesConfig(parameters=("mu_max",), hierarchical=("mu_max",), group_tau=0.2))
    assert "needs a grouping covariate" in _messages(exc)

    model = build_model(twin, grouped, BayesConfig(**base, group_tau=0.2))
    info = initialize_model(jax.random.PRNGKey(0), model.model,
                            forward_mode_differentiation=model.forward_mode)
    assert "tau_group" not in info.param_info.z and "z_group" in info.param_info.z
    assert "fixed at 0.2" in model.describe()
    posterior = laplace(model, draws=300)
    assert np.all(posterior.samples["tau_group"] == 0.2)
    assert "tau_group" not in posterior.sampled_sites and "tau_batch" in posterior.sampled_sites
    assert "tau_group" not in posterior.summary().index
    protocols = {"new-known": Protocol(1.0, (Event(72, "harvest"),)), "new-unseen": Protocol(1.0, (Event(72, "harvest"),))}
    init = {b: {"vcd": 0.5, "glucose": 1.0, "dead_cells": 0.02} for b in protocols}
    out = predict(twin, protocols, np.arange(0, 73, 24.0), initial_states=init, posterior=posterior, band="parameter",
                  n_draws=300, groups={"new-known": "CL1", "new-unseen": "CL9"}, settings=FAST_SOLVER)
    assert json.loads(out.attrs["batch_kinds"]) == {"new-known": "new batch, known group",
                                                    "new-unseen": "new batch, new group"}
    vcd = out["vcd"].sel(time=72.0, phase="pre")
    width = (vcd.sel(statistic="q95") - vcd.sel(statistic="q05")).values
    assert width[1] > width[0] > 0
