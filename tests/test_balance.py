"""The generic reactor balance (`cgt_twin.models.balance`) and the segmented solver (`cgt_twin.simulate`) against
closed forms.

A tiny kinetics defined here (`ConstantRates`: constant growth, death and specific rates) makes every balance
solvable by hand: with zero rates only the reactor operations act (bolus mixing, sampling, feeds, perfusion, bleeds,
exchanges), with constant rates the states are exponentials. The real `CHOFedBatch` is checked by an independent mass
balance computed from its own trajectory and rates, for non-negativity at depletion, for failures becoming a status,
for vmap consistency and for compiling once.
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import simpson

import cgt_twin  # noqa: F401  (switches JAX to float64)
from cgt_twin import Event, Medium, Protocol
from cgt_twin.models import AbstractKinetics, CHOFedBatch, Inputs, Parameter, Rates, Twin
from cgt_twin.simulate import STATUS_MESSAGES, SolverSettings, _solve_batches, _solve_one, prepare, simulate

# One settings object and one output grid for most tests, so the custom kinetics compiles once for all of them.
TIGHT = SolverSettings(rtol=1e-10, atol=1e-12, max_steps=4096)
GRID = np.array([0.0, 6.0, 12.0, 18.0, 24.0, 30.0, 36.0, 48.0])
EXACT = dict(rtol=1e-12, atol=1e-12)  # jumps and constant states: only rounding
CLOSED = dict(rtol=1e-8, atol=1e-10)  # integrated closed forms at rtol 1e-10 on the scaled states


def _free(name: str, unit: str, description: str) -> Parameter:
    return Parameter(name, 0.0, unit, description, "test", -10.0, 10.0, 0.5, positive=False)


class ConstantRates(AbstractKinetics):
    """Constant specific rates: μ (plus θ·(37 − T)), k_d, uptake of glucose, production of lactate and titre."""

    cell_type: ClassVar[str] = "cho"
    species: ClassVar[tuple[str, ...]] = ("glucose", "lactate", "titer")
    species_scales: ClassVar[dict] = {"glucose": 10.0, "lactate": 10.0, "titer": 100.0}
    parameters: ClassVar[tuple[Parameter, ...]] = (
        _free("mu", "1/h", "growth"), _free("theta", "1/h/degC", "growth gained per degC below 37"),
        _free("k_d", "1/h", "death"), _free("q_glc", "mmol/(1e9 cells)/h", "glucose uptake"),
        _free("q_lac", "mmol/(1e9 cells)/h", "lactate production"), _free("q_p", "mg/(1e9 cells)/h", "productivity"),
    )

    def rates(self, t, state, inputs, params):
        growth = params["mu"] + params["theta"] * (37.0 - inputs.temperature)
        return Rates(growth=growth, death=params["k_d"],
                     specific=jnp.stack([-params["q_glc"], params["q_lac"], params["q_p"]]))


KIN = ConstantRates()
SPECIES = KIN.species
C0 = {"glucose": 10.0, "lactate": 5.0, "titer": 100.0}
X0 = {"vcd": 2.0, "dead_cells": 0.5}
MEDIUM = Medium("medium", {"glucose": 50.0, "lactate": 1.0})  # titre 0 in the medium
MEDIA = {"medium": MEDIUM}
CM = np.array([MEDIUM.concentrations.get(s, 0.0) for s in SPECIES])


def _params(**values: float) -> dict:
    """Parameter values as JAX scalars (Python floats would be static under `filter_jit`, see
    `test_python_float_parameters_reach_the_solver_as_arrays`)."""
    out = {p.name: 0.0 for p in KIN.parameters}
    out.update(values)
    return {k: jnp.asarray(v, dtype=jnp.float64) for k, v in out.items()}


def _run(protocol, *, params=None, initial=None, times=GRID, settings=TIGHT, kinetics=KIN):
    state = {**X0, **C0, "volume": protocol.initial_volume, **(initial or {})}
    ds = simulate(kinetics, protocol, times, initial_states=state, settings=settings,
                  params=params if params is not None else _params())
    assert list(ds.status.values) == ["ok"]
    return ds.isel(batch=0)


def _at(ds, t: float, phase: str = "post") -> dict[str, float]:
    row = ds.sel(time=t, phase=phase)
    return {name: float(row[name]) for name in ("vcd", "dead_cells", *SPECIES, "volume")}


def _species(ds, phase: str = "post") -> np.ndarray:
    return np.stack([ds[s].sel(phase=phase).values for s in SPECIES], axis=-1)


# --------------------------------------------------------------------------------------------------------------------
# (a) bolus mixing, (b) sampling
# --------------------------------------------------------------------------------------------------------------------
def test_bolus_of_medium_mixes_exactly():
    v0, dv = 1.0, 0.2
    protocol = Protocol(v0, (Event(24, "bolus", dv, "L", medium="medium"),), MEDIA)
    ds = _run(protocol)
    pre, post = _at(ds, 24, "pre"), _at(ds, 24, "post")
    c = np.array([C0[s] for s in SPECIES])
    expected = (c * v0 + CM * dv) / (v0 + dv)
    np.testing.assert_allclose([post[s] for s in SPECIES], expected, **EXACT)
    np.testing.assert_allclose([pre[s] for s in SPECIES], c, **EXACT)
    assert post["volume"] == pytest.approx(v0 + dv, rel=1e-14)
    assert pre["volume"] == pytest.approx(v0, rel=1e-14)
    for cells in ("vcd", "dead_cells"):
        assert post[cells] == pytest.approx(X0[cells] * v0 / (v0 + dv), rel=1e-13)
        assert pre[cells] == pytest.approx(X0[cells], rel=1e-13)
    # no reaction: the mixed state persists
    np.testing.assert_allclose(_species(ds)[GRID > 24], np.broadcast_to(expected, (int((GRID > 24).sum()), 3)),
                               **EXACT)


def test_bolus_of_one_species_adds_amount_over_volume():
    v0, amount = 0.8, 4.0  # mmol of glucose
    protocol = Protocol(v0, (Event(12, "bolus", amount, "(mM)*L", target="glucose"),), MEDIA)
    ds = _run(protocol)
    post = _at(ds, 12)
    assert post["glucose"] == pytest.approx(C0["glucose"] + amount / v0, rel=1e-13)
    assert post["lactate"] == pytest.approx(C0["lactate"], rel=1e-13)
    assert post["volume"] == pytest.approx(v0, rel=1e-14)
    assert post["vcd"] == pytest.approx(X0["vcd"], rel=1e-13)


def test_sampling_removes_volume_only():
    protocol = Protocol(1.0, (Event(12, "sample", 0.05, "L"), Event(24, "sample", 0.1, "L")), MEDIA)
    ds = _run(protocol)
    np.testing.assert_allclose(ds.volume.sel(phase="post").values,
                               [1.0, 1.0, 0.95, 0.95, 0.85, 0.85, 0.85, 0.85], **EXACT)
    np.testing.assert_allclose(ds.volume.sel(phase="pre").values,
                               [1.0, 1.0, 1.0, 0.95, 0.95, 0.85, 0.85, 0.85], **EXACT)
    for phase in ("pre", "post"):
        np.testing.assert_allclose(_species(ds, phase), np.broadcast_to([C0[s] for s in SPECIES], (GRID.size, 3)),
                                   **EXACT)
        np.testing.assert_allclose(ds.vcd.sel(phase=phase).values, X0["vcd"], **EXACT)


# --------------------------------------------------------------------------------------------------------------------
# (c) continuous feed, (d) perfusion, (e) bleed
# --------------------------------------------------------------------------------------------------------------------
def test_continuous_feed_matches_closed_form():
    v0, rate = 1.0, 0.01
    protocol = Protocol(v0, (Event(0, "feed_rate", rate, "L/h", medium="medium"),), MEDIA)
    ds = _run(protocol)
    t = GRID
    volume = v0 + rate * t
    c0 = np.array([C0[s] for s in SPECIES])
    expected = CM + (c0 - CM) * (v0 / volume)[:, None]
    np.testing.assert_allclose(ds.volume.sel(phase="post").values, volume, **CLOSED)
    np.testing.assert_allclose(_species(ds), expected, **CLOSED)
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values, X0["vcd"] * v0 / volume, **CLOSED)
    np.testing.assert_allclose(ds.dead_cells.sel(phase="post").values, X0["dead_cells"] * v0 / volume, **CLOSED)


def test_feed_stopped_by_a_zero_rate():
    protocol = Protocol(1.0, (Event(6, "feed_rate", 0.02, "L/h", medium="medium"),
                              Event(18, "feed_rate", 0.0, "L/h", medium="medium")), MEDIA)
    ds = _run(protocol)
    volume = 1.0 + 0.02 * np.clip(GRID - 6, 0, 12)
    np.testing.assert_allclose(ds.volume.sel(phase="post").values, volume, **CLOSED)
    after = GRID >= 18
    np.testing.assert_allclose(_species(ds)[after], np.broadcast_to(_species(ds)[after][0], (after.sum(), 3)),
                               **EXACT)


def test_perfusion_matches_closed_form_and_retains_cells():
    v0, rate = 1.5, 0.05
    protocol = Protocol(v0, (Event(0, "perfusion", rate, "L/h", medium="medium"),), MEDIA)
    ds = _run(protocol)
    c0 = np.array([C0[s] for s in SPECIES])
    expected = CM + (c0 - CM) * np.exp(-rate * GRID / v0)[:, None]
    np.testing.assert_allclose(_species(ds), expected, **CLOSED)
    np.testing.assert_allclose(ds.volume.sel(phase="post").values, v0, **EXACT)
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values, X0["vcd"], **CLOSED)
    np.testing.assert_allclose(ds.dead_cells.sel(phase="post").values, X0["dead_cells"], **CLOSED)


def test_bleed_removes_culture_at_its_own_composition():
    v0, rate = 1.0, 0.01
    protocol = Protocol(v0, (Event(0, "bleed", rate, "L/h"),), MEDIA)
    ds = _run(protocol)
    np.testing.assert_allclose(ds.volume.sel(phase="post").values, v0 - rate * GRID, **CLOSED)
    np.testing.assert_allclose(_species(ds), np.broadcast_to([C0[s] for s in SPECIES], (GRID.size, 3)), **CLOSED)
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values, X0["vcd"], **CLOSED)


def test_feed_plus_equal_bleed_is_a_chemostat():
    v0, rate = 1.0, 0.02
    protocol = Protocol(v0, (Event(0, "feed_rate", rate, "L/h", medium="medium"), Event(0, "bleed", rate, "L/h")),
                        MEDIA)
    ds = _run(protocol)
    wash = np.exp(-rate * GRID / v0)
    c0 = np.array([C0[s] for s in SPECIES])
    np.testing.assert_allclose(ds.volume.sel(phase="post").values, v0, **CLOSED)
    np.testing.assert_allclose(_species(ds), CM + (c0 - CM) * wash[:, None], **CLOSED)
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values, X0["vcd"] * wash, **CLOSED)


# --------------------------------------------------------------------------------------------------------------------
# (f) exchange and split, (g) exchange given as a volume
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [None, "split"])
def test_medium_exchange_and_split(target):
    f = 0.4
    protocol = Protocol(1.0, (Event(24, "exchange", f, "1", medium="medium", target=target),), MEDIA)
    ds = _run(protocol)
    pre, post = _at(ds, 24, "pre"), _at(ds, 24, "post")
    c = np.array([C0[s] for s in SPECIES])
    np.testing.assert_allclose([post[s] for s in SPECIES], (1 - f) * c + f * CM, **EXACT)
    assert post["volume"] == pytest.approx(pre["volume"], rel=1e-14)
    keep = (1 - f) if target == "split" else 1.0
    for cells in ("vcd", "dead_cells"):
        assert post[cells] == pytest.approx(keep * X0[cells], rel=1e-13)


def test_exchange_as_volume_equals_fraction_of_current_volume():
    # volume at 24 h: 1 L - 0.2 L sampled at 12 h = 0.8 L; 0.25 L exchanged is a fraction 0.3125
    sample = Event(12, "sample", 0.2, "L")
    as_volume = Protocol(1.0, (sample, Event(24, "exchange", 0.25, "L", medium="medium")), MEDIA)
    as_fraction = Protocol(1.0, (sample, Event(24, "exchange", 0.25 / 0.8, "1", medium="medium")), MEDIA)
    a, b = _run(as_volume), _run(as_fraction)
    for name in ("vcd", "dead_cells", *SPECIES, "volume"):
        np.testing.assert_allclose(a[name].values, b[name].values, **EXACT)
    assert _at(a, 24)["glucose"] == pytest.approx((1 - 0.3125) * C0["glucose"] + 0.3125 * 50.0, rel=1e-13)


def test_exchange_as_volume_uses_the_volume_it_meets_at_a_time_tie():
    # 24 h: sample 0.2 L (-> 0.8 L), exchange 0.4 L (fraction 0.5 of 0.8 L), then a bolus of 0.2 L
    events = (Event(24, "bolus", 0.2, "L", medium="medium"), Event(24, "exchange", 0.4, "L", medium="medium"),
              Event(24, "sample", 0.2, "L"))
    ds = _run(Protocol(1.0, events, MEDIA))
    exchanged = 0.5 * C0["glucose"] + 0.5 * 50.0
    expected = (exchanged * 0.8 + 50.0 * 0.2) / 1.0
    assert _at(ds, 24)["glucose"] == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------------------------------------------
# (h) pre/post phases and time ties
# --------------------------------------------------------------------------------------------------------------------
def test_pre_is_before_and_post_after_the_events_at_a_time():
    protocol = Protocol(1.0, (Event(24, "bolus", 0.2, "L", medium="medium"),), MEDIA)
    ds = _run(protocol)
    for t in GRID[GRID != 24]:
        np.testing.assert_array_equal(_species(ds, "pre")[GRID == t], _species(ds, "post")[GRID == t])
    assert _at(ds, 24, "pre")["glucose"] == pytest.approx(C0["glucose"], rel=1e-14)
    assert _at(ds, 24, "post")["glucose"] > C0["glucose"] + 1
    # t = 0: pre is the initial state even with an event at 0 h
    ds0 = _run(Protocol(1.0, (Event(0, "bolus", 0.2, "L", medium="medium"),), MEDIA))
    assert _at(ds0, 0, "pre")["volume"] == pytest.approx(1.0, rel=1e-14)
    assert _at(ds0, 0, "post")["volume"] == pytest.approx(1.2, rel=1e-14)


def test_time_ties_sample_then_bolus_then_setpoint():
    v0, s, b = 1.0, 0.1, 0.2
    mu, theta = 0.02, 0.005  # growth 0.02/h at 37 degC, 0.04/h at 33 degC
    # given out of order: the protocol sorts them sample -> bolus -> set-point
    events = (Event(24, "setpoint", 33.0, "degC", target="temperature"), Event(24, "bolus", b, "L", medium="medium"),
              Event(24, "sample", s, "L"))
    ds = _run(Protocol(v0, events, MEDIA), params=_params(mu=mu, theta=theta))
    c = np.array([C0[sp] for sp in SPECIES])
    pre, post = _at(ds, 24, "pre"), _at(ds, 24, "post")
    sample_first = (c * (v0 - s) + CM * b) / (v0 - s + b)
    bolus_first = (c * v0 + CM * b) / (v0 + b)
    assert not np.allclose(sample_first, bolus_first, rtol=1e-3)
    np.testing.assert_allclose([post[sp] for sp in SPECIES], sample_first, **EXACT)
    np.testing.assert_allclose([pre[sp] for sp in SPECIES], c, **EXACT)
    assert post["volume"] == pytest.approx(v0 - s + b, rel=1e-14)
    x24 = X0["vcd"] * math.exp(mu * 24)
    assert pre["vcd"] == pytest.approx(x24, rel=1e-8)
    assert post["vcd"] == pytest.approx(x24 * (v0 - s) / (v0 - s + b), rel=1e-8)
    # the set-point acts from its time on: growth 0.04/h after 24 h
    later = GRID > 24
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values[later],
                               post["vcd"] * np.exp((mu + 4 * theta) * (GRID[later] - 24)), **CLOSED)
    before = GRID < 24
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values[before], X0["vcd"] * np.exp(mu * GRID[before]),
                               **CLOSED)


# --------------------------------------------------------------------------------------------------------------------
# (i) with kinetics on: species bookkeeping closes
# --------------------------------------------------------------------------------------------------------------------
def test_constant_rates_exponential_growth_closed_form():
    mu, kd, q = 0.03, 0.01, dict(q_glc=0.2, q_lac=0.3, q_p=1.5)
    g = mu - kd
    # a sample at 12 h changes the volume but no concentration
    protocol = Protocol(1.0, (Event(12, "sample", 0.1, "L"),), MEDIA)
    ds = _run(protocol, params=_params(mu=mu, k_d=kd, **q))
    t = GRID
    integral = X0["vcd"] * np.expm1(g * t) / g  # ∫ Xv dt
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values, X0["vcd"] * np.exp(g * t), **CLOSED)
    np.testing.assert_allclose(ds.dead_cells.sel(phase="post").values, X0["dead_cells"] + kd * integral, **CLOSED)
    signed = np.array([-q["q_glc"], q["q_lac"], q["q_p"]])
    c0 = np.array([C0[s] for s in SPECIES])
    np.testing.assert_allclose(_species(ds), c0 + signed * integral[:, None], **CLOSED)
    # amounts: between 12 h and 48 h the total c·V changes by ∫ q·Xv·V dt
    volume = ds.volume.sel(phase="post").values
    amount = _species(ds) * volume[:, None]
    i12, i48 = list(GRID).index(12.0), list(GRID).index(48.0)
    np.testing.assert_allclose(amount[i48] - amount[i12], signed * 0.9 * (integral[i48] - integral[i12]), rtol=1e-8)


def test_constant_rates_with_continuous_feed_amount_balance():
    mu, q = 0.025, dict(q_glc=0.2, q_lac=0.3, q_p=1.5)
    v0, rate = 1.0, 0.01
    protocol = Protocol(v0, (Event(0, "feed_rate", rate, "L/h", medium="medium"),), MEDIA)
    ds = _run(protocol, params=_params(mu=mu, **q))
    t = GRID
    volume = v0 + rate * t
    cells_amount = X0["vcd"] * v0 * np.exp(mu * t)  # Xv·V grows at μ, dilution only changes the concentration
    np.testing.assert_allclose(ds.vcd.sel(phase="post").values, cells_amount / volume, **CLOSED)
    signed = np.array([-q["q_glc"], q["q_lac"], q["q_p"]])
    c0 = np.array([C0[s] for s in SPECIES])
    amount = c0 * v0 + signed * (X0["vcd"] * v0 * np.expm1(mu * t) / mu)[:, None] + CM * rate * t[:, None]
    np.testing.assert_allclose(_species(ds) * volume[:, None], amount, **CLOSED)


FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
BASE = Medium("base", {"glucose": 30.0, "glutamine": 4.0})
CHO_MEDIA = {"feed": FEED, "base": BASE}
# The CHO tests share settings, grid and padded event count (24), so most of them reuse one compilation.
CHO_SETTINGS = SolverSettings(rtol=1e-10, atol=1e-12, max_steps=8192)
CHO_GRID = np.arange(0.0, 336.0 + 0.25, 0.5)


def _cho_fed_batch(bolus: float = 0.03, feed_rate: float = 0.001, sample: float = 0.01, days: int = 13,
                   end: float = 336.0) -> Protocol:
    events = [Event(24 * d, "sample", sample, "L") for d in range(1, days + 1)]
    events += [Event(24 * d, "bolus", bolus, "L", medium="feed") for d in (3, 5, 7, 9, 11)]
    events += [Event(96, "feed_rate", feed_rate, "L/h", medium="feed"),
               Event(192, "feed_rate", 0.0, "L/h", medium="feed"), Event(end, "harvest")]
    return Protocol(1.0, tuple(events), CHO_MEDIA, initial_medium="base")


def test_cho_fed_batch_mass_balance_closes():
    """Amount of each species from the trajectory vs. fed − sampled + ∫(q·Xv + r)·V dt (the model's own rates)."""
    kinetics = CHOFedBatch()
    protocol = _cho_fed_batch()
    grid = CHO_GRID
    # some ammonia from the start: the removal switch Amm/(ε + Amm) turning on at 0 mM is too sharp for the quadrature
    ds = simulate(kinetics, protocol, grid, settings=CHO_SETTINGS, initial_states={"ammonia": 0.5}).isel(batch=0)
    assert str(ds.status.values) == "ok"
    names = kinetics.layout.names
    pre = np.stack([ds[n].sel(phase="pre").values for n in names], axis=-1)
    post = np.stack([ds[n].sel(phase="post").values for n in names], axis=-1)
    params = {p.name: jnp.asarray(p.default) for p in kinetics.parameters}

    def net_rates(y):  # d(c·V)/dt from the kinetics alone: (q·Xv + r)·V, per species
        rates = kinetics.rates(0.0, kinetics.layout.unpack(y), Inputs.initial(5), params)
        return (rates.specific * y[0] + rates.volumetric) * y[-1]

    net = np.asarray(jax.vmap(net_rates)(jnp.asarray(post)))
    net_pre = np.asarray(jax.vmap(net_rates)(jnp.asarray(pre)))
    sp = kinetics.layout.species_slice
    fed_conc = np.array([FEED.concentrations.get(s, 0.0) for s in kinetics.species])
    times = sorted({0.0, 336.0} | {e.time_h for e in protocol.events})
    feed_on = {96.0: 0.001, 192.0: 0.0}
    rate = 0.0
    consumed_total = np.zeros(len(kinetics.species))
    for a, b in zip(times[:-1], times[1:], strict=True):
        rate = feed_on.get(a, rate)
        i, j = int(np.argmin(abs(grid - a))), int(np.argmin(abs(grid - b)))
        # integrand on [a, b]: right limit (post) at a, left limit (pre) at b, smooth in between
        f = np.concatenate([net[i:j], net_pre[j:j + 1]])
        reaction = simpson(f, x=grid[i:j + 1], axis=0)
        amount_a = post[i, sp] * post[i, -1]
        amount_b = pre[j, sp] * pre[j, -1]
        expected = amount_a + reaction + rate * fed_conc * (b - a)
        scale = np.abs(reaction) + np.abs(amount_b) + 1e-6
        assert np.all(np.abs(amount_b - expected) <= 1e-6 * scale), (a, b, amount_b, expected)
        consumed_total += reaction
    # and the event jumps: samples remove c·s, boluses add c_feed·ΔV
    for t in times[1:-1]:
        i = int(np.argmin(abs(grid - t)))
        jump = post[i, sp] * post[i, -1] - pre[i, sp] * pre[i, -1]
        kinds = {e.kind.value: e.amount for e in protocol.events if e.time_h == t}
        expected = -kinds.get("sample", 0.0) * pre[i, sp] + kinds.get("bolus", 0.0) * fed_conc
        np.testing.assert_allclose(jump, expected, rtol=1e-12, atol=1e-12)
    # the balance is not vacuous: most glucose was consumed
    glc = kinetics.species.index("glucose")
    assert consumed_total[glc] < -30.0


# --------------------------------------------------------------------------------------------------------------------
# (j) non-negativity at depletion
# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kinetics", "settings"),
                         [(CHOFedBatch(), CHO_SETTINGS), (CHOFedBatch(lactate_consumption=True), CHO_SETTINGS),
                          (CHOFedBatch(), SolverSettings())], ids=["xing", "lactate_consumption", "xing-default-tol"])
