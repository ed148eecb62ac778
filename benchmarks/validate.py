"""Validation of the hybrid twin (issue 4): out-of-sample prediction of whole batches, mechanistic vs hybrid.

Writes ``docs/validation.md`` and ``benchmarks/validation.json``. Sections:

1. **Synthetic, known truth.** A CHO "plant" with lactate consumption once glucose runs low (an effect the fitted
   `CHOFedBatch` lacks) makes 4 training batches (feed 2–4 % of the volume per day) and 2 test batches fed outside
   that range (1 % and 6 %). Mechanistic and hybrid twins are calibrated on the training batches and predict the test
   batches open loop. Repeated with the effect switched off (the plant *is* the model's structure): the hybrid must
   not do worse than the mechanistic model by more than 5 %.
2. **UMN CHO fed-batch, CL1 and CL2** (``../shared/datasets/umn_cho_fedbatch``): within each cell line, calibrate on
   two runs and predict the third (all rotations). CL2's "Feed 1" composition is not recorded: it is inferred from
   the after-feed measurements and flagged; the sheet's CL2 "Feed 2" glucose (400 mM) contradicts the after-feed
   values, which imply 2500 mM — the inferred value is used and flagged. CL3 (feeds not recorded) is left out.
3. **HEK293 rAAV8 host metabolism** (``../shared/datasets/hek293_aav8_zehetner``): leave one condition (strain ×
   transfection) out of the four main cultures and predict it; the network sees the strain and whether the culture
   was transfected (batch covariates). Before the folds, the section measures whether Tsit5 reproduces the Kvaerno5
   solution on these protocols (it is used only if it does).

Fairness: both twins get the same mechanistic fit (same model, settings and starts); the hybrid adds the network on
top, its size and weight decay chosen by an inner leave-one-batch-out cross-validation on the training batches only
(size zero — no residual — is one of the candidates: a network that does not predict unseen batches better is not
used).

Results are checkpointed per fold in the JSON file: a rerun continues where a killed run stopped (``--fresh`` to
start over). ``--quick`` runs a tiny version (used by the test suite). Run from the repository root:
``python benchmarks/validate.py [--quick] [--sections synthetic,umn,hek|none] [--fresh | --redo]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("synthetic", "umn", "scored", "posterior", "hek")
UMN_VARIABLES = ("vcd", "glucose", "lactate", "glutamine", "ammonia", "titer")
TARGET_VARIABLES = ("vcd", "glucose", "lactate", "titer")


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work each calibration gets (the same for the mechanistic and the hybrid twin)."""

    n_starts: int = 2
    lm_steps: int = 100
    rounds: int = 3
    training_steps: int = 200
    candidates: tuple[tuple[str, tuple[int, ...], float], ...] = (("small", (8,), 1e-2), ("medium", (16, 16), 1e-4))


FULL = Budget()
# HEK293 solves are stiff (Kvaerno5, the rAAV sub-model included): a smaller budget and one network (no inner
# selection), sized so that the four folds finish in about 40 minutes on the 2-core machine; said in the page
# (measured on fold HP_TR with the compilation cache warm: ~6 s a Levenberg–Marquardt or training step through
# Kvaerno5 at a load of 2, twice that when the machine is busier, plus ~100 s of compilation and scoring a fold)
HEK = Budget(n_starts=1, lm_steps=15, rounds=2, training_steps=40, candidates=(("small", (8,), 1e-2),))
HEK_VARIABLES = ("vcd", "glucose", "lactate", "ammonia")
# batch covariates of the Zehetner campaign that differ between the four main conditions (importer: strain HP/LP,
# transfected True/False; "condition" TR/MO repeats "transfected"), one-hot encoded over the training batches' levels
HEK_COVARIATES = ("strain", "transfected")
# the solver of every HEK293 solve (fit, training, scoring): the kinetics' default Kvaerno5 with the simulation's
# default step budget. The fit's own default (512 steps a segment) is too tight here: the transfected cultures need up
# to ~900 Kvaerno5 steps, most of them in one segment, so no fit start could be simulated (the failed HP_TR fold)
HEK_MAX_STEPS = 4096
QUICK = Budget(n_starts=1, lm_steps=15, rounds=1, training_steps=5, candidates=(("small", (4,), 1e-2),))


NGUYEN_NOTE = (
    "The rAAV production model (`HEK293TripleTransfection`, published parameters) is checked against the published "
    "simulation and the measured E3 titres of `../shared/datasets/aav_triple_transfection_nguyen2021` by "
    "`tests/test_hek293.py` on every CI run (values measured when the model landed): at 46 h capsids 5.09e10 "
    "(−0.2 % from the published value), full capsids 1.57e9 (−1.7 %), total vector DNA 4.12e9 (+0.5 %); against the "
    "measured titres within ±0.3 log10, except capsids at 10 h (+1.2, which the authors' own fit also misses) and at "
    "72 h (excluded from the authors' fit).",
)
# The reading of the posterior results, written by hand from the run it names; shown only while the R-hat and the
# divergences it was written for are those on the page (a rerun that changes them drops it and says so)
POSTERIOR_READING = {
    "check": {"r_hat_max": "1.01", "divergences": 18},
    "text": (
        "Reading of the runs of 2026-11-30, session 15 (each of the two chains on its own core). Session 14's run "
        "with the default prior on the between-batch spread, τ_batch ~ HalfNormal(0.3), and target acceptance 0.8 "
        "had split R-hat 1.04, bulk ESS 79, 228 divergences and 29 % of the iterations at tree depth 6; its "
        "divergences sat where τ_batch was large (median 0.13 at the divergent iterations, 0.065 at the others), "
        "not in the funnel's neck.",
        "An informative prior, τ_batch ~ HalfNormal(0.1) (95 % of its mass below a 20 % spread of μ_max between "
        "batches of one line), everything else the same: split R-hat 1.016, bulk ESS 167, tail ESS 94, 59 "
        "divergences, 0.6 % at tree depth 6, 763 s (the do-mpc benchmark on the other core). Its τ_batch posterior: "
        "median 0.036, 90 % interval 0.003–0.13; the divergent iterations still at the larger values (median 0.071 "
        "against 0.034).",
        "The same prior with target acceptance 0.9 (this page's run, 750 s alone on the machine; 920 s the first time, "
        "beside another job): split R-hat 1.015, bulk ESS 204, tail ESS "
        "274, 18 divergences, 1.9 % at tree depth 6. With 0.95: R-hat 1.023, bulk ESS 179, 15 divergences, 62 % "
        "at tree depth 6, 1 315 s; so the page keeps 0.9.",
        "The held-out band: 70 of run 13's 78 measurements inside (90 %), as before for NUTS; Laplace's band, 75 "
        "of 78 with the wider prior, now also holds 70 (lactate 8 of 13 in both).",
        "Still short of the thresholds: R-hat above 1.01 and 18 divergences, so the sampler's warnings stand. The "
        "informative prior is a modelling choice the page states; with more runs per line the data, not the prior, "
        "would bound the batch spread.",
        "Session 18 check (2026-11-30, library of 0619415, this configuration with the two chains vectorised on one "
        "core, so another random stream, the benchmarks running on the other core; a fresh fit): split R-hat 1.012, "
        "bulk ESS 168, 10 divergences, all in one chain, and 71.6 % of the iterations at tree depth 6, 1 752 s. No "
        "draw had a failed solve (solver failures 0), and the divergent iterations sat at larger τ_batch (median "
        "0.093 against 0.038): the divergences are the geometry of the non-centred effects where the data pin each "
        "run's growth rate, not solver failures. Two runs of the same settings differing this much in tree-depth "
        "saturation (1.9 % and 71.6 %) also say that 2 chains × 400 draws cannot settle R-hat at the 1.01 line. "
        "The held-out band held the same 70 of 78 measurements.",
    ),
}


