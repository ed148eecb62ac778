"""Tests of the HEK293 kinetics: rAAV triple transfection (Nguyen et al. 2021) with host metabolism, and lentivirus.

* An independent numpy/scipy implementation of the full equations (no quasi-steady state, written from
  ../shared/reference/models.md §4.1–4.2 and the module docstring's documented changes) is solved with Radau and
  compared with the library at rtol 1e-8 / atol 1e-10 on the same scaled states, over a 0–72 h protocol with the 6 h
  medium exchange, in both growth modes.
* The empirical-growth mode reproduces the published model at 46 h post transfection (models.md §4.1 d).
* The model is compared with the measured titres of Nguyen's experiment E3 (../shared/datasets), log10 errors printed.
* The lentivirus variant: closed-form decay, exchange, non-negativity.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from cgt_twin.data.protocol import Event, Medium, Protocol
from cgt_twin.models.hek293 import HEK293Lentivirus, HEK293TripleTransfection
from cgt_twin.models.parameters import defaults
from cgt_twin.simulate import SolverSettings, simulate

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NGUYEN = DATASETS / "aav_triple_transfection_nguyen2021"
E3_FILES = ("E3_mL_cap.mat", "E3_gc_B_mL.mat", "E3_totalDNA_mL.mat")

# Tight tolerances for the comparisons. Tsit5 is fast at Nguyen's dose (the default, Kvaerno5, is tested below).
TIGHT = SolverSettings(solver="tsit5", rtol=1e-8, atol=1e-10, max_steps=20_000)
FRESH = {"glucose": 25.0, "glutamine": 4.0}
TIMES = np.array([0.0, 3.0, 6.0, 10.0, 24.0, 34.0, 46.0, 55.0, 60.0, 72.0])


def aav_protocol(dose: float = math.nan) -> Protocol:
    """Nguyen's set-up: transfection at 0 h (1e6 cells/mL), full medium exchange at 6 h, harvest at 72 h."""
    events = (Event(0.0, "transfection", dose, "ug/mL"), Event(6.0, "exchange", 1.0, "1", medium="fresh"),
              Event(72.0, "harvest"))
    return Protocol(1.0, events, {"fresh": Medium("fresh", FRESH)}, initial_medium="fresh")


def assert_nonnegative(trajectory, kinetics) -> None:
    """Every state of every batch, time and phase is >= 0 (up to a tiny solver round-off relative to its scale).
    Values are NaN only after a batch's harvest (by design); every batch solved."""
    assert set(trajectory["status"].values) == {"ok"}
    for name, scale in zip(kinetics.layout.names, kinetics.state_scales(), strict=True):
        values = trajectory[name].values
        assert np.isfinite(values[:, 0]).all(), name
        values = values[np.isfinite(values)]
        assert values.min() >= -1e-9 * scale, f"{name} goes negative: {values.min():g}"


# --- independent reference: the full equations in numpy -----------------------------------------------------------
# State order of the reference (its own; mapped to the library by name).
REF_NAMES = (["vcd", "dead_cells", "glucose", "glutamine", "lactate", "ammonia", "vcd_at_transfection"]
             + [f"p_{j}_{c}" for j in ("rc", "v", "h") for c in ("ext", "endo", "cyt", "nuc")]
             + ["rep", "vp", "vdna", "empty_nuc", "full_nuc", "empty_cyt", "full_cyt", "rep_rc", "rep_capsid",
                "released_empty", "released_full"])
REF = {n: i for i, n in enumerate(REF_NAMES)}
# kAll of model_params.mat, in its order (models.md §4.1 c).
KALL = (1.18883651e-03, 0.6, 4.3e-3, 1.95e-2, 6.48911567e4, 6.48911567e4, 2.45e-2, 2.773e-1, 3.09896555e-07,
        3.38290148e-05, 1e5, 5.6978994e-03, 8.17843743e-02, 1e5)