def test_cho_depletion_keeps_states_non_negative(kinetics, settings):
    # unfed, sampled every 16 h (padded to 24 events like the fed-batch tests, so the same compilation serves)
    samples = tuple(Event(16 * k, "sample", 0.005, "L") for k in range(1, 21))
    protocol = Protocol(1.0, (*samples, Event(336, "harvest")), CHO_MEDIA, initial_medium="base")
    ds = simulate(kinetics, protocol, CHO_GRID, initial_states={"glucose": 12.0, "glutamine": 2.0},
                  settings=settings).isel(batch=0)
    assert str(ds.status.values) == "ok"
    values = np.stack([ds[n].values for n in kinetics.layout.names])
    assert np.all(np.isfinite(values))
    # glucose and glutamine really run out
    assert float(ds.glucose.sel(phase="post")[-1]) < 1e-3
    assert float(ds.glutamine.sel(phase="post")[-1]) < 0.02  # ~ε: uptake switched off, slow decay left
    # The exact solution stays positive (smooth switches, no clipping). The numerical one may undershoot zero by about
    # the absolute error the solver allows (atol x the state's scale): below 1e-9 at tight tolerances; at the default
    # atol = 1e-8 glucose (scale 10 mM) dips to about -5e-7 mM — bounded by the tolerance, not growing.
    minima = values.min(axis=(1, 2))
    floor = np.minimum(-1e-9, -10 * settings.atol * kinetics.state_scales())
    assert np.all(minima >= floor), dict(zip(kinetics.layout.names, minima, strict=True))
    if settings.atol <= 1e-12:
        assert np.all(minima >= -1e-9), dict(zip(kinetics.layout.names, minima, strict=True))


