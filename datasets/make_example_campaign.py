"""Writes ``datasets/example_cho_fedbatch/``: a small, illustrative CHO fed-batch campaign in the folder format.

The numbers are synthetic (seeded), made by a deliberately simple culture model written here — logistic growth with a
glucose-limited rate, lactate made from glucose, a constant specific productivity — only to show the campaign format
with every common event kind on a machine without ``../shared/datasets``. They are not measurements. Run from the
repository root: ``python datasets/make_example_campaign.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp

from cgt_twin.data import CampaignTables, campaign_from_tables, write_tables

OUT = Path(__file__).resolve().parent / "example_cho_fedbatch"
FEED_GLUCOSE_MM = 550.0  # glucose in the feed medium, mM
BASAL_GLUCOSE_MM = 35.0


def rhs(t, y, mu_max, q_glc, q_p):
    x, glc, lac, titer, v = y  # 1e6 cells/mL, mM, mM, mg/L, L
    limit = glc / (1.0 + glc)
    mu = mu_max * limit * (1 - x / 22.0) - 0.004
    uptake = q_glc * limit * x  # mM/h
    return [mu * x, -uptake, 0.9 * uptake * (lac < 40), q_p * x, 0.0]


def simulate(seed: int, mu_max: float, feed_fraction: float):
    rng = np.random.default_rng(seed)
    volume0 = 1.0
    y = np.array([0.4, BASAL_GLUCOSE_MM, 0.5, 0.0, volume0])
    sample_times = np.arange(0, 14 * 24 + 1, 24.0)
    measurements, events = [], []
    t = 0.0
    for day, ts in enumerate(sample_times):
        if ts > t:
            sol = solve_ivp(rhs, (t, ts), y, args=(mu_max, 0.05, 1.1), rtol=1e-8, atol=1e-10)
            y = sol.y[:, -1]
            t = ts
        noisy = {
            "vcd": (y[0] * rng.lognormal(0, 0.05), "1e6 cells/mL"),
            "glucose": (max(y[1], 0) * 180.16 / 1000 * rng.lognormal(0, 0.03), "g/L"),
            "lactate": (y[2] * rng.lognormal(0, 0.05), "mM"),
            "titer": (y[3] * rng.lognormal(0, 0.05), "mg/L"),
            "viability": (min(99.9, (98.5 - 1.5 * max(day - 8, 0) ** 1.5) * rng.lognormal(0, 0.005)), "%"),
        }
        for name, (value, unit) in noisy.items():
            measurements.append({"time_h": ts, "variable": name, "value": round(value, 4), "unit": unit,
                                 "phase": "pre"})
        if day < 14:
            events.append({"time_h": ts, "kind": "sample", "target": "", "amount": 4.0, "unit": "mL", "medium": ""})
            y[4] -= 0.004
        if 3 <= day <= 12:
            feed_l = feed_fraction * volume0
            events.append({"time_h": ts, "kind": "bolus", "target": "", "amount": feed_l * 1000, "unit": "mL",
                           "medium": "feed_a"})
            y[1] = (y[1] * y[4] + FEED_GLUCOSE_MM * feed_l) / (y[4] + feed_l)
            for i in (0, 2, 3):
                y[i] = y[i] * y[4] / (y[4] + feed_l)
            y[4] += feed_l
            measurements.append({"time_h": ts, "variable": "glucose", "value": round(y[1], 3), "unit": "mM",
                                 "phase": "post"})
        if day == 5:
            events.append({"time_h": ts, "kind": "setpoint", "target": "temperature", "amount": 34.0, "unit": "degC",
                           "medium": ""})
    events.append({"time_h": sample_times[-1], "kind": "harvest", "target": "", "amount": "", "unit": "",
                   "medium": ""})
    return measurements, events


def main() -> None:
    batches, measurements, events = [], [], []
    for name, seed, mu, feed in (("EX1", 1, 0.034, 0.03), ("EX2", 2, 0.030, 0.04), ("EX3", 3, 0.032, 0.05)):
        m, e = simulate(seed, mu, feed)
        measurements += [{"batch": name, **row} for row in m]
        events += [{"batch": name, **row} for row in e]
        batches.append({"batch": name, "cell_type": "cho", "initial_volume": 1000, "volume_unit": "mL",
                        "max_volume": 2000, "initial_medium": "basal", "cell_line": "EXAMPLE",
                        "feed_fraction": feed})
    media = pd.DataFrame([
        {"medium": "basal", "species": "glucose", "concentration": BASAL_GLUCOSE_MM, "unit": "mM"},
        {"medium": "basal", "species": "glutamine", "concentration": 4.0, "unit": "mM"},
        {"medium": "feed_a", "species": "glucose", "concentration": FEED_GLUCOSE_MM, "unit": "mM"},
    ])
    tables = CampaignTables(
        batches=pd.DataFrame(batches), measurements=pd.DataFrame(measurements), events=pd.DataFrame(events),
        media=media, notes=["Illustrative synthetic data from datasets/make_example_campaign.py (seeded); not "
                            "measurements. Shows the folder format with samples, bolus feeds, a temperature shift, "
                            "post-feed glucose and unit conversions (glucose in g/L, viability in %)."],
        source="datasets/make_example_campaign.py")
    campaign_from_tables(tables)  # check before writing
    write_tables(tables, OUT, overwrite=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
