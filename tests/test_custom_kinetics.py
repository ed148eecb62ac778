"""A user writes their own kinetics in a few lines and gets the balance, events and simulation for free
(the example of docs/models/custom-kinetics.md, verbatim)."""

from typing import ClassVar

import jax.numpy as jnp
import numpy as np
import pytest

from cgt_twin.data import Event, Medium, Protocol
from cgt_twin.models import AbstractKinetics, Parameter, Rates, Twin
from cgt_twin.simulate import simulate


# --- the documented example ---------------------------------------------------------------------------------------
class MonodGrowth(AbstractKinetics):
    """Monod growth on glucose; lactate made from glucose; no death."""

    cell_type: ClassVar[str] = "cho"
    species: ClassVar[tuple[str, ...]] = ("glucose", "lactate")
    parameters: ClassVar[tuple[Parameter, ...]] = (
        Parameter("mu_max", 0.04, "1/h", "maximum specific growth rate"),
        Parameter("K_glc", 0.5, "mM", "Monod constant of glucose"),
        Parameter("Y_x_glc", 0.3, "(1e9 cells)/mmol", "cells formed per glucose"),
        Parameter("Y_lac_glc", 1.5, "mol/mol", "lactate formed per glucose"),
    )

    def rates(self, t, state, inputs, params):
        glucose = state["glucose"]
        mu = params["mu_max"] * glucose / (params["K_glc"] + glucose)
        q_glucose = mu / params["Y_x_glc"]  # mmol/(1e9 cells)/h
        return Rates(growth=mu, death=0.0, specific=jnp.stack([-q_glucose, params["Y_lac_glc"] * q_glucose]))
# ---------------------------------------------------------------------------------------------------------------------


def test_custom_kinetics_batch_obeys_its_yields():
    twin = Twin(MonodGrowth(), {"mu_max": 0.05})
    protocol = Protocol(1.0, (Event(120, "harvest"),))
    trajectory = simulate(twin, protocol, np.arange(0, 121, 4.0), initial_states={"vcd": 0.2, "glucose": 20.0})
    assert trajectory["status"].item() == "ok"
    vcd = trajectory["vcd"].sel(phase="pre").values[0]
    glucose = trajectory["glucose"].sel(phase="pre").values[0]
    lactate = trajectory["lactate"].sel(phase="pre").values[0]
    # With no death and no feeds, cells formed = Y_x/glc * glucose used and lactate = Y_lac/glc * glucose used.
    np.testing.assert_allclose(vcd - 0.2, 0.3 * (20.0 - glucose), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lactate, 1.5 * (20.0 - glucose), rtol=1e-5, atol=1e-6)
    assert glucose[-1] < 0.1 and vcd[-1] == pytest.approx(0.2 + 0.3 * 20.0, rel=1e-3)  # glucose used up
    assert np.all(glucose >= -10 * 1e-8)  # uptake vanishes with glucose: no undershoot beyond the solver atol


def test_custom_kinetics_gets_feeds_and_sampling_for_free():
    feed = Medium("feed", {"glucose": 300.0})
    protocol = Protocol(1.0, (Event(24, "sample", 0.01, "L"), Event(24, "bolus", 0.05, "L", medium="feed"),
                              Event(48, "harvest")), {"feed": feed})
    trajectory = simulate(MonodGrowth(), protocol, [0.0, 24.0, 48.0], initial_states={"vcd": 0.2, "glucose": 20.0})
    pre = trajectory["glucose"].sel(time=24.0, phase="pre").item()
    post = trajectory["glucose"].sel(time=24.0, phase="post").item()
    assert post == pytest.approx((pre * 0.99 + 300.0 * 0.05) / 1.04, rel=1e-12)
    assert trajectory["volume"].sel(time=24.0, phase="post").item() == pytest.approx(1.04)
    assert trajectory.attrs["model"] == "MonodGrowth"