# --------------------------------------------------------------------------------------------------------------------
# (k) failures become a status
# --------------------------------------------------------------------------------------------------------------------
def _chronological(values: np.ndarray) -> np.ndarray:
    """(time, phase) -> one sequence in time order: pre then post at each time."""
    return values.reshape(-1)


def test_max_steps_becomes_a_status_and_nan_other_batches_unaffected():
    kinetics = CHOFedBatch()
    # "hard": growing cells at a very tight tolerance; a few steps per segment cannot cover a day
    hard = Protocol(1.0, (Event(24, "sample", 0.01, "L"), Event(48, "bolus", 0.05, "L", medium="feed")), CHO_MEDIA,
                    initial_medium="base")
    # "easy": no cells, no glutamine, no ammonia -> every derivative is 0, every step is accepted and the step grows
    # tenfold each time, so a few steps cover any segment
    media = {**CHO_MEDIA, "glucose_only": Medium("glucose_only", {"glucose": 400.0})}
    easy = Protocol(1.0, (Event(24, "sample", 0.01, "L"), Event(48, "bolus", 0.05, "L", medium="glucose_only")),
                    media, initial_medium="base")
    times = np.array([0.0, 0.25, 0.5, 1.0, 24.0, 48.0, 72.0])
    settings = SolverSettings(rtol=1e-12, atol=1e-14, max_steps=6)
    still = {"vcd": 0.0, "glutamine": 0.0, "ammonia": 0.0}
    ds = simulate(kinetics, {"hard": hard, "easy": easy}, times, settings=settings,
                  initial_states={"hard": {}, "easy": still})  # never raises
    assert STATUS_MESSAGES[1] == "max steps reached"
    assert list(ds.status.values) == ["max steps reached", "ok"]
    # hard: finite up to the failure, NaN from it on (in time order, pre before post), for every state
    h = ds.sel(batch="hard")
    pattern = None
    for name in kinetics.layout.names:
        finite = np.isfinite(_chronological(h[name].transpose("time", "phase").values))
        first_nan = int(np.argmin(finite)) if not finite.all() else finite.size
        assert finite[:first_nan].all() and not finite[first_nan:].any(), (name, finite)
        pattern = finite if pattern is None else pattern
        np.testing.assert_array_equal(finite, pattern, err_msg=name)  # all states fail together
    assert pattern[0] and not pattern[-1]  # the initial state is there; the end is not
    assert float(h.vcd.sel(time=0.0, phase="pre")) == pytest.approx(0.3)
    # the easy batch is untouched by its neighbour's failure: its stationary state, except for the jumps
    e = ds.sel(batch="easy")
    assert float(e.glucose.sel(time=24.0, phase="post")) == pytest.approx(30.0, rel=1e-14)
    assert float(e.volume.sel(time=48.0, phase="pre")) == pytest.approx(0.99, rel=1e-14)
    assert float(e.glucose.sel(time=72.0, phase="post")) == pytest.approx((30.0 * 0.99 + 400.0 * 0.05) / 1.04,
                                                                          rel=1e-13)