def reference_rhs(t, y, p, monod, t_tx=0.0):
    kup, kesc, knuc, kdp, krep, kvp, kdrep, kdvp, kdna, kbrc, kasm, kbc, kpk, ksec = KALL
    x, glc, gln, lac, amm, x_tx = y[0], y[2], y[3], y[4], y[5], y[6]
    lim_g, lim_q = glc / (p["K_glc"] + glc), gln / (p["K_gln"] + gln)
    if monod:
        after = 1.0 / (1.0 + math.exp(-(t - t_tx - p["tx_lag"]) / p["tx_width"]))
        mu = (p["mu_max"] * lim_g * lim_q * p["KI_lac"] / (p["KI_lac"] + lac) * p["KI_amm"] / (p["KI_amm"] + amm)
              / (1.0 + p["eta_tx"] * after))
        mu_d = p["k_d"] + p["k_d_tx"] * after + p["k_d_starve"] * (1.0 - lim_g * lim_q)
    else:  # Nguyen's VCD(t) = X0 + (a/b)(1 - exp(-b t)) as a specific growth rate, mu0 = a / X0
        e = math.exp(-p["growth_decay"] * (t - t_tx))
        mu = p["growth_mu0"] * e / (1.0 + p["growth_mu0"] / p["growth_decay"] * (1.0 - e))
        mu_d = 0.0
    dy = np.zeros_like(y)
    dy[0] = (mu - mu_d) * x
    dy[1] = mu_d * x
    q_g, q_q = p["q_glc"] * lim_g, p["q_gln"] * lim_q
    dy[2] = -q_g * x
    dy[3] = -q_q * x - p["k_dgln"] * gln
    dy[4] = p["Y_lac_glc"] * q_g * x
    dy[5] = p["Y_amm_gln"] * q_q * x + p["k_dgln"] * gln
    nuc = {}
    for j, o in (("rc", 7), ("v", 11), ("h", 15)):
        ext, endo, cyt, nucleus = y[o:o + 4]
        dy[o] = -kup * ext / x_tx * x  # medium plasmid (1e6 copies/mL), shared among the cells at transfection
        dy[o + 1] = kup * ext / x_tx - (kesc + kdp + mu) * endo
        dy[o + 2] = kesc * endo - (knuc + kdp + mu) * cyt
        dy[o + 3] = knuc * cyt - (kdp + mu) * nucleus
        nuc[j] = nucleus
    rep, vp, vdna, en, fn, ec, fc, _brc, cre = y[19:28]
    r_rep, r_vp = krep * nuc["rc"] * nuc["h"], kvp * nuc["rc"] * nuc["h"]
    r_dna, r_brc = kdna * rep * nuc["v"] * nuc["h"], kbrc * rep * nuc["rc"]
    r_asm, r_bc, r_pk = kasm * vp, kbc * rep * en, kpk * cre * vdna
    dy[10] -= r_brc
    dy[19] = r_rep - r_brc - r_bc + r_pk - (kdrep + mu) * rep
    dy[20] = r_vp - 60 * r_asm - (kdvp + mu) * vp
    dy[21] = r_dna - r_pk - mu * vdna
    dy[22] = r_asm - (ksec + mu) * en - r_bc
    dy[23] = r_pk - (ksec + mu) * fn
    dy[24] = ksec * en - mu * ec
    dy[25] = ksec * fn - mu * fc
    dy[26] = r_brc  # as coded by Nguyen: the two Rep complexes are not diluted by growth
    dy[27] = r_bc - r_pk
    dy[28] = mu_d * x * (en + ec)  # capsids of dying cells
    dy[29] = mu_d * x * (fn + fc)
    return dy


def reference_solution(params, scale, times, monod):
    """Radau on scaled states, 0-6 h, medium exchange (medium species and plasmid reset), 6-72 h."""
    y0 = np.zeros(len(REF_NAMES))
    y0[REF["vcd"]], y0[REF["glucose"]], y0[REF["glutamine"]] = 1.0, FRESH["glucose"], FRESH["glutamine"]
    y0[REF["vcd_at_transfection"]] = 1.0
    for key in ("p_rc_ext", "p_v_ext", "p_h_ext"):
        y0[REF[key]] = 7.6e4  # copies per plasmid per cell at 1e6 cells/mL
    field = lambda t, z: reference_rhs(t, z * scale, params, monod) / scale  # noqa: E731
    first = solve_ivp(field, (0.0, 6.0), y0 / scale, method="Radau", rtol=1e-8, atol=1e-10, dense_output=True)
    y6 = first.y[:, -1] * scale
    for key in ("p_rc_ext", "p_v_ext", "p_h_ext", "released_empty", "released_full", "lactate", "ammonia"):
        y6[REF[key]] = 0.0
    y6[REF["glucose"]], y6[REF["glutamine"]] = FRESH["glucose"], FRESH["glutamine"]
    second = solve_ivp(field, (6.0, 72.0), y6 / scale, method="Radau", rtol=1e-8, atol=1e-10, dense_output=True)
    assert first.success and second.success
    pre = np.stack([(first.sol(t) if t <= 6.0 else second.sol(t)) * scale for t in times])
    post = np.stack([(first.sol(t) if t < 6.0 else second.sol(t)) * scale for t in times])
    post[times == 6.0] = y6
    pre[times == 0.0, REF["p_rc_ext"]:REF["p_h_nuc"] + 1] = 0.0  # before the transfection at 0 h
    return pre, post


