"""The do-mpc peer of the fed-batch feeding benchmark: the same CHO problem, posed for do-mpc (CasADi + IPOPT).

Benchmark-only code (needs the ``bench`` extra: ``pip install -e '.[bench]'``); the library does not import it.

The problem, identical to the one the JAX feeding controller solves:

- plant: `cgt_twin.models.CHOFedBatch()` with default options (no lactate consumption, no temperature shift), re-written
  here in CasADi symbolics from ``cgt_twin/models/cho.py`` (rates) and ``cgt_twin/models/balance.py`` (balance). There
  is no continuous feed, so between boluses dV/dt = 0, dX_v/dt = (μ − death)·X_v, dX_d/dt = death·X_v and
  d(species)/dt = specific·X_v + volumetric. A bolus of u L of the feed mixes every species as
  c ← (V·c + u·c_feed)/(V + u), dilutes the cells by V/(V + u) and sets V ← V + u (``apply_event``, bolus_medium);
- decisions: one bolus u_k ∈ [0, u_max] L at t = 24·k h, k = 1..batch_days − 1;
- discrete-time model (do-mpc ``'discrete'``): x_{k+1} = Φ_24h(bolus(x_k, u_k)), x_k the state at day k just
  before its bolus;
- objective: maximise titre·V at the end of the horizon − feed_cost·Σu (mg; ``feed_cost`` in mg-equivalent per L of
  feed), i.e. minimise its negative (scaled by 1e-3, to g);
- constraints: glucose ≥ glucose_min at every predicted day boundary (the state before each bolus and the state at the
  end of the horizon; ``use_terminal_bounds``), volume ≤ max_volume (the volume after a bolus is the next day's volume,
  since dV/dt = 0 between boluses), 0 ≤ u ≤ u_max; the concentrations are also bounded below by 0, which the exact
  dynamics satisfy anyway and which keeps IPOPT's iterates where the rates are defined;
- robust variant: do-mpc's multi-stage MPC, one scenario per combination of the given parameter values (3 × 3 = 9 for
  two parameters at three values), robust horizon 1 (the first bolus is common to all scenarios, later ones may
  differ per scenario), scenarios weighted equally, constraints in every scenario.

Design choices:

- integrator: a fixed-step classical RK4 written in CasADi, ``SUBSTEPS_PER_DAY`` = 48 steps of 30 min per day,
  unrolled into one SX function ``day(x, u, p)`` (bolus, then 24 h) that the MX model calls once per stage and
  scenario. Why not CVODES (``casadi.integrator``): IPOPT is given the exact Hessian of the Lagrangian, which RK4 gets
  by algorithmic differentiation of the same arithmetic (exact, SX-fast), where CVODES would need forward/adjoint and
  second-order sensitivity solves at every iterate; RK4's cost per evaluation is fixed (a repeatable benchmark); and
  the problem is not stiff where it matters: glucose only falls between boluses, so the glucose floor at day ends keeps
  it ≥ glucose_min all day, and the fastest remaining mode, glutamine depletion (≈ −0.6·X_v per h, X_v in
  1e6 cells/mL), stays inside RK4's stability interval (|λ·h| < 2.78) up to X_v ≈ 9 at h = 0.5 h (the optimal plans
  peak near 5). Measured: the day map agrees with `cgt_twin.simulate.simulate` (rtol 1e-10) to ~1e-10 relative over
  a 14-day fed batch, and 24, 48 and 96 steps per day give the same 13 closed-loop boluses and harvest (agreeing to
  1e-12). Not done: CasADi
  ``jit`` (C code) cut a nominal solve from 0.75 s to 0.28 s but took ~7 min to compile the derivatives;
- horizon: shrinking. At day d the horizon is n = min(horizon_days, batch_days − d) days, so with the default
  horizon_days = batch_days it always runs to the end of the batch (harvest at 24·batch_days h); a shorter
  horizon_days gives a fixed horizon clipped at the end of the batch (terminal value: titre·V at the horizon end).
  do-mpc fixes n_horizon at set-up, so one MPC object is built per horizon length, lazily, and cached (its set-up time
  is reported separately from the solve time);
- every `plan` call starts cold and from the same kind of initial guess (a forward roll-out, per scenario, with a
  constant bolus that spreads the remaining volume over the remaining days), not from the previous call's multipliers,
  so a call's cost depends only on its state and day.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import time
import warnings
from collections.abc import Mapping, Sequence

import casadi as ca
import numpy as np

__all__ = ["DoMPCFeeding", "STATES", "SPECIES", "default_params", "make_day_step", "day_step_numeric"]

STATES: tuple[str, ...] = ("vcd", "dead_cells", "glucose", "glutamine", "lactate", "ammonia", "titer", "volume")
SPECIES: tuple[str, ...] = STATES[2:7]
STATE_SCALES: dict[str, float] = {"vcd": 1.0, "dead_cells": 1.0, "glucose": 10.0, "glutamine": 1.0, "lactate": 10.0,
                                  "ammonia": 1.0, "titer": 100.0, "volume": 1.0}  # CHOFedBatch.species_scales
HOURS_PER_DAY = 24.0
SUBSTEPS_PER_DAY = 48  # RK4 steps per day (30 min); see the module docstring
OBJECTIVE_SCALE = 1e-3  # mg -> g
IPOPT_OPTIONS = {"ipopt.print_level": 0, "ipopt.sb": "yes", "print_time": 0, "ipopt.max_iter": 300,
                 "ipopt.tol": 1e-8, "ipopt.acceptable_tol": 1e-6}
_IX = {name: i for i, name in enumerate(STATES)}


def default_params() -> dict[str, float]:
    """The `CHOFedBatch` defaults (`cgt_twin.models.cho.CHO_PARAMETERS`), name -> value."""
    from cgt_twin.models.cho import CHO_PARAMETERS

    return {p.name: float(p.default) for p in CHO_PARAMETERS}


def _rhs(x, p: Mapping):
    """dx/dt of the CHO fed-batch between boluses (no feed, no bleed), as in cho.py + balance.py; SX/MX/DM."""
    xv, glc, gln, lac, amm = x[0], x[2], x[3], x[4], x[5]
    eps = p["eps_switch"]
    on_glc = glc / (eps + glc)
    on_gln = gln / (eps + gln)
    on_amm = amm / (eps + amm)
    limitation = glc / (p["K_glc"] + glc) * gln / (p["K_gln"] + gln)
    inhibition = p["KI_lac"] / (p["KI_lac"] + lac) * p["KI_amm"] / (p["KI_amm"] + amm)
    mu = p["mu_max"] * limitation * inhibition
    death = p["k_d"] * lac / (p["KD_lac"] + lac) * amm / (p["KD_amm"] + amm)
    q_glc = mu / p["Y_x_glc"] + p["m_glc"] * on_glc
    m_gln = p["a1"] * gln / (p["a2"] + gln)
    q_gln = mu / p["Y_x_gln"] + m_gln * on_gln
    q_lac = p["Y_lac_glc"] * q_glc
    q_amm = p["Y_amm_gln"] * mu / p["Y_x_gln"] - p["r_amm"] * on_amm
    decay = p["k_dgln"] * gln
    return ca.vertcat((mu - death) * xv,  # vcd
                      death * xv,  # dead cells (no lysis in CHOFedBatch)
                      -q_glc * xv,
                      -q_gln * xv - decay,
                      q_lac * xv,
                      q_amm * xv + decay,
                      p["q_p"] * xv,
                      0.0)  # volume: no continuous feed between boluses


def _bolus(x, u, feed):
    """The state right after a bolus of u L of a medium of composition `feed` (species vector), as apply_event."""
    volume = x[7]
    f = u / (volume + u)
    cells = (1 - f) * x[0:2]
    species = (1 - f) * x[2:7] + f * feed
    return ca.vertcat(cells, species, volume + u)


def make_day_step(params: Mapping[str, float], feed_conc: Mapping[str, float], uncertain: Sequence[str] = (),
                  substeps: int | None = None) -> ca.Function:
    """CasADi function ``day(x[8], u, p[len(uncertain)]) -> x_next[8]``: bolus of u L, then 24 h of RK4.

    Parameters named in `uncertain` are inputs (``p``, in that order); the others are constants from `params`.
    """
    substeps = substeps or SUBSTEPS_PER_DAY
    x = ca.SX.sym("x", len(STATES))
    p_sym = ca.SX.sym("p", len(uncertain))
    p = dict(params)
    for i, name in enumerate(uncertain):
        p[name] = p_sym[i]
    h = HOURS_PER_DAY / substeps
    k1 = _rhs(x, p)
    k2 = _rhs(x + h / 2 * k1, p)
    k3 = _rhs(x + h / 2 * k2, p)
    k4 = _rhs(x + h * k3, p)
    step = ca.Function("rk4", [x, p_sym], [x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)])
    u_sym = ca.SX.sym("u")
    feed = ca.DM([float(feed_conc.get(s, 0.0)) for s in SPECIES])
    y = _bolus(x, u_sym, feed)
    for _ in range(substeps):  # unrolled into one SX function: its derivatives are SX functions too (fast)
        y = step(y, p_sym)
    return ca.Function("day", [x, u_sym, p_sym], [y], ["x", "u", "p"], ["x_next"])


def day_step_numeric(state: Mapping[str, float], u: float, params: Mapping[str, float] | None = None, *,
                     feed_conc: Mapping[str, float], substeps: int | None = None) -> dict[str, float]:
    """One discrete step Φ_24h(bolus(x, u)) evaluated numerically (the map the MPC predicts with)."""
    full = {**default_params(), **(params or {})}
    day = make_day_step(full, feed_conc, (), substeps)
    x = np.array([float(state.get(s, 0.0)) for s in STATES])
    out = np.asarray(day(x, float(u), ca.DM.zeros(0, 1))).ravel()
    return dict(zip(STATES, out.tolist(), strict=True))


class DoMPCFeeding:
    """Daily bolus feeding of the CHO fed-batch by do-mpc (nominal, or multi-stage robust over parameter scenarios).

    Args:
        params: model parameters (name -> value, units of `CHO_PARAMETERS`); missing ones take the defaults.
        feed_conc: composition of the feed medium, species -> mM (titre in mg/L); species not given are 0.
        u_max: largest bolus, L.
        max_volume: the vessel's working-volume limit, L.
        glucose_min: glucose floor at every day boundary (before each bolus), mM.
        feed_cost: cost of feed, mg of antibody-equivalent per L of feed.
        horizon_days: prediction horizon, days (clipped at the end of the batch).
        batch_days: batch length, days (harvest at 24·batch_days h; boluses on days 1..batch_days − 1).
        scenarios: None for nominal MPC, or parameter name -> values; every combination is one scenario of the
            multi-stage MPC (robust horizon 1), e.g. ``{"mu_max": [a, b, c], "q_p": [d, e, f]}`` -> 9 scenarios.
        objective: ``"product"`` (titre·V at the end, mg) or ``"titer"`` (final titre, mg/L), minus the feed cost
            (the JAX controller's ``{"product": 1}`` and ``{"titer": 1}`` objectives).
    """

    def __init__(self, params: dict[str, float] | None = None, *, feed_conc: dict[str, float],
                 u_max: float, max_volume: float, glucose_min: float = 2.0, feed_cost: float = 0.0,
                 horizon_days: int = 14, batch_days: int = 14,
                 scenarios: dict[str, list[float]] | None = None, objective: str = "product"):
        if objective not in ("product", "titer"):
            raise ValueError(f"objective must be 'product' or 'titer', got {objective!r}")
        self.objective = objective
        defaults = default_params()
        unknown = set(params or {}) - set(defaults)
        if unknown:
            raise ValueError(f"unknown parameters {sorted(unknown)}; CHOFedBatch has {sorted(defaults)}")
        unknown_species = set(feed_conc) - set(SPECIES)
        if unknown_species:
            raise ValueError(f"unknown feed species {sorted(unknown_species)}; choose from {SPECIES}")
        scenarios = dict(scenarios or {})
        unknown = set(scenarios) - set(defaults)
        if unknown:
            raise ValueError(f"unknown scenario parameters {sorted(unknown)}")
        if not (u_max > 0 and max_volume > 0 and horizon_days >= 1 and batch_days >= 2):
            raise ValueError("need u_max > 0, max_volume > 0, horizon_days >= 1 and batch_days >= 2")
        self.params = {**defaults, **{k: float(v) for k, v in (params or {}).items()}}
        self.feed_conc = {s: float(feed_conc.get(s, 0.0)) for s in SPECIES}
        self.u_max = float(u_max)
        self.max_volume = float(max_volume)
        self.glucose_min = float(glucose_min)
        self.feed_cost = float(feed_cost)
        self.horizon_days = int(horizon_days)
        self.batch_days = int(batch_days)
        self.scenarios = {k: [float(v) for v in vals] for k, vals in scenarios.items()}
        self.uncertain = tuple(self.scenarios)
        # scenario values in do-mpc's order (itertools.product over the names in insertion order)
        self.scenario_values = (np.array(list(itertools.product(*self.scenarios.values())), dtype=float)
                                if self.uncertain else np.zeros((1, 0)))
        self.n_scenarios = len(self.scenario_values)
        self.day_step = make_day_step(self.params, self.feed_conc, self.uncertain)
        self._mpcs: dict[int, object] = {}
        self.setup_seconds: dict[int, float] = {}

    # -- do-mpc objects -------------------------------------------------------------------------------------------
    def _model(self):
        do_mpc = _do_mpc()
        model = do_mpc.model.Model("discrete", "MX")
        x = ca.vertcat(*[model.set_variable("_x", name) for name in STATES])
        u = model.set_variable("_u", "bolus")
        p = ca.vertcat(*[model.set_variable("_p", name) for name in self.uncertain]) if self.uncertain \
            else ca.MX.zeros(0, 1)
        x_next = self.day_step(x, u, p)
        for i, name in enumerate(STATES):
            model.set_rhs(name, x_next[i])
        model.setup()
        return model

    def _mpc(self, n_horizon: int):
        if n_horizon in self._mpcs:
            return self._mpcs[n_horizon]
        do_mpc = _do_mpc()
        start = time.perf_counter()
        with _quiet():
            model = self._model()
            mpc = do_mpc.controller.MPC(model)
            settings = mpc.settings
            settings.n_horizon = n_horizon
            settings.t_step = HOURS_PER_DAY
            settings.n_robust = 1 if self.uncertain else 0
            settings.use_terminal_bounds = True
            settings.store_full_solution = False
            settings.store_lagr_multiplier = False
            settings.store_solver_stats = []
            settings.nlpsol_opts.update(IPOPT_OPTIONS)
            harvest = model.x["titer"] * (model.x["volume"] if self.objective == "product" else 1.0)
            mpc.set_objective(mterm=-OBJECTIVE_SCALE * harvest,
                              lterm=OBJECTIVE_SCALE * self.feed_cost * model.u["bolus"])
            mpc.set_rterm(bolus=0.0)  # no move penalty (also keeps do-mpc from warning and sleeping)
            for name in STATES:
                mpc.scaling["_x", name] = STATE_SCALES[name]
                if name != "volume":
                    mpc.bounds["lower", "_x", name] = 0.0
            mpc.scaling["_u", "bolus"] = self.u_max
            mpc.bounds["lower", "_x", "glucose"] = self.glucose_min
            mpc.bounds["upper", "_x", "volume"] = self.max_volume
            mpc.bounds["lower", "_u", "bolus"] = 0.0
            mpc.bounds["upper", "_u", "bolus"] = self.u_max
            if self.uncertain:
                mpc.set_uncertainty_values(**{k: np.asarray(v) for k, v in self.scenarios.items()})
            mpc.setup()
        self.setup_seconds[n_horizon] = time.perf_counter() - start
        self._mpcs[n_horizon] = mpc
        return mpc

    # -- the controller -------------------------------------------------------------------------------------------
    def horizon(self, day: int) -> int:
        """Prediction horizon (days) used at `day`."""
        return min(self.horizon_days, self.batch_days - day)

    def _initial_guess(self, mpc, x0: np.ndarray, day: int, n: int):
        """Forward roll-out of every scenario with a constant bolus (the remaining volume over the remaining days)."""
        room = max(self.max_volume - x0[_IX["volume"]], 0.0)
        u_guess = min(self.u_max, room / (self.batch_days - day))
        mpc.x0 = x0
        mpc.u0 = np.array([u_guess])
        mpc.set_initial_guess()
        n_tree = len(self.scenario_values) if self.uncertain else 1
        for s in range(n_tree):
            x = x0.copy()
            for k in range(n):
                mpc.opt_x_num["_u", k, s] = u_guess / self.u_max
                x = np.asarray(self.day_step(x, u_guess, self.scenario_values[s])).ravel()
                mpc.opt_x_num["_x", k + 1, s, -1] = x / _scales()
        mpc.flags["initial_run"] = False  # no multipliers from an earlier call: every call starts cold

    def plan(self, state: dict[str, float], day: int) -> tuple[float, dict]:
        """The bolus volume (L) to give now, at day `day` (1..batch_days − 1), from the state just before the bolus.

        Returns:
            (u, stats): stats has ``solve_s`` (wall time of the solve), ``setup_s`` (building this horizon's NLP,
            0 when cached), ``status`` and ``success`` (IPOPT's), ``iterations``, ``horizon``, ``n_scenarios``,
            ``objective_mg`` (predicted harvest minus feed cost, scenario mean), ``u_plan`` (planned boluses,
            shape (horizon, scenarios)) and ``prediction`` (state name -> predicted values before each bolus and at
            the horizon end, shape (horizon + 1, scenarios), days day..day+horizon).
            When IPOPT fails (e.g. a state from which the glucose floor cannot be held within max_volume, reported as
            Infeasible_Problem_Detected), u is the first bolus of its last iterate, clipped to
            [0, min(u_max, max_volume − V)], and ``success`` is False.
        """
        if not 1 <= day < self.batch_days:
            raise ValueError(f"day must be in 1..{self.batch_days - 1}, got {day}")
        missing = {"vcd", "glucose", "glutamine", "volume"} - set(state)
        if missing:
            raise ValueError(f"state lacks {sorted(missing)}")
        x0 = np.array([float(state.get(s, 0.0)) for s in STATES])
        n = self.horizon(day)
        cached = n in self._mpcs
        mpc = self._mpc(n)
        self._initial_guess(mpc, x0, day, n)
        start = time.perf_counter()
        with _quiet():
            u = mpc.make_step(x0.reshape(-1, 1))
        solve_s = time.perf_counter() - start
        solver = mpc.S.stats()
        u0 = float(np.clip(np.asarray(u).ravel()[0], 0.0, min(self.u_max, max(self.max_volume - x0[-1], 0.0))))

        n_tree = self.n_scenarios if self.uncertain else 1
        xs = np.array([[np.asarray(mpc.opt_x_num_unscaled["_x", k, s if k > 0 else 0, -1]).ravel()
                        for s in range(n_tree)] for k in range(n + 1)])  # (n+1, scenarios, states)
        us = np.array([[float(mpc.opt_x_num_unscaled["_u", k, s if k > 0 else 0]) for s in range(n_tree)]
                       for k in range(n)])
        harvest = xs[-1, :, _IX["titer"]] * (xs[-1, :, _IX["volume"]] if self.objective == "product" else 1.0)
        stats = {
            "solve_s": solve_s,
            "setup_s": 0.0 if cached else self.setup_seconds[n],
            "status": solver.get("return_status"),
            "success": bool(solver.get("success")),
            "iterations": int(solver.get("iter_count", -1)),
            "horizon": n,
            "n_scenarios": n_tree,
            "objective_mg": float(np.mean(harvest - self.feed_cost * us.sum(axis=0))),
            "u_plan": us,
            "prediction": {name: xs[:, :, i] for i, name in enumerate(STATES)},
        }
        return u0, stats


def _do_mpc():
    """do-mpc, imported without its warnings about optional features (ONNX, OPC UA, PyTorch) not installed."""
    with _quiet():
        import do_mpc
    return do_mpc


def _scales() -> np.ndarray:
    return np.array([STATE_SCALES[s] for s in STATES])


@contextlib.contextmanager
def _quiet():
    """Silences do-mpc's Python prints and warnings (IPOPT is silenced by its own options)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _measure() -> dict:  # pragma: no cover - run by hand: python benchmarks/dompc_cho.py
    """Time per `plan` call at day 1 for a typical state, nominal and 9 scenarios."""
    state = {"vcd": 0.5, "dead_cells": 0.0, "glucose": 30.0, "glutamine": 4.0, "lactate": 2.0, "ammonia": 0.5,
             "titer": 10.0, "volume": 1.0}
    common = dict(feed_conc={"glucose": 400.0, "glutamine": 40.0}, u_max=0.1, max_volume=1.5)
    p = default_params()
    robust = {"mu_max": [0.8 * p["mu_max"], p["mu_max"], 1.2 * p["mu_max"]],
              "q_p": [0.8 * p["q_p"], p["q_p"], 1.2 * p["q_p"]]}
    out = {}
    for label, scen in (("nominal", None), ("robust_9", robust)):
        ctrl = DoMPCFeeding(**common, scenarios=scen)
        runs = []
        for _ in range(3):
            u, st = ctrl.plan(state, 1)
            runs.append(st)
        out[label] = {"u": u, "setup_s": runs[0]["setup_s"], "solve_s": [r["solve_s"] for r in runs],
                      "iterations": runs[0]["iterations"], "status": runs[0]["status"],
                      "objective_mg": runs[0]["objective_mg"], "u_plan": runs[0]["u_plan"][:, 0].round(4).tolist()}
    return out


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    print(json.dumps(_measure(), indent=1, default=float))