# --------------------------------------------------------------------------------------------------------------------
# (l) vmap consistency
# --------------------------------------------------------------------------------------------------------------------
def test_batches_together_equal_batches_alone():
    kinetics = CHOFedBatch()
    protocols = {"a": _cho_fed_batch(), "b": _cho_fed_batch(bolus=0.05, feed_rate=0.002, sample=0.02),
                 "c": _cho_fed_batch(bolus=0.02, days=10, end=300.0)}
    states = {"a": {"ammonia": 0.5}, "b": {"vcd": 0.5, "glucose": 40.0}, "c": {"vcd": 0.2, "lactate": 3.0}}
    together = simulate(kinetics, protocols, CHO_GRID, initial_states=states, settings=CHO_SETTINGS)
    assert list(together.status.values) == ["ok"] * 3
    for name, protocol in protocols.items():
        alone = simulate(kinetics, {name: protocol}, CHO_GRID, initial_states={name: states[name]},
                         settings=CHO_SETTINGS)
        for var in kinetics.layout.names:
            np.testing.assert_allclose(together[var].sel(batch=name).values, alone[var].sel(batch=name).values,
                                       rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=f"{name} {var}")
        assert int(together.num_steps.sel(batch=name)) == int(alone.num_steps.sel(batch=name))
    # batch c ends at its harvest: no values after it
    c = together.sel(batch="c")
    assert np.all(np.isnan(c.vcd.values[CHO_GRID > 300])) and np.all(np.isfinite(c.vcd.values[CHO_GRID <= 300]))