# --- fixtures: one compilation each ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def empirical():
    """Empirical growth (QSSA; Tsit5 at tight tolerances), one solve: Nguyen's set-up, a 1 ug/mL dose, a mock (dose 0), and both
    doses at twice the cell density."""
    model = HEK293TripleTransfection()
    protocols = {"nguyen": aav_protocol(), "dose_1ug": aav_protocol(1.0), "mock": aav_protocol(0.0),
                 "dense": aav_protocol(), "dense_1ug": aav_protocol(1.0)}
    dense = {"vcd": 2.0}
    return model, simulate(model, protocols, TIMES, initial_states={"dense": dense, "dense_1ug": dense},
                           settings=TIGHT)


@pytest.fixture(scope="module")
def monod():
    model = HEK293TripleTransfection(growth="monod")
    return model, simulate(model, aav_protocol(), TIMES, settings=TIGHT)


def _check_against_reference(model, trajectory, monod_mode):
    params = {k: float(v) for k, v in defaults(model.parameters).items()}
    scales = dict(zip(model.layout.names, model.state_scales(), strict=True))
    full_scales = dict(zip(HEK293TripleTransfection(qssa=False).layout.names,
                           HEK293TripleTransfection(qssa=False).state_scales(), strict=True))
    scale = np.asarray([full_scales[n] for n in REF_NAMES])
    pre, post = reference_solution(params, scale, TIMES, monod_mode)
    assert trajectory["status"].values[0] == "ok"
    compared = 0
    for phase, ref in (("pre", pre), ("post", post)):
        for name in REF_NAMES:
            if name not in scales:  # the fast species eliminated by the quasi-steady state
                continue
            got = trajectory[name].sel(phase=phase).values[0]
            want = ref[:, REF[name]]
            bound = 1e-5 * (np.abs(want) + scales[name])
            assert np.all(np.abs(got - want) <= bound), (name, phase, got, want)
            compared += 1
    assert compared == 2 * (len(REF_NAMES) - 3)
    # The volumetric titres too (they include the eliminated fast species). The quasi-steady state lags the full
    # model by ~1/k_sec = 1e-5 h, a relative error of ~2e-5 while production ramps up (3 h), less later.
    x = post[:, REF["vcd"]] * 1e6
    capsids = (post[:, REF["empty_nuc"]] + post[:, REF["full_nuc"]] + post[:, REF["empty_cyt"]]
               + post[:, REF["full_cyt"]]) * x + (post[:, REF["released_empty"]] + post[:, REF["released_full"]]) * 1e6
    full = (post[:, REF["full_nuc"]] + post[:, REF["full_cyt"]]) * x + post[:, REF["released_full"]] * 1e6
    np.testing.assert_allclose(trajectory["capsid_titer"].sel(phase="post").values[0], capsids, rtol=5e-5, atol=1e3)
    np.testing.assert_allclose(trajectory["vg_titer"].sel(phase="post").values[0], full, rtol=5e-5, atol=1e2)


def test_empirical_mode_agrees_with_independent_scipy_solution(empirical):
    model, trajectory = empirical
    _check_against_reference(model, trajectory.sel(batch=["nguyen"]), monod_mode=False)


def test_monod_mode_agrees_with_independent_scipy_solution(monod):
    model, trajectory = monod
    _check_against_reference(model, trajectory, monod_mode=True)
    assert_nonnegative(trajectory, model)
    # Monod mode has death: viability falls after transfection and the capsids of dead cells are kept.
    viability = trajectory["viability"].sel(phase="post").values[0]
    assert viability[-1] < viability[3] < 1.0
    assert trajectory["released_empty"].sel(phase="post").values[0, -1] > 0


