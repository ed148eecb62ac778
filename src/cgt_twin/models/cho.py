"""CHO fed-batch kinetics: the Xing et al. (2010) unstructured model, with smooth switches and optional effects.

Xing Z, Bishop N, Leister K, Li ZJ. Modeling kinetics of a large-scale fed-batch CHO cell culture by Markov chain
Monte Carlo method. Biotechnol Prog 2010;26(1):208–219. Growth limited by glucose and glutamine (Monod) and inhibited by
lactate and ammonia; death promoted by lactate and ammonia; glucose and glutamine maintenance; ammonia removal;
spontaneous glutamine decay; a constant specific productivity. Parameter values: the Xing MCMC set as transcribed in
``kkiviat/of-compartments`` (``params_xing_simplified``) and Table 2 of Bioengineering 2018;5(1):25 (PMC5874891), see
``../shared/reference/models.md`` §3.1; units converted to the library's (cells in 1e6 cells/mL, specific rates per
1e9 cells).

Changes from the published equations, each to make it well-posed for a solver and a fit:

- every uptake is multiplied by a smooth switch c/(ε + c) (ε = ``eps_switch``), so concentrations cannot cross zero
  (non-negativity by construction) and the model is not stiff at depletion;
- ammonia removal saturates, r_Amm·Amm/(ε + Amm), for the same reason;
- growth-coupled uptake uses μ, not μ − μ_d (the two published codes differ; μ keeps uptakes non-negative).

Options (fields; each combination compiles once):

- ``lactate_consumption``: the metabolic shift — lactate is taken up at q_Lac,max·Lac/(K_Lac,c+Lac) when glucose is
  low (K_Glc,shift/(K_Glc,shift+Glc)), which the Xing model lacks;
- ``temperature_shift``: growth falls and productivity rises below 37 °C:
  μ_max(T) = μ_max·exp(−θ_μ·(37−T)), q_P(T) = q_P·(1 + θ_qP·(37−T)) for T < 37 °C.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from .kinetics import AbstractKinetics, Inputs, Rates
from .parameters import Parameter

__all__ = ["CHOFedBatch", "CHO_PARAMETERS", "CHO_OPTION_PARAMETERS"]

_XING = "Xing et al. 2010 (MCMC set, via kkiviat/of-compartments params_xing_simplified; models.md §3.1)"
_TABLE = "Xing et al. 2010, as in Table 2 of PMC5874891 (models.md §3.1)"

CHO_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("mu_max", 0.029, "1/h", "maximum specific growth rate", _XING, 1e-4, 0.2, 0.5),
    Parameter("k_d", 0.016, "1/h", "maximum specific death rate", _XING, 1e-6, 0.2, 0.7),
    Parameter("K_glc", 0.084, "mM", "Monod constant of glucose for growth", _XING, 1e-4, 20.0, 1.0),
    Parameter("K_gln", 0.047, "mM", "Monod constant of glutamine for growth", _TABLE, 1e-4, 10.0, 1.0),
    Parameter("KI_lac", 43.0, "mM", "lactate inhibition constant of growth", _TABLE, 1.0, 500.0, 0.5),
    Parameter("KI_amm", 6.51, "mM", "ammonia inhibition constant of growth", _TABLE, 0.1, 100.0, 0.5),
    Parameter("KD_lac", 45.8, "mM", "lactate constant of death", _TABLE, 1.0, 500.0, 0.5),
    Parameter("KD_amm", 6.51, "mM", "ammonia constant of death", _TABLE, 0.1, 100.0, 0.5),
    Parameter("Y_x_glc", 0.169, "(1e9 cells)/mmol", "cells formed per glucose (0.169e9 cells/mmol)", _XING, 1e-3,
              10.0, 0.5),
    Parameter("Y_x_gln", 0.974, "(1e9 cells)/mmol", "cells formed per glutamine (0.974e9 cells/mmol)", _TABLE, 1e-3,
              50.0, 0.5),
    Parameter("Y_lac_glc", 1.23, "mol/mol", "lactate produced per glucose consumed", _XING, 1e-3, 2.0, 0.3),
    Parameter("Y_amm_gln", 0.67, "mol/mol", "ammonia produced per glutamine consumed", _TABLE, 1e-3, 2.0, 0.3),
    Parameter("r_amm", 0.0063, "mmol/(1e9 cells)/h", "maximum ammonia removal (6.3e-12 mmol/cell/h)", _TABLE, 1e-7,
              1.0, 1.0),
    Parameter("m_glc", 0.0692, "mmol/(1e9 cells)/h", "glucose maintenance (69.2e-12 mmol/cell/h)", _TABLE, 1e-6,
              1.0, 0.5),
    Parameter("a1", 0.0032, "mmol/(1e9 cells)/h", "maximum glutamine maintenance (3.2e-12 mmol/cell/h)", _TABLE,
              1e-7, 1.0, 1.0),
    Parameter("a2", 2.1, "mM", "half-saturation of glutamine maintenance", _TABLE, 1e-3, 50.0, 0.5),
    Parameter("k_dgln", 0.0072, "1/h", "spontaneous glutamine decay to ammonia and pyroglutamate", _XING, 1e-6, 0.1,
              0.5),
    Parameter("q_p", 1.51, "mg/(1e9 cells)/h", "specific productivity (1.51e-12 g/cell/h, 36 pg/cell/d)",
              "PMC5874891 Table 2 ('exp'; models.md §3.1)", 1e-4, 50.0, 0.7),
    Parameter("eps_switch", 0.1, "mM", "concentration below which uptakes switch off smoothly (numerical)",
              "this library: replaces the codes' hard cut-off; 0.1 mM keeps depletion non-stiff (measured: 0.01 mM "
              "made 1 % of posterior-like draws take 3-7x the median steps) and changes uptakes by < 2 % above 5 mM",
              1e-5, 1.0, 0.5),
)

CHO_OPTION_PARAMETERS: dict[str, tuple[Parameter, ...]] = {
    "lactate_consumption": (
        Parameter("q_lac_max", 0.02, "mmol/(1e9 cells)/h", "maximum specific lactate uptake after the shift",
                  "prior [U]: late-phase lactate consumption of 0.2-1 pmol/cell/d (models.md §3.1 d)", 1e-6, 1.0,
                  1.0),
        Parameter("K_lac_c", 2.0, "mM", "half-saturation of lactate uptake", "prior [U]", 1e-3, 50.0, 1.0),
        Parameter("K_glc_shift", 5.0, "mM", "glucose below which lactate is consumed", "prior [U]", 1e-3, 100.0,
                  1.0),
    ),
    "temperature_shift": (
        Parameter("theta_mu", 0.12, "1/degC", "fall of ln μ_max per degC below 37 °C",
                  "prior [U]: growth roughly halves after a 37->32 °C shift (models.md §3.1 d)", 1e-4, 1.0, 0.7),
        Parameter("theta_qp", 0.06, "1/degC", "relative rise of q_P per degC below 37 °C",
                  "prior [U]: q_P often rises 20-50 % after a shift", 1e-4, 1.0, 0.7),
    ),
}


class CHOFedBatch(AbstractKinetics):
    """CHO fed-batch antibody production (Xing et al. 2010), see the module docstring.

    States: ``vcd``, ``dead_cells`` (1e6 cells/mL), ``glucose``, ``glutamine``, ``lactate``, ``ammonia`` (mM),
    ``titer`` (mg/L), ``volume`` (L).

    Args:
        lactate_consumption: add the lactate metabolic shift.
        temperature_shift: add the temperature effect on growth and productivity.
    """

    lactate_consumption: bool = eqx.field(default=False, static=True)
    temperature_shift: bool = eqx.field(default=False, static=True)

    cell_type: ClassVar[str] = "cho"
    species: ClassVar[tuple[str, ...]] = ("glucose", "glutamine", "lactate", "ammonia", "titer")
    species_scales: ClassVar[Mapping[str, float]] = {"glucose": 10.0, "glutamine": 1.0, "lactate": 10.0,
                                                     "ammonia": 1.0, "titer": 100.0}

    @property
    def parameters(self) -> tuple[Parameter, ...]:  # type: ignore[override]
        extra = ()
        if self.lactate_consumption:
            extra += CHO_OPTION_PARAMETERS["lactate_consumption"]
        if self.temperature_shift:
            extra += CHO_OPTION_PARAMETERS["temperature_shift"]
        return CHO_PARAMETERS + extra

    def default_initial_state(self) -> dict[str, float]:
        return {"vcd": 0.3, "dead_cells": 0.0, "glucose": 30.0, "glutamine": 4.0, "lactate": 0.0, "ammonia": 0.0,
                "titer": 0.0, "volume": 1.0}

    def rates(self, t, state, inputs: Inputs, params) -> Rates:
        p = params
        glc, gln, lac, amm = state["glucose"], state["glutamine"], state["lactate"], state["ammonia"]
        eps = p["eps_switch"]
        on_glc = glc / (eps + glc)
        on_gln = gln / (eps + gln)
        on_amm = amm / (eps + amm)
        mu_max, q_p = p["mu_max"], p["q_p"]
        if self.temperature_shift:
            below = jnp.maximum(37.0 - inputs.temperature, 0.0)
            mu_max = mu_max * jnp.exp(-p["theta_mu"] * below)
            q_p = q_p * (1.0 + p["theta_qp"] * below)
        limitation = glc / (p["K_glc"] + glc) * gln / (p["K_gln"] + gln)
        inhibition = p["KI_lac"] / (p["KI_lac"] + lac) * p["KI_amm"] / (p["KI_amm"] + amm)
        mu = mu_max * limitation * inhibition
        death = p["k_d"] * lac / (p["KD_lac"] + lac) * amm / (p["KD_amm"] + amm)
        q_glc = (mu / p["Y_x_glc"] + p["m_glc"] * on_glc)  # uptake, mmol/(1e9 cells)/h
        m_gln = p["a1"] * gln / (p["a2"] + gln)
        q_gln = mu / p["Y_x_gln"] + m_gln * on_gln
        q_lac = p["Y_lac_glc"] * q_glc
        if self.lactate_consumption:
            shift = p["K_glc_shift"] / (p["K_glc_shift"] + glc)
            q_lac = q_lac - p["q_lac_max"] * lac / (p["K_lac_c"] + lac) * shift
        q_amm = p["Y_amm_gln"] * mu / p["Y_x_gln"] - p["r_amm"] * on_amm
        specific = jnp.stack([-q_glc, -q_gln, q_lac, q_amm, q_p])
        decay = p["k_dgln"] * gln
        volumetric = jnp.stack([0.0 * decay, -decay, 0.0 * decay, decay, 0.0 * decay])
        return Rates(growth=mu, death=death, specific=specific, volumetric=volumetric)