HEK_READING = {
    "ratios": {"vcd": "1.54", "glucose": "0.954", "lactate": "0.912", "ammonia": "1"},
    "text": (
        "Reading of the run of 2026-11-28 (budget above, 29 min for the solver check and the four folds). The "
        "mechanistic baseline is fitted in every fold: its status 'maximum steps reached' is the 1e-6 convergence "
        "test, not a poor fit — continuing fold HP_MO's fit for 2 × 30 more Levenberg–Marquardt steps (then converged) "
        "moved no parameter by more than 2 % and the held-out NRMSE by at most 0.002 (VCD 0.0759 → 0.0759, glucose "
        "0.0575 → 0.0573, lactate 0.327 → 0.325, ammonia 0.133 → 0.133).",
        "Where the hybrid wins: lactate (0.78–0.95 in three folds) and glucose (0.84–0.92 in the LP folds). As "
        "glucose runs out (45–72 h) every culture's lactate falls from its peak (16–23 mM) to 7–14 mM; the "
        "mechanistic model only produces lactate, in proportion to glucose uptake, so it cannot follow. The "
        "multiplicative lactate correction keeps the rate's sign — it can slow production, not turn it into "
        "consumption — and gains by slowing it. HP_TR, the one culture that holds lactate near 22 mM until 48 h, is "
        "predicted slightly worse (1.05).",
        "Where it loses: VCD, by 1.8–2.0× in three folds (HP_TR about even), and so on average (1.54). The held-out "
        "condition is a new combination of strain and transfection, and with three training cultures the one-hot "
        "covariates single out each culture, so the growth correction learnt per culture does not carry over to the "
        "fourth. Checked on fold HP_MO with the same mechanistic fit and budget: the same network without covariate "
        "inputs predicts VCD at NRMSE 0.094 (ratio 1.23 instead of 1.95) and glucose at 0.0546 (0.95 instead of "
        "1.09), lactate unchanged (0.295, 0.90). Ammonia is not a network target and stays even.",
        "The network's training is budget-limited: 40 steps, its loss still falling at the end (fold HP_MO, without "
        "covariates: 615 → 587, about 0.6 a step). With four cultures in a 2 × 2 design, leave-one-condition-out asks "
        "the network to extrapolate to an unseen combination from three points; on these data the covariates do not "
        "help it do so. Not tried (time): a network without covariates in every fold, more training steps, an "
        "additive lactate correction that can change the rate's sign.",
    ),
}

# The reading of the UMN results with and without viability in the loss, written by hand from the run it names; shown
# only while the averaged ratios it was written for are those on the page
UMN_READING = {
    "ratios": {"scored_CL1": {"vcd": "0.974", "glucose": "1.06", "lactate": "0.682", "titer": "0.929"},
               "umn_CL1": {"vcd": "0.92", "glucose": "0.958", "lactate": "0.601", "titer": "0.964"}},
    "text": (
        "Reading of the run of 2026-11-28. The hypothesis was that viability (a derived variable with a tiny "
        "estimated noise, σ_abs ≈ 0.001) dominated the loss and kept the networks from learning the scored "
        "variables. Refuted: without viability and dead cells in either fit, CL1's ratios do not improve (VCD 0.92 → "
        "0.97, glucose 0.96 → 1.06, IgG 0.96 → 0.93, lactate 0.60 → 0.68), and in CL2 the inner cross-validation "
        "again finds no network worth choosing.",
        "Why the 0.8 target is missed, as far as these runs show. (1) Two training runs per cell line: the inner "
        "selection fits on one run and predicts the other, and on CL2 every candidate network scores within 1.2 % of "
        "the mechanistic twin in both variants (fold 21: 0.331/0.331/0.331 with viability in the loss, "
        "0.329/0.333/0.333 without), so the simplest-first rule keeps the mechanistic twin and the hybrid equals it "
        "(ratio exactly 1). (2) Where a network is chosen (CL1, every fold), it gains on lactate (0.60–0.68) but "
        "hardly on VCD, glucose and IgG. The runs differ from one another more than the model explains — the "
        "mechanistic twin's final IgG error ranges from −27 % to +11 % over the three rotations — and a likely "
        "reading (not tested further) is that these run-to-run differences are not a function of what the network "
        "sees (states, the time since the last feed), so two training runs give it no relation that carries to the "
        "third. (3) CL2's large glutamine and ammonia errors (NRMSE 0.9 and 0.6, the same for both twins) presumably "
        "come from its feed, whose composition is inferred from the after-feed data (glutamine 0 mM in Feed1), "
        "rather than from the kinetics.",
    ),
}

NOTES = (
    "UMN CL3 is left out: its feeds were not recorded, and estimating them as parameters is not implemented.",
    "NRMSE against noisy measurements includes the measurement noise; the synthetic study also scores against the "
    "noise-free plant, which is what the targets there refer to.",
    "Unless said otherwise, every fit uses all measured variables the model predicts, viability and dead cells "
    "included.",
    "HEK293: the network sees the strain and whether the culture was transfected as batch covariates, and the time "
    "since transfection as a feature.",
)


# -- the two recipes -----------------------------------------------------------------------------------------------

def _recipes(budget: Budget, residual, parameters=None, initial_states=("vcd",), solver=None, fit_variables=None):
    from cgt_twin.fit import FitConfig, TrainConfig
    from cgt_twin.fit.calibrate import CalibrationConfig

    solver_settings = {} if solver is None else {"solver": solver}  # the same solver for both twins' fits
    mechanistic = FitConfig(parameters=parameters, initial_states=initial_states, n_starts=budget.n_starts,
                            max_steps=budget.lm_steps, rounds=budget.rounds, variables=fit_variables,
                            **solver_settings)
    base = CalibrationConfig(mechanistic=mechanistic)
    networks = {name: dataclasses.replace(base, residual=dataclasses.replace(residual, hidden=hidden),
                                          training=TrainConfig(steps=budget.training_steps,
                                                               weight_decay=weight_decay, progress=False,
                                                               variables=fit_variables, **solver_settings))
                for name, hidden, weight_decay in budget.candidates}
    if len(networks) == 1:
        return base, networks
    # simplest first: a network of size zero (the mechanistic twin) is chosen unless a network predicts the inner
    # held-out batches more than 5 % better
    return base, {"none": base, **networks}


def compare_on_fold(twin, campaign, fold, budget: Budget, residual, *, parameters=None,
                    initial_states=("vcd",), variables=None, truth=None, solver=None,
                    fit_variables=None) -> dict:
    """Mechanistic and hybrid calibrated on `fold.train`, scored on `fold.test` (open loop) against the
    measurements, and against `truth` (the noise-free plant, a campaign with the same batches) when given.
    `solver`: `SolverSettings` of both fits (default: each fit's own). `fit_variables`: the measured variables both
    fits' losses use (default: every measured variable the model predicts). A held-out batch whose covariate level the
    network never saw gets the population input; the warning is recorded under ``covariate_warnings``."""
    from cgt_twin.fit import fit_mechanistic, leave_one_batch_out, select_hyperparameters
    from cgt_twin.fit.calibrate import calibrate
    from cgt_twin.fit.crossval import held_out_metrics
    from cgt_twin.models.covariates import UnseenCovariateWarning

    base, candidates = _recipes(budget, residual, parameters, initial_states, solver, fit_variables)
    training = campaign.sel(fold.train)
    start = time.perf_counter()
    mechanistic = fit_mechanistic(twin, training, base.mechanistic)
    mech_seconds = time.perf_counter() - start
    chosen, scores = next(iter(candidates)), {}  # a single candidate: used as it is
    if len(candidates) > 1 and len(fold.train) >= 2:
        selection = select_hyperparameters(twin, training, candidates, leave_one_batch_out(training),
                                           variables=variables)
        chosen, scores = selection.best, selection.scores
    start = time.perf_counter()
    hybrid = calibrate(twin, training, candidates[chosen], mechanistic=mechanistic)
    hybrid_seconds = time.perf_counter() - start
    out = {"fold": fold.name, "train": list(fold.train), "test": list(fold.test), "chosen": chosen,
           "inner_scores": scores, "mechanistic_status": mechanistic.status,
           "mechanistic_stages": list(mechanistic.stages), "not_identifiable": list(mechanistic.not_identifiable),
           "seconds": {"mechanistic": mech_seconds, "hybrid_training": hybrid_seconds}}
    encoding = getattr(hybrid.twin.kinetics, "encoding", None)
    if encoding is not None and encoding.size:
        out["covariate_inputs"] = list(encoding.columns)
    for label, fitted in (("mechanistic", mechanistic.twin), ("hybrid", hybrid.twin)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UnseenCovariateWarning)
            table = held_out_metrics(fitted, campaign, fold.test, variables)
        unseen = sorted({str(w.message) for w in caught if issubclass(w.category, UnseenCovariateWarning)})
        if unseen:
            out.setdefault("covariate_warnings", []).extend(unseen)
        out[label] = {f"{r.batch}|{r.variable}": {"nrmse": r.nrmse, "final_error": r.final_error, "n": int(r.n)}
                      for r in table.itertuples()}
        if truth is not None:
            table = held_out_metrics(fitted, truth, fold.test, variables)
            out[f"{label}_vs_truth"] = {f"{r.batch}|{r.variable}": {"nrmse": r.nrmse, "final_error": r.final_error,
                                                                     "n": int(r.n)} for r in table.itertuples()}
    return out


