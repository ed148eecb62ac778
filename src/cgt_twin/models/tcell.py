"""Primary human T-cell / CAR-T ex vivo expansion: the composite model T4 of ``models.md`` §5.4.

**No public T-cell time-course data exists for us.** This model is assembled from published structure and priors —
the ambr15 T-cell model of Duran-Villalobos / Thomas (T1: glucose-limited growth, activation lag, glucose-starvation
death), the IL-2 binding and trafficking model of Fallon & Lauffenburger 2000 (T2, BioModels BIOMD0000000665:
saturable IL-2 uptake, high-affinity receptor K_D) and the composite structure T4 (activation chain, IL-2-dependent
growth, lactate inhibition, density limit, contraction after stimulus removal, phenotype). Every default is a prior
centre marked ``[U]`` (only the IL-2 receptor K_D is read from code); the model is checked on synthetic data only
(``tests/test_tcell.py``), never against measurements. See ``docs/models/tcell.md``.

Sub-populations (fractions of the viable cells; internal states of kind ``per_cell``):

    R                 resting (naive / memory, not yet activated)
    A_1 … A_n         activated, not yet dividing (a linear chain: gamma-distributed lag of mean τ_lag)
    P_M, P_E          proliferating, memory-like (T_SCM/T_CM) and effector-like (T_EM/T_EFF)
    X                 exhausted (no division, extra death)
    Q_M, Q_E          re-quiesced after the stimulus is removed (memory-like, effector-like)

Population scheme. ``vcd`` (state 0) is the total viable density, the observable. The sub-populations are carried as
*fractions* f_i of the viable cells, not as densities. A fraction is an average over the viable cells, so it is a
``per_cell`` quantity: it is untouched by adding or removing medium, by samples, exchanges and splits, which dilute
all viable cells alike. That keeps the partition exact through every event, and a measured initial vcd needs no
matching sub-population densities. With s = Σ f_i, the density of sub-population i is N_i = vcd·f_i/s, and

    Rates.growth = g = Σ μ_i f_i / s,    Rates.death = d = Σ d_i f_i / s
    internal_i   = (μ_i − d_i) f_i + T_i(f) + d·f_i      (the balance then subtracts g·f_i)

so that df_i/dt = (μ_i − d_i − (g − d)) f_i + T_i, which is d(N_i/vcd)/dt for the densities. The transfers T_i
sum to zero, hence d s/dt = 0 identically: s stays at its initial value (1), Σ_i N_i = vcd holds exactly, and each
f_i ≥ 0 (a fraction at 0 only has inflows).

Stimulus and IL-2:

    S      = b/(K_S + b)                     b = bead:cell ratio set by ``stimulus`` events (0 after removal)
    L      = c_IL2 · il2                     c_IL2 = 3.9 pM per IU/mL (1 IU ≈ 61 pg ≈ 3.9 fmol, models.md §1 [U];
                                             option ``il2_pm_per_iu_per_ml``, check it against your supplier's CoA)
    f_IL2  = L^h/(K_IL2^h + L^h)

Transfers (per unit of the source fraction):

    R → A_1              k_act·S                 A_k → A_{k+1}, A_n → P_M      n/τ_lag
    P_M → P_E            k_diff·S·(1 + β_IL2·f_IL2)                             (differentiation under stimulation)
    P_E → X              k_ex·S                                                 (exhaustion under stimulation)
    P_M → Q_M, P_E → Q_E k_q·(1 − S)                                            (contraction after removal)
    X → Q_E              k_xr·(1 − S)                                           (partial recovery on rest)
    Q_M → P_M, Q_E → P_E k_act·S                                                (re-stimulation, no naive lag)

Growth (P_M and P_E only) and death (all, plus extra terms for Q and X):

    μ     = μ_max · Glc/(K_G + Glc) · f_IL2 · K_IL/(K_IL + Lac) · φ
    φ     = max(0, 1 − vcd/X_max)                              vessel = "stirred" (volumetric limit)
    φ     = max(0, 1 − vcd·V/(A·σ_max))                        vessel = "static" (G-Rex: areal limit on the cells
                                                               in the vessel; A = surface area, V = volume)
    k_d   = k_d0 + k_dG·K_dG/(K_dG + Glc) + k_dL·Lac/(K_dL + Lac)
    d_Q   = k_d + k_dQ,   d_X = k_d + k_dX

Metabolism and IL-2 uptake, per viable cell (w = activity: 1 for A, P, X; f_rest for R and Q):

    q_Glc = g/Y_X/G + m_G·w̄·Glc/(ε + Glc)        q_Lac = Y_L/G·q_Glc
    q_IL2 = q_IL2,max·w̄·L/(K_D + L)  molecules/cell/h (reduced Fallon model: saturable uptake at the
            high-affinity receptor; converted to IU with 1 IU = c_IL2·1e-15·N_A molecules)

Quality attributes: ``memory_fraction`` = (R + ΣA + P_M + Q_M)/s, the less-differentiated (CCR7+/CD62L+: naive,
T_SCM, T_CM) share; ``exhausted_fraction`` = X/s.

Options (static fields; each combination compiles once):

- ``n_lag``: number of activation stages (default 3);
- ``vessel``: ``"stirred"`` (bags, STR, ambr: volumetric limit X_max) or ``"static"`` (G-Rex, flasks, plates: areal
  limit σ_max on surface area A);
- ``il2_pm_per_iu_per_ml``: the IL-2 unit factor (default 3.9).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .kinetics import AbstractKinetics, Inputs, InternalState, Rates
from .parameters import Parameter

__all__ = ["TCellExpansion", "TCELL_PARAMETERS", "TCELL_VESSEL_PARAMETERS", "IL2_PM_PER_IU_PER_ML", "AVOGADRO"]

IL2_PM_PER_IU_PER_ML = 3.9
"""pM of IL-2 per IU/mL: 1 IU ≈ 61 pg ≈ 3.9 fmol (Proleukin 18 MIU = 1.1 mg, MW 15.5 kDa; models.md §1, [U])."""

AVOGADRO = 6.02214076e23  # 1/mol

_T4 = "[U] prior, models.md §5.4 T4 (c)"
_T1 = "[U] prior, models.md §5.1 T1"
_T2 = "Fallon & Lauffenburger 2000 (BIOMD0000000665; models.md §5.2 T2)"
_LIB = "[U] prior, this library (no published value; order of magnitude)"
_T4S = "[U] prior: structure from models.md §5.4 T4 (b), value chosen by this library (no published value)"

TCELL_PARAMETERS: tuple[Parameter, ...] = (
    # activation and lag
    Parameter("k_act", 0.2, "1/h", "activation rate of resting (and re-stimulation of quiescent) cells at S = 1",
              _LIB + ": most cells in contact with beads activate within hours", 1e-4, 10.0, 1.0),
    Parameter("K_S", 0.3, "1", "bead:cell ratio giving half-maximal stimulation S", _LIB + ": 1:1-3:1 beads "
              "(models.md §5.4 d) give S = 0.77-0.91", 1e-3, 10.0, 1.0),
    Parameter("tau_lag", 34.0, "h", "mean time from activation to proliferation (linear chain)",
              _T4 + ": 24-48 h to the first division", 1.0, 200.0, 0.4),
    # growth
    Parameter("mu_max", 0.027, "1/h", "maximum specific growth rate of proliferating cells",
              _T4 + ": 0.02-0.035 1/h (doubling 20-35 h)", 1e-4, 0.2, 0.35),
    Parameter("K_G", 0.3, "mM", "Monod constant of glucose for growth", _T4 + ": 0.1-1 mM", 1e-3, 20.0, 1.3),
    Parameter("K_IL2", 22.0, "pM", "IL-2 giving half-maximal growth", _T4 + ": ~10-50 pM (high-affinity IL-2R)",
              0.1, 1e4, 0.9),
    Parameter("h_IL2", 1.0, "1", "Hill exponent of the IL-2 growth response", _LIB, 0.3, 4.0, 0.3),
    Parameter("K_IL", 30.0, "mM", "lactate inhibition constant of growth", _T4 + ": 20-40 mM", 1.0, 500.0, 0.45),
    # death
    Parameter("k_d0", 0.0022, "1/h", "basal specific death rate", _T4 + ": 0.001-0.005 1/h", 1e-6, 0.2, 0.9),
    Parameter("k_dG", 0.07, "1/h", "maximum extra death rate without glucose",
              _T1 + ": r_dg 0.060-0.083 1/h", 1e-5, 1.0, 0.5),
    Parameter("K_dG", 0.1, "mM", "glucose giving half the maximum starvation death",
              _T1 + ": steep switch at b_g 0.05 mg/mL = 0.28 mM; the hyperbolic T4 form needs a lower constant so "
              "that it is negligible in fresh medium", 1e-3, 20.0, 1.0),
    Parameter("k_dL", 0.01, "1/h", "maximum extra death rate from lactate", _LIB, 1e-6, 1.0, 1.0),
    Parameter("K_dL", 40.0, "mM", "lactate giving half the maximum lactate death", _LIB, 1.0, 500.0, 0.7),
    Parameter("k_lys", 0.01, "1/h", "lysis (disintegration) of dead cells", _LIB + ": dead cells counted for a few "
              "days", 1e-6, 1.0, 1.0),
    # contraction
    Parameter("k_q", 0.017, "1/h", "return of proliferating cells to quiescence after stimulus removal",
              _T4 + ": 0.01-0.03 1/h after removal", 1e-5, 1.0, 0.6),
    Parameter("k_dQ", 0.004, "1/h", "extra death rate of re-quiesced cells (contraction)", _LIB, 1e-6, 1.0, 1.0),
    # metabolism
    Parameter("Y_XG", 0.81, "(1e9 cells)/mmol", "cells formed per glucose (growth-coupled uptake g/Y_XG)",
              _T4 + ": q_Glc 0.5-3 pmol/cell/d; centre 1.2 pmol/cell/d at μ_max, 2/3 of it growth-coupled",
              1e-3, 100.0, 0.9),
    Parameter("m_G", 0.0167, "mmol/(1e9 cells)/h", "glucose maintenance uptake of activated cells "
              "(0.4 pmol/cell/d)", _T4 + ": q_Glc 0.5-3 pmol/cell/d; 1/3 of the centre as maintenance", 1e-6,
              1.0, 0.9),
    Parameter("Y_LG", 1.75, "mol/mol", "lactate produced per glucose consumed", _T4 + ": 1.5-2.0 mol/mol",
              1e-3, 2.5, 0.2),
    Parameter("f_rest", 0.1, "1", "activity of resting and re-quiesced cells relative to activated ones "
              "(glucose maintenance, IL-2 uptake)", _LIB + ": resting T cells are metabolically quiet, lack CD25",
              1e-4, 1.0, 0.7),
    # IL-2 uptake (reduced Fallon model)
    Parameter("q_IL2_max", 700.0, "1/cell/h", "maximum IL-2 uptake of an activated cell, molecules/cell/h "
              "(internalisation net of recycling, with receptor down-regulation)",
              "[U] prior from " + _T2 + ": k_e 0.04/min × ~300 complexes/cell at 100 IU/mL", 1.0, 1e5, 0.7),
    Parameter("K_D_IL2", 11.1, "pM", "IL-2 giving half-maximal uptake (high-affinity receptor K_D)",
              "[V-code] " + _T2 + ": k_r/k_f = 11.1 pM; its use as the constant of the reduced uptake is [U]", 0.1,
              1e4, 0.5),
    # phenotype
    Parameter("k_diff", 0.006, "1/h", "memory-like -> effector-like differentiation of proliferating cells at S = 1",
              _T4S, 1e-6, 1.0, 1.0),
    Parameter("beta_IL2", 1.0, "1", "IL-2 acceleration of differentiation (rate × (1 + β·f_IL2))",
              _T4S, 1e-6, 100.0, 1.0),
    Parameter("k_ex", 0.002, "1/h", "exhaustion of effector-like cells under stimulation at S = 1",
              _T4S, 1e-6, 1.0, 1.0),
    Parameter("k_xr", 0.005, "1/h", "recovery of exhausted cells to quiescence without stimulation",
              _T4S + " (T4's k_Er)", 1e-6, 1.0, 1.0),
    Parameter("k_dX", 0.005, "1/h", "extra death rate of exhausted cells", _LIB, 1e-6, 1.0, 1.0),
    # numerics
    Parameter("eps_switch", 0.01, "mM", "glucose below which maintenance uptake switches off smoothly (numerical)",
              "this library (smooth switch, as in CHOFedBatch)", 1e-5, 1.0, 0.5),
)

TCELL_VESSEL_PARAMETERS: dict[str, tuple[Parameter, ...]] = {
    "stirred": (
        Parameter("X_max", 20.0, "1e6 cells/mL", "volumetric density limit (oxygen / nutrient supply)",
                  "[U] prior, models.md §5.4 T4 (d): a Xuri W5 rocking bag reaches 1e7 cells/mL in 14 d", 0.1,
                  500.0, 0.7),
    ),
    "static": (
        Parameter("sigma_max", 32.0, "1e6 cells/cm^2", "areal density limit on the gas-permeable surface",
                  _T4 + ": G-Rex ~2-5e7 cells/cm²", 0.1, 1000.0, 0.5),
        Parameter("surface_area", 100.0, "cm^2", "culture surface area of the vessel (a vessel property: set it)",
                  "[U] G-Rex100/100M = 100 cm²; with 1 L of medium that is the usual ~10 mL per cm² "
                  "(models.md §5.4 d)", 1e-2, 1e6, 0.1),
    ),
}

_STAGES_AFTER_CHAIN = ("prolif_memory", "prolif_effector", "exhausted", "quiescent_memory", "quiescent_effector")
_DESCRIPTIONS = {
    "resting": "resting (not yet activated) cells",
    "prolif_memory": "proliferating memory-like (T_SCM/T_CM) cells",
    "prolif_effector": "proliferating effector-like (T_EM/T_EFF) cells",
    "exhausted": "exhausted cells",
    "quiescent_memory": "re-quiesced memory-like cells",
    "quiescent_effector": "re-quiesced effector-like cells",
}


class TCellExpansion(AbstractKinetics):
    """Ex vivo T-cell / CAR-T expansion (models.md §5.4 T4, with T1 and T2 parts), see the module docstring.

    No public T-cell time-course data exists for us: the structure is published, the parameters are priors, and the
    model is checked on synthetic data only.

    States: ``vcd``, ``dead_cells`` (1e6 cells/mL); ``glucose``, ``lactate`` (mM); ``il2`` (IU/mL); the fractions of the
    viable cells ``frac_resting``, ``frac_activated_1`` … ``frac_activated_<n_lag>``, ``frac_prolif_memory``,
    ``frac_prolif_effector``, ``frac_exhausted``, ``frac_quiescent_memory``, ``frac_quiescent_effector`` (1, kind
    ``per_cell``, summing to 1); ``volume`` (L).

    Inputs used: ``stimulus`` (bead:cell ratio from ``stimulus`` events; 0 removes the beads); IL-2 additions are
    ``stimulus`` events on ``il2`` (IU/mL added); feeds, exchanges and perfusion carry ``il2`` like any species.

    Args:
        n_lag: number of activation stages A_1..A_n (≥ 1).
        vessel: ``"stirred"`` (volumetric density limit ``X_max``) or ``"static"`` (G-Rex: areal limit ``sigma_max``
            on ``surface_area``).
        il2_pm_per_iu_per_ml: pM of IL-2 per IU/mL (default 3.9, models.md §1).
    """

    n_lag: int = eqx.field(default=3, static=True)
    vessel: str = eqx.field(default="stirred", static=True)
    il2_pm_per_iu_per_ml: float = eqx.field(default=IL2_PM_PER_IU_PER_ML, static=True)

    cell_type: ClassVar[str] = "tcell"
    species: ClassVar[tuple[str, ...]] = ("glucose", "lactate", "il2")
    species_scales: ClassVar[Mapping[str, float]] = {"glucose": 10.0, "lactate": 10.0, "il2": 100.0}

    def __post_init__(self):
        # options may arrive as text (command line, artifacts): "3", "3.9"
        if isinstance(self.n_lag, str) and self.n_lag.strip().isdigit():
            self.n_lag = int(self.n_lag)
        if isinstance(self.il2_pm_per_iu_per_ml, str | int) and not isinstance(self.il2_pm_per_iu_per_ml, bool):
            try:
                self.il2_pm_per_iu_per_ml = float(self.il2_pm_per_iu_per_ml)
            except ValueError:
                pass  # rejected by __check_init__

    def __check_init__(self):
        if not (isinstance(self.n_lag, int | np.integer) and not isinstance(self.n_lag, bool) and self.n_lag >= 1):
            raise ValueError(f"TCellExpansion: n_lag must be an integer >= 1, got {self.n_lag!r}")
        if self.vessel not in TCELL_VESSEL_PARAMETERS:
            raise ValueError(f"TCellExpansion: vessel must be one of {sorted(TCELL_VESSEL_PARAMETERS)}, got "
                             f"{self.vessel!r}")
        factor = self.il2_pm_per_iu_per_ml
        if not (isinstance(factor, float) and np.isfinite(factor) and factor > 0):
            raise ValueError(f"TCellExpansion: il2_pm_per_iu_per_ml must be > 0, got {self.il2_pm_per_iu_per_ml!r}")

    # -- structure -------------------------------------------------------------------------------------------------
    @property
    def parameters(self) -> tuple[Parameter, ...]:  # type: ignore[override]
        return TCELL_PARAMETERS + TCELL_VESSEL_PARAMETERS[self.vessel]

    @property
    def subpopulations(self) -> tuple[str, ...]:
        """Sub-population names in state order (the states are ``frac_<name>``)."""
        return ("resting", *(f"activated_{k}" for k in range(1, self.n_lag + 1)), *_STAGES_AFTER_CHAIN)

    @property
    def memory_like(self) -> tuple[str, ...]:
        """Sub-populations counted in ``memory_fraction`` (less differentiated: naive, T_SCM, T_CM)."""
        return ("resting", *(f"activated_{k}" for k in range(1, self.n_lag + 1)), "prolif_memory",
                "quiescent_memory")

    @property
    def internal(self) -> tuple[InternalState, ...]:  # type: ignore[override]
        states = []
        for name in self.subpopulations:
            description = _DESCRIPTIONS.get(name) or f"activated cells, stage {name.rsplit('_', 1)[1]} of {self.n_lag}"
            states.append(InternalState(f"frac_{name}", "per_cell", "1", f"fraction of viable cells: {description}",
                                        default=1.0 if name == "resting" else 0.0, scale=1.0))
        return tuple(states)

    def default_initial_state(self) -> dict[str, float]:
        state = {"vcd": 0.5, "dead_cells": 0.0, "glucose": 20.0, "lactate": 0.0, "il2": 0.0, "volume": 1.0}
        state.update({s.name: s.default for s in self.internal})
        return state

    # -- kinetics --------------------------------------------------------------------------------------------------
    def _fractions(self, state) -> jnp.ndarray:
        return jnp.stack([state[f"frac_{name}"] for name in self.subpopulations])

    def rates(self, t, state, inputs: Inputs, params) -> Rates:
        p = params
        n = self.n_lag
        glc = jnp.maximum(state["glucose"], 0.0)
        lac = jnp.maximum(state["lactate"], 0.0)
        il2_pm = jnp.maximum(self.il2_pm_per_iu_per_ml * state["il2"], 0.0)
        beads = jnp.maximum(inputs.stimulus, 0.0)
        stim = beads / (p["K_S"] + beads)
        rest = 1.0 - stim

        f = self._fractions(state)
        r, a = f[0], f[1:1 + n]
        pm, pe, x, qm, qe = (f[n + 1 + i] for i in range(5))
        total = jnp.maximum(jnp.sum(f), 1e-12)

        il2_hill = jnp.maximum(il2_pm, 1e-30) ** p["h_IL2"]  # floored: a finite gradient of L^h at L = 0
        f_il2 = il2_hill / (p["K_IL2"] ** p["h_IL2"] + il2_hill)
        if self.vessel == "stirred":
            crowding = state["vcd"] / p["X_max"]
        else:  # areal density of viable cells, 1e6 cells/cm² = vcd [1e6/mL] · V [L] · 1e3 [mL/L] / A [cm²]
            crowding = state["vcd"] * state["volume"] * 1e3 / (p["surface_area"] * p["sigma_max"])
        density = jnp.clip(1.0 - crowding, 0.0, 1.0)
        mu = (p["mu_max"] * glc / (p["K_G"] + glc) * f_il2 * p["K_IL"] / (p["K_IL"] + lac) * density)
        k_d = p["k_d0"] + p["k_dG"] * p["K_dG"] / (p["K_dG"] + glc) + p["k_dL"] * lac / (p["K_dL"] + lac)

        # transfers between sub-populations (flows, per unit of fraction and time)
        activation = p["k_act"] * stim * r
        chain = (n / p["tau_lag"]) * a  # out of each stage
        differentiation = p["k_diff"] * stim * (1.0 + p["beta_IL2"] * f_il2) * pm
        exhaustion = p["k_ex"] * stim * pe
        quiesce_m, quiesce_e = p["k_q"] * rest * pm, p["k_q"] * rest * pe
        recovery = p["k_xr"] * rest * x
        restim_m, restim_e = p["k_act"] * stim * qm, p["k_act"] * stim * qe
        chain_in = jnp.concatenate([jnp.reshape(activation, (1,)), chain[:-1]])
        transfer = jnp.concatenate([
            jnp.reshape(-activation, (1,)),
            chain_in - chain,
            jnp.stack([chain[-1] - differentiation - quiesce_m + restim_m,
                       differentiation - exhaustion - quiesce_e + restim_e,
                       exhaustion - recovery,
                       quiesce_m - restim_m,
                       quiesce_e + recovery - restim_e]),
        ])

        # specific growth and death of each sub-population, and their population-weighted means
        zero = jnp.zeros_like(mu)
        growth_i = jnp.concatenate([jnp.zeros(n + 1), jnp.stack([mu, mu, zero, zero, zero])])  # only P_M, P_E divide
        extra_death = jnp.stack([zero, zero, zero + p["k_dX"], zero + p["k_dQ"], zero + p["k_dQ"]])  # X, Q_M, Q_E
        death_i = k_d + jnp.concatenate([jnp.zeros(n + 1), extra_death])
        growth = jnp.sum(growth_i * f) / total
        death = jnp.sum(death_i * f) / total
        internal = (growth_i - death_i) * f + transfer + death * f

        # metabolism and IL-2 uptake of the average viable cell
        resting_share = (r + qm + qe) / total
        activity = (1.0 - resting_share) + p["f_rest"] * resting_share
        q_glc = growth / p["Y_XG"] + p["m_G"] * activity * glc / (p["eps_switch"] + glc)
        q_lac = p["Y_LG"] * q_glc
        molecules_per_iu = self.il2_pm_per_iu_per_ml * 1e-15 * AVOGADRO
        q_il2 = p["q_IL2_max"] * activity * il2_pm / (p["K_D_IL2"] + il2_pm) * 1e6 / molecules_per_iu
        specific = jnp.stack([-q_glc, q_lac, -q_il2])  # IU/(1e6 cells)/h for il2
        return Rates(growth=growth, death=death, specific=specific, internal=internal, lysis=p["k_lys"])

    # -- observation -----------------------------------------------------------------------------------------------
    def observe(self, state, params) -> dict:
        out = super().observe(state, params)
        f = self._fractions(state)
        total = jnp.maximum(jnp.sum(f), 1e-12)
        memory = sum(state[f"frac_{name}"] for name in self.memory_like)
        out["memory_fraction"] = jnp.clip(memory / total, 0.0, 1.0)
        out["exhausted_fraction"] = jnp.clip(state["frac_exhausted"] / total, 0.0, 1.0)
        return out

    def subpopulation_densities(self, state: Mapping) -> dict:
        """Density of each sub-population, 1e6 cells/mL (N_i = vcd·f_i/Σf), from a named state (scalars or arrays,
        e.g. the variables of a `Trajectory`)."""
        total = sum(state[f"frac_{name}"] for name in self.subpopulations)
        return {name: state["vcd"] * state[f"frac_{name}"] / total for name in self.subpopulations}