@pytest.mark.parametrize("params_per_batch", [False, True])
def test_one_batch_path_equals_the_vmapped_solve(params_per_batch):
    """`_solve_batches` solves a single batch without `vmap` (faster); it must give what the vmapped solve gives, with
    shared parameters and with per-batch parameters (the Bayesian model's form)."""
    kinetics = CHOFedBatch()
    prepared = prepare(kinetics, {"a": _cho_fed_batch(bolus=0.05, feed_rate=0.002)}, CHO_GRID[::8],
                       initial_states={"a": {"vcd": 0.5}})
    params = dict(Twin(kinetics).params)
    if params_per_batch:
        params = {k: v[None] * (1.1 if k == "mu_max" else 1.0) for k, v in params.items()}
    fast = _solve_batches(kinetics, CHO_SETTINGS, params, prepared.encoded, params_per_batch)
    vmapped = jax.vmap(lambda p, e: _solve_one(kinetics, CHO_SETTINGS, p, e),
                       in_axes=(0 if params_per_batch else None, 0))(params, prepared.encoded)
    assert [a.shape for a in fast] == [a.shape for a in vmapped]
    for got, want in zip(fast, vmapped, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-13, atol=1e-13, equal_nan=True)
    assert int(fast[2][0]) == 0 and int(fast[3][0]) > 0  # status ok, steps taken