# -- data -----------------------------------------------------------------------------------------------------------

def synthetic_campaigns(effect: bool, quick: bool, noise_free: bool = False):
    """Training and test batches from a plant whose growth and productivity respond to the temperature shift every
    batch gets on day 5 and which consumes lactate once glucose runs low — effects the fitted `CHOFedBatch()` lacks —
    or, with `effect` off, a plant of the fitted model's own structure. Test feeds lie outside the training range.
    `noise_free`: the plant's true values at the same times (for scoring against the truth)."""
    from cgt_twin.data import Event, Medium, Protocol
    from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
    from cgt_twin.models import CHOFedBatch, Twin

    if effect:
        plant = Twin(CHOFedBatch(lactate_consumption=True, temperature_shift=True),
                     {"mu_max": 0.036, "q_p": 1.2, "theta_mu": 0.25, "theta_qp": 0.08, "q_lac_max": 0.05,
                      "K_glc_shift": 8.0})
    else:
        plant = Twin(CHOFedBatch(), {"mu_max": 0.036, "q_p": 1.2})
    basal = Medium("basal", {"glucose": 35.0, "glutamine": 6.0})
    feed = Medium("feed", {"glucose": 500.0, "glutamine": 50.0})
    fractions = {"TR-020": 0.02, "TR-027": 0.027, "TR-033": 0.033, "TR-040": 0.04, "TE-010": 0.01, "TE-060": 0.06}
    if quick:
        fractions = {"TR-020": 0.02, "TR-040": 0.04, "TE-060": 0.06}
    days = 8 if quick else 13
    protocols = {}
    for name, fraction in fractions.items():
        events = [Event(24.0 * d + 1.0, "bolus", fraction, "L", medium="feed") for d in range(3, days)]
        events.append(Event(120.0, "setpoint", 32.0, "degC", target="temperature"))
        protocols[name] = Protocol(1.0, (*events, Event(24.0 * (days + 1), "harvest")),
                                   {"basal": basal, "feed": feed}, max_volume=2.0, initial_medium="basal")
    variables = ("vcd", "glucose", "lactate", "glutamine", "ammonia", "titer")
    sampling = SamplingPlan(every_h=24.0, variables=variables, sample_volume_l=0.004,
                            loq={} if noise_free else {"glutamine": 0.1, "ammonia": 0.1})
    noise = NoiseModel({v: (0.0, 0.0) for v in variables}) if noise_free else None
    return synthetic_campaign(plant, protocols, sampling=sampling, seed=7, noise=noise,
                              initial_states={b: {"vcd": 0.35} for b in protocols},
                              notes=[f"validation plant: {'temperature response + lactate consumption' if effect else 'CHOFedBatch()'}"])


def umn_campaign():
    """The UMN runs of CL1 and CL2, CL2's feed compositions inferred from after-feed data (flagged)."""
    from cgt_twin.data.feed_inference import infer_feed_compositions
    from cgt_twin.data.importers import import_campaign
    from cgt_twin.demo import UMN_WORKBOOK, find_shared_datasets

    shared = find_shared_datasets()
    if shared is None or not (shared / UMN_WORKBOOK).is_file():
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        campaign = import_campaign("cdppy", shared / UMN_WORKBOOK)
    campaign = campaign.sel([b for b in campaign.batches if campaign.protocols[b].feeds_known])
    campaign, feed2 = infer_feed_compositions(campaign, ["CL2_Feed2"], species=["glucose"], replace_recorded=True)
    campaign, feed1 = infer_feed_compositions(campaign, ["CL2_Feed1"])
    table = [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in row.items()}
             for row in [*feed2.to_dict("records"), *feed1.to_dict("records")]]
    return campaign, table


def hek_campaign():
    from cgt_twin.data.importers import import_campaign
    from cgt_twin.demo import find_shared_datasets

    shared = find_shared_datasets()
    folder = shared / "hek293_aav8_zehetner" if shared else None
    if folder is None or not folder.is_dir():
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        campaign = import_campaign("hek293-zehetner", folder)
    return campaign.sel(["HP_TR", "HP_MO", "LP_TR", "LP_MO"])


# -- sections -------------------------------------------------------------------------------------------------------

def _run_folds(key: str, results: dict, save, twin, campaign, folds, budget, residual, **kwargs) -> list[dict]:
    done = results.setdefault(key, {})
    for fold in folds:
        if fold.name in done:
            print(f"[{key}] {fold.name}: from checkpoint", flush=True)
            continue
        print(f"[{key}] {fold.name}: train {list(fold.train)}, test {list(fold.test)} ...", flush=True)
        start = time.perf_counter()
        done[fold.name] = compare_on_fold(twin, campaign, fold, budget, residual, **kwargs)
        done[fold.name]["seconds"]["fold"] = time.perf_counter() - start
        save()
    return [done[f.name] for f in folds]


def section_synthetic(results, save, budget, quick):
    from cgt_twin.fit import Fold
    from cgt_twin.hybrid import DEFAULT_RESIDUALS
    from cgt_twin.models import CHOFedBatch, Twin

    for effect in (True, False):
        campaign = synthetic_campaigns(effect, quick)
        truth = synthetic_campaigns(effect, quick, noise_free=True)
        train = tuple(b for b in campaign.batches if b.startswith("TR"))
        test = tuple(b for b in campaign.batches if b.startswith("TE"))
        _run_folds(f"synthetic_effect_{'on' if effect else 'off'}", results, save, Twin(CHOFedBatch()), campaign,
                   [Fold("outside-range", train, test)], budget, DEFAULT_RESIDUALS["cho"],
                   parameters=("mu_max", "k_d", "K_glc", "Y_x_glc", "Y_lac_glc", "q_p"),
                   variables=("vcd", "glucose", "lactate", "titer"), truth=truth)


def section_umn(results, save, budget, quick, *, prefix="umn", fit_variables=None):
    """CL1 and CL2, leave one run out within each line. `fit_variables`: the variables both fits use (default: every
    measured variable the model predicts, viability and dead cells included); results go under `prefix`_CL1/_CL2."""
    from cgt_twin.fit import leave_one_batch_out
    from cgt_twin.hybrid import DEFAULT_RESIDUALS
    from cgt_twin.models import CHOFedBatch, Twin

    campaign, inferred = umn_campaign()
    if campaign is None:
        results["umn_skipped"] = "../shared/datasets/umn_cho_fedbatch not found"
        return
    results["umn_inferred_feeds"] = inferred
    lines = {"CL1": ["11", "12", "13"], "CL2": ["21", "22", "23"]}
    for line, batches in lines.items():
        if quick and line == "CL2":
            continue
        folds = leave_one_batch_out(campaign, batches)
        if quick:
            folds = folds[-1:]
        _run_folds(f"{prefix}_{line}", results, save, Twin(CHOFedBatch(lactate_consumption=True)),
                   campaign.sel(batches), folds, budget, DEFAULT_RESIDUALS["cho"],
                   parameters=None,  # every kinetic parameter (the priors hold those the data do not inform)
                   variables=UMN_VARIABLES, fit_variables=fit_variables)


