"""Feed compositions inferred from pre-/post-feed measurements (cgt_twin.data.feed_inference)."""

import math

import numpy as np
import pandas as pd
import pytest

from cgt_twin.data import CampaignValidationError
from cgt_twin.data.feed_inference import feed_jump_estimates, infer_feed_compositions
from cgt_twin.data.frames import campaign_from_dataframe

FEED_GLUCOSE = 300.0  # mM, the truth the post-feed values are computed from
KNOWN_GLUCOSE = 100.0  # mM in the recorded second feed


def _campaign(recorded_known: float = KNOWN_GLUCOSE) -> tuple:
    """Two batches, each fed the blank 'feed' at 24 h and 48 h (the 48 h feed together with a recorded 'known')."""
    rows, events = [], []
    rng = np.random.default_rng(1)
    for batch, v_feed in (("B1", 0.05), ("B2", 0.08)):
        volume = 1.0
        for t in (0.0, 24.0, 48.0, 72.0):
            pre = float(rng.uniform(5, 30))
            rows.append((batch, t, "glucose", pre, "mM", "pre"))
            events.append((batch, t, "sample", "", 0.01, "L", ""))
            if t in (24.0, 48.0):
                events.append((batch, t, "bolus", "", v_feed, "L", "feed"))
                inflow = v_feed * FEED_GLUCOSE
                added = v_feed
                if t == 48.0:
                    events.append((batch, t, "bolus", "", 0.02, "L", "known"))
                    inflow += 0.02 * KNOWN_GLUCOSE
                    added += 0.02
                after = volume - 0.01 + added
                post = ((volume - 0.01) * pre + inflow) / after
                rows.append((batch, t, "glucose", post, "mM", "post"))
                volume = after
            else:
                volume -= 0.01
        events.append((batch, 96.0, "harvest", "", "", "", ""))
    measurements = pd.DataFrame(rows, columns=["batch", "time_h", "variable", "value", "unit", "phase"])
    events = pd.DataFrame(events, columns=["batch", "time_h", "kind", "target", "amount", "unit", "medium"])
    media = pd.DataFrame([("basal", "glucose", 30.0, "mM"), ("feed", "", "", ""),
                          ("known", "glucose", recorded_known, "mM")],
                         columns=["medium", "species", "concentration", "unit"])
    batches = pd.DataFrame({"batch": ["B1", "B2"], "cell_type": "cho", "initial_volume": 1.0, "volume_unit": "L",
                            "max_volume": 2.0, "initial_medium": "basal"})
    return campaign_from_dataframe(measurements, batches, events=events, media=media)


def test_blank_feed_is_recovered_and_flagged():
    campaign = _campaign()
    assert not campaign.protocols["B1"].media["feed"].is_known
    inferred, table = infer_feed_compositions(campaign)
    medium = inferred.protocols["B2"].media["feed"]
    assert medium.concentrations["glucose"] == pytest.approx(FEED_GLUCOSE, rel=1e-9)
    assert medium.inferred == {"glucose"}
    assert "inferred" in medium.note
    row = table.set_index(["medium", "species"]).loc[("feed", "glucose")]
    assert row["n_events"] == 4 and bool(row["used"]) and math.isnan(row["recorded"])
    assert any("inferred" in note for note in inferred.notes)
    # the input campaign is not modified
    assert not campaign.protocols["B1"].media["feed"].is_known


def test_recorded_composition_is_checked_not_replaced_unless_asked():
    campaign = _campaign(recorded_known=KNOWN_GLUCOSE)
    estimates = feed_jump_estimates(campaign, ["known"], ["glucose"])
    assert estimates.empty  # the 'known' feed always coincides with the blank one: two unknowns, no estimate
    # a wrong recorded value biases what is attributed to the blank feed — visible in the spread of estimates
    wrong = _campaign(recorded_known=10.0)
    _, table = infer_feed_compositions(wrong)
    row = table.set_index(["medium", "species"]).loc[("feed", "glucose")]
    assert row["q75"] - row["q25"] > 10.0


def test_replace_recorded_flags_the_value():
    campaign = _campaign()
    estimates = feed_jump_estimates(campaign, ["feed"], ["glucose"])
    assert len(estimates) == 4 and np.allclose(estimates["estimate"], FEED_GLUCOSE)
    first, _ = infer_feed_compositions(campaign)
    # now 'feed' is known (inferred); re-estimating it with replace_recorded keeps the same value, still flagged
    second, table = infer_feed_compositions(first, ["feed"], replace_recorded=True)
    assert second.protocols["B1"].media["feed"].concentrations["glucose"] == pytest.approx(FEED_GLUCOSE)
    assert "glucose" in second.protocols["B1"].media["feed"].inferred


def test_bad_requests_are_named():
    campaign = _campaign()
    with pytest.raises(CampaignValidationError, match="unknown or unfed medium 'nope'"):
        infer_feed_compositions(campaign, ["nope"])
    with pytest.raises(CampaignValidationError, match="unknown or unfed medium 'basal'"):
        infer_feed_compositions(campaign, ["basal"])
