"""Synthetic campaigns: reproducible by seed, noisy like analysers, missing and censored values, sampling counted."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest

from cgt_twin.data import Event, Medium, Protocol, read_campaign
from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
from cgt_twin.models import CHOFedBatch, Twin
from cgt_twin.simulate import simulate

FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
BASAL = Medium("basal", {"glucose": 30.0, "glutamine": 4.0})


def protocols():
    def one(fraction):
        events = [Event(24.0 * d, "bolus", fraction, "L", medium="feed") for d in range(3, 10)]
        return Protocol(1.0, (*events, Event(240.0, "harvest")), {"feed": FEED, "basal": BASAL}, max_volume=2.0,
                        initial_medium="basal")
    return {"A": one(0.02), "B": one(0.04)}


PLAN = SamplingPlan(every_h=24.0, variables=("vcd", "glucose", "glutamine", "titer"), post_variables=("glucose",),
                    sample_volume_l=0.005, missing_fraction=0.1, loq={"glutamine": 0.5})


@pytest.fixture(scope="module")
def campaigns():
    twin = Twin(CHOFedBatch())
    states = {"A": {"vcd": 0.4}, "B": {"vcd": 0.4}}
    first = synthetic_campaign(twin, protocols(), sampling=PLAN, seed=3, initial_states=states)
    again = synthetic_campaign(twin, protocols(), sampling=PLAN, seed=3, initial_states=states)
    other = synthetic_campaign(twin, protocols(), sampling=PLAN, seed=4, initial_states=states)
    exact = synthetic_campaign(twin, protocols(), sampling=SamplingPlan(variables=("vcd", "glucose"),
                                                                        sample_volume_l=0.005),
                               noise=NoiseModel({"vcd": (0.0, 0.0), "glucose": (0.0, 0.0)}), seed=3,
                               initial_states=states)
    return twin, first, again, other, exact


def test_reproducible_by_seed(campaigns):
    _, first, again, other, _ = campaigns
    pd.testing.assert_frame_equal(first.to_dataframe(), again.to_dataframe())
    assert not first.to_dataframe()["value"].equals(other.to_dataframe()["value"])


def test_noise_free_campaign_equals_the_simulation_with_samples(campaigns):
    twin, _, _, _, exact = campaigns
    # the plan's sample events are part of the protocol, so the simulation of the stored protocols reproduces the data
    trajectory = simulate(twin, exact)
    for variable in ("vcd", "glucose"):
        data = exact.data[variable].sel(phase="pre", replicate=0).values
        sim = trajectory[variable].sel(phase="pre").values
        ok = np.isfinite(data)
        np.testing.assert_allclose(sim[ok], data[ok], rtol=1e-9)
    assert len(exact.protocols["A"].events_of("sample")) == 10  # days 0..9, none at the harvest


def test_missing_censored_and_post_values(campaigns):
    _, first, *_ = campaigns
    long = first.to_dataframe()
    expected = 2 * 11 * 4  # batches x samples x variables (pre)
    pre = long[long.phase == "pre"]
    assert 0.75 * expected < len(pre) < expected  # about 10 % missing
    censored = long[long.censored == "<"]
    assert (censored["variable"] == "glutamine").all() and len(censored) > 0
    assert np.allclose(censored["value"], 0.5)
    post = long[long.phase == "post"]
    assert set(post["variable"]) == {"glucose"} and set(post["time_h"]) <= {24.0 * d for d in range(3, 10)}


def test_noise_has_the_stated_size(campaigns):
    twin, first, *_ = campaigns
    trajectory = simulate(twin, first)
    data = first.data["titer"].sel(phase="pre", replicate=0).values
    truth = trajectory["titer"].sel(phase="pre").values
    ok = np.isfinite(data) & (truth > 50)
    log_ratio = np.log(data[ok] / truth[ok])
    assert 0.02 < np.std(log_ratio) < 0.15  # DEFAULT_NOISE titre: 7 % relative


@pytest.mark.slow
def test_shipped_demo_campaigns_are_what_the_script_makes(example_folder):
    sys.path.insert(0, str(example_folder.parent))
    import make_demo_campaigns

    made = make_demo_campaigns.cho_campaign()
    stored = read_campaign(example_folder.parent / "cho_fedbatch_synthetic")
    pd.testing.assert_frame_equal(made.to_dataframe().reset_index(drop=True),
                                  stored.to_dataframe().reset_index(drop=True), rtol=1e-12)
