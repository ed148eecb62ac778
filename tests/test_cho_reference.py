"""`CHOFedBatch` through `simulate` agrees with an independent SciPy implementation of the same equations.

The reference below shares no code with the library: the Xing et al. (2010) rates with the library's smooth switches
and options are transcribed from ``cgt_twin/models/cho.py``'s docstring and equations, and the reactor balance is
written in *amount* form (N = X·V, M = c·V, V), not the library's concentration form, integrated with LSODA segment by
segment between events, with the sample and bolus jumps applied here by hand in the DESIGN.md time-tie order (sample,
then bolus, then set-point).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

import cgt_twin  # noqa: F401  (float64)
from cgt_twin import Event, Medium, Protocol
from cgt_twin.models import CHOFedBatch
from cgt_twin.models.cho import CHO_OPTION_PARAMETERS, CHO_PARAMETERS
from cgt_twin.simulate import SolverSettings, simulate

SPECIES = ("glucose", "glutamine", "lactate", "ammonia", "titer")
STATES = ("vcd", "dead_cells", *SPECIES, "volume")

# -- the 14-day fed-batch --------------------------------------------------------------------------------------------
V0 = 1.0
INITIAL = {"vcd": 0.3, "dead_cells": 0.01, "glucose": 15.0, "glutamine": 4.0, "lactate": 0.5, "ammonia": 0.2,
           "titer": 0.0, "volume": V0}
FEED = {"glucose": 150.0, "glutamine": 30.0}  # mM; nothing else in the feed
SAMPLES = [(24.0 * d, 0.012) for d in range(1, 14)]  # daily, L
BOLUSES = [(24.0 * d, 0.02 + 0.002 * d) for d in range(2, 12)]  # ten bolus feeds on days 2..11, L
FEED_RATES = [(100.0, 0.0006), (220.0, 0.0)]  # continuous feed phase 100..220 h, L/h (not on an event day)
SHIFT = (150.0, 33.0)  # temperature set-point 37 -> 33 degC
END = 336.0
TIMES = np.unique(np.concatenate([np.arange(0.0, END + 1e-9, 6.0), [t for t, _ in FEED_RATES], [SHIFT[0]]]))


def _protocol() -> Protocol:
    events = [Event(t, "sample", v, "L") for t, v in SAMPLES]
    events += [Event(t, "bolus", v, "L", medium="feed") for t, v in BOLUSES]
    events += [Event(t, "feed_rate", f, "L/h", medium="feed") for t, f in FEED_RATES]
    events += [Event(SHIFT[0], "setpoint", SHIFT[1], "degC", target="temperature"), Event(END, "harvest")]
    return Protocol(V0, tuple(events), {"feed": Medium("feed", FEED)})


# -- the reference -----------------------------------------------------------------------------------------------------
def _rates(y: np.ndarray, temperature: float, p: dict, lactate_consumption: bool, temperature_shift: bool):
    """Specific rates (1/h; mmol or mg per 1e9 cells per h) and volumetric rates (mM/h) at concentrations y."""
    xv, xd, glc, gln, lac, amm, titer, volume = y
    eps = p["eps_switch"]
    mu_max, q_p = p["mu_max"], p["q_p"]
    if temperature_shift and temperature < 37.0:
        mu_max = mu_max * math.exp(-p["theta_mu"] * (37.0 - temperature))
        q_p = q_p * (1.0 + p["theta_qp"] * (37.0 - temperature))
    mu = (mu_max * glc / (p["K_glc"] + glc) * gln / (p["K_gln"] + gln)
          * p["KI_lac"] / (p["KI_lac"] + lac) * p["KI_amm"] / (p["KI_amm"] + amm))
    death = p["k_d"] * lac / (p["KD_lac"] + lac) * amm / (p["KD_amm"] + amm)
    glc_uptake = mu / p["Y_x_glc"] + p["m_glc"] * glc / (eps + glc)
    gln_uptake = mu / p["Y_x_gln"] + p["a1"] * gln / (p["a2"] + gln) * gln / (eps + gln)
    lac_production = p["Y_lac_glc"] * glc_uptake
    if lactate_consumption:
        lac_production -= (p["q_lac_max"] * lac / (p["K_lac_c"] + lac)
                           * p["K_glc_shift"] / (p["K_glc_shift"] + glc))
    amm_production = p["Y_amm_gln"] * mu / p["Y_x_gln"] - p["r_amm"] * amm / (eps + amm)
    specific = np.array([-glc_uptake, -gln_uptake, lac_production, amm_production, q_p])
    decay = p["k_dgln"] * gln  # spontaneous glutamine -> ammonia, per volume
    volumetric = np.array([0.0, -decay, 0.0, decay, 0.0])
    return mu, death, specific, volumetric


def _reference(params: dict, lactate_consumption: bool, temperature_shift: bool, scales: np.ndarray):
    """Returns (pre, post) arrays (time, state) in concentration units at TIMES."""
    feed = np.array([FEED.get(s, 0.0) for s in SPECIES])
    amount_scale = scales * V0  # amounts N = X·V and M = c·V are integrated divided by these

    def to_amounts(conc):  # concentrations (and V) -> amounts (and V)
        out = conc.copy()
        out[:-1] = conc[:-1] * conc[-1]
        return out

    def to_conc(amounts):
        out = amounts.copy()
        out[:-1] = amounts[:-1] / amounts[-1]
        return out

    def rhs(t, z, feed_rate, temperature):
        n = z * amount_scale
        volume = n[-1]
        conc = to_conc(n)
        mu, death, specific, volumetric = _rates(conc, temperature, params, lactate_consumption, temperature_shift)
        viable = n[0]  # Xv·V
        d = np.empty_like(n)
        d[0] = (mu - death) * viable
        d[1] = death * viable
        d[2:7] = specific * viable + volumetric * volume + feed_rate * feed
        d[7] = feed_rate
        return d / amount_scale

    event_times = sorted({t for t, _ in SAMPLES} | {t for t, _ in BOLUSES} | {t for t, _ in FEED_RATES} | {SHIFT[0]})
    bounds = [0.0, *[t for t in event_times if 0 < t < END], END]
    pre = np.full((TIMES.size, 8), np.nan)
    post = np.full((TIMES.size, 8), np.nan)
    y = np.array([INITIAL[s] for s in STATES], dtype=float)  # concentrations
    feed_rate, temperature = 0.0, 37.0

    def apply_events(t, y, feed_rate, temperature):
        amounts = to_amounts(y)
        for time, volume in SAMPLES:  # 1. sample: culture leaves at its composition
            if time == t:
                amounts[:-1] *= (amounts[-1] - volume) / amounts[-1]
                amounts[-1] -= volume
        for time, volume in BOLUSES:  # 2. bolus: feed medium comes in
            if time == t:
                amounts[2:7] += volume * feed
                amounts[-1] += volume
        for time, rate in FEED_RATES:  # rates apply from their time on
            if time == t:
                feed_rate = rate
        if SHIFT[0] == t:  # 3. set-point
            temperature = SHIFT[1]
        return to_conc(amounts), feed_rate, temperature

    pre[TIMES == 0.0] = y  # before any event at 0 h
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        y, feed_rate, temperature = apply_events(a, y, feed_rate, temperature)
        t_eval = np.unique(np.concatenate([TIMES[(TIMES >= a) & (TIMES <= b)], [a, b]]))
        sol = solve_ivp(rhs, (a, b), to_amounts(y) / amount_scale, method="LSODA", t_eval=t_eval,
                        args=(feed_rate, temperature), rtol=1e-8, atol=1e-10)
        assert sol.success, sol.message
        values = np.stack([to_conc(z * amount_scale) for z in sol.y.T])
        for t, value in zip(t_eval, values, strict=True):
            row = np.nonzero(TIMES == t)[0]
            if t > a:  # pre at a is the previous segment's end (or the initial state at 0 h)
                pre[row] = value
            if t < b or b == END:
                post[row] = value
        y = values[-1]  # the state at b, before the events at b
    return pre, post


# -- the comparison ----------------------------------------------------------------------------------------------------
CASES = {
    "xing": dict(),
    "lactate_consumption": dict(lactate_consumption=True),
    "temperature_shift": dict(temperature_shift=True),
    "both": dict(lactate_consumption=True, temperature_shift=True),
}


@pytest.mark.parametrize("options", list(CASES.values()), ids=list(CASES))
def test_cho_fed_batch_matches_independent_scipy_reference(options):
    kinetics = CHOFedBatch(**options)
    params = {p.name: p.default for p in CHO_PARAMETERS}
    for option, extra in CHO_OPTION_PARAMETERS.items():
        if options.get(option):
            params.update({p.name: p.default for p in extra})
    assert set(params) == set(kinetics.parameter_names)
    assert kinetics.layout.names == STATES
    scales = kinetics.state_scales()

    ds = simulate(kinetics, _protocol(), TIMES, initial_states=INITIAL,
                  settings=SolverSettings(rtol=1e-8, atol=1e-10, max_steps=100000)).isel(batch=0)
    assert str(ds.status.values) == "ok"
    ref_pre, ref_post = _reference(params, options.get("lactate_consumption", False),
                                   options.get("temperature_shift", False), scales)
    assert np.all(np.isfinite(ref_pre)) and np.all(np.isfinite(ref_post))

    for phase, ref in (("pre", ref_pre), ("post", ref_post)):
        ours = np.stack([ds[s].sel(phase=phase).values for s in STATES], axis=-1)
        error = np.abs(ours - ref)
        allowed = 1e-5 * (np.abs(ref) + scales)
        worst = np.unravel_index(np.argmax(error / allowed), error.shape)
        assert np.all(error <= allowed), (f"{phase}: {STATES[worst[1]]} at {TIMES[worst[0]]} h: "
                                          f"{ours[worst]} vs reference {ref[worst]}")

    # the protocol exercises what it should: jumps at feed times, a glucose dip, growth and product
    bolus_t = BOLUSES[3][0]
    assert float(ds.volume.sel(time=bolus_t, phase="post")) > float(ds.volume.sel(time=bolus_t, phase="pre"))
    assert float(ds.glucose.min()) < 2.0
    assert float(ds.vcd.max()) > 2.5 and float(ds.titer.sel(phase="post")[-1]) > 300.0


def test_options_change_the_trajectory():
    """The reference comparison is only meaningful if each option matters on this protocol."""
    params = {p.name: p.default for p in CHO_PARAMETERS}
    for extra in CHO_OPTION_PARAMETERS.values():
        params.update({p.name: p.default for p in extra})
    scales = CHOFedBatch().state_scales()
    base = _reference(params, False, False, scales)[1]
    lactate = _reference(params, True, False, scales)[1]
    shifted = _reference(params, False, True, scales)[1]
    lac, titer = STATES.index("lactate"), STATES.index("titer")
    assert np.max(np.abs(lactate[:, lac] - base[:, lac])) > 1.0
    assert np.max(np.abs(shifted[:, titer] - base[:, titer])) > 10.0
    after = TIMES > SHIFT[0]
    np.testing.assert_allclose(shifted[~after], base[~after], rtol=1e-6, atol=1e-9)
