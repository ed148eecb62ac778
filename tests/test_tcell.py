"""TCellExpansion: agreement with an independent scipy implementation, and behaviour on synthetic runs.

No public T-cell time-course data exists for us, so these are the model's only checks: the equations (written here a
second time, independently, on sub-population *densities* with scipy's DOP853) and the behaviour the structure must
show (activation lag, IL-2 dependence, contraction after bead removal, density limit, bounded fractions).

Each vessel compiles once: the agreement protocol and the behavioural scenarios of one vessel run in one `simulate`
call (vmapped over batches).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from cgt_twin.data.protocol import Event, Medium, Protocol
from cgt_twin.models.kinetics import AbstractKinetics
from cgt_twin.models.parameters import defaults, parameter_table
from cgt_twin.models.tcell import TCELL_PARAMETERS, TCellExpansion
from cgt_twin.simulate import SolverSettings, simulate

TIMES = np.arange(0.0, 241.0, 1.0)
TIGHT = SolverSettings(rtol=1e-8, atol=1e-10, max_steps=16384)
N_A = 6.02214076e23
PM_PER_IU = 3.9  # pM per IU/mL (models.md §1), written here again on purpose

MEDIA = {
    "basal": Medium("basal", {"glucose": 20.0, "lactate": 0.0, "il2": 0.0}),
    "complete": Medium("complete", {"glucose": 20.0, "lactate": 0.0, "il2": 100.0}),
    "feed": Medium("feed", {"glucose": 100.0, "il2": 200.0}),
    "rich": Medium("rich", {"glucose": 40.0, "lactate": 0.0, "il2": 0.0}),
}


def beads(time: float, ratio: float) -> Event:
    return Event(time, "stimulus", ratio, "1", target="beads")


def il2(time: float, iu_per_ml: float) -> Event:
    return Event(time, "stimulus", iu_per_ml, "IU/mL", target="il2")


def agreement_protocol(volume: float = 1.0) -> Protocol:
    """10 days: beads 1:1 at 0 h, removed at day 5; IL-2 additions; a 50 % medium exchange; a bolus of medium and a
    continuous feed."""
    events = [beads(0.0, 1.0), il2(0.0, 100.0), il2(48.0, 100.0), il2(96.0, 50.0), beads(120.0, 0.0),
              Event(132.0, "exchange", 0.5, "1", medium="complete"),
              Event(150.0, "bolus", 0.2 * volume, "L", medium="complete"),
              Event(168.0, "feed_rate", 0.004 * volume, "L/h", medium="feed"),
              Event(200.0, "feed_rate", 0.0, "L/h", medium="feed"), il2(192.0, 100.0), Event(240.0, "harvest")]
    return Protocol(initial_volume=volume, events=tuple(events), media=MEDIA, initial_medium="basal")


def expansion_protocol(il2_dose: float = 100.0, removal: float | None = 120.0, volume: float = 1.0,
                       medium: str = "basal") -> Protocol:
    """Beads 1:1 at 0 h (removed at `removal`), IL-2 every 48 h, no feeding."""
    events = [beads(0.0, 1.0), Event(240.0, "harvest")]
    if removal is not None:
        events.append(beads(removal, 0.0))
    if il2_dose:
        events += [il2(t, il2_dose) for t in (0.0, 48.0, 96.0, 144.0, 192.0)]
    return Protocol(initial_volume=volume, events=tuple(events), media=MEDIA, initial_medium=medium)


# ---------------------------------------------------------------------------------------------------------------------
# The independent reference: sub-population densities N_i (1e6 cells/mL), numpy + scipy.
# ---------------------------------------------------------------------------------------------------------------------
def reference_rhs(y, b, feed_rate, feed_conc, p, n, vessel):
    m = n + 6
    N = y[:m]
    dead, glc, lac, l_iu, vol = y[m], y[m + 1], y[m + 2], y[m + 3], y[m + 4]
    R, A = N[0], N[1:1 + n]
    PM, PE, X, QM, QE = N[n + 1:n + 6]
    vcd = N.sum()
    dil = feed_rate / vol
    glc_, lac_ = max(glc, 0.0), max(lac, 0.0)
    L = max(PM_PER_IU * l_iu, 0.0)
    S = b / (p["K_S"] + b)
    h = p["h_IL2"]
    f_il2 = max(L, 1e-30) ** h / (p["K_IL2"] ** h + max(L, 1e-30) ** h)
    if vessel == "stirred":
        phi = min(max(1.0 - vcd / p["X_max"], 0.0), 1.0)
    else:
        cells_per_cm2 = vcd * 1e6 * vol * 1e3 / p["surface_area"]
        phi = min(max(1.0 - cells_per_cm2 / (p["sigma_max"] * 1e6), 0.0), 1.0)
    mu = p["mu_max"] * glc_ / (p["K_G"] + glc_) * f_il2 * p["K_IL"] / (p["K_IL"] + lac_) * phi
    kd = p["k_d0"] + p["k_dG"] * p["K_dG"] / (p["K_dG"] + glc_) + p["k_dL"] * lac_ / (p["K_dL"] + lac_)
    kappa = n / p["tau_lag"]
    act, diff = p["k_act"] * S, p["k_diff"] * S * (1 + p["beta_IL2"] * f_il2)
    dN = np.empty(m)
    dN[0] = -act * R - kd * R
    prev = act * R
    for k in range(n):
        dN[1 + k] = prev - kappa * A[k] - kd * A[k]
        prev = kappa * A[k]
    dN[n + 1] = prev + (mu - kd) * PM - diff * PM - p["k_q"] * (1 - S) * PM + act * QM
    dN[n + 2] = diff * PM + (mu - kd) * PE - p["k_ex"] * S * PE - p["k_q"] * (1 - S) * PE + act * QE
    dN[n + 3] = p["k_ex"] * S * PE - (kd + p["k_dX"]) * X - p["k_xr"] * (1 - S) * X
    dN[n + 4] = p["k_q"] * (1 - S) * PM - (kd + p["k_dQ"]) * QM - act * QM
    dN[n + 5] = p["k_q"] * (1 - S) * PE + p["k_xr"] * (1 - S) * X - (kd + p["k_dQ"]) * QE - act * QE
    dN -= dil * N
    d_dead = kd * vcd + p["k_dQ"] * (QM + QE) + p["k_dX"] * X - p["k_lys"] * dead - dil * dead
    # per-cell uptake: activated (A, P, X) at full activity, resting (R, Q) at f_rest
    activity = np.concatenate([[p["f_rest"]], np.ones(n + 3), [p["f_rest"], p["f_rest"]]])
    growth = np.zeros(m)
    growth[n + 1:n + 3] = mu
    q_glc = growth / p["Y_XG"] + p["m_G"] * activity * glc_ / (p["eps_switch"] + glc_)  # mmol/(1e9 cells)/h
    glc_uptake = float(q_glc @ N)  # mM/h
    molecules = p["q_IL2_max"] * activity * L / (p["K_D_IL2"] + L)  # per cell per h
    il2_uptake_molar = float(molecules @ N) * 1e6 * 1e3 / N_A  # mol/L/h (cells per mL -> per L)
    il2_uptake = il2_uptake_molar / (PM_PER_IU * 1e-12)  # IU/mL/h
    d_glc = -glc_uptake + dil * (feed_conc[0] - glc)
    d_lac = p["Y_LG"] * glc_uptake + dil * (feed_conc[1] - lac)
    d_il2 = -il2_uptake + dil * (feed_conc[2] - l_iu)
    return np.concatenate([dN, [d_dead, d_glc, d_lac, d_il2, feed_rate]])


def reference_solve(protocol: Protocol, y0: dict, p: dict, n: int, vessel: str, times: np.ndarray):
    """Piecewise integration between events with the events as jumps; returns the pre-event values at `times`."""
    m = n + 6
    species = ("glucose", "lactate", "il2")
    y = np.zeros(m + 5)
    y[0] = y0["vcd"]  # all resting at 0 h
    y[m] = y0.get("dead_cells", 0.0)
    medium0 = protocol.media[protocol.initial_medium].concentrations
    for i, s in enumerate(species):
        y[m + 1 + i] = medium0.get(s, 0.0)
    y[m + 4] = protocol.initial_volume

    def conc(medium):
        return np.array([protocol.media[medium].concentrations.get(s, 0.0) for s in species])

    b, feed_rate, feed_conc = 0.0, 0.0, np.zeros(3)
    out = np.full((times.size, y.size), np.nan)
    out[times == 0.0] = y
    t = 0.0
    events = [e for e in protocol.events if e.kind.value != "harvest"] + [Event(float(times[-1]), "harvest")]
    for event in events:
        if event.time_h > t:
            inside = (times > t) & (times < event.time_h)
            t_eval = np.append(times[inside], event.time_h)
            sol = solve_ivp(lambda _t, z, b=b, feed_rate=feed_rate, feed_conc=feed_conc:
                            reference_rhs(z, b, feed_rate, feed_conc, p, n, vessel),
                            (t, event.time_h), y, method="DOP853", rtol=1e-8, atol=1e-10, t_eval=t_eval)
            assert sol.success, sol.message
            out[inside] = sol.y[:, :-1].T
            out[times == event.time_h] = sol.y[:, -1]  # the value before the event
            y = sol.y[:, -1].copy()
            t = event.time_h
        kind = event.kind.value
        if kind == "stimulus" and event.target == "il2":
            y[m + 3] += event.amount
        elif kind == "stimulus":
            b = event.amount
        elif kind == "exchange":
            y[m + 1:m + 4] = (1 - event.amount) * y[m + 1:m + 4] + event.amount * conc(event.medium)
        elif kind == "bolus":
            f = event.amount / (y[m + 4] + event.amount)
            y[:m + 1] *= 1 - f
            y[m + 1:m + 4] = (1 - f) * y[m + 1:m + 4] + f * conc(event.medium)
            y[m + 4] += event.amount
        elif kind == "feed_rate":
            feed_rate = event.amount
            feed_conc = conc(event.medium) if event.amount > 0 else np.zeros(3)
    return out


def reference_observed(out: np.ndarray, n: int, memory_idx: list[int]) -> dict[str, np.ndarray]:
    m = n + 6
    N = out[:, :m]
    vcd = N.sum(axis=1)
    return {"vcd": vcd, "dead_cells": out[:, m], "glucose": out[:, m + 1], "lactate": out[:, m + 2],
            "il2": out[:, m + 3], "volume": out[:, m + 4], "viability": vcd / (vcd + out[:, m]),
            "memory_fraction": N[:, memory_idx].sum(axis=1) / vcd, "exhausted_fraction": N[:, n + 3] / vcd,
            **{f"density_{k}": N[:, k] for k in range(m)}}


# ---------------------------------------------------------------------------------------------------------------------
# One simulate call per vessel (one compilation each), shared by the tests.
# ---------------------------------------------------------------------------------------------------------------------
STIRRED = TCellExpansion()  # n_lag = 3
STATIC = TCellExpansion(vessel="static", n_lag=2)
STATIC_PLATEAU_VOLUME = 2.0  # L on 100 cm² (default surface_area): limit 3.2e9 cells = 1.6e6 cells/mL


@pytest.fixture(scope="module")
def stirred_runs():
    protocols = {"agree": agreement_protocol(), "base": expansion_protocol(), "no_il2": expansion_protocol(0.0),
                 "beads_kept": expansion_protocol(removal=None),
                 "plateau_protocol": expansion_protocol(removal=None, volume=STATIC_PLATEAU_VOLUME, medium="rich")}
    states = {name: {"vcd": 0.5} for name in protocols}
    return simulate(STIRRED, protocols, TIMES, initial_states=states, settings=TIGHT)


@pytest.fixture(scope="module")
def static_runs():
    protocols = {"agree": agreement_protocol(),
                 "plateau": expansion_protocol(removal=None, volume=STATIC_PLATEAU_VOLUME, medium="rich"),
                 "plateau_2v": expansion_protocol(removal=None, volume=2 * STATIC_PLATEAU_VOLUME, medium="rich")}
    states = {name: {"vcd": 0.5} for name in protocols}
    return simulate(STATIC, protocols, TIMES, initial_states=states, settings=TIGHT)


def _params(model: AbstractKinetics) -> dict[str, float]:
    return {k: float(v) for k, v in defaults(model.parameters).items()}


SCALES = {"vcd": 1.0, "dead_cells": 1.0, "glucose": 10.0, "lactate": 10.0, "il2": 100.0, "volume": 1.0,
          "viability": 1.0, "memory_fraction": 1.0, "exhausted_fraction": 1.0}


@pytest.mark.parametrize("which", ["stirred", "static"])
def test_agrees_with_independent_scipy_implementation(which, request):
    model, runs = (STIRRED if which == "stirred" else STATIC), request.getfixturevalue(f"{which}_runs")
    assert runs["status"].sel(batch="agree").item() == "ok"
    n = model.n_lag
    memory_idx = [model.subpopulations.index(name) for name in model.memory_like]
    ref = reference_observed(reference_solve(agreement_protocol(), {"vcd": 0.5}, _params(model), n, model.vessel,
                                             TIMES), n, memory_idx)
    run = runs.sel(batch="agree", phase="pre")
    for name, scale in SCALES.items():
        a, b = run[name].values, ref[name]
        bad = np.abs(a - b) > 1e-5 * (np.abs(b) + scale)
        assert not bad.any(), (name, TIMES[bad][:5], a[bad][:5], b[bad][:5])
    # the partition: sub-population densities vcd·f_i/Σf against the reference's densities
    densities = model.subpopulation_densities({k: run[k].values for k in run.data_vars})
    for k, name in enumerate(model.subpopulations):
        a, b = densities[name], ref[f"density_{k}"]
        assert np.all(np.abs(a - b) <= 1e-5 * (np.abs(b) + 1.0)), name
    # the run exercised what it should: growth, contraction, feeding, IL-2 consumption
    assert ref["vcd"].max() > 2 * ref["vcd"][0]
    assert ref["volume"][-1] > 1.3


def _rate(run, t0: float, t1: float) -> float:
    """Net specific growth rate of viable cells between two times, 1/h."""
    vcd = run["vcd"].sel(phase="pre")
    return math.log(float(vcd.sel(time=t1)) / float(vcd.sel(time=t0))) / (t1 - t0)


def test_activation_lag(stirred_runs):
    base = stirred_runs.sel(batch="base")
    first_day, day_three = _rate(base, 0.0, 24.0), _rate(base, 60.0, 84.0)
    assert day_three > 0.01
    assert first_day < 0.2 * day_three


def test_contraction_after_bead_removal(stirred_runs):
    base, kept = stirred_runs.sel(batch="base"), stirred_runs.sel(batch="beads_kept")
    before = _rate(base, 96.0, 120.0)
    after = _rate(base, 192.0, 240.0)
    assert after < 0.0 < before  # expansion turns into contraction
    assert _rate(kept, 192.0, 240.0) > after + 0.003  # ... because the beads went
    final = {name: float(run["vcd"].sel(time=240.0, phase="pre")) for name, run in (("base", base), ("kept", kept))}
    assert final["kept"] > 1.4 * final["base"]
    quiescent = base["frac_quiescent_memory"] + base["frac_quiescent_effector"]
    assert float(quiescent.sel(time=240.0, phase="pre")) > 0.5
    assert float(quiescent.sel(time=120.0, phase="pre")) < 0.05  # small while the beads are in (S < 1 at 1:1)


def test_il2_drives_growth_and_is_consumed(stirred_runs):
    base, no_il2 = stirred_runs.sel(batch="base", phase="pre"), stirred_runs.sel(batch="no_il2", phase="pre")
    assert float(no_il2["vcd"].max()) < 0.5 * float(base["vcd"].max())
    assert float(no_il2["vcd"].sel(time=240.0)) < 0.5  # no expansion at all without IL-2 (no autocrine IL-2)
    assert float(base["il2"].sel(time=47.0)) < 99.0  # uptake between additions
    assert np.all(np.diff(base["il2"].sel(time=slice(1.0, 48.0)).values) < 0)


def test_static_vessel_plateaus_at_its_areal_limit(static_runs, stirred_runs):
    params = _params(STATIC)
    limit = params["sigma_max"]
    plateau = {}
    for batch in ("plateau", "plateau_2v"):
        run = static_runs.sel(batch=batch, phase="pre")
        areal = run["vcd"].values * run["volume"].values * 1e3 / params["surface_area"]  # 1e6 cells/cm²
        assert areal.max() <= limit
        assert areal[-1] > 0.65 * limit  # near the limit (death keeps it a little below)
        assert abs(areal[-1] / areal[-25] - 1.0) < 0.03  # flat over the last day, though beads and IL-2 stay
        plateau[batch] = (areal[-1], float(run["vcd"].sel(time=240.0)))
    # the limit is on the cells per surface area: twice the medium on the same surface halves the density
    assert plateau["plateau_2v"][0] == pytest.approx(plateau["plateau"][0], rel=0.1)
    assert plateau["plateau_2v"][1] == pytest.approx(0.5 * plateau["plateau"][1], rel=0.1)
    # the same cells in a stirred vessel (X_max = 20e6/mL far away) keep growing
    stirred = stirred_runs.sel(batch="plateau_protocol", phase="pre")
    assert float(stirred["vcd"].sel(time=240.0)) > 2 * plateau["plateau"][1]


@pytest.mark.parametrize("which", ["stirred", "static"])
def test_fractions_bounded_states_nonnegative_and_partition_exact(which, request):
    model, runs = (STIRRED if which == "stirred" else STATIC), request.getfixturevalue(f"{which}_runs")
    assert set(runs["status"].values) == {"ok"}
    for name in ("memory_fraction", "exhausted_fraction", "viability"):
        values = runs[name].values
        assert np.all((values >= 0.0) & (values <= 1.0)), name
    for name in model.layout.names:
        assert runs[name].min() > -1e-9, name
    fractions = sum(runs[f"frac_{name}"] for name in model.subpopulations)
    assert np.allclose(fractions.values, 1.0, rtol=0, atol=1e-9)
    densities = model.subpopulation_densities(runs)
    assert np.allclose(sum(densities.values()).values, runs["vcd"].values, rtol=1e-12, atol=0)
    # the phenotype moves: memory share falls under stimulation, exhaustion accrues and is bounded
    base = runs.sel(batch="agree", phase="pre")
    assert float(base["memory_fraction"].sel(time=120.0)) < 0.8
    assert 0.0 < float(base["exhausted_fraction"].sel(time=120.0)) < 0.5


def test_exhaustion_accrues_under_persistent_stimulation(stirred_runs):
    base, kept = stirred_runs.sel(batch="base", phase="pre"), stirred_runs.sel(batch="beads_kept", phase="pre")
    exhausted = kept["exhausted_fraction"]
    assert np.all(np.diff(exhausted.sel(time=slice(24.0, 240.0)).values) > 0)
    assert float(exhausted.sel(time=240.0)) > 2 * float(base["exhausted_fraction"].sel(time=240.0))
    assert float(kept["memory_fraction"].sel(time=240.0)) < float(base["memory_fraction"].sel(time=240.0))


def test_structure_options_and_parameters():
    assert STIRRED.cell_type == "tcell"
    assert STIRRED.layout.names[:5] == ("vcd", "dead_cells", "glucose", "lactate", "il2")
    assert len(STIRRED.internal) == 3 + 6 and all(s.kind == "per_cell" for s in STIRRED.internal)
    assert sum(s.default for s in STATIC.internal) == 1.0
    assert "X_max" in STIRRED.parameter_names and "sigma_max" not in STIRRED.parameter_names
    assert {"sigma_max", "surface_area"} <= set(STATIC.parameter_names)
    with pytest.raises(ValueError, match="vessel"):
        TCellExpansion(vessel="bag")
    with pytest.raises(ValueError, match="n_lag"):
        TCellExpansion(n_lag=0)
    for p in STIRRED.parameters + STATIC.parameters:
        assert p.unit and p.source and p.description, p.name
    # every T4 prior range lies within one prior sigma of the default (log scale)
    t4 = {"mu_max": (0.02, 0.035), "tau_lag": (24.0, 48.0), "k_d0": (0.001, 0.005), "Y_LG": (1.5, 2.0),
          "K_IL": (20.0, 40.0), "K_IL2": (10.0, 50.0), "K_G": (0.1, 1.0), "sigma_max": (20.0, 50.0),
          "k_q": (0.01, 0.03)}
    specs = {p.name: p for p in STIRRED.parameters + STATIC.parameters}
    for name, (low, high) in t4.items():
        spec = specs[name]
        assert "[U]" in spec.source and "T4" in spec.source, name
        assert max(abs(math.log(low / spec.default)), abs(math.log(high / spec.default))) <= spec.prior_sigma, name
    # glucose uptake at μ_max in the T4 range 0.5-3 pmol/cell/d
    q = (specs["mu_max"].default / specs["Y_XG"].default + specs["m_G"].default) * 24
    assert 0.5 <= q <= 3.0
    assert "| `mu_max` |" in parameter_table(TCELL_PARAMETERS)


def test_observe_names_units():
    model = STIRRED
    state = {**model.default_initial_state()}
    observed = model.observe({k: jnp.asarray(v) for k, v in state.items()}, defaults(model.parameters))
    for name in ("vcd", "dead_cells", "viability", "glucose", "lactate", "il2", "memory_fraction",
                 "exhausted_fraction"):
        assert name in observed
    assert float(observed["memory_fraction"]) == 1.0 and float(observed["exhausted_fraction"]) == 0.0
