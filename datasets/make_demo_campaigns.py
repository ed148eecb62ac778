"""Generates the demo campaigns shipped in ``datasets/`` from the library's own models (synthetic, seeded).

- ``cho_fedbatch_synthetic/``: 6 CHO fed-batch runs (2 clones x 3 feeding levels, one with a temperature shift), from
  `CHOFedBatch` with lactate consumption and the temperature effect switched on (the "plant"), daily samples,
  post-feed glucose, realistic analyser noise, 3 % missing values, glutamine and ammonia below 0.1 mM censored.
- ``hek293_raav_synthetic/``: HEK293 rAAV triple transfections at three plasmid doses with medium exchange at 6 h
  (written when the HEK293 model is available).
- ``tcell_expansion_synthetic/``: T-cell expansions of 4 donors (bead activation, bead removal on day 5, IL-2 every
  2 days, a medium exchange), daily samples with phenotype fractions.

They are not measurements: each campaign's notes say how it was made. `make demo` uses them on a machine without
``../shared/datasets``. Run from the repository root: ``python datasets/make_demo_campaigns.py``.
"""

from __future__ import annotations

from pathlib import Path

from cgt_twin.data import Event, Medium, Protocol, write_campaign
from cgt_twin.data.synthetic import SamplingPlan, synthetic_campaign
from cgt_twin.models import CHOFedBatch, TCellExpansion, Twin

HERE = Path(__file__).resolve().parent


def cho_campaign():
    plant = Twin(CHOFedBatch(lactate_consumption=True, temperature_shift=True),
                 {"mu_max": 0.036, "k_d": 0.01, "K_glc": 1.0, "Y_x_glc": 0.357, "Y_lac_glc": 0.70, "q_p": 1.1})
    basal = Medium("basal", {"glucose": 35.0, "glutamine": 6.0})
    feed = Medium("feed", {"glucose": 500.0, "glutamine": 50.0})
    protocols, states, params, covariates = {}, {}, {}, {}
    runs = [("C1-LOW", "C1", 0.02, False), ("C1-MID", "C1", 0.03, False), ("C1-HIGH", "C1", 0.04, True),
            ("C2-LOW", "C2", 0.02, False), ("C2-MID", "C2", 0.03, True), ("C2-HIGH", "C2", 0.04, False)]
    for name, clone, fraction, shift in runs:
        events = [Event(24.0 * d + 1.0, "bolus", fraction, "L", medium="feed") for d in range(3, 13)]
        if shift:
            events.append(Event(120.0, "setpoint", 33.0, "degC", target="temperature"))
        events.append(Event(336.0, "harvest"))
        protocols[name] = Protocol(1.0, tuple(events), {"basal": basal, "feed": feed}, max_volume=2.0,
                                   initial_medium="basal")
        states[name] = {"vcd": 0.35, "dead_cells": 0.01}
        params[name] = {"mu_max": 0.036 if clone == "C1" else 0.031, "q_p": 1.1 if clone == "C1" else 1.5}
        covariates[name] = {"clone": clone, "feed_fraction": fraction, "temperature_shift": shift}
    sampling = SamplingPlan(every_h=24.0, variables=("vcd", "viability", "glucose", "lactate", "glutamine",
                                                     "ammonia", "titer"),
                            post_variables=("glucose",), sample_volume_l=0.004, missing_fraction=0.03,
                            loq={"glutamine": 0.1, "ammonia": 0.1})
    return synthetic_campaign(plant, protocols, sampling=sampling, seed=2026, initial_states=states,
                              batch_params=params, covariates=covariates, source="datasets/make_demo_campaigns.py",
                              notes=["Plant: CHOFedBatch(lactate_consumption=True, temperature_shift=True); clone "
                                     "C2 grows slower and makes more product (mu_max 0.031 vs 0.036 1/h, q_p 1.5 vs "
                                     "1.1 mg/(1e9 cells)/h). Not measurements."])