class _TaggedCHO(CHOFedBatch):
    """A user's kinetics with a dict field: an equinox module that Python cannot hash."""

    tags: dict = eqx.field(default_factory=lambda: {"source": "test"})


def test_kinetics_with_unhashable_fields_solves_like_its_base():
    """The compiled solve is cached by the kinetics' tree structure and leaves, not by hashing the module itself."""
    with pytest.raises(TypeError):
        hash(_TaggedCHO())
    protocol = {"a": _cho_fed_batch()}
    base = simulate(CHOFedBatch(), protocol, CHO_GRID[::8], settings=CHO_SETTINGS)
    tagged = simulate(_TaggedCHO(), protocol, CHO_GRID[::8], settings=CHO_SETTINGS)
    assert list(tagged.status.values) == ["ok"]
    np.testing.assert_array_equal(tagged.glucose.values, base.glucose.values)


# --------------------------------------------------------------------------------------------------------------------
# (m) compile once
# --------------------------------------------------------------------------------------------------------------------
TRACES = {"rates": 0, "observe": 0}


class CountingRates(ConstantRates):
    """`ConstantRates` that counts how often JAX traces its rates and observation (Python runs only when tracing)."""

    def rates(self, t, state, inputs, params):
        TRACES["rates"] += 1
        return super().rates(t, state, inputs, params)

    def observe(self, state, params):
        TRACES["observe"] += 1
        return super().observe(state, params)


