"""HEK293 viral-vector production: rAAV by triple transfection (Nguyen et al. 2021) and a minimal lentivirus model.

`HEK293TripleTransfection` is model H1 of ``../shared/reference/models.md`` (§4.1):

    Nguyen TNT, Sha S, Hong MS, Maloney AJ, Barone PW, Neufeld C, Wolfrum J, Springs SL, Sinskey AJ, Braatz RD.
    Mechanistic model for production of recombinant adeno-associated virus via triple transfection of HEK293 cells.
    Mol Ther Methods Clin Dev 2021;21:642–655. doi:10.1016/j.omtm.2021.04.006

with the authors' code (github ``tamntnguyen/AAV-Triple-Transfection-Mechanistic-Model`` @4e7fb16: ``ode_viralProd.m``,
``simE3.m``, ``calc_growth_rate.m``) and fitted constants (``model_params.mat``, ``kAll``), coupled to a host module
(model H2, §4.2): glucose, glutamine, lactate and ammonia, and either Nguyen's empirical growth curve or a Monod
growth/death model. `HEK293Lentivirus` is model H3 (§4.3): the same plasmid delivery, then production and decay of
functional and physical particles. Its structure and parameters are assembled priors [U]: no published, parameterised
LV production model was found.

Intracellular species are per cell (copies or molecules per viable cell) and diluted by growth (−μ·z, done by the
generic balance); volumetric titres are per-cell amounts × VCD, as in Nguyen's code, plus the capsids of cells that
died (a volumetric pool). Time is h, cells 1e6 cells/mL, metabolites mM.

Changes from the published code (each documented where it is made):

- **Extracellular plasmid is volumetric** (``1e6 copies/mL``), so the medium exchange (an ``exchange`` event,
  fraction 1, at 6 h post transfection in Nguyen's set-up) removes it through the generic balance. The dose is shared
  among the cells present at transfection (X_tx, state ``vcd_at_transfection``): each cell takes up
  k_up·P_ext/X_tx per h (Nguyen's rate law, his per-cell P_ext being P_ext/X_tx), the medium loses
  k_up·P_ext·X_v/X_tx, so the plasmid balance is closed. Only the depletion of the medium differs from the code (by
  growth during 0–6 h: 0.1 % of the extracellular plasmid; titres at 46 h move by < 0.1 %). A dose per cell then gives
  the same plasmid per cell at any density, and a fixed dose per mL gives less per cell at a higher density.
- **Growth is a specific rate**: the empirical curve is written as μ(τ) = μ0·e^(−bτ)/(1 + (μ0/b)(1 − e^(−bτ))) with
  τ the time since transfection (μ0 = a/X0); VCD then follows dX_v/dt = μ·X_v and equals Nguyen's VCD(t) when
  X_v(0) = 1e6 cells/mL (and scales with X_v(0) otherwise).
- ``complex_dilution=False`` (default) keeps the code's quirk that Rep-bound pRC (B_RC) and Rep-bound capsids (C_RE)
  are not diluted by growth; True dilutes them like every other per-cell species (full capsids at 46 h −3 %).
- The capsids of cells that die (Monod mode only; Nguyen has no death) move to volumetric pools, so titres count
  dead cells' capsids instead of losing them.

Quasi-steady state (``qssa=True``, the default): the fast species follow the slow ones algebraically,
VP = k_VP·P_RC^nuc·P_H^nuc/(60·k_asm + k_dVP), E_nuc = k_asm·VP/(k_sec + k_bC·Rep), F_nuc = k_pk·C_RE·vDNA/k_sec, and
the export rates are k_sec·E_nuc and k_sec·F_nuc (growth dilution, ≤ 0.05 1/h against 1e5 1/h, is left out of the
denominators). Against the full equations this is a lag of ~1/k_sec = 1e-5 h: relative errors ≤ 2e-5 while
production ramps up (3 h), ~1e-7 at 46 h.

Solver, chosen by measurement (2-core CPU shared with other jobs, load average 2–4, so times are noisy; float64,
JAX 0.10.2, diffrax 0.7.2). One batch, 0–72 h, transfection at 0 h, medium exchange at 6 h, empirical growth,
default tolerances (rtol 1e-6, atol 1e-8 on scaled states); run = a `simulate` call after compilation; steps =
accepted steps; error = largest relative error of capsid and vg titres at 46 h against scipy Radau at rtol 1e-10 on
the full equations. At Nguyen's set-up (8 output times, best of 3 runs):

    ==================  ========  ========  ==================  =========
    model, solver       steps     run       compile + 1st run   error
    ==================  ========  ========  ==================  =========
    full, Tsit5         fails: max_steps after 109,776 steps (stability: dt < ~3/(60·k_asm) = 5e-7 h)
    full, Kvaerno5      971       0.82 s    15 s                2e-9
    QSSA, Tsit5         1,093     64 ms     4.2 s               1.5e-7
    QSSA, Kvaerno5      728       0.51 s    15 s                1.5e-7
    ==================  ========  ========  ==================  =========

64 identical batches vmapped: QSSA + Tsit5 0.48 s (7 ms a batch), QSSA + Kvaerno5 6.4 s (0.1 s a batch).

Over the range a fit or a controller explores (5 output times, max_steps raised to 1e5; steps / run):

    =========================  ===============  =============  =============
    case                       QSSA, Tsit5      QSSA, Kvaerno5 full, Kvaerno5
    =========================  ===============  =============  =============
    Nguyen (7.6e4 copies/cell)  1,090 / 65 ms   736 / 0.36 s   976 / 0.53 s
    dose × 0.5                    238 / 20 ms   468 / 0.22 s   568 / 0.34 s
    dose × 2                   10,077 / 0.62 s  925 / 0.37 s   1,322 / 0.82 s
    dose × 4                   90,092 / 5.1 s   1,050 / 0.36 s 2,030 / 0.93 s
    k_pk × 10                   9,335 / 0.54 s  790 / 0.29 s   1,024 / 0.39 s
    k_DNA × 10                 15,024 / 0.87 s  692 / 0.24 s   887 / 0.36 s
    =========================  ===============  =============  =============

After the quasi-steady state the packaging intermediate stays stiff: it is consumed at k_pk·vDNA (≈ 100 1/h at
Nguyen's dose), and vDNA grows with the cube of the plasmid dose, so Tsit5's cost grows with it (with the default
max_steps of 4,096 a segment it already fails at 2× the dose), while Kvaerno5's stays flat. Default: **QSSA + Kvaerno5** (``qssa=True``,
``solver = "kvaerno5"``): robust over the range at a flat ~0.3 s, and fewer steps than the full model. For work at
or below Nguyen's dose, ``SolverSettings(solver="tsit5")`` is 5–10× faster. The full model (``qssa=False``) needs the
fast species' error scale at 1 molecule/cell: with their typical size (1e-2) as scale, i.e. an absolute tolerance of
1e-10, Kvaerno5 took 4,849 steps and 4.8 s (its error estimate on the stiff components rejects steps). The
lentivirus model is not stiff (fastest rate k_esc = 0.6 1/h): Tsit5, ~80 steps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .kinetics import AbstractKinetics, Inputs, InternalState, Rates
from .parameters import Parameter

__all__ = ["HEK293TripleTransfection", "HEK293Lentivirus", "AAV_PARAMETERS", "DELIVERY_PARAMETERS",
           "HOST_PARAMETERS", "LV_PARAMETERS", "GROWTH_MODES"]

GROWTH_MODES = ("empirical", "monod")
AVOGADRO = 6.02214076e23
BP_MASS = 650.0  # g/mol per base pair of double-stranded DNA (average, sodium salt ~ 650)

_K = "Nguyen et al. 2021, model_params.mat kAll({}) (tamntnguyen/AAV-Triple-Transfection-Mechanistic-Model @4e7fb16)"
_GROWTH = "Nguyen et al. 2021, calc_growth_rate.m (g = [49427.958 cells/mL/h, 0.0112812 1/h], X0 = 1e6 cells/mL)"
_H2 = "prior [U], models.md §4.2 (HEK293 host priors)"
_U = "prior [U], this library (no published HEK293 value found; models.md §4.2)"
_LV = "prior [U], models.md §4.3 (assembled LV model)"


def _k(name, index, value, unit, description, sigma=0.5, span=1e3):
    return Parameter(name, value, unit, description, _K.format(index), value / span, value * span, sigma)


DELIVERY_PARAMETERS: tuple[Parameter, ...] = (
    _k("k_up", 1, 1.18883651e-3, "1/h", "plasmid uptake from the medium (per cell: k_up × copies per cell at "
       "transfection)"),
    _k("k_esc", 2, 0.6, "1/h", "endosomal escape"),
    _k("k_nuc", 3, 4.3e-3, "1/h", "nuclear entry"),
    _k("k_dp", 4, 1.95e-2, "1/h", "plasmid degradation (endosome, cytosol, nucleus)"),
    Parameter("plasmid_copies", 7.6e4, "1/cell", "copies of each plasmid per cell at transfection, used when "
              "the dose is not recorded (NaN)", "Nguyen et al. 2021, sim_full_params_mL.m (x0 = 7.6e4 per plasmid)",
              1e2, 1e7, 0.5),
)

AAV_PARAMETERS: tuple[Parameter, ...] = (
    _k("k_rep", 5, 6.48911567e4, "cell/h", "Rep synthesis: molecules/cell/h per (pRC copies/cell × pHelper "
       "copies/cell)"),
    _k("k_vp", 6, 6.48911567e4, "cell/h", "capsid protein (VP) synthesis, per pRC and pHelper copy"),
    _k("k_drep", 7, 2.45e-2, "1/h", "Rep degradation"),
    _k("k_dvp", 8, 0.2773, "1/h", "VP degradation"),
    _k("k_dna", 9, 3.09896555e-7, "cell**2/h", "vector DNA rescue/replication, per Rep, pVector and pHelper "
       "(per cell)"),
    _k("k_brc", 10, 3.38290148e-5, "cell/h", "Rep binding to pRC (repression), per Rep molecule per cell"),
    _k("k_asm", 11, 1e5, "1/h", "capsid assembly from VP (60 VP per capsid; effectively instantaneous)", 1.0),
    _k("k_bc", 12, 5.6978994e-3, "cell/h", "Rep docking on empty nuclear capsids, per Rep molecule per cell"),
    _k("k_pk", 13, 8.17843743e-2, "cell/h", "vector DNA encapsidation, per Rep-capsid and vDNA copy per cell"),
    _k("k_sec", 14, 1e5, "1/h", "export of capsids from the nucleus (effectively instantaneous)", 1.0),
)

_EMPIRICAL: tuple[Parameter, ...] = (
    Parameter("growth_mu0", 49427.9581111241 / 1e6, "1/h", "empirical growth: specific growth rate at transfection "
              "(a/X0)", _GROWTH, 1e-4, 0.2, 0.3),
    Parameter("growth_decay", 0.0112812472592155, "1/h", "empirical growth: decay constant b of the growth rate",
              _GROWTH, 1e-5, 1.0, 0.3),
)

_METABOLISM: tuple[Parameter, ...] = (
    Parameter("q_glc", 2.0 / 24, "mmol/(1e9 cells)/h", "maximum specific glucose uptake (2 pmol/cell/d)", _H2,
              1e-4, 1.0, 0.5),
    Parameter("K_glc", 0.75, "mM", "Monod constant of glucose (growth and uptake)", _H2, 1e-3, 20.0, 0.5),
    Parameter("Y_lac_glc", 1.5, "mol/mol", "lactate produced per glucose taken up", _H2, 0.01, 2.0, 0.2),
    Parameter("q_gln", 0.6 / 24, "mmol/(1e9 cells)/h", "maximum specific glutamine uptake (0.6 pmol/cell/d)", _H2,
              1e-5, 0.5, 0.5),
    Parameter("K_gln", 0.15, "mM", "Monod constant of glutamine (growth and uptake)", _H2, 1e-3, 10.0, 0.7),
    Parameter("Y_amm_gln", 0.7, "mol/mol", "ammonia produced per glutamine taken up", _H2, 0.01, 2.0, 0.3),
    Parameter("k_dgln", 0.006, "1/h", "spontaneous glutamine decay to ammonia (medium-dependent)", _H2, 1e-5, 0.1,
              0.5),
)

_MONOD: tuple[Parameter, ...] = (
    Parameter("mu_max", 0.03, "1/h", "maximum specific growth rate (doubling 23 h)", _H2, 1e-3, 0.2, 0.3),
    Parameter("KI_lac", 45.0, "mM", "lactate inhibition constant of growth", _H2, 1.0, 500.0, 0.4),
    Parameter("KI_amm", 7.5, "mM", "ammonia inhibition constant of growth", _H2, 0.1, 100.0, 0.4),
    Parameter("eta_tx", 1.0, "1", "growth brake after transfection: μ divided by (1 + eta_tx) once it acts",
              _U + "; transfection slows growth after 24–48 h", 1e-4, 100.0, 1.0),
    Parameter("tx_lag", 24.0, "h", "time after transfection at which the brake and the toxicity act (sigmoid centre)",
              _U, 1.0, 96.0, 0.4),
    Parameter("tx_width", 4.0, "h", "width of the sigmoid switch after transfection", _U, 0.5, 24.0, 0.5),
    Parameter("k_d", 1e-3, "1/h", "basal specific death rate", _U, 1e-6, 0.1, 1.0),
    Parameter("k_d_tx", 2e-3, "1/h", "extra death after transfection (toxicity)", _U, 1e-6, 0.2, 1.0),
    Parameter("k_d_starve", 0.02, "1/h", "death when glucose or glutamine runs out (× (1 − Monod limitation))", _U,
              1e-6, 0.5, 1.0),
)

HOST_PARAMETERS: dict[str, tuple[Parameter, ...]] = {"empirical": _EMPIRICAL + _METABOLISM,
                                                     "monod": _MONOD + _METABOLISM}

LV_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("k_lv", 1e8, "capsid/(1e6 cells)/h", "maximum specific production of physical LV particles "
              "(100 particles/cell/h) with all three plasmids saturating", _LV + "; gives ~1e9–1e10 particles/mL at "
              "2–4e6 cells/mL", 1e3, 1e11, 1.0),
    Parameter("K_plasmid", 5.0, "1/cell", "nuclear copies of each plasmid giving half-maximal production", _LV,
              1e-2, 1e4, 1.0),
    Parameter("phi_func", 1.0 / 300.0, "TU/capsid", "functional fraction of new particles (inverse P:I ratio; "
              "P:I 1e2–1e3)", _LV, 1e-5, 1.0, 0.7),
    Parameter("k_dec", math.log(2) / 9.0, "1/h", "decay of functional titre at 37 °C (half-life ~9 h)",
              _LV + " (Higashikawa & Chang 2001, half-life 8–10 h; from memory)", 1e-3, 1.0, 0.3),
    Parameter("k_dec_phys", 0.01, "1/h", "decay of physical particles (p24-measured; more stable than infectivity)",
              _LV, 1e-5, 1.0, 1.0),
)
_LV_TOXICITY = Parameter("k_tox", 2e-3, "1/h", "death caused by envelope (VSV-G) expression, × its saturation "
                         "(Monod mode only)", _LV, 1e-6, 0.2, 1.0)


# --- shared pieces ------------------------------------------------------------------------------------------------
def _delivery_states(prefixes: tuple[tuple[str, str], ...]) -> tuple[InternalState, ...]:
    """The cells sharing the dose, and the four compartments of each plasmid (extracellular volumetric, the others per
    cell)."""
    states = [InternalState("vcd_at_transfection", "cells", "1e6 cells/mL",
                            "viable cells at the last transfection, among which the dose is shared (diluted with the "
                            "culture, no growth; 1 before any transfection)", default=1.0, scale=1.0)]
    for key, label in prefixes:
        states.append(InternalState(f"p_{key}_ext", "volumetric", "1e6 copies/mL", f"{label} in the medium",
                                    scale=1e5))
        states.append(InternalState(f"p_{key}_endo", "per_cell", "copies/cell", f"{label} in endosomes", scale=10.0))
        states.append(InternalState(f"p_{key}_cyt", "per_cell", "copies/cell", f"{label} in the cytosol",
                                    scale=100.0))
        states.append(InternalState(f"p_{key}_nuc", "per_cell", "copies/cell", f"{label} in the nucleus",
                                    scale=10.0))
    return tuple(states)


def _delivery_rates(keys: tuple[str, ...], state, vcd, p) -> dict:
    """d/dt (before growth dilution) of the delivery states: uptake of the dose shared among the cells present at
    transfection, endosomal escape, nuclear entry, degradation."""
    out = {"vcd_at_transfection": jnp.zeros_like(vcd)}
    share = 1.0 / jnp.maximum(state["vcd_at_transfection"], 1e-9)
    for key in keys:
        ext, endo, cyt, nuc = (state[f"p_{key}_{c}"] for c in ("ext", "endo", "cyt", "nuc"))
        uptake = p["k_up"] * ext * share  # copies per cell per h
        out[f"p_{key}_ext"] = -uptake * vcd  # 1e6 copies per mL per h
        out[f"p_{key}_endo"] = uptake - (p["k_esc"] + p["k_dp"]) * endo
        out[f"p_{key}_cyt"] = p["k_esc"] * endo - (p["k_nuc"] + p["k_dp"]) * cyt
        out[f"p_{key}_nuc"] = p["k_nuc"] * cyt - p["k_dp"] * nuc
    return out


def _dose_copies(dose, sizes_bp, ratio):
    """Copies per mL (in 1e6 copies/mL) of each plasmid for `dose` ug DNA per mL split by molar `ratio`."""
    mass_per_set = sum(r * bp for r, bp in zip(ratio, sizes_bp, strict=True)) * BP_MASS / AVOGADRO  # g per set
    sets_per_ml = dose * 1e-6 / mass_per_set
    return [sets_per_ml * r / 1e6 for r in ratio]


class _HEK293Host(AbstractKinetics):
    """Host growth, death and metabolism shared by the HEK293 models (model H2)."""

    growth: str = eqx.field(default="empirical", static=True)

    cell_type: ClassVar[str] = "hek293"
    species_scales: ClassVar[Mapping[str, float]] = {"glucose": 10.0, "glutamine": 1.0, "lactate": 10.0,
                                                     "ammonia": 1.0}

    def __check_init__(self):
        if self.growth not in GROWTH_MODES:
            raise ValueError(f"growth must be one of {GROWTH_MODES}, got {self.growth!r}")

    def _host(self, t, state, inputs: Inputs, p):
        """(μ, μ_d, specific metabolite rates, volumetric metabolite rates) in the order of `species` (first four)."""
        glc, gln, lac, amm = state["glucose"], state["glutamine"], state["lactate"], state["ammonia"]
        lim_glc = glc / (p["K_glc"] + glc)
        lim_gln = gln / (p["K_gln"] + gln)
        t_tx = inputs.transfection_time
        transfected = t_tx >= 0
        if self.growth == "empirical":
            # Nguyen's VCD(t) = X0 + (a/b)(1 − e^(−bτ)) as a specific rate; τ from the transfection (else inoculation).
            tau = jnp.maximum(t - jnp.where(transfected, t_tx, 0.0), 0.0)
            mu0, b = p["growth_mu0"], p["growth_decay"]
            decay = jnp.exp(-b * tau)
            mu = mu0 * decay / (1.0 + mu0 / b * (1.0 - decay))
            death = jnp.zeros_like(mu)
        else:
            after = jnp.where(transfected, jax.nn.sigmoid((t - t_tx - p["tx_lag"]) / p["tx_width"]), 0.0)
            limitation = lim_glc * lim_gln
            inhibition = p["KI_lac"] / (p["KI_lac"] + lac) * p["KI_amm"] / (p["KI_amm"] + amm)
            mu = p["mu_max"] * limitation * inhibition / (1.0 + p["eta_tx"] * after)
            death = p["k_d"] + p["k_d_tx"] * after + p["k_d_starve"] * (1.0 - limitation)
        q_glc = p["q_glc"] * lim_glc
        q_gln = p["q_gln"] * lim_gln
        specific = [-q_glc, -q_gln, p["Y_lac_glc"] * q_glc, p["Y_amm_gln"] * q_gln]
        decay_gln = p["k_dgln"] * gln
        volumetric = [0.0 * decay_gln, -decay_gln, 0.0 * decay_gln, decay_gln]
        return mu, death, specific, volumetric

    def _add_plasmids(self, y, dose, params, keys: tuple[str, ...]):
        """Adds a dose (ug DNA per mL, split by ``molar_ratio`` over plasmids of ``plasmid_sizes_bp``) to the
        extracellular pools ``p_<key>_ext`` (1e6 copies/mL); a NaN dose adds ``plasmid_copies`` per cell (scaled by
        the molar ratio) at the current VCD. Records the VCD as the cells sharing the dose."""
        layout = self.layout
        vcd = y[layout.index("vcd")]
        y = y.at[layout.index("vcd_at_transfection")].set(vcd)
        sizes, ratio = self.plasmid_sizes_bp, self.molar_ratio  # type: ignore[attr-defined]
        per_plasmid = _dose_copies(dose, sizes, ratio)
        for i, key in enumerate(keys):
            fallback = params["plasmid_copies"] * vcd * ratio[i] / max(ratio)
            y = y.at[layout.index(f"p_{key}_ext")].add(jnp.where(jnp.isnan(dose), fallback, per_plasmid[i]))
        return y

    def default_initial_state(self) -> dict[str, float]:
        state = super().default_initial_state()
        state.update({"vcd": 1.0, "dead_cells": 0.0, "glucose": 25.0, "glutamine": 4.0, "lactate": 0.0,
                      "ammonia": 0.0, "volume": 1.0})
        return state


# --- rAAV ---------------------------------------------------------------------------------------------------------
_AAV_PLASMIDS = (("rc", "pRepCap (packaging plasmid)"), ("v", "pVector (ITR-flanked transgene)"),
                 ("h", "pHelper (adenoviral helper genes)"))

_VIRAL_STATES = (
    InternalState("rep", "per_cell", "molecules/cell", "Rep protein", scale=1e5),
    InternalState("vp", "per_cell", "molecules/cell", "free capsid protein VP (fast: k_asm = 1e5 1/h)", scale=1.0),
    InternalState("vdna", "per_cell", "copies/cell", "replicated (rescued) vector genomes, not packaged", scale=1e3),
    InternalState("empty_nuc", "per_cell", "capsids/cell", "empty capsids in the nucleus (fast: k_sec = 1e5 1/h)",
                  scale=1.0),
    InternalState("full_nuc", "per_cell", "capsids/cell", "full capsids in the nucleus (fast)", scale=1.0),
    InternalState("empty_cyt", "per_cell", "capsids/cell", "empty capsids exported from the nucleus", scale=1e4),
    InternalState("full_cyt", "per_cell", "capsids/cell", "full capsids exported from the nucleus", scale=1e3),
    InternalState("rep_rc", "per_cell", "complexes/cell", "Rep-bound (repressed) pRC", scale=10.0),
    InternalState("rep_capsid", "per_cell", "complexes/cell", "Rep-bound empty capsids (packaging intermediate)",
                  scale=10.0),
)
_QSSA_ELIMINATED = ("vp", "empty_nuc", "full_nuc")
_RELEASED = (
    InternalState("released_empty", "volumetric", "1e6 capsids/mL", "empty capsids of cells that died", scale=1e4),
    InternalState("released_full", "volumetric", "1e6 capsids/mL", "full capsids of cells that died", scale=1e3),
)


class HEK293TripleTransfection(_HEK293Host):
    """rAAV production by triple transfection of HEK293 cells (Nguyen et al. 2021) with host metabolism.

    States: ``vcd``, ``dead_cells`` (1e6 cells/mL); ``glucose``, ``glutamine``, ``lactate``, ``ammonia`` (mM);
    internal: ``vcd_at_transfection`` (1e6 cells/mL, kind ``cells``), ``p_{rc,v,h}_ext`` (1e6 copies/mL,
    volumetric: removed by a medium exchange), ``p_{rc,v,h}_{endo,cyt,
    nuc}`` (copies/cell), ``rep`` (molecules/cell), ``vp`` (molecules/cell), ``vdna`` (copies/cell), ``empty_nuc``,
    ``full_nuc``, ``empty_cyt``, ``full_cyt`` (capsids/cell), ``rep_rc``, ``rep_capsid`` (complexes/cell),
    ``released_empty``, ``released_full`` (1e6 capsids/mL, volumetric); ``volume`` (L). With ``qssa=True`` the fast
    species ``vp``, ``empty_nuc`` and ``full_nuc`` are algebraic (quasi-steady state) and not states.

    Observed (``observe``): ``vcd``, ``dead_cells``, ``total_cells``, ``viability``, the metabolites, ``volume``,
    ``capsid_titer`` (capsid/mL: all capsids, cell-associated + released), ``vg_titer`` (vg/mL: packaged genomes =
    full capsids, what a DNase-resistant qPCR/ddPCR measures), ``full_capsid_fraction`` (full/total),
    ``vector_dna`` (copies/mL: all DNA carrying the vector sequence — intracellular pVector, replicated vDNA and
    packaged genomes; Nguyen's "total viral DNA", not a canonical variable).

    Args:
        growth: ``"empirical"`` (Nguyen's VCD(t), no death; reproduces the paper's set-up) or ``"monod"`` (host
            growth and death from glucose, glutamine, lactate and ammonia with a post-transfection brake; priors [U]).
        qssa: eliminate the fast assembly/export steps (k_asm = k_sec = 1e5 1/h) by quasi-steady state (default;
            the solver is Kvaerno5 either way, see the module docstring).
        complex_dilution: dilute Rep-bound pRC and Rep-bound capsids by growth (Nguyen's code does not).
        plasmid_sizes_bp: sizes of pRepCap, pVector and pHelper in bp (to turn a dose in ug/mL into copies); defaults
            are the Agilent AAV Helper-Free plasmids pAAV-RC (7,330 bp), a ~5 kb vector plasmid and pHelper
            (11,635 bp) [U].
        molar_ratio: molar ratio pRepCap : pVector : pHelper of the dose (Nguyen: equimolar).
    """

    qssa: bool = eqx.field(default=True, static=True)
    complex_dilution: bool = eqx.field(default=False, static=True)
    plasmid_sizes_bp: tuple[float, float, float] = eqx.field(default=(7330.0, 5000.0, 11635.0), static=True)
    molar_ratio: tuple[float, float, float] = eqx.field(default=(1.0, 1.0, 1.0), static=True)

    species: ClassVar[tuple[str, ...]] = ("glucose", "glutamine", "lactate", "ammonia")

    solver: ClassVar[str] = "kvaerno5"

    @property
    def internal(self) -> tuple[InternalState, ...]:  # type: ignore[override]
        viral = tuple(s for s in _VIRAL_STATES if not (self.qssa and s.name in _QSSA_ELIMINATED))
        return _delivery_states(_AAV_PLASMIDS) + viral + _RELEASED

    @property
    def parameters(self) -> tuple[Parameter, ...]:  # type: ignore[override]
        return DELIVERY_PARAMETERS + AAV_PARAMETERS + HOST_PARAMETERS[self.growth]

    def transfect(self, y, dose, params):
        """Adds the dose (ug DNA per mL) to the extracellular plasmid pools; NaN: ``plasmid_copies`` per cell of each
        plasmid (Nguyen's 7.6e4) at the current VCD; 0 (mock): nothing."""
        return self._add_plasmids(y, dose, params, tuple(k for k, _ in _AAV_PLASMIDS))

    def _fast(self, s, p):
        """Quasi-steady state of the fast species (VP, empty and full nuclear capsids) from the slow ones; growth
        dilution (μ ≤ 0.05 1/h against 1e5 1/h) is left out of the denominators."""
        r_vp = p["k_vp"] * s["p_rc_nuc"] * s["p_h_nuc"]
        vp = r_vp / (60.0 * p["k_asm"] + p["k_dvp"])
        empty_nuc = p["k_asm"] * vp / (p["k_sec"] + p["k_bc"] * s["rep"])
        full_nuc = p["k_pk"] * s["rep_capsid"] * s["vdna"] / p["k_sec"]
        return vp, empty_nuc, full_nuc

    def rates(self, t, state, inputs: Inputs, params) -> Rates:
        p, s = params, state
        vcd = s["vcd"]
        mu, death, specific, volumetric = self._host(t, s, inputs, p)
        d = _delivery_rates(("rc", "v", "h"), s, vcd, p)
        if self.qssa:
            vp, empty_nuc, full_nuc = self._fast(s, p)
        else:
            vp, empty_nuc, full_nuc = s["vp"], s["empty_nuc"], s["full_nuc"]
        rep, vdna, rep_capsid = s["rep"], s["vdna"], s["rep_capsid"]
        rc_nuc, v_nuc, h_nuc = s["p_rc_nuc"], s["p_v_nuc"], s["p_h_nuc"]
        r_rep = p["k_rep"] * rc_nuc * h_nuc
        r_vp = p["k_vp"] * rc_nuc * h_nuc
        r_dna = p["k_dna"] * rep * v_nuc * h_nuc
        r_brc = p["k_brc"] * rep * rc_nuc
        r_asm = p["k_asm"] * vp
        r_bc = p["k_bc"] * rep * empty_nuc
        r_pk = p["k_pk"] * rep_capsid * vdna
        d["p_rc_nuc"] = d["p_rc_nuc"] - r_brc
        d["rep"] = r_rep - r_brc - r_bc + r_pk - p["k_drep"] * rep
        d["vdna"] = r_dna - r_pk
        if self.qssa:
            # Export equals formation minus Rep docking (E_nuc) and packaging (F_nuc) at quasi-steady state.
            d["empty_cyt"] = p["k_sec"] * empty_nuc
            d["full_cyt"] = p["k_sec"] * full_nuc
        else:
            d["vp"] = r_vp - 60.0 * r_asm - p["k_dvp"] * vp
            d["empty_nuc"] = r_asm - p["k_sec"] * empty_nuc - r_bc
            d["full_nuc"] = r_pk - p["k_sec"] * full_nuc
            d["empty_cyt"] = p["k_sec"] * empty_nuc
            d["full_cyt"] = p["k_sec"] * full_nuc
        d["rep_rc"] = r_brc
        d["rep_capsid"] = r_bc - r_pk
        if not self.complex_dilution:  # as coded by Nguyen: cancel the generic growth dilution of the two complexes
            d["rep_rc"] = d["rep_rc"] + mu * s["rep_rc"]
            d["rep_capsid"] = d["rep_capsid"] + mu * s["rep_capsid"]
        # Capsids of dying cells stay in the culture (1e6 capsids/mL per h).
        d["released_empty"] = death * vcd * (empty_nuc + s["empty_cyt"])
        d["released_full"] = death * vcd * (full_nuc + s["full_cyt"])
        internal = jnp.stack([jnp.asarray(d[x.name], dtype=jnp.float64) for x in self.internal])
        return Rates(growth=mu, death=death, specific=jnp.stack(specific), volumetric=jnp.stack(volumetric),
                     internal=internal)

    def observe(self, state, params):
        out = super().observe(state, params)
        s = state
        if self.qssa:
            _, empty_nuc, full_nuc = self._fast(s, params)
        else:
            empty_nuc, full_nuc = s["empty_nuc"], s["full_nuc"]
        cells = s["vcd"] * 1e6  # cells/mL
        empty = (empty_nuc + s["empty_cyt"]) * cells + s["released_empty"] * 1e6
        full = (full_nuc + s["full_cyt"]) * cells + s["released_full"] * 1e6
        total = empty + full
        out["capsid_titer"] = total
        out["vg_titer"] = full
        out["full_capsid_fraction"] = jnp.where(total > 0, full / jnp.where(total > 0, total, 1.0), 0.0)
        out["vector_dna"] = (s["p_v_endo"] + s["p_v_cyt"] + s["p_v_nuc"] + s["vdna"] + full_nuc
                             + s["full_cyt"]) * cells + s["released_full"] * 1e6
        return out


# --- lentivirus ---------------------------------------------------------------------------------------------------
_LV_PLASMIDS = (("tr", "transfer plasmid (transgene)"), ("pk", "packaging plasmid(s) (gag-pol, rev; lumped)"),
                ("env", "envelope plasmid (VSV-G)"))


class HEK293Lentivirus(_HEK293Host):
    """Minimal lentiviral-vector production by transient transfection of HEK293(T) cells (model H3, priors [U]).

    Delivery of three plasmids (transfer, packaging lumped, envelope) as in Nguyen's model; per-cell production of
    physical particles q = k_lv·Π_j P_j^nuc/(K_plasmid + P_j^nuc); a fraction ``phi_func`` is functional; both decay
    in the medium (functional ~9 h half-life, physical slower); envelope expression adds death (VSV-G toxicity,
    Monod mode; the empirical mode has no death).

    States: ``vcd``, ``dead_cells``; ``glucose``, ``glutamine``, ``lactate``, ``ammonia`` (mM); ``functional_titer``
    (TU/mL) and ``capsid_titer`` (physical particles per mL, p24-based, in the library's ``capsid``/``VP`` unit —
    for LV "capsid_titer" means physical particles); internal ``vcd_at_transfection``,
    ``p_{tr,pk,env}_{ext,endo,cyt,nuc}``; ``volume``.
    Titres are species: they are diluted by feeds, removed by medium exchange and perfusion like any secreted product.

    Args:
        growth: ``"empirical"`` or ``"monod"``, as for `HEK293TripleTransfection`.
        plasmid_sizes_bp: transfer, packaging, envelope plasmid sizes (bp) [U].
        molar_ratio: molar ratio of the dose [U].
    """

    plasmid_sizes_bp: tuple[float, float, float] = eqx.field(default=(8000.0, 9000.0, 6000.0), static=True)
    molar_ratio: tuple[float, float, float] = eqx.field(default=(1.0, 1.0, 1.0), static=True)

    species: ClassVar[tuple[str, ...]] = ("glucose", "glutamine", "lactate", "ammonia", "functional_titer",
                                          "capsid_titer")
    species_scales: ClassVar[Mapping[str, float]] = {**_HEK293Host.species_scales, "functional_titer": 1e6,
                                                     "capsid_titer": 1e9}
    solver: ClassVar[str] = "tsit5"

    @property
    def internal(self) -> tuple[InternalState, ...]:  # type: ignore[override]
        return _delivery_states(_LV_PLASMIDS)

    @property
    def parameters(self) -> tuple[Parameter, ...]:  # type: ignore[override]
        toxicity = (_LV_TOXICITY,) if self.growth == "monod" else ()
        return DELIVERY_PARAMETERS + LV_PARAMETERS + toxicity + HOST_PARAMETERS[self.growth]

    def default_initial_state(self) -> dict[str, float]:
        state = super().default_initial_state()
        state.update({"functional_titer": 0.0, "capsid_titer": 0.0})
        return state

    def transfect(self, y, dose, params):
        """As `HEK293TripleTransfection.transfect`, for the transfer, packaging and envelope plasmids."""
        return self._add_plasmids(y, dose, params, tuple(k for k, _ in _LV_PLASMIDS))

    def rates(self, t, state, inputs: Inputs, params) -> Rates:
        p, s = params, state
        mu, death, specific, volumetric = self._host(t, s, inputs, p)
        d = _delivery_rates(("tr", "pk", "env"), s, s["vcd"], p)
        sat = [s[f"p_{k}_nuc"] / (p["K_plasmid"] + s[f"p_{k}_nuc"]) for k, _ in _LV_PLASMIDS]
        q_phys = p["k_lv"] * sat[0] * sat[1] * sat[2]  # particles per 1e6 cells per h
        if self.growth == "monod":
            death = death + p["k_tox"] * sat[2]
        specific = specific + [p["phi_func"] * q_phys, q_phys]
        volumetric = volumetric + [-p["k_dec"] * s["functional_titer"], -p["k_dec_phys"] * s["capsid_titer"]]
        internal = jnp.stack([jnp.asarray(d[x.name], dtype=jnp.float64) for x in self.internal])
        return Rates(growth=mu, death=death, specific=jnp.stack(specific), volumetric=jnp.stack(volumetric),
                     internal=internal)