def test_empirical_mode_reproduces_published_model_at_46h(empirical):
    """models.md §4.1 d (sanity simulation of Nguyen's code at 46 hpt): VCD 2.77e6/mL, total capsids 5.1e10/mL,
    full capsids 1.6e9/mL, total viral DNA ("vector genomes" in the issue; pVector in the cell + replicated vDNA +
    packaged genomes) 4.1e9/mL, full/total 3.1 %."""
    _, trajectory = empirical
    at46 = trajectory.sel(batch="nguyen", time=46.0, phase="post")
    published = {"vcd": 2.77, "capsid_titer": 5.1e10, "vg_titer": 1.6e9, "vector_dna": 4.1e9,
                 "full_capsid_fraction": 0.031}
    for name, value in published.items():
        got = float(at46[name])
        print(f"46 h {name}: model {got:.4g}, published {value:.4g} ({got / value - 1:+.1%})")
        assert got == pytest.approx(value, rel=0.10), name
    assert_nonnegative(trajectory, HEK293TripleTransfection())


def test_medium_exchange_removes_extracellular_plasmid_and_resets_medium(empirical):
    _, trajectory = empirical
    at6 = trajectory.sel(batch="nguyen", time=6.0)
    for key in ("p_rc_ext", "p_v_ext", "p_h_ext"):
        assert float(at6[key].sel(phase="pre")) > 7e4  # only ~0.7 % taken up by 6 h
        assert float(at6[key].sel(phase="post")) == 0.0
        # intracellular plasmid is untouched by the exchange
        inside = key.replace("ext", "cyt")
        assert float(at6[inside].sel(phase="post")) == float(at6[inside].sel(phase="pre")) > 0
    assert float(at6["glucose"].sel(phase="post")) == FRESH["glucose"]
    assert float(at6["lactate"].sel(phase="post")) == 0.0


def test_transfection_dose_conversion(empirical):
    model, trajectory = empirical
    t0 = trajectory.sel(time=0.0, phase="post")
    # NaN dose: Nguyen's 7.6e4 copies per plasmid per cell at 1e6 cells/mL
    assert float(t0["p_rc_ext"].sel(batch="nguyen")) == pytest.approx(7.6e4, rel=1e-12)
    # 1 ug/mL, equimolar: copies per plasmid = 1e-6 g * N_A / (650 g/mol/bp * sum of sizes); in 1e6 copies/mL
    expected = 1e-6 * 6.02214076e23 / (650.0 * sum(model.plasmid_sizes_bp)) / 1e6
    for key in ("p_rc_ext", "p_v_ext", "p_h_ext"):
        assert float(t0[key].sel(batch="dose_1ug")) == pytest.approx(expected, rel=1e-12)
        assert float(t0[key].sel(batch="mock")) == 0.0
    assert expected == pytest.approx(3.9e4, rel=0.05)  # ~2 ug per 1e6 cells is Nguyen's 7.6e4 copies/cell
    # The mock batch makes nothing; the smaller dose makes fewer capsids.
    final = trajectory.sel(time=72.0, phase="post")
    assert float(final["capsid_titer"].sel(batch="mock")) == 0.0
    assert 0 < float(final["capsid_titer"].sel(batch="dose_1ug")) < float(final["capsid_titer"].sel(batch="nguyen"))


