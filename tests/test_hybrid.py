"""Neural residuals inside the balance: zero-initialised, configurable, differentiable, mass-conserving."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_twin.data import Event, Medium, Protocol
from cgt_twin.hybrid import HybridKinetics, ResidualSpec, hybrid
from cgt_twin.models import CHOFedBatch, Twin
from cgt_twin.simulate import _solve_batches, prepare, simulate

FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
PROTOCOL = Protocol(1.0, tuple(Event(24.0 * d + 1, "bolus", 0.03, "L", medium="feed") for d in range(2, 9))
                    + (Event(120.0, "setpoint", 33.0, "degC", target="temperature"), Event(240.0, "harvest")),
                    {"feed": FEED})
STATE = {"vcd": 0.4, "glucose": 30.0, "glutamine": 4.0}
TIMES = np.arange(0.0, 241.0, 12.0)
SPEC = ResidualSpec(targets=("growth", "glucose", "lactate", "titer"),
                    features=("glucose", "lactate", "vcd", "temperature", "time_since_feed", "time"))


def _perturbed(kinetics: HybridKinetics, scale: float, seed: int = 1) -> HybridKinetics:
    """The same hybrid with random (non-zero) last-layer weights."""
    last = kinetics.residual.layers[-1]
    key = jax.random.PRNGKey(seed)
    weight = scale * jax.random.normal(key, last.weight.shape, dtype=jnp.float64)
    return eqx.tree_at(lambda k: k.residual.layers[-1].weight, kinetics, weight)


def test_untrained_hybrid_equals_its_mechanistic_core():
    core = CHOFedBatch()
    a = simulate(Twin(core), PROTOCOL, TIMES, initial_states=STATE)
    b = simulate(Twin(hybrid(core, SPEC, seed=3)), PROTOCOL, TIMES, initial_states=STATE)
    for name in ("vcd", "glucose", "lactate", "titer", "ammonia"):
        np.testing.assert_allclose(b[name].values, a[name].values, rtol=1e-12, atol=1e-12)


def test_hybrid_is_a_kinetics_with_the_core_structure():
    h = hybrid(CHOFedBatch(lactate_consumption=True), SPEC)
    core = h.core
    assert h.species == core.species and h.parameters == core.parameters and h.cell_type == "cho"
    assert h.layout.names == core.layout.names
    assert Twin(h).params.keys() == Twin(core).params.keys()


def test_trained_residual_changes_the_trajectory_but_keeps_balances():
    h = _perturbed(hybrid(CHOFedBatch(), SPEC), scale=0.5)
    a = simulate(Twin(CHOFedBatch()), PROTOCOL, TIMES, initial_states=STATE)
    b = simulate(Twin(h), PROTOCOL, TIMES, initial_states=STATE)
    assert b["status"].item() == "ok"
    assert np.nanmax(np.abs(b["titer"].values - a["titer"].values)) > 1.0
    # the balance is the mechanistic one: volume and bolus mixing do not depend on the network
    np.testing.assert_allclose(b["volume"].values, a["volume"].values, rtol=1e-12)
    # non-negativity holds for a strongly perturbed network (uptakes still vanish with the substrate)
    for name in ("glucose", "glutamine", "lactate", "ammonia", "titer", "vcd"):
        assert np.nanmin(b[name].values) > -1e-6


@pytest.mark.parametrize("mode", ["multiplicative", "additive"])
def test_gradient_with_respect_to_network_weights(mode):
    spec = ResidualSpec(targets=("growth", "titer"), features=("glucose", "vcd", "time"), mode=mode,
                        hidden=(8,))
    h = _perturbed(hybrid(CHOFedBatch(), spec), scale=0.1)
    twin = Twin(h)
    prepared = prepare(twin, {"A": PROTOCOL}, TIMES, initial_states={"A": STATE})
    titer = h.layout.index("titer")

    def loss(kinetics):
        pre, _, _, _ = _solve_batches(kinetics, prepared_settings, dict(twin.params), prepared.encoded)
        return jnp.nansum(pre[..., titer] ** 2) / 1e6  # padded output times are NaN

    from cgt_twin.simulate import SolverSettings

    prepared_settings = SolverSettings(rtol=1e-9, atol=1e-11)
    grads = eqx.filter_grad(loss)(h)
    g = grads.residual.layers[-1].weight
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.max(jnp.abs(g))) > 0
    # central finite difference on one weight of the last layer
    eps = 1e-5
    bump = lambda k, d: eqx.tree_at(lambda m: m.residual.layers[-1].weight, k,  # noqa: E731
                                    k.residual.layers[-1].weight.at[1, 0].add(d))
    fd = (loss(bump(h, eps)) - loss(bump(h, -eps))) / (2 * eps)
    assert float(g[1, 0]) == pytest.approx(float(fd), rel=1e-4)


def test_bad_specifications_are_rejected_with_the_allowed_names():
    with pytest.raises(ValueError, match="unknown target 'glucoze'.*glucose"):
        hybrid(CHOFedBatch(), ResidualSpec(targets=("glucoze",), features=("vcd",)))
    with pytest.raises(ValueError, match="unknown feature 'ph_value'"):
        hybrid(CHOFedBatch(), ResidualSpec(targets=("growth",), features=("ph_value",)))
    with pytest.raises(ValueError, match="mode must be one of"):
        hybrid(CHOFedBatch(), ResidualSpec(targets=("growth",), features=("vcd",), mode="gated"))
    with pytest.raises(ValueError, match="already has a residual"):
        hybrid(hybrid(CHOFedBatch(), SPEC), SPEC)


def test_features_are_order_one():
    h = hybrid(CHOFedBatch(), SPEC)
    trajectory = simulate(Twin(CHOFedBatch()), PROTOCOL, TIMES, initial_states=STATE)
    from cgt_twin.models.kinetics import Inputs

    inputs = Inputs.initial(len(h.species))._replace(temperature=jnp.asarray(33.0), last_feed_time=jnp.asarray(96.0))
    worst = 0.0
    for t in (0.0, 120.0, 228.0):
        state = {n: jnp.asarray(trajectory[n].sel(time=t, phase="pre").item()) for n in h.layout.names}
        x = h.features(jnp.asarray(t), state, inputs)
        worst = max(worst, float(jnp.max(jnp.abs(x))))
    assert worst < 20.0