def section_scored(results, save, budget, quick):
    """The UMN rotations again, both twins fitted on the six scored variables only (no viability, no dead cells):
    tests whether viability, whose estimated noise is tiny, dominating the loss is why the networks gain little."""
    section_umn(results, save, budget, quick, prefix="scored", fit_variables=UMN_VARIABLES)


POSTERIOR_HELD_OUT = "13"  # the held-out UMN run of the posterior check (CL1; CL1 and CL2 both among the training runs)
# the two chains on one host device each (XLA runs one vectorised kernel on one core: 1.7x on the all-parameter run of
# benchmarks/README.md); 400 + 400 iterations since session 14 (150 + 150 before: τ_batch's split R-hat 1.29);
# target_accept 0.9 since session 15, with the informative τ_batch prior below (with the wide prior 0.9 mixed worse
# than 0.8: split R-hat 1.08 against 1.04, 71 % of iterations at tree depth 6, though 116 divergences against 228)
POSTERIOR_NUTS = {"chains": 2, "warmup": 400, "draws": 400, "max_tree_depth": 6, "target_accept": 0.9,
                  "chain_method": "parallel" if (os.cpu_count() or 1) >= 2 else "vectorized"}
# the prior scale of the between-batch spread of log μ_max within a cell line (BayesConfig.tau_sigma; default 0.3):
# HalfNormal(0.1) puts 95 % of its mass below 0.2 (a batch-to-batch spread of μ_max under ~20 % within one line). With
# the default 0.3 the sampler diverged where τ_batch was large (median 0.13 at the 228 divergent iterations, 0.065 at
# the others; docs/validation.md), a region five runs cannot rule out but earlier campaigns of a line would
POSTERIOR_TAU_SIGMA = 0.1
POSTERIOR_NOISE_FLOOR = 0.01  # σ_abs ≥ 1 % of each variable's typical magnitude (BayesConfig.noise_floor)
# the between-cell-line spread of log μ_max, fixed (BayesConfig.group_tau): two lines cannot determine it (sampled, its
# chains disagreed: split R-hat 1.42, 78 divergences; docs/validation.md); 0.2 ≈ 20 % between lines, about the
# size that sampled run's posterior gave it (0.26 ± 0.21, prior-dominated)
POSTERIOR_GROUP_TAU = 0.2
POSTERIOR_QUICK_NUTS = {"chains": 1, "warmup": 5, "draws": 5, "max_tree_depth": 3}


def _inside_band(prediction, campaign, batch: str, variables) -> dict:
    """Per variable: (measurements of `batch` before the events at their times that lie inside the predictive
    band, measurements compared)."""
    out = {}
    for variable in variables:
        if variable not in prediction or variable not in campaign.data:
            continue
        measured = campaign.data[variable].sel(batch=batch, phase="pre").mean("replicate")
        band = prediction[variable].sel(batch=batch, phase="pre").sel(time=measured["time"])
        low, high = band.sel(statistic="q05").values, band.sel(statistic="q95").values
        values = measured.values
        ok = np.isfinite(values) & np.isfinite(low) & np.isfinite(high)
        out[variable] = (int(np.sum((values >= low) & (values <= high) & ok)), int(np.sum(ok)))
    return out


def _posterior_cache(quick: bool) -> Path:
    """Where the posterior section keeps its finished steps (the fitted twin, each method's posterior), so that a
    stopped run resumes after the last finished step; ignored by git."""
    return ROOT / "benchmarks" / ".cache" / ("posterior_quick" if quick else "posterior")