def test_dose_is_shared_among_the_cells_present_at_transfection(empirical):
    """A dose per cell (NaN: 7.6e4 copies/cell) gives the same per-cell course at twice the density, so twice the
    titre (empirical growth does not depend on density); a fixed dose per mL gives half the plasmid per cell."""
    _, trajectory = empirical
    post = trajectory.sel(phase="post")
    for name in ("p_rc_nuc", "rep", "vdna", "empty_cyt", "full_cyt"):
        np.testing.assert_allclose(post[name].sel(batch="dense"), post[name].sel(batch="nguyen"), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(post["capsid_titer"].sel(batch="dense"), 2 * post["capsid_titer"].sel(batch="nguyen"),
                               rtol=1e-6)
    at6 = trajectory.sel(time=6.0, phase="pre")
    ratio = float(at6["p_v_cyt"].sel(batch="dense_1ug")) / float(at6["p_v_cyt"].sel(batch="dose_1ug"))
    assert ratio == pytest.approx(0.5, rel=1e-3)
    assert float(post["vcd_at_transfection"].sel(batch="dense", time=72.0)) == 2.0


def _load_e3():
    from scipy.io import loadmat

    cap = loadmat(NGUYEN / "E3_mL_cap.mat")["dataCap_mL"]
    full = loadmat(NGUYEN / "E3_gc_B_mL.mat")["dataGC_mL"]
    dna = loadmat(NGUYEN / "E3_totalDNA_mL.mat")["dataTotalDNA_mL"]
    out = {"capsid_titer": {}, "vg_titer": {}, "vector_dna": {}}
    for t, v in cap:
        out["capsid_titer"].setdefault(float(t), []).append(float(v))
    for name, table in (("vg_titer", full), ("vector_dna", dna)):
        for row in table:
            out[name][float(row[0])] = [float(v) for v in row[1:]]
    return out


@pytest.mark.realdata
def test_fitted_constants_match_model_params_mat():
    if not (NGUYEN / "model_params.mat").exists():
        pytest.skip(f"Nguyen et al. 2021 data not available at {NGUYEN}")
    from scipy.io import loadmat

    k_all = loadmat(NGUYEN / "model_params.mat")["kAll"].ravel()
    names = ("k_up", "k_esc", "k_nuc", "k_dp", "k_rep", "k_vp", "k_drep", "k_dvp", "k_dna", "k_brc", "k_asm", "k_bc",
             "k_pk", "k_sec")
    values = {p.name: p.default for p in HEK293TripleTransfection().parameters}
    np.testing.assert_allclose([values[n] for n in names], k_all, rtol=1e-8)


@pytest.mark.realdata
def test_titres_against_measured_e3_data(empirical):
    """Log10 error (model − mean of replicates) at each measured time. The paper's own fit (the same model and
    constants) is within ±0.25 decades from 24 h to 55 h; its capsids are 1.2 decades too high at 10 h and it
    excluded the 72 h capsid data from the fit (models.md §4.1; ``sim_full_params_mL.m`` uses ``dataCap_mL(1:end-2)``).
    """
    if not all((NGUYEN / f).exists() for f in E3_FILES):
        pytest.skip(f"Nguyen et al. 2021 E3 data not available at {NGUYEN}")
    data = _load_e3()
    assert {t for series in data.values() for t in series} <= set(TIMES)
    trajectory = empirical[1]
    print("\nvariable        time_h   model      data(mean)  log10 error")
    for name, series in data.items():
        for t, values in sorted(series.items()):
            predicted = float(trajectory[name].sel(batch="nguyen", time=t, phase="post"))
            measured = float(np.mean(values))
            error = math.log10(predicted / measured)
            print(f"{name:14s} {t:6.0f}   {predicted:.3e}  {measured:.3e}   {error:+.2f}")
            if name == "capsid_titer" and t == 10.0:
                assert 0.5 < error < 2.0  # the published model's known early overshoot
            elif name == "capsid_titer" and t == 72.0:
                assert abs(error) < 0.5  # outside the paper's fit window
            else:
                assert abs(error) < 0.3, (name, t, error)


def test_default_solver_is_accurate_and_robust_to_the_dose(empirical):
    """Default settings (QSSA, Kvaerno5, rtol 1e-6): Nguyen's set-up agrees with the tight solution, and four times
    the dose (stiffer: vDNA grows ~100x) costs about as many steps (Tsit5 would need ~80x more)."""
    ug_per_set = sum(HEK293TripleTransfection().plasmid_sizes_bp) * 650.0 / 6.02214076e23 * 1e6  # one copy of each
    heavy = 4 * 7.6e4 * 1e6 * ug_per_set  # ug/mL: 4x Nguyen's 7.6e4 copies per plasmid per cell at 1e6 cells/mL
    trajectory = simulate(HEK293TripleTransfection(), {"nguyen": aav_protocol(), "dose_x4": aav_protocol(heavy)},
                          TIMES)
    assert trajectory["status"].values.tolist() == ["ok", "ok"]
    assert_nonnegative(trajectory, HEK293TripleTransfection())
    tight = empirical[1].sel(batch="nguyen")
    for name in ("capsid_titer", "vg_titer", "vector_dna", "rep", "vdna", "glucose"):
        a, b = trajectory[name].sel(batch="nguyen").values, tight[name].values
        assert np.all(np.abs(a - b) <= 1e-4 * (np.abs(b) + 1e-3 * np.abs(b).max())), name
    x4 = trajectory.sel(batch="dose_x4", time=6.0, phase="pre")
    assert float(x4["p_rc_ext"]) == pytest.approx(4 * float(tight["p_rc_ext"].sel(time=6.0, phase="pre")), rel=1e-6)
    steps = trajectory["num_steps"].values
    assert steps[1] < 2 * steps[0], steps


@pytest.mark.slow
def test_full_model_with_kvaerno5_agrees_with_quasi_steady_state():
    """The full 21-species model (k_asm = k_sec = 1e5 1/h, implicit solver) against the QSSA default; and the
    complex_dilution option moves full capsids at 46 h by a few per cent only."""
    protocol = aav_protocol()
    full = simulate(HEK293TripleTransfection(qssa=False), protocol, TIMES)
    reduced = simulate(HEK293TripleTransfection(), protocol, TIMES)
    assert full["status"].values[0] == "ok"
    assert_nonnegative(full, HEK293TripleTransfection(qssa=False))
    for name in ("capsid_titer", "vg_titer", "vector_dna", "vcd", "rep", "vdna"):  # default tolerances (1e-6)
        a, b = full[name].values, reduced[name].values
        assert np.all(np.abs(a - b) <= 1e-4 * (np.abs(b) + 1e-3 * np.abs(b).max())), name
    diluted = simulate(HEK293TripleTransfection(complex_dilution=True), protocol, TIMES)
    ratio = (diluted["vg_titer"].sel(time=46.0, phase="post").item()
             / reduced["vg_titer"].sel(time=46.0, phase="post").item())
    assert 0.9 < ratio < 1.0


def test_options_are_checked_and_choose_the_solver():
    with pytest.raises(ValueError, match="growth must be one of"):
        HEK293TripleTransfection(growth="logistic")
    assert HEK293TripleTransfection().solver == HEK293TripleTransfection(qssa=False).solver == "kvaerno5"
    assert HEK293Lentivirus().solver == "tsit5"
    names = {p.name for p in HEK293TripleTransfection(growth="monod").parameters}
    assert {"mu_max", "k_d_tx", "q_glc"} <= names and "growth_mu0" not in names
    assert len(HEK293TripleTransfection(qssa=False).internal) == len(HEK293TripleTransfection().internal) + 3
    for p in HEK293TripleTransfection(growth="monod").parameters + HEK293Lentivirus().parameters:
        assert p.unit and p.source and p.prior_sigma > 0 and p.lower <= p.default <= p.upper


# --- lentivirus ---------------------------------------------------------------------------------------------------
def test_lentivirus_decay_is_exponential_and_production_is_non_negative():
    model = HEK293Lentivirus()
    params = {k: float(v) for k, v in defaults(model.parameters).items()}
    medium = {"fresh": Medium("fresh", FRESH)}
    # Production stopped (no plasmid): both titres decay exponentially; an exchange of half the medium halves them.
    no_production = Protocol(1.0, (Event(24.0, "exchange", 0.5, "1", medium="fresh"), Event(48.0, "harvest")),
                             medium, initial_medium="fresh")
    producing = Protocol(1.0, (Event(0.0, "transfection", 1.0, "ug/mL"),
                               Event(6.0, "exchange", 1.0, "1", medium="fresh"), Event(96.0, "harvest")),
                         medium, initial_medium="fresh")
    times = np.array([0.0, 6.0, 12.0, 24.0, 36.0, 48.0, 72.0, 96.0])
    start = {"functional_titer": 1e7, "capsid_titer": 3e9}
    trajectory = simulate(model, {"decay": no_production, "producing": producing}, times,
                          initial_states={"decay": start}, settings=TIGHT)
    assert trajectory["status"].values.tolist() == ["ok", "ok"]
    assert_nonnegative(trajectory, model)
    decay = trajectory.sel(batch="decay", time=[0.0, 6.0, 12.0, 24.0, 36.0, 48.0])
    t = decay["time"].values
    halved = np.where(t >= 24.0, 0.5, 1.0)  # post values: the exchange at 24 h is applied
    for name, k in (("functional_titer", params["k_dec"]), ("capsid_titer", params["k_dec_phys"])):
        expected = start[name] * np.exp(-k * t) * halved
        np.testing.assert_allclose(decay[name].sel(phase="post").values, expected, rtol=1e-7)
        assert float(decay[name].sel(time=24.0, phase="post")) == pytest.approx(
            0.5 * float(decay[name].sel(time=24.0, phase="pre")), rel=1e-12)
    # Production: titres rise after transfection; functional < physical / P:I ratio bounded by the functional fraction.
    made = trajectory.sel(batch="producing", phase="post")
    functional, physical = made["functional_titer"].values, made["capsid_titer"].values
    assert functional[0] == physical[0] == 0.0
    assert physical[1] == 0.0  # the exchange at 6 h removed what was made before it
    assert np.all(np.diff(physical[1:6]) > 0) and functional.max() > 1e5
    assert np.all(functional[1:] <= params["phi_func"] * physical[1:] * (1 + 1e-9))