def tcell_campaign():
    plant = Twin(TCellExpansion())
    basal = Medium("basal", {"glucose": 20.0})
    complete = Medium("complete", {"glucose": 20.0})
    protocols, states, params, covariates = {}, {}, {}, {}
    donors = [("D1", 0.027, 34.0), ("D2", 0.024, 40.0), ("D3", 0.030, 30.0), ("D4", 0.022, 44.0)]
    for donor, mu_max, lag in donors:
        events = [Event(0.0, "stimulus", 1.0, "1", target="beads")]
        events += [Event(48.0 * k, "stimulus", 100.0, "IU/mL", target="il2") for k in range(5)]
        events += [Event(120.0, "stimulus", 0.0, "1", target="beads"),
                   Event(144.0, "exchange", 0.5, "1", medium="complete"), Event(240.0, "harvest")]
        protocols[donor] = Protocol(0.05, tuple(events), {"basal": basal, "complete": complete}, max_volume=0.1,
                                    initial_medium="basal")
        states[donor] = {"vcd": 0.8, "dead_cells": 0.05}
        params[donor] = {"mu_max": mu_max, "tau_lag": lag}
        covariates[donor] = {"donor": donor}
    sampling = SamplingPlan(every_h=24.0, variables=("vcd", "viability", "glucose", "lactate", "il2",
                                                     "memory_fraction", "exhausted_fraction"),
                            sample_volume_l=0.0005, missing_fraction=0.02)
    return synthetic_campaign(plant, protocols, sampling=sampling, seed=7, initial_states=states,
                              batch_params=params, covariates=covariates, source="datasets/make_demo_campaigns.py",
                              notes=["Plant: TCellExpansion (stirred); donors differ in mu_max and activation lag. "
                                     "No public T-cell time courses exist for us: these are synthetic. Not "
                                     "measurements."])


def hek293_campaign():
    try:
        from cgt_twin.models.hek293 import HEK293TripleTransfection
    except ImportError:
        return None
    plant = Twin(HEK293TripleTransfection())
    basal = Medium("basal", {"glucose": 25.0, "glutamine": 4.0})
    fresh = Medium("fresh", {"glucose": 25.0, "glutamine": 4.0})
    protocols, covariates = {}, {}
    for name, dose in (("DOSE-0.5", 0.5), ("DOSE-1.0", 1.0), ("DOSE-1.5", 1.5)):
        events = (Event(0.0, "transfection", dose, "ug/mL"), Event(6.0, "exchange", 1.0, "1", medium="fresh"),
                  Event(72.0, "harvest"))
        protocols[name] = Protocol(0.03, events, {"basal": basal, "fresh": fresh}, initial_medium="basal")
        covariates[name] = {"plasmid_dose_ug_per_ml": dose}
    sampling = SamplingPlan(times=(0.0, 6.0, 12.0, 24.0, 36.0, 48.0, 60.0, 72.0),
                            variables=("vcd", "viability", "glucose", "lactate", "vg_titer", "capsid_titer",
                                       "full_capsid_fraction"))
    return synthetic_campaign(plant, protocols, sampling=sampling, seed=11, covariates=covariates,
                              initial_states={n: {"vcd": 1.0} for n in protocols},
                              source="datasets/make_demo_campaigns.py",
                              notes=["Plant: HEK293TripleTransfection; three plasmid doses, medium exchange at 6 h. "
                                     "Not measurements."])


def main() -> None:
    for folder, make in (("cho_fedbatch_synthetic", cho_campaign), ("tcell_expansion_synthetic", tcell_campaign),
                         ("hek293_raav_synthetic", hek293_campaign)):
        campaign = make()
        if campaign is None:
            print(f"skipped {folder} (model not available)")
            continue
        write_campaign(campaign, HERE / folder, overwrite=True)
        print(f"wrote {HERE / folder}: {campaign!r}")


if __name__ == "__main__":
    main()
