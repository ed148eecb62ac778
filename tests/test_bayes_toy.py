"""Small, fast models and campaigns for the Bayesian tests (imported by the other test_bayes_* modules)."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
import numpy as np

from cgt_twin.data import Event, Protocol
from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
from cgt_twin.models import AbstractKinetics, Parameter, Rates, Twin
from cgt_twin.models.registry import MODELS, register_model
from cgt_twin.simulate import SolverSettings

FAST_SOLVER = SolverSettings(max_steps=64, rtol=1e-5, atol=1e-7)
NOISE = {"vcd": (1e-6, 0.1), "dead_cells": (1e-6, 0.1)}  # (σ_abs, σ_rel) of the twin's noise model
INITIAL_STATE = {"vcd": 0.5, "glucose": 1.0, "dead_cells": 0.02}  # of every batch of `growth_campaign`


class GrowthDeath(AbstractKinetics):
    """Exponential growth and first-order death: dXv/dt = (μ − k_d)·Xv, dXd/dt = k_d·Xv (a 2-parameter ODE)."""

    cell_type: ClassVar[str] = "cho"
    species: ClassVar[tuple[str, ...]] = ("glucose",)
    parameters: ClassVar[tuple[Parameter, ...]] = (
        Parameter("mu_max", 0.03, "1/h", "specific growth rate", "test", 1e-4, 1.0, 0.3),
        Parameter("k_d", 0.005, "1/h", "specific death rate", "test", 1e-6, 1.0, 0.5),
    )

    def rates(self, t, state, inputs, params):
        return Rates(growth=params["mu_max"], death=params["k_d"], specific=jnp.zeros(1))


if "test-growth-death" not in MODELS:
    register_model("test-growth-death", GrowthDeath)


def growth_campaign(batch_params, *, seed=0, every_h=24.0, end_h=72.0, covariates=None, rel_sd=0.1):
    """Daily vcd and dead-cell counts of batches with their own parameter values (log-normal noise of `rel_sd`)."""
    protocols = {b: Protocol(1.0, (Event(end_h, "harvest"),)) for b in batch_params}
    return synthetic_campaign(
        Twin(GrowthDeath()), protocols,
        sampling=SamplingPlan(every_h=every_h, variables=("vcd", "dead_cells")),
        noise=NoiseModel({"vcd": (rel_sd, 0.0), "dead_cells": (rel_sd, 0.0)}), seed=seed,
        initial_states={b: dict(INITIAL_STATE) for b in batch_params},
        batch_params=batch_params, covariates=covariates)


def test_toy_campaign_is_reproducible():
    a = growth_campaign({"A": {"mu_max": 0.03}}, seed=1)
    b = growth_campaign({"A": {"mu_max": 0.03}}, seed=1)
    np.testing.assert_array_equal(a.data["vcd"].values, b.data["vcd"].values)