def _counting_protocol(bolus: float, sample: float, rate: float, glucose: float) -> Protocol:
    media = {"medium": Medium("medium", {"glucose": glucose, "lactate": 1.0})}
    return Protocol(1.0, (Event(6, "sample", sample, "L"), Event(12, "bolus", bolus, "L", medium="medium"),
                          Event(18, "feed_rate", rate, "L/h", medium="medium"), Event(30, "sample", sample, "L")),
                    media)


def test_second_call_with_new_values_does_not_retrace():
    kinetics = CountingRates()
    first = simulate(kinetics, _counting_protocol(0.1, 0.01, 0.005, 50.0), GRID, settings=TIGHT,
                     initial_states={"vcd": 1.0, "glucose": 10.0}, params=_params(mu=0.02, q_glc=0.1))
    after_first = dict(TRACES)
    assert after_first["rates"] > 0 and after_first["observe"] > 0
    # other amounts, media, initial states and parameter values; same structure and padded sizes (4 events, 8 times)
    second = simulate(kinetics, _counting_protocol(0.2, 0.02, 0.01, 80.0), GRID, settings=TIGHT,
                      initial_states={"vcd": 2.0, "glucose": 20.0}, params=_params(mu=0.03, q_glc=0.2, k_d=0.01))
    assert TRACES == after_first, "simulate retraced for new values with the same structure"
    assert not np.allclose(first.glucose.values, second.glucose.values)


class _Captured(Exception):
    pass


def test_python_float_parameters_reach_the_solver_as_arrays(monkeypatch):
    """Parameter values must be dynamic (JAX arrays) when they reach the jitted solver, or each value compiles anew.
    Checked at the boundary, without compiling: `_solve_batches` is replaced by a probe."""
    import cgt_twin.simulate as sim

    seen = {}

    def probe(kinetics, settings, params, encoded, *args):
        seen.update(params)
        raise _Captured

    monkeypatch.setattr(sim, "_solve_batches", probe)
    with pytest.raises(_Captured):
        simulate(KIN, Protocol(1.0, (Event(12, "sample", 0.1, "L"),), MEDIA), GRID, params={"mu": 0.01})
    assert all(isinstance(v, jax.Array) for v in seen.values()), {k: type(v).__name__ for k, v in seen.items()}
