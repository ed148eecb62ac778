"""Feed compositions inferred from the measurements around each feed, flagged as inferred.

When a batch is sampled just before and just after a bolus feed (DESIGN's ``pre``/``post`` phases at the feed time),
the jump in each concentration follows from the mass balance of the event alone:

    V_after · c_post = (V_before − v_sample) · c_pre + Σ_known v_i · c_i + v_feed · c_feed

so the unknown concentration c_feed of one feed medium is read off every such event. `infer_feed_compositions`
collects these estimates over all events and batches that use the medium, takes their median, and returns a campaign
whose medium carries the inferred concentrations in `Medium.inferred` (and a note), with a table of every estimate so
a person can judge the spread. It is used where a feed's volume was recorded but its composition was not (UMN CL2
"Feed 1"); it also *checks* recorded compositions against the data (``recorded`` rows), without replacing them
unless asked.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from .campaign import Campaign
from .errors import CampaignValidationError, Problem
from .protocol import EventKind, Medium, Protocol

__all__ = ["infer_feed_compositions", "feed_jump_estimates"]

_COLUMNS = ["medium", "species", "batch", "time_h", "estimate", "recorded", "v_feed_L", "v_before_L"]


def _volume_before(protocol: Protocol, time_h: float) -> float:
    """Culture volume (L) just before the first event at `time_h`."""
    for t, before, _ in protocol.volume_profile()[1:]:
        if math.isclose(t, time_h, rel_tol=0, abs_tol=1e-9):
            return before
    raise KeyError(time_h)


def feed_jump_estimates(campaign: Campaign, media: Iterable[str], species: Sequence[str] | None = None) -> pd.DataFrame:
    """One estimate of each medium's concentration per bolus event with measured pre- and post-feed values.

    Args:
        campaign: the campaign (volumes from each batch's protocol, concentrations in canonical units, mM).
        media: the media to estimate.
        species: species to estimate (default: every measured variable that is a concentration in some medium's
            composition or is measured at both phases).

    Returns:
        Table ``medium, species, batch, time_h, estimate, recorded, v_feed_L, v_before_L`` (``recorded``: the
        medium's recorded concentration, NaN if blank). Events where another fed medium lacks that species, or where
        two boluses of the medium coincide, are skipped (the balance would have two unknowns).
    """
    media = list(media)
    if species is None:
        species = [v for v in campaign.variables if campaign.data[v].attrs.get("units") in ("mM", "mmol/L")]
    rows = []
    for batch in campaign.batches:
        protocol = campaign.protocols[batch]
        if not protocol.feeds_known:
            continue
        boluses = protocol.events_of(EventKind.BOLUS)
        for time_h in sorted({e.time_h for e in boluses if e.medium in media}):
            at = [e for e in protocol.events if math.isclose(e.time_h, time_h, rel_tol=0, abs_tol=1e-9)]
            fed = [e for e in at if e.kind is EventKind.BOLUS and e.medium is not None and e.unit == "L"]
            if any(e.kind not in (EventKind.BOLUS, EventKind.SAMPLE) for e in at):
                continue  # exchanges, harvests …: not a plain feed balance
            sampled = sum(e.amount for e in at if e.kind is EventKind.SAMPLE)
            v_before = _volume_before(protocol, time_h)
            v_after = v_before - sampled + sum(e.amount for e in fed)
            for medium_name in {e.medium for e in fed if e.medium in media}:
                own = [e for e in fed if e.medium == medium_name]
                if len(own) != 1:
                    continue
                v_feed = own[0].amount
                others = [e for e in fed if e is not own[0]]
                for s in species:
                    try:
                        pre = campaign.data[s].sel(batch=batch, time=time_h, phase="pre").values
                        post = campaign.data[s].sel(batch=batch, time=time_h, phase="post").values
                    except KeyError:
                        continue
                    pre, post = np.nanmean(pre) if np.isfinite(pre).any() else np.nan, \
                        np.nanmean(post) if np.isfinite(post).any() else np.nan
                    if not (np.isfinite(pre) and np.isfinite(post)):
                        continue
                    known_inflow = 0.0
                    for e in others:
                        other = protocol.media[e.medium]
                        if s not in other.concentrations:
                            if other.is_known:
                                continue  # a recorded medium without the species contributes none
                            known_inflow = math.nan
                            break
                        known_inflow += e.amount * other.concentrations[s]
                    if not math.isfinite(known_inflow):
                        continue
                    estimate = (v_after * post - (v_before - sampled) * pre - known_inflow) / v_feed
                    medium = protocol.media[medium_name]  # a recorded composition lists what it has: others are 0
                    recorded = medium.concentrations.get(s, 0.0 if medium.is_known else math.nan)
                    rows.append((medium_name, s, batch, time_h, estimate, recorded, v_feed, v_before))
    return pd.DataFrame(rows, columns=_COLUMNS)


def infer_feed_compositions(campaign: Campaign, media: Iterable[str] | None = None, *,
                            species: Sequence[str] | None = None, replace_recorded: bool = False,
                            min_events: int = 2) -> tuple[Campaign, pd.DataFrame]:
    """Infers blank feed compositions from the measurements around each feed.

    Args:
        campaign: the campaign.
        media: media to infer (default: every fed medium with no recorded composition).
        species: species to infer (default: every measured concentration).
        replace_recorded: also replace *recorded* concentrations of `media` by the inferred ones (flagged inferred);
            by default recorded values are kept and only compared.
        min_events: events needed for a species' estimate (fewer: left blank, i.e. zero in simulations).

    Returns:
        ``(campaign, table)``: the campaign with the inferred concentrations in each medium (`Medium.inferred` names
        them; negative medians are set to zero — a feed does not remove a species), and a summary table per medium
        and species: ``median, q25, q75, n_events, recorded, used``.

    Raises:
        CampaignValidationError: a named medium is not in the campaign, or no event of it has pre- and post-feed
            measurements.
    """
    fed = {e.medium for p in campaign.protocols.values() for e in p.events_of(EventKind.BOLUS) if e.medium}
    all_media = {name: m for p in campaign.protocols.values() for name, m in p.media.items()}
    if media is None:
        media = sorted(name for name in fed if name in all_media and not all_media[name].is_known)
    media = list(media)
    problems = [Problem("media", f"unknown or unfed medium {m!r}; fed media: {sorted(fed)}") for m in media
                if m not in fed]
    if problems:
        raise CampaignValidationError(problems, header="cannot infer feed compositions")
    estimates = feed_jump_estimates(campaign, media, species)
    missing = [m for m in media if m not in set(estimates["medium"])]
    if missing:
        raise CampaignValidationError([Problem("media", f"no event of {m!r} has both pre- and post-feed measurements "
                                                         "to infer its composition from") for m in missing],
                                      header="cannot infer feed compositions")
    summary_rows = []
    new_media: dict[str, Medium] = {}
    for medium_name in media:
        old = all_media[medium_name]
        concentrations = dict(old.concentrations)
        inferred = set(old.inferred)
        for s, group in estimates[estimates["medium"] == medium_name].groupby("species", sort=True):
            values = group["estimate"].to_numpy()
            median = float(np.median(values))
            recorded = float(group["recorded"].iloc[0])
            use = len(values) >= min_events and (replace_recorded or not math.isfinite(recorded))
            summary_rows.append((medium_name, s, median, float(np.percentile(values, 25)),
                                 float(np.percentile(values, 75)), len(values), recorded, use))
            if use:
                concentrations[s] = max(median, 0.0)
                inferred.add(s)
        note = (old.note + "; " if old.note else "") + \
            f"concentrations of {sorted(inferred - set(old.inferred))} inferred from after-feed measurements " \
            "(cgt_twin.data.feed_inference)"
        new_media[medium_name] = Medium(medium_name, concentrations, frozenset(inferred), note)
    protocols = {b: dataclasses.replace(p, media={**p.media, **{k: v for k, v in new_media.items() if k in p.media}})
                 for b, p in campaign.protocols.items()}
    campaign_media = {**campaign.media, **{k: v for k, v in new_media.items() if k in campaign.media}}
    result = Campaign(campaign.data, campaign.censored, protocols, campaign_media, campaign.declared,
                      (*campaign.notes, f"feed compositions inferred from after-feed data: {', '.join(media)}"),
                      campaign.source)
    table = pd.DataFrame(summary_rows, columns=["medium", "species", "median", "q25", "q75", "n_events", "recorded",
                                                "used"])
    return result, table