def _say(message: str) -> None:
    print(f"[posterior {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def section_posterior(results, save, budget, quick):
    """A posterior of the CHO twin on five UMN runs (CL1 and CL2), the growth rate varying between batches and by
    cell line; its predictive bands for the held-out run, against that run's measurements; NUTS diagnostics; the
    Laplace approximation side by side.

    Each step (fit, NUTS, Laplace) is checkpointed under ``benchmarks/.cache`` when it finishes and reused by a rerun
    (``--fresh`` or ``--redo`` start over); the seconds of each step are those of the run that computed it."""
    import matplotlib

    matplotlib.use("Agg")
    from cgt_twin.bayes import BayesConfig, NutsConfig, plot_predictive_bands, sample
    from cgt_twin.fit import FitConfig, fit_mechanistic
    from cgt_twin.io import load_posterior, load_twin, save_twin
    from cgt_twin.models import CHOFedBatch, Twin
    from cgt_twin.predict import predict

    campaign, _ = umn_campaign()
    if campaign is None:
        results["posterior_skipped"] = "../shared/datasets/umn_cho_fedbatch not found"
        return
    runs = ["11", "12", "13", "21", "22", "23"]
    train = [b for b in runs if b != POSTERIOR_HELD_OUT]
    campaign = campaign.sel(runs)
    training = campaign.sel(train)
    cache = _posterior_cache(quick)
    cache.mkdir(parents=True, exist_ok=True)
    fit_record = cache / "fit.json"
    fitted = json.loads(fit_record.read_text(encoding="utf-8")) if fit_record.is_file() else {}
    if "initial_states" in fitted:  # (a record without them is from before they were kept: fit again)
        twin, standard_errors = load_twin(cache / "fit_twin"), fitted["standard_errors"]
        _say(f"fit reused from {cache} ({fitted['seconds']:.0f} s when computed)")
    else:
        _say("fitting ...")
        start = time.perf_counter()
        fit = fit_mechanistic(Twin(CHOFedBatch(lactate_consumption=True)), training,
                              FitConfig(initial_states=("vcd",), n_starts=budget.n_starts, max_steps=budget.lm_steps,
                                        rounds=budget.rounds))
        fitted = {"status": fit.status, "seconds": time.perf_counter() - start,
                  "standard_errors": dict(fit.standard_errors), "initial_states": fit.initial_states}
        twin, standard_errors = fit.twin, fitted["standard_errors"]
        save_twin(twin, cache / "fit_twin", overwrite=True)
        fit_record.write_text(json.dumps(fitted, indent=1, default=float), encoding="utf-8")
        _say(f"fit {fit.status} in {fitted['seconds']:.0f} s")
    # noise_floor: the fit's σ_abs of lactate (0.019 mM) and VCD sit at the fit's own floor; a proposal whose lactate
    # runs out against 12 mM measured then costs 2e5 in the potential (docs/bayesian.md)
    config = BayesConfig(hierarchical=("mu_max",), group="cell_line", variables=UMN_VARIABLES,
                         noise_floor=POSTERIOR_NOISE_FLOOR, group_tau=POSTERIOR_GROUP_TAU, tau_sigma=POSTERIOR_TAU_SIGMA)
    settings = POSTERIOR_QUICK_NUTS if quick else POSTERIOR_NUTS
    out = {"held_out": POSTERIOR_HELD_OUT, "train": train, "fit_status": fitted["status"],
           "fit_seconds": fitted["seconds"], "nuts_settings": settings, "noise_floor": POSTERIOR_NOISE_FLOOR,
           "group_tau": POSTERIOR_GROUP_TAU, "tau_sigma": POSTERIOR_TAU_SIGMA}
    images = ROOT / "docs" / "images"
    for method in ("nuts", "laplace"):
        record, folder = cache / f"{method}.json", cache / f"{method}_twin"
        if record.is_file():
            entry, posterior = json.loads(record.read_text(encoding="utf-8")), load_posterior(folder)
            _say(f"{method} reused ({entry['seconds']:.0f} s when computed)")
        else:
            _say(f"{method} ...")
            start = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                posterior = sample(twin, training, config, NutsConfig(**settings), method=method,
                                   standard_errors=standard_errors,  # in the faster mode (the default "auto")
                                   initial_states=fitted["initial_states"])  # the fitted ones the values go with
            entry = {"seconds": time.perf_counter() - start, "warnings": sorted({str(w.message)[:200] for w in caught})[:5]}
            save_twin(twin, folder, overwrite=True, posterior=posterior)
            record.write_text(json.dumps(entry, indent=1, default=float), encoding="utf-8")
            _say(f"{method} in {entry['seconds']:.0f} s")
        prediction = predict(twin, campaign, batches=[POSTERIOR_HELD_OUT], posterior=posterior, n_draws=200)
        entry.update({"parameters": list(posterior.parameters), "held": sorted(posterior.meta["held"]),
                      "diagnostics": {k: v for k, v in posterior.diagnostics.items()
                                      if not isinstance(v, (list, dict))},
                      "e_bfmi": posterior.diagnostics.get("e_bfmi", []), "problems": list(posterior.problems),
                      "coverage": _inside_band(prediction, campaign, POSTERIOR_HELD_OUT, UMN_VARIABLES),
                      "treatment": prediction.attrs.get("batch_treatment", ""),
                      "forward_mode": posterior.meta.get("settings", {}).get("forward_mode"),
                      "gradient_ms": posterior.meta.get("settings", {}).get("gradient_ms")})
        if method == "nuts" and not quick:
            figure = plot_predictive_bands(campaign, prediction, variables=("vcd", "glucose", "lactate", "titer"),
                                           batches=[POSTERIOR_HELD_OUT])
            images.mkdir(parents=True, exist_ok=True)
            figure.savefig(images / f"umn_posterior_{POSTERIOR_HELD_OUT}.png", dpi=110, bbox_inches="tight")
            entry["figure"] = f"images/umn_posterior_{POSTERIOR_HELD_OUT}.png"
        out[method] = entry
    results["posterior"] = out
    save()


def hek_solver_check(campaign, candidates: dict, reference: str = "kvaerno5") -> dict:
    """Simulates the campaign's batches (published parameters) with each candidate `SolverSettings`: per batch the
    status and accepted steps, the time of the first call (compilation included) and of a second call, and the
    largest deviation from the `reference` solution per observed variable, relative to that batch's largest value
    of the variable (batches where both solves succeed)."""
    from cgt_twin.models import Twin
    from cgt_twin.models.hek293 import HEK293TripleTransfection
    from cgt_twin.simulate import prepare, simulate

    twin = Twin(HEK293TripleTransfection())
    prepared = prepare(twin, campaign)
    out, trajectories = {}, {}
    for name, settings in candidates.items():
        start = time.perf_counter()
        simulate(twin, prepared, settings=settings)
        first = time.perf_counter() - start
        start = time.perf_counter()
        trajectory = simulate(twin, prepared, settings=settings)
        trajectories[name] = trajectory
        out[name] = {"settings": dataclasses.asdict(settings), "seconds_first_call": first,
                     "seconds": time.perf_counter() - start,
                     "status": {str(b): str(s) for b, s in zip(trajectory.batch.values, trajectory.status.values,
                                                                strict=True)},
                     "steps": {str(b): int(n) for b, n in zip(trajectory.batch.values, trajectory.num_steps.values,
                                                              strict=True)}}
    ref = trajectories[reference]
    for name, trajectory in trajectories.items():
        if name == reference:
            continue
        deviation = {}
        for variable in (*HEK_VARIABLES, "glutamine", "vg_titer", "capsid_titer"):
            for i, batch in enumerate(trajectory.batch.values):
                a, b = ref[variable].values[i], trajectory[variable].values[i]
                ok = np.isfinite(a)
                top = float(np.nanmax(np.abs(a))) if ok.any() else 0.0
                if top == 0.0:
                    continue  # nothing there (titres of a mock culture)
                key = f"{batch}|{variable}"
                deviation[key] = (float(np.max(np.abs(a[ok] - b[ok]))) / top
                                  if np.isfinite(b[ok]).all() and out[name]["status"][str(batch)] == "ok" else None)
        out[name]["relative_deviation"] = deviation
    return out


def _tsit5_reproduces(check: dict, limit: float = 1e-4) -> bool:
    tsit5 = check.get("tsit5", {})
    return bool(tsit5) and all(s == "ok" for s in tsit5["status"].values()) and \
        all(d is not None and d < limit for d in tsit5["relative_deviation"].values())


def section_hek(results, save, budget, quick):
    from cgt_twin.fit import leave_one_batch_out
    from cgt_twin.hybrid import DEFAULT_RESIDUALS
    from cgt_twin.models import Twin
    from cgt_twin.models.hek293 import HEK293TripleTransfection
    from cgt_twin.simulate import SolverSettings

    campaign = hek_campaign()
    if campaign is None:
        results["hek_skipped"] = "../shared/datasets/hek293_aav8_zehetner not found"
        return
    # notes of earlier HEK runs (kept under "notes" before they had their own key) describe results being redone
    results["notes"] = [n for n in results.get("notes", []) if not n.startswith("HEK293")]
    if not results["notes"]:
        del results["notes"]
    if "hek_solver_check" not in results:
        print("[hek] solver check: Tsit5 against Kvaerno5 on the four cultures ...", flush=True)
        results["hek_solver_check"] = hek_solver_check(campaign, {
            "kvaerno5": SolverSettings(solver="kvaerno5", max_steps=HEK_MAX_STEPS),
            "tsit5": SolverSettings(solver="tsit5", max_steps=HEK_MAX_STEPS),
            "tsit5_1e5": SolverSettings(solver="tsit5", max_steps=100_000)})
        save()
    solver = SolverSettings(solver="tsit5" if _tsit5_reproduces(results["hek_solver_check"]) else "kvaerno5",
                            max_steps=HEK_MAX_STEPS)
    results["hek_solver"] = dataclasses.asdict(solver)
    folds = leave_one_batch_out(campaign)
    if quick:
        folds = folds[:1]
    else:
        budget = HEK
        results["hek_budget"] = dataclasses.asdict(HEK)
    residual = dataclasses.replace(DEFAULT_RESIDUALS["hek293"], covariates=HEK_COVARIATES,
                                   covariate_kinds={c: "categorical" for c in HEK_COVARIATES})
    results["hek_residual"] = {"targets": list(residual.targets), "features": list(residual.features),
                               "covariates": list(residual.covariates)}
    _run_folds("hek", results, save, Twin(HEK293TripleTransfection()), campaign, folds, budget, residual,
               variables=HEK_VARIABLES, solver=solver,
               parameters=("growth_mu0", "growth_decay", "q_glc", "K_glc", "Y_lac_glc", "q_gln", "K_gln",
                           "Y_amm_gln", "k_dgln"))


# -- report ---------------------------------------------------------------------------------------------------------

def summarise(folds: list[dict], variables, suffix: str = "") -> dict:
    """Mean NRMSE per variable over held-out batches, mechanistic and hybrid, and the ratio (`suffix`
    ``"_vs_truth"``: against the noise-free plant)."""
    out = {}
    for variable in variables:
        row = {}
        for label in ("mechanistic", "hybrid"):
            values = [m["nrmse"] for f in folds for k, m in f.get(label + suffix, {}).items()
                      if k.split("|")[1] == variable and m["nrmse"] is not None and math.isfinite(m["nrmse"])]
            row[label] = float(np.mean(values)) if values else math.nan
        row["ratio"] = row["hybrid"] / row["mechanistic"] if row["mechanistic"] else math.nan
        out[variable] = row
    return out


def final_titre_errors(folds: list[dict]) -> dict:
    return {label: {f"{f['fold']}": m["final_error"] for f in folds for k, m in f[label].items()
                    if k.endswith("|titer")} for label in ("mechanistic", "hybrid")}


def _fmt(x, digits=3):
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def _solver_line(check: dict) -> list[str]:
    """The Tsit5-against-Kvaerno5 measurement, in words."""
    if not check:
        return []
    kv = check["kvaerno5"]
    out = [f"Solver check (published parameters, the four cultures at once, {kv['settings']['max_steps']} steps a "
           "segment at most, time of a call after compilation): Kvaerno5 "
           + ", ".join(f"{b} {n} steps" for b, n in kv["steps"].items()) + f", {_fmt(kv['seconds'], 2)} s"]
    for name in ("tsit5", "tsit5_1e5"):
        if name not in check:
            continue
        c = check[name]
        failed = [b for b, s in c["status"].items() if s != "ok"]
        ok_dev = [d for d in c["relative_deviation"].values() if d is not None]
        text = f"; Tsit5 with {c['settings']['max_steps']} steps a segment: "
        text += ", ".join(f"{b} {n} steps{' (' + c['status'][b] + ')' if b in failed else ''}"
                          for b, n in c["steps"].items()) + f", {_fmt(c['seconds'], 2)} s"
        if ok_dev:
            text += (f"; where it finishes it matches Kvaerno5 within {_fmt(max(ok_dev), 2)} (largest deviation "
                     "relative to the batch's largest value, over VCD, glucose, lactate, ammonia, glutamine and titres)")
        out.append(text)
    return ["".join(out) + "."]


def hek_text(results: dict) -> list[str]:
    check = results.get("hek_solver_check", {})
    solver = results.get("hek_solver", {})
    budget = results.get("hek_budget", results["budget"])
    residual = results.get("hek_residual", {})
    folds = list(results.get("hek", {}).values())
    inputs = sorted({c for f in folds for c in f.get("covariate_inputs", [])})
    unseen = [f"{f['fold']}: {w}" for f in folds for w in f.get("covariate_warnings", [])]
    tsit5_used = solver.get("solver") == "tsit5"
    lines = ["Four main cultures (high/low producer strain × transfected/mock, 0–72 h after transfection, batch "
             "culture); leave one condition out: calibrate on three, predict the fourth open loop from its initial "
             "state. Model `HEK293TripleTransfection()` (empirical growth curve, rAAV sub-model included; the plasmid "
             "dose is not recorded, so a transfected culture gets the published 7.6e4 copies/cell); fitted: the nine "
             "host parameters (growth curve, glucose and glutamine uptake, lactate and ammonia yields, glutamine "
             "decay) and each training culture's initial VCD, on every measured variable the model predicts.", ""]
    lines += [*_solver_line(check), ""]
    lines.append(f"Solver of every HEK293 solve (both fits, training, scoring): **{solver.get('solver', '?')}**, "
                 f"rtol {solver.get('rtol')}, atol {solver.get('atol')}, at most {solver.get('max_steps')} steps a "
                 "segment. " + (
                     "Tsit5 reproduces Kvaerno5 within 1e-4 on every culture, so the cheaper explicit solver is used."
                     if tsit5_used else
                     "Tsit5 does not reproduce Kvaerno5 here (it runs out of steps on the transfected cultures, see "
                     "above), so Kvaerno5 is kept: the transfected cultures are stiff (presumably because, unlike "
                     "Nguyen's set-up, no medium exchange removes the plasmid after 6 h, so vector DNA keeps growing "
                     "and the packaging step stays fast), the mock cultures are not. The mechanistic fit's own default (512 steps a "
                     "segment) cannot simulate the transfected cultures either (Kvaerno5 needs up to "
                     f"{max(check.get('kvaerno5', {}).get('steps', {0: 0}).values())} steps for one, most of them in "
                     "one segment), which is why the earlier HP_TR fold's mechanistic fit failed ('the least-squares "
                     "optimum cannot be simulated': no start could be); both fits now use the simulation's default "
                     "step budget."))
    lines.append("")
    lines.append(f"Budget per calibration (the same for both twins): {budget['n_starts']} start, "
                 f"{budget['rounds']} rounds of at most {budget['lm_steps']} Levenberg–Marquardt steps; the hybrid "
                 f"adds one network ({', '.join(f'{n}: hidden {list(h)}, weight decay {w}' for n, h, w in budget['candidates'])}; "
                 f"no inner selection) trained for {budget['training_steps']} AdamW steps (learning rate 3e-3) through "
                 "the same solver — sized so that the four folds fit in about 40 minutes on this machine.")
    lines.append("")
    if residual:
        lines.append(f"Network: corrects {', '.join(residual['targets'])} (multiplicative); sees "
                     f"{', '.join(residual['features'])} and the batch covariates {', '.join(residual['covariates'])} "
                     f"(one-hot over the training cultures' levels: {', '.join(inputs) or '—'}). "
                     + ("In every fold both levels of each covariate are among the three training cultures (the four "
                        "conditions are a 2 × 2 design), so the held-out condition is a new *combination* of seen "
                        "levels, not a new level: no population input was needed."
                        if not unseen else
                        "Held-out levels never seen in training get the population input (all zeros): "
                        + "; ".join(unseen) + "."))
        lines.append("")
    return lines


def hek_fold_table(results: dict) -> list[str]:
    """Per fold and variable: mechanistic and hybrid NRMSE and their ratio; then where the hybrid wins or loses."""
    folds = list(results.get("hek", {}).values())
    if not folds:
        return []
    lines = ["Per held-out condition (NRMSE mechanistic → hybrid, and hybrid ÷ mechanistic):", "",
             "| held out | " + " | ".join(HEK_VARIABLES) + " | mean ratio |", "|---" * (len(HEK_VARIABLES) + 2) + "|"]
    wins, losses = [], []
    for f in folds:
        summary = summarise([f], HEK_VARIABLES)
        cells, ratios = [], []
        for v in HEK_VARIABLES:
            row = summary[v]
            cells.append(f"{_fmt(row['mechanistic'])} → {_fmt(row['hybrid'])} ({_fmt(row['ratio'])})")
            if math.isfinite(row["ratio"]):
                ratios.append(row["ratio"])
                if row["ratio"] < 0.95:
                    wins.append(f"{f['fold']} {v} ({_fmt(row['ratio'])})")
                elif row["ratio"] > 1.05:
                    losses.append(f"{f['fold']} {v} ({_fmt(row['ratio'])})")
        lines.append(f"| {f['fold']} | " + " | ".join(cells) + f" | {_fmt(float(np.mean(ratios)) if ratios else math.nan)} |")
    lines += ["", "Hybrid better by more than 5 %: " + (", ".join(wins) or "none") + ". Worse by more than 5 %: "
              + (", ".join(losses) or "none") + ".", ""]
    averaged = summarise(folds, HEK_VARIABLES)
    if all(_fmt(averaged[v]["ratio"]) == r for v, r in HEK_READING["ratios"].items()):
        lines += [*HEK_READING["text"][:1], ""] + [f"- {t}" for t in HEK_READING["text"][1:]] + [""]
    else:
        lines += ["(The hand-written reading of an earlier HEK293 run is left out: these results differ from it; "
                  "update `HEK_READING` in `benchmarks/validate.py`.)", ""]
    return lines


def posterior_text(results: dict) -> list[str]:
    """The UMN posterior check (section ``posterior``)."""
    post = results.get("posterior")
    if not post:
        return [f"### Posterior\n\nSkipped: {results['posterior_skipped']}.", ""] if "posterior_skipped" in results \
            else []
    nuts = post["nuts_settings"]
    lines = [f"### Posterior on five runs, predictive bands for the held-out run {post['held_out']}", "",
             f"`CHOFedBatch(lactate_consumption=True)` fitted (Levenberg–Marquardt, the budget above; status "
             f"{post['fit_status']}, {_fmt(post['fit_seconds'], 3)} s) to runs {', '.join(post['train'])}; then its "
             "posterior with the growth rate varying between batches and by cell line (non-centred effects, "
             "`BayesConfig(hierarchical=('mu_max',), group='cell_line'"
             + (f", group_tau={post['group_tau']:g}`: the spread between the cell lines fixed at "
                f"{post['group_tau']:g} on the log scale, not sampled)" if post.get("group_tau") else "`)")
             + (f"; the between-batch spread τ_batch ~ HalfNormal({post['tau_sigma']:g}) (`tau_sigma`, an "
                "informative prior: 95 % of its mass below "
                f"{1.96 * post['tau_sigma']:.2g} on the log scale)" if post.get("tau_sigma") else "")
             + ", the other sampled parameters chosen as "
             "the identifiable subset from the fit's Fisher information, the rest held at the fit; likelihood on "
             "the six scored variables, noise scale sampled, each variable's σ_abs at least "
             f"{_fmt(100 * post.get('noise_floor', 0), 2)} % of its typical magnitude (`noise_floor`), the fitted "
             "initial VCD of each run held. NUTS: "
             f"{nuts['chains']} chains × ({nuts['warmup']} warm-up + {nuts['draws']} draws) started at and around "
             "the posterior mode, dense mass matrix started from the Laplace covariance there, maximum tree depth "
             f"{nuts.get('max_tree_depth', 10)}, target acceptance {nuts.get('target_accept', 0.8):g}"
             + (", the chains run at once, one host device (core) each (`chain_method=\"parallel\"`)"
                if nuts.get("chain_method") == "parallel" else "")
             + ". The held-out run is of a known cell line (CL1), so its bands "
             "carry a new batch effect within that line. Band: 90 % posterior predictive of a new measurement.", ""]
    methods = [m for m in ("nuts", "laplace") if m in post]
    if not methods:
        return lines
    first = post[methods[0]]
    lines += [f"Sampled: {', '.join(first['parameters'])}; held at the fit: {', '.join(first['held']) or 'none'}.",
              ""]
    if first.get("gradient_ms"):
        ms = first["gradient_ms"]
        lines += [f"Differentiation chosen by `forward_mode='auto'`: one gradient of the log density took "
                  f"{_fmt(ms.get('forward'), 3)} ms forward, {_fmt(ms.get('reverse'), 3)} ms reverse; sampled in "
                  f"{'forward' if first.get('forward_mode') else 'reverse'} mode.", ""]
    lines += ["| method | seconds | split R-hat (max) | bulk ESS (min) | tail ESS (min) | divergences | "
              "tree-depth saturation | E-BFMI (min) | warnings |", "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        e, d = post[m], post[m]["diagnostics"]
        if m == "nuts":
            bfmi = min(e["e_bfmi"]) if e["e_bfmi"] else None
            lines.append(f"| NUTS | {_fmt(e['seconds'], 3)} | {_fmt(d.get('r_hat_max'), 3)} | "
                         f"{_fmt(d.get('ess_bulk_min'), 3)} | {_fmt(d.get('ess_tail_min'), 3)} | "
                         f"{d.get('divergences')} | {_fmt(100 * d.get('tree_depth_saturation', 0), 2)} % | "
                         f"{_fmt(bfmi, 2)} | {'; '.join(e['problems']) or 'none'} |")
        else:
            lines.append(f"| Laplace | {_fmt(e['seconds'], 3)} | — | — | — | — | — | — | "
                         f"{'; '.join(e['problems']) or 'none'} |")
    lines += ["", f"Held-out run {post['held_out']}: measurements inside the 90 % band (target for a calibrated "
                  "band: about 90 %).", "",
              "| variable | " + " | ".join("NUTS" if m == "nuts" else "Laplace" for m in methods) + " |",
              "|---|" + "---|" * len(methods)]
    for variable in UMN_VARIABLES:
        cells = []
        for m in methods:
            inside, total = post[m]["coverage"].get(variable, (0, 0))
            cells.append(f"{inside}/{total} ({100 * inside / total:.0f} %)" if total else "—")
        lines.append(f"| {variable} | " + " | ".join(cells) + " |")
    totals = {m: [sum(v[i] for v in post[m]["coverage"].values()) for i in (0, 1)] for m in methods}
    lines.append("| all | " + " | ".join(f"{a}/{b} ({100 * a / max(b, 1):.0f} %)" for a, b in totals.values())
                 + " |")
    lines.append("")
    if "figure" in post.get("nuts", {}):
        lines += [f"![Posterior predictive bands of run {post['held_out']}]({post['nuts']['figure']})", ""]
    if "nuts" in post:
        d = post["nuts"]["diagnostics"]
        check = POSTERIOR_READING["check"]
        if _fmt(d.get("r_hat_max"), 3) == check["r_hat_max"] and d.get("divergences") == check["divergences"]:
            text = POSTERIOR_READING["text"]
            lines += [text[0], ""] + [f"- {t}" for t in text[1:]] + [""]
        else:
            lines += ["(The hand-written reading of an earlier posterior run is left out: these results differ from "
                      "it; update `POSTERIOR_READING` in `benchmarks/validate.py`.)", ""]
    return lines


def _later_sections(results: dict) -> str:
    """The sections rerun on another day than the page's first run, e.g. " (rerun: section posterior 2026-11-29)"."""
    later = {k: v for k, v in results.get("section_dates", {}).items() if v != results["date"]}
    return f" (rerun: {', '.join(f'section {k} {v}' for k, v in later.items())})" if later else ""


def write_markdown(results: dict, path: Path) -> None:
    machine = results["machine"]
    lines = ["# Validation", "",
             "Written by `python benchmarks/validate.py` (do not edit by hand): out-of-sample prediction of whole "
             "batches, open loop from each batch's initial state and protocol. NRMSE is the RMSE over the held-out "
             "batch's measurements divided by the variable's range in the campaign. Both twins share the same "
             "mechanistic fit (same model, settings and starts); the hybrid adds a neural residual whose size and "
             "weight decay are chosen by inner leave-one-batch-out cross-validation on the training batches only "
             "(candidates, simplest first: none — the mechanistic twin itself —, a small network with strong weight "
             "decay, a larger one with weak decay; the first within 5 % of the best inner score is chosen).",
             "", f"Run: {results['date']}{_later_sections(results)}, "
                 f"{'quick mode' if results['quick'] else 'full budget'}, on {machine}.",
             f"Budget per calibration: {results['budget']}.", ""]

    def table(key: str, variables, title: str, targets: dict | None = None, suffix: str = "", folds_table=True):
        folds = list(results.get(key, {}).values())
        if not folds:
            return
        summary = summarise(folds, variables, suffix)
        lines.extend([f"### {title}", "", "| variable | mechanistic NRMSE | hybrid NRMSE | hybrid / mechanistic |"
                      + (" target |" if targets else ""), "|---|---|---|---|" + ("---|" if targets else "")])
        for variable, row in summary.items():
            target = ""
            if targets:
                limit = targets.get(variable)
                target = (" —" if limit is None else
                          f" ≤ {limit} {'✓' if row['ratio'] <= limit else '✗'}") + " |"
            lines.append(f"| {variable} | {_fmt(row['mechanistic'])} | {_fmt(row['hybrid'])} | "
                         f"{_fmt(row['ratio'])} |{target}")
        lines.append("")
        if not folds_table:
            return
        lines.append("| fold | train | test | chosen network | inner scores | mechanistic fit | seconds |")
        lines.append("|---|---|---|---|---|---|---|")
        for f in folds:
            scores = ", ".join(f"{k} {_fmt(v)}" for k, v in f["inner_scores"].items()) or "—"
            lines.append(f"| {f['fold']} | {', '.join(f['train'])} | {', '.join(f['test'])} | {f['chosen']} | "
                         f"{scores} | {f['mechanistic_status']} | {_fmt(f['seconds'].get('fold'), 3)} |")
        lines.append("")

    lines += ["## Synthetic plant with known truth", "",
              "Plant: `CHOFedBatch(lactate_consumption=True, temperature_shift=True)` (θ_μ 0.25/°C, θ_qP 0.08/°C, "
              "q_lac,max 0.05, K_glc,shift 8 mM); every batch is shifted from 37 to 32 °C on day 5. Fitted model: "
              "`CHOFedBatch()`, which has neither effect; the network sees temperature, glucose, lactate, ammonia, "
              "VCD and the time since the last feed. Training feeds 2–4 %/day, test feeds 1 % and 6 %/day (outside "
              "the training range). With the effect switched off the plant is `CHOFedBatch()` itself.", ""]
    for effect, limit in (("on", 0.5), ("off", 1.05)):
        label = "Effect present" if effect == "on" else "Effect switched off"
        table(f"synthetic_effect_{effect}", TARGET_VARIABLES,
              f"{label}: against the noise-free truth (target: hybrid ≤ {limit} × mechanistic)",
              {v: limit for v in TARGET_VARIABLES}, suffix="_vs_truth", folds_table=False)
        table(f"synthetic_effect_{effect}", TARGET_VARIABLES, f"{label}: against the noisy measurements")
    lines += ["## UMN CHO fed-batch, CL1 and CL2", ""]
    if "umn_skipped" in results:
        lines += [f"Skipped: {results['umn_skipped']}.", ""]
    else:
        lines += ["Feed compositions inferred from the after-feed measurements (flagged `inferred` in the "
                  "campaign; `cgt_twin.data.feed_inference`):", "",
                  "| medium | species | inferred (median) | IQR | events | recorded | used |", "|---|---|---|---|---|---|---|"]
        for row in results.get("umn_inferred_feeds", []):
            if row["species"] in ("glucose", "glutamine", "lactate", "ammonia", "glutamate"):
                def clean(x):  # round-off of an exact balance (1e-14 mM) shown as the zero it is
                    return 0.0 if x is not None and abs(x) < 1e-9 else x
                lines.append(f"| {row['medium']} | {row['species']} | {_fmt(clean(row['median']), 4)} mM | "
                             f"{_fmt(clean(row['q25']), 3)}–{_fmt(clean(row['q75']), 3)} | {row['n_events']} | "
                             f"{_fmt(row['recorded'], 4)} | {'yes' if row['used'] else 'no'} |")
        lines.append("")
        targets = {v: 0.8 for v in TARGET_VARIABLES}
        for line in ("CL1", "CL2"):
            table(f"umn_{line}", UMN_VARIABLES, f"{line}: fit on two runs, predict the third (target: hybrid ≤ 0.8 "
                                                 "× mechanistic on VCD, glucose, lactate, IgG)", targets)
            errors = final_titre_errors(list(results.get(f"umn_{line}", {}).values()))
            if errors["hybrid"]:
                lines.append("Final IgG titre error (predicted − measured)/measured, target |error| ≤ 15 %: "
                             + "; ".join(f"{fold}: mechanistic {_fmt(100 * errors['mechanistic'][fold], 2)} %, "
                                         f"hybrid {_fmt(100 * e, 2)} %" for fold, e in errors["hybrid"].items()))
                lines.append("")
        all_folds = [f for line in ("CL1", "CL2") for f in results.get(f"umn_{line}", {}).values()]
        if all_folds:
            table_key = "_umn_all"
            results[table_key] = {f"{f['fold']}": f for f in all_folds}
            table(table_key, UMN_VARIABLES, "CL1 and CL2 together (all six rotations)", targets)
            del results[table_key]
        if any(results.get(f"scored_{line}") for line in ("CL1", "CL2")):
            lines += ["### The same rotations, both twins fitted on the six scored variables only", "",
                      "Every fit above uses all measured variables the model predicts, viability and dead cells "
                      "included. Here both the mechanistic fit and the network training use only VCD, glucose, "
                      "lactate, glutamine, ammonia and IgG (`python benchmarks/validate.py --sections scored`); "
                      "everything else is the same.", ""]
            for line in ("CL1", "CL2"):
                table(f"scored_{line}", UMN_VARIABLES, f"{line}, six scored variables in the loss", targets)
                errors = final_titre_errors(list(results.get(f"scored_{line}", {}).values()))
                if errors["hybrid"]:
                    lines.append("Final IgG titre error: " + "; ".join(
                        f"{fold}: mechanistic {_fmt(100 * errors['mechanistic'][fold], 2)} %, hybrid "
                        f"{_fmt(100 * e, 2)} %" for fold, e in errors["hybrid"].items()))
                    lines.append("")
            current = {key: {v: _fmt(r["ratio"]) for v, r in summarise(list(results.get(key, {}).values()),
                                                                        TARGET_VARIABLES).items()}
                       for key in UMN_READING["ratios"] if results.get(key)}
            if current == UMN_READING["ratios"]:
                lines += [*UMN_READING["text"][:1], ""] + [f"- {t}" for t in UMN_READING["text"][1:]] + [""]
            else:
                lines += ["(The hand-written reading of an earlier UMN run is left out: these results differ from it; "
                          "update `UMN_READING` in `benchmarks/validate.py`.)", ""]
    lines += posterior_text(results)
    lines += ["## HEK293 rAAV8 host metabolism (Zehetner)", ""]
    if "hek_skipped" in results:
        lines += [f"Skipped: {results['hek_skipped']}.", ""]
    elif results.get("hek"):
        lines += hek_text(results)
        table("hek", HEK_VARIABLES, "Leave one condition out: mean over the four held-out conditions")
        lines += hek_fold_table(results)
    lines += ["## rAAV titres against Nguyen et al. 2021", "", *NGUYEN_NOTE, "",
              "## Notes", "", *[f"- {n}" for n in (*NOTES, *results.get("notes", []))], ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "validation.json"))
    parser.add_argument("--markdown", default=str(ROOT / "docs" / "validation.md"))
    parser.add_argument("--fresh", action="store_true", help="ignore the checkpointed results")
    parser.add_argument("--redo", action="store_true", help="recompute the chosen sections (keep the others)")
    args = parser.parse_args(argv)
    os.environ.setdefault("CGT_TWIN_NO_PROGRESS", "1")
    chosen = [s.strip() for s in args.sections.split(",") if s.strip() and s.strip() != "none"]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS} (or none: rewrite the page only)")
    if "posterior" in chosen and POSTERIOR_NUTS["chain_method"] == "parallel":
        from cgt_twin.bayes import host_devices_for_chains

        host_devices_for_chains(POSTERIOR_NUTS["chains"])  # before the first JAX computation
    import jax

    budget = QUICK if args.quick else FULL
    json_path = Path(args.json)
    results = {}
    if json_path.is_file() and not args.fresh:
        results = json.loads(json_path.read_text(encoding="utf-8"))
        if results.get("quick") != args.quick:
            results = {}
    today = time.strftime("%Y-%m-%d")
    results.update({"quick": args.quick, "budget": dataclasses.asdict(budget),
                    "date": results.get("date", today),  # of the first section; reruns are dated per section
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, "
                               f"JAX {jax.__version__}"})

    def save():
        tmp = json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
        os.replace(tmp, json_path)

    if (args.fresh or args.redo) and "posterior" in chosen:
        shutil.rmtree(_posterior_cache(args.quick), ignore_errors=True)
    if args.redo:
        for key in [k for k in results if any(k.startswith(section) for section in chosen)]:
            del results[key]
    runners = {"synthetic": section_synthetic, "umn": section_umn, "scored": section_scored,
               "posterior": section_posterior, "hek": section_hek}
    for name in chosen:
        start = time.perf_counter()
        runners[name](results, save, budget, args.quick)
        results.setdefault("seconds", {})[name] = time.perf_counter() - start
        results.setdefault("section_dates", {})[name] = today
        save()
    write_markdown(results, Path(args.markdown))
    print(f"wrote {args.markdown} and {json_path}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
