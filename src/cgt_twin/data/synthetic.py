"""Synthetic campaigns: any twin, any protocols, realistic measurement noise, reproducible by seed.

`synthetic_campaign` simulates each protocol (with a sample event added at each sampling time, so the sampled volume
is accounted for), measures the chosen variables with noise, drops a fraction of values at random, censors values
below a limit of quantification, and checks the result like any campaign. Used for the demo campaigns in
``datasets/``, for tests with known truth, and for validation studies.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .build import campaign_from_tables
from .campaign import Campaign, protocol_tables
from .protocol import Event, EventKind, Protocol
from .tables import CampaignTables
from .variables import CANONICAL_VARIABLES

__all__ = ["NoiseModel", "SamplingPlan", "synthetic_campaign", "DEFAULT_NOISE"]

DEFAULT_NOISE: Mapping[str, tuple[float, float]] = {
    # variable -> (relative sd, absolute sd in the canonical unit); typical at-line analyser / counter precision
    "vcd": (0.08, 0.02), "dead_cells": (0.10, 0.02), "viability": (0.0, 0.01), "glucose": (0.04, 0.1),
    "lactate": (0.05, 0.1), "glutamine": (0.06, 0.05), "glutamate": (0.06, 0.05), "ammonia": (0.08, 0.1),
    "titer": (0.07, 1.0), "vg_titer": (0.25, 0.0), "capsid_titer": (0.20, 0.0), "functional_titer": (0.30, 0.0),
    "full_capsid_fraction": (0.10, 0.002), "il2": (0.10, 1.0), "memory_fraction": (0.05, 0.01),
    "exhausted_fraction": (0.10, 0.003), "volume": (0.0, 0.0005),
}


@dataclasses.dataclass(frozen=True)
class NoiseModel:
    """Measurement noise per variable: combined proportional (log-normal) and additive (normal) errors.

    A measured value is ``y·exp(ε_rel) + ε_abs`` with ε_rel ~ N(0, rel²), ε_abs ~ N(0, abs²), then kept within the
    variable's physical bounds (concentrations ≥ 0, fractions in 0..1).

    Attributes:
        sd: variable -> (relative sd, absolute sd in the canonical unit); variables not listed use `DEFAULT_NOISE`,
            and (0.05, 0) if not there either.
    """

    sd: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)

    def of(self, variable: str) -> tuple[float, float]:
        return tuple(self.sd.get(variable, DEFAULT_NOISE.get(variable, (0.05, 0.0))))  # type: ignore[return-value]

    def apply(self, variable: str, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        rel, absolute = self.of(variable)
        noisy = values * np.exp(rng.normal(0.0, rel, values.shape)) + rng.normal(0.0, absolute, values.shape)
        spec = CANONICAL_VARIABLES.get(variable)
        lower = spec.lower if spec is not None and spec.lower is not None else -np.inf
        upper = spec.upper if spec is not None and spec.upper is not None else np.inf
        return np.clip(noisy, lower, upper)


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
    """When and what is measured.

    Attributes:
        every_h: sampling interval, h (used when `times` is None); the first sample is at 0 h.
        times: explicit sampling times, h.
        variables: the variables measured at each sample.
        post_variables: variables also measured right after a bolus feed (``phase = post``).
        sample_volume_l: volume removed per sample, L (a sample event is added to the protocol).
        missing_fraction: fraction of values dropped at random (a missed or failed assay).
        loq: variable -> limit of quantification (canonical unit); smaller values are reported censored ``<``.
    """

    every_h: float = 24.0
    times: Sequence[float] | None = None
    variables: Sequence[str] = ("vcd", "viability", "glucose", "lactate")
    post_variables: Sequence[str] = ()
    sample_volume_l: float = 0.0
    missing_fraction: float = 0.0
    loq: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def sampling_times(self, end_h: float) -> np.ndarray:
        if self.times is not None:
            return np.asarray(sorted(t for t in self.times if t <= end_h + 1e-9), dtype=np.float64)
        return np.arange(0.0, end_h + 1e-9, self.every_h)


def _with_samples(protocol: Protocol, times: np.ndarray, volume: float) -> Protocol:
    if volume <= 0:
        return protocol
    existing = {e.time_h for e in protocol.events_of(EventKind.SAMPLE)}
    end = protocol.harvest_time
    added = [Event(t, EventKind.SAMPLE, volume, "L") for t in times
             if t not in existing and (end is None or t < end)]
    return protocol.with_events(protocol.events + tuple(added))  # with_events sorts


def synthetic_campaign(model, protocols: Mapping[str, Protocol], *, sampling: SamplingPlan | None = None,
                       noise: NoiseModel | None = None, seed: int = 0,
                       initial_states: Mapping[str, Mapping[str, float]] | None = None,
                       batch_params: Mapping[str, Mapping[str, float]] | None = None,
                       covariates: Mapping[str, Mapping[str, object]] | None = None,
                       notes: Sequence[str] = (), source: str = "synthetic") -> Campaign:
    """A campaign measured from simulations of `model` (the "plant") on `protocols`.

    Args:
        model: a `cgt_twin.models.Twin` or kinetics — the truth the data come from.
        protocols: batch name -> protocol (each needs a harvest event or its sampling times set its end).
        sampling: the sampling plan (default: daily vcd, viability, glucose, lactate).
        noise: the measurement noise (default `DEFAULT_NOISE`).
        seed: random seed; the same seed and inputs give the same campaign.
        initial_states: batch -> initial state values (canonical units).
        batch_params: batch -> parameter values that differ from the model's for that batch.
        covariates: batch -> covariate name -> value, kept in ``batches.csv``.
        notes: notes kept with the campaign (say it is synthetic and how it was made).

    Returns:
        The checked `Campaign` (simulation failures raise, they never produce data).
    """
    from ..simulate import _as_twin, simulate

    twin = _as_twin(model)
    sampling = sampling or SamplingPlan()
    noise = noise or NoiseModel()
    rng = np.random.default_rng(seed)
    sampled: dict[str, Protocol] = {}
    times: dict[str, np.ndarray] = {}
    for name, protocol in protocols.items():
        end = protocol.harvest_time if protocol.harvest_time is not None else \
            max([e.time_h for e in protocol.events] + [0.0])
        times[name] = sampling.sampling_times(end)
        sampled[name] = _with_samples(protocol, times[name], sampling.sample_volume_l)
    grid = np.unique(np.concatenate(list(times.values())))
    trajectory = simulate(twin, sampled, grid, initial_states=initial_states, batch_params=batch_params,
                          covariates=covariates)  # a plant whose residual sees covariates gets each batch's own
    failed = {b: s for b, s in zip(trajectory["batch"].values, trajectory["status"].values, strict=True) if s != "ok"}
    if failed:
        raise RuntimeError(f"the plant simulation failed for {failed}; no data were made from it")
    observed = [v for v in sampling.variables if v not in trajectory.data_vars]
    if observed:
        raise ValueError(f"the model does not produce {observed}; it produces {sorted(trajectory.data_vars)}")
    rows = []
    for name in sampled:
        mask = np.isin(grid, times[name])
        feed_times = {e.time_h for e in sampled[name].events_of(EventKind.BOLUS)}
        for variable in sampling.variables:
            truth = trajectory[variable].sel(batch=name).values  # (time, phase)
            for phase, column in (("pre", 0), ("post", 1)):
                if phase == "post" and variable not in sampling.post_variables:
                    continue
                selected = mask & (np.isin(grid, list(feed_times)) if phase == "post" else True)
                values = noise.apply(variable, truth[selected, column], rng)
                keep = rng.random(values.shape) >= sampling.missing_fraction
                for t, value, kept in zip(grid[selected], values, keep, strict=True):
                    if not kept or not math.isfinite(value):
                        continue
                    limit = sampling.loq.get(variable)
                    censored = limit is not None and value < limit
                    rows.append({"batch": name, "time_h": float(t), "variable": variable,
                                 "value": float(limit if censored else value),
                                 "unit": trajectory[variable].attrs["units"], "phase": phase,
                                 "censored": "<" if censored else ""})
    media = {}
    for protocol in sampled.values():
        media.update(protocol.media)
    events, media_table = protocol_tables(sampled, media)
    batch_rows = []
    for name, protocol in sampled.items():
        row = {"batch": name, "cell_type": twin.kinetics.cell_type, "initial_volume": protocol.initial_volume,
               "volume_unit": "L", "max_volume": protocol.max_volume if protocol.max_volume else np.nan,
               "initial_medium": protocol.initial_medium or "", "feeds_known": True}
        row.update((covariates or {}).get(name, {}))
        batch_rows.append(row)
    tables = CampaignTables(batches=pd.DataFrame(batch_rows), measurements=pd.DataFrame(rows), events=events,
                            media=media_table, notes=[f"Synthetic data (seed {seed}) from "
                                                      f"{type(twin.kinetics).__name__}.", *notes],
                            source=source)
    return campaign_from_tables(tables)
