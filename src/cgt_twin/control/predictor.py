"""`Predictor`: the twin inside a control loop — assimilate at-line measurements of a running batch, forecast ahead.

```python
predictor = Predictor.load("twins/cho", n_particles=256)   # compiles every entry point here, once
predictor.start(protocol, {"vcd": 0.4, "glucose": 32.0, ...})
report = predictor.update(new_rows)                        # DataFrame: time_h, variable, value[, unit]
bands = predictor.forecast(horizon_h=72)                   # mean, q05, q95 per variable and time
predictor.save("loop_state/")                              # a restarted loop resumes from here
```

Why a particle filter (and not an extended or unscented Kalman filter): the belief to carry is over states *and* the
twin's parameters, whose posterior (NUTS draws) is skewed and correlated, and the states are positive with multiplicative
noise; particles take posterior draws as they are and keep every state positive. Its cost is one vmapped solve of all
particles, which on the 2-core development machine stays within the control loop's budget (see `benchmarks/`).
Measured against a cubature (unscented, α = 1) Kalman filter on the log-states, both estimating the states only, on
the same plant and measurements (`benchmarks/filter_choice.py`, 3 plant draws): neither is uniformly more accurate
(filtered NRMSE vcd 0.022 vs 0.019, glucose 0.040 vs 0.045, lactate 0.018 vs 0.015, IgG 0.011 vs 0.009; particle vs
Kalman), and the Kalman update was 1.4× faster (14 vs 20 ms at load 4.4). The particle filter is kept because only it
carries the posterior's parameter draws, which the forecast bands and the MPC's chance constraints are computed over;
a Kalman filter would have to approximate that posterior by a Gaussian in an augmented state.

Messy data is normal in a plant, so `update` never trusts its input:
- a non-finite value or time, a value outside the variable's physical range, an unknown variable or unit, or a time
  before the batch start is *rejected with a reason* and changes nothing;
- an exact duplicate (same time, variable and value as one already accepted) is rejected as a duplicate;
- a measurement that arrives late (older than the filter's time) is accepted: the filter rolls back to its snapshot
  before that time and re-assimilates everything after it, in time order. Each assimilation's random numbers depend
  only on its time, so the result does not depend on the order in which measurements arrived.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import math
import os
import time as _time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

from .._atomic import atomic_folder
from ..data.errors import CampaignValidationError, Problem
from ..data.protocol import Event, Protocol
from ..data.units import UnitConversionError, convert
from ..data.variables import CANONICAL_VARIABLES
from ..models.kinetics import Inputs
from ..models.twin import Twin
from ..simulate import SolverSettings
from .filter import assimilate, forecast_particles, weighted_quantiles
from .propagate import event_rows, inputs_at, padded_count, segments

__all__ = ["Predictor", "PredictorSettings", "UpdateReport", "Rejection", "DEFAULT_NOISE_IF_UNFITTED",
           "extend_protocol"]

DEFAULT_NOISE_IF_UNFITTED = (0.0, 0.10)  # σ_abs, σ_rel for variables the twin has no noise model for
STATE_FORMAT = "cgt_twin predictor state"
STATE_SCHEMA = 2  # 2: snapshots carry their innovations (schema 1 states are read without them)


@dataclasses.dataclass(frozen=True)
class PredictorSettings:
    """How the filter runs.

    Attributes:
        n_particles: particles (states × parameter draws).
        horizon_h: default forecast horizon, h.
        step_h: default spacing of forecast output times, h.
        quantiles: lower and upper quantile of forecast bands.
        resample_below: resample when the effective sample size falls below this fraction of the particles.
        state_jitter: log-sd of the multiplicative jitter of cell and species states after resampling (process noise).
        shrinkage: Liu–West kernel constant a for parameters (1 keeps them fixed).
        initial_spread: log-sd of the particles' initial states around the given initial state (cells, species).
        segment_rows: padded rows of one propagation (more events in one interval are split into several calls).
        seed: random seed (resampling, jitter, initial spread).
        solver: ODE settings. The default tolerances (rtol 1e-4, atol 1e-6 on scaled states) are looser than
            simulation's: at-line measurements carry ≥ 1 % noise, so a 1e-4 solver error is invisible in the filter,
            and the looser solve keeps `update` + `forecast` within a control loop's latency budget.
    """

    n_particles: int = 256
    horizon_h: float = 72.0
    step_h: float = 6.0
    quantiles: tuple[float, float] = (0.05, 0.95)
    resample_below: float = 0.5
    state_jitter: float = 0.02
    shrinkage: float = 0.98
    initial_spread: float = 0.10
    segment_rows: int = 16
    seed: int = 0
    solver: SolverSettings = SolverSettings(rtol=1e-4, atol=1e-6)

    def check(self) -> None:
        problems = []
        if self.n_particles < 2:
            problems.append("n_particles must be at least 2")
        if not (self.horizon_h > 0 and self.step_h > 0):
            problems.append("horizon_h and step_h must be positive")
        if not 0 < self.quantiles[0] < self.quantiles[1] < 1:
            problems.append(f"quantiles must satisfy 0 < low < high < 1, got {self.quantiles}")
        if not 0 < self.resample_below <= 1:
            problems.append("resample_below must be in (0, 1]")
        if not 0 < self.shrinkage <= 1:
            problems.append("shrinkage must be in (0, 1]")
        if self.state_jitter < 0 or self.initial_spread < 0:
            problems.append("state_jitter and initial_spread must be >= 0")
        if problems:
            raise CampaignValidationError([Problem("predictor settings", p) for p in problems])


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A measurement `update` did not use, and why."""

    row: int
    time_h: float
    variable: str
    value: float
    reason: str


@dataclasses.dataclass(frozen=True)
class UpdateReport:
    """What one `update` did.

    Attributes:
        accepted: measurements used.
        rejected: the others, each with its reason.
        time_h: the filter's time afterwards, h.
        ess: effective sample size of the weights the last measurements gave, before any resampling (particles):
            the filter's health (a small value means the measurements surprised the particles).
        replayed_from: time from which the filter re-assimilated because of late data (None if it did not).
        failed_particles: particles whose solve failed in this update (replaced by resampling).
        seconds: wall time of the update.
    """

    accepted: int
    rejected: tuple[Rejection, ...]
    time_h: float
    ess: float
    replayed_from: float | None
    failed_particles: int
    seconds: float

    def __str__(self) -> str:
        lines = [f"accepted {self.accepted}, rejected {len(self.rejected)}; filter at {self.time_h:g} h, "
                 f"ESS {self.ess:.0f}" + (f"; re-filtered from {self.replayed_from:g} h (late data)"
                                           if self.replayed_from is not None else "")]
        lines += [f"  row {r.row}: {r.variable} = {r.value!r} at {r.time_h!r} h: {r.reason}" for r in self.rejected]
        return "\n".join(lines)


@dataclasses.dataclass
class _Snapshot:
    """The filter at one time (pre-event values there): what a rollback returns to."""

    time_h: float
    y: np.ndarray
    params: dict[str, np.ndarray]
    log_weights: np.ndarray
    inputs: tuple
    # the measurements assimilated here and their prediction before it: (variable, 4) = value, measured flag,
    # predicted mean, predicted variance (canonical units); None where nothing was measured
    innovation: np.ndarray | None = None


class Predictor:
    """Online state and parameter estimation for one running batch, with forecasts (see the module docstring).

    Args:
        twin: the twin (its noise model weighs measurements).
        posterior: a `cgt_twin.bayes.Posterior` of the twin: particles start from its draws (a new batch of
            `group`, when the posterior has a grouping covariate). Without one every particle has the twin's
            parameter values and only the state is filtered (said in `notes`).
        settings: `PredictorSettings`.
        noise: variable -> (σ_abs, σ_rel) overriding the twin's noise model.
        group: level of the posterior's grouping covariate for this batch (clone, donor, cell line).
    """

    def __init__(self, twin: Twin, posterior=None, settings: PredictorSettings | None = None, *,
                 noise: Mapping[str, tuple[float, float]] | None = None, group: str | None = None,
                 compile: bool = True):
        self.settings = settings or PredictorSettings()
        self.settings.check()
        self.twin = twin
        self.posterior = posterior
        self.group = group
        kinetics = twin.kinetics
        probe = kinetics.observe(kinetics.layout.unpack(jnp.ones(kinetics.layout.size)), twin.params)
        self.variables = tuple(v for v in probe if v in CANONICAL_VARIABLES)
        base = {**twin.noise, **dict(noise or {})}
        self.notes: list[str] = []  # what the user should know about this predictor's belief
        unfitted = [v for v in self.variables if v not in base]
        if unfitted:
            self.notes.append(f"no noise model for {', '.join(unfitted)}: measurements of them are weighed with "
                              f"σ_rel = {DEFAULT_NOISE_IF_UNFITTED[1]:g}")
        self.noise = np.asarray([base.get(v, DEFAULT_NOISE_IF_UNFITTED) for v in self.variables], dtype=np.float64)
        self._base_params = self._parameter_particles()
        self._base_notes = list(self.notes)
        self._protocol: Protocol | None = None
        self._start_h = 0.0
        self._initial: dict[str, float] = {}
        self._groups: list[tuple] = []  # (time, values, measured, replicate counts), in time order
        self._accepted: set[tuple[float, str, float]] = set()
        self._snapshots: list[_Snapshot] = []
        self.compile_seconds = 0.0
        self._last_info: dict[str, float] = {}
        # base keys of the assimilation and the forecast noise; each call folds in its time (`_time_salt`)
        self._keys = (jax.random.PRNGKey(self.settings.seed), jax.random.PRNGKey(self.settings.seed + 1))
        if compile:
            self._compile()

    # -- construction ------------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, twin_dir: str | os.PathLike, *, use_posterior: bool = True, **settings) -> Predictor:
        """A predictor for the twin artifact at `twin_dir` (and its stored posterior unless `use_posterior` is
        False). Keyword arguments are `PredictorSettings` fields, plus ``noise`` and ``group``."""
        from ..io import load_posterior, load_twin

        noise, group = settings.pop("noise", None), settings.pop("group", None)
        twin = load_twin(twin_dir)
        posterior = load_posterior(twin_dir) if use_posterior else None
        predictor = cls(twin, posterior, PredictorSettings(**settings), noise=noise, group=group)
        predictor.twin_dir = str(twin_dir)
        return predictor

    def _parameter_particles(self) -> dict[str, np.ndarray]:
        n = self.settings.n_particles
        if self.posterior is None:
            self.notes.append("no posterior: every particle has the twin's parameter values (only the state is "
                              "filtered)")
            return {k: np.full(n, float(np.asarray(v))) for k, v in self.twin.params.items()}
        from ..bayes.predictive import batch_parameter_draws

        values, index, kinds = batch_parameter_draws(self.posterior, self.twin, ["running"],
                                                     {"running": self.group} if self.group else None,
                                                     n_draws=n, seed=self.settings.seed)
        rng = np.random.default_rng(self.settings.seed)
        pick = np.arange(n) if index.size >= n else rng.choice(index.size, size=n, replace=True)
        self.notes.append(f"particles start from {min(index.size, n)} posterior draws ({kinds['running']})")
        return {k: np.asarray(v)[pick, 0].astype(np.float64) for k, v in values.items()}

    @property
    def _varying(self) -> tuple[str, ...]:
        return tuple(sorted(k for k, v in self._base_params.items() if np.ptp(v) > 0))

    def _compile(self) -> None:
        """Runs every kernel once on the twin's default state, so that no call in the loop compiles."""
        start = _time.perf_counter()
        kinetics = self.twin.kinetics
        state = kinetics.default_initial_state()
        protocol = Protocol(float(state["volume"]))
        saved = (self._protocol, self._initial, self._start_h)
        encoding = kinetics.covariate_encoding
        self._begin(protocol, {**state, "volume": float(state["volume"])}, 0.0,
                    np.zeros(encoding.size) if encoding.names else None)
        self._assimilate_group(self._snapshots[-1], 1.0, np.ones(len(self.variables)),
                               np.ones(len(self.variables), dtype=bool))
        self.forecast()
        self._protocol, self._initial, self._start_h = saved
        self._groups, self._accepted, self._snapshots = [], set(), []
        self.notes = list(self._base_notes)
        self.compile_seconds = _time.perf_counter() - start

    # -- the running batch ---------------------------------------------------------------------------------------------
    def start(self, protocol: Protocol, initial_state: Mapping[str, float] | None = None, *,
              time_h: float = 0.0, covariates: Mapping[str, object] | None = None) -> None:
        """Starts (or restarts) a batch: its protocol so far and its initial state at `time_h` (canonical units;
        states not given take the model's default, noted in `notes`; volume from the protocol). `covariates`
        (clone, donor, …) are needed when the twin's neural residual sees them."""
        kinetics = self.twin.kinetics
        names = kinetics.layout.names
        state = kinetics.default_initial_state()
        given = dict(initial_state or {})
        unknown = sorted(set(given) - set(names))
        problems = [Problem("initial state", f"unknown state {u!r}; the model's states are {', '.join(names)}")
                    for u in unknown]
        for name, value in given.items():
            if name in names and not (np.isfinite(value) and value >= 0):
                problems.append(Problem("initial state", f"{name} must be finite and >= 0, got {value!r}"))
        if not math.isfinite(time_h) or time_h < 0:
            problems.append(Problem("initial state", f"time_h must be finite and >= 0, got {time_h!r}"))
        if problems:
            raise CampaignValidationError(problems)
        encoding = kinetics.covariate_encoding
        vector = encoding.vector(dict(covariates or {}), batch="running") if encoding.names else None
        self.notes = list(self._base_notes)
        defaulted = sorted(set(names) - set(given) - {"volume"})
        if defaulted:
            self.notes.append(f"initial state: model defaults for {', '.join(defaulted)}")
        state.update({k: float(v) for k, v in given.items()})
        state["volume"] = float(given.get("volume", protocol.initial_volume))
        self._begin(protocol, state, time_h, vector)

    def _begin(self, protocol: Protocol, state: dict[str, float], time_h: float, vector) -> None:
        """Sets the batch up from a checked initial state: particles (spread around it), inputs, first snapshot."""
        kinetics = self.twin.kinetics
        self._protocol = protocol
        self._start_h = float(time_h)
        self._initial = dict(state)
        self._groups, self._accepted = [], set()
        rng = np.random.default_rng(self.settings.seed)
        n = self.settings.n_particles
        y0 = np.asarray([state[s] for s in kinetics.layout.names], dtype=np.float64)
        spread = kinetics.layout.mask(("cells", "species")) * self.settings.initial_spread
        y = y0[None, :] * np.exp(spread[None, :] * rng.standard_normal((n, y0.size)))
        inputs = inputs_at(kinetics, event_rows(kinetics, protocol), time_h, self.twin.params, vector)
        self._snapshots = [_Snapshot(self._start_h, y, dict(self._base_params), np.zeros(n),
                                     tuple(np.asarray(a) for a in inputs))]

    def start_from_campaign(self, campaign, batch: str) -> UpdateReport:
        """Starts from a campaign's batch (its protocol and the state measured at 0 h) and assimilates every
        measurement of it after 0 h: what a control loop does when it joins a running batch."""
        from ..simulate import initial_state

        if batch not in campaign.batches:
            raise CampaignValidationError(Problem("batch", f"no batch {batch!r}; batches: "
                                                           f"{', '.join(campaign.batches)}"))
        state, _ = initial_state(self.twin.kinetics, campaign, batch)
        names = self.twin.kinetics.covariate_encoding.names
        meta = campaign.batch_metadata()
        covariates = {n: meta.loc[batch, n] for n in names if n in meta.columns}
        self.start(campaign.protocols[batch], state, covariates=covariates)
        long = campaign.to_dataframe("long")
        long = long[(long["batch"] == batch) & (long["time_h"] > 0) & (long["phase"] == "pre")]
        if "censored" in long.columns:
            long = long[~long["censored"].astype(bool)]
        return self.update(long[["time_h", "variable", "value"]])

    @property
    def time_h(self) -> float:
        """The filter's time: that of the newest assimilated measurement, h (pre-event values there)."""
        self._require_started()
        return self._snapshots[-1].time_h

    @property
    def protocol(self) -> Protocol:
        """The running batch's protocol so far (its recorded events)."""
        self._require_started()
        return self._protocol

    def _require_started(self) -> None:
        if self._protocol is None:
            raise RuntimeError("the predictor has no running batch: call start() first")

    # -- events ------------------------------------------------------------------------------------------------------
    def record_events(self, events: Iterable[Event]) -> float | None:
        """Adds events that happened (boluses given, samples taken). An event before the filter's time re-filters
        from there. Returns the time re-filtered from (None if nothing was replayed)."""
        self._require_started()
        events = tuple(events)
        if not events:
            return None
        protocol = extend_protocol(self._protocol, events, file="events")
        earliest = min(e.time_h for e in events)
        if earliest < self._start_h:
            raise CampaignValidationError(Problem("events", f"an event at {earliest:g} h is before the batch start "
                                                            f"({self._start_h:g} h)"))
        self._protocol = protocol
        if earliest < self.time_h - 1e-9:  # the snapshot at an event's own time is pre-event: still valid
            return self._replay_from(earliest, inclusive=False)
        return None

    # -- measurements ------------------------------------------------------------------------------------------------
    def _parse(self, measurements) -> tuple[list[tuple[float, str, float, int]], list[Rejection]]:
        if isinstance(measurements, pd.DataFrame):
            frame = measurements.reset_index(drop=True)
        else:
            frame = pd.DataFrame(list(measurements))
            if frame.shape[1] == 3 and list(frame.columns) == [0, 1, 2]:
                frame.columns = ["time_h", "variable", "value"]
        missing = [c for c in ("time_h", "variable", "value") if c not in frame.columns]
        if missing:
            raise CampaignValidationError(Problem("measurements", f"missing columns {missing}; expected time_h, "
                                                                  "variable, value (and optionally unit)"))
        good, rejected = [], []
        for i, row in frame.iterrows():
            variable = str(row["variable"])
            try:
                t = float(row["time_h"])
                value = float(row["value"])
            except (TypeError, ValueError):
                rejected.append(Rejection(int(i), math.nan, variable, math.nan, "time or value is not a number"))
                continue

            def reject(reason: str, value=value, t=t, variable=variable, i=i) -> None:
                rejected.append(Rejection(int(i), t, variable, value, reason))

            if not math.isfinite(t):
                reject("non-finite time")
                continue
            if not math.isfinite(value):
                reject("non-finite value")
                continue
            if variable not in self.variables:
                reject(f"not a variable this twin observes ({', '.join(self.variables)})")
                continue
            unit = row.get("unit") if "unit" in frame.columns else None
            canonical = CANONICAL_VARIABLES[variable].unit
            if unit is not None and isinstance(unit, str) and unit.strip() and unit.strip() != canonical:
                try:
                    value = float(convert(np.asarray([value]), unit.strip(), canonical, species=variable)[0])
                except (UnitConversionError, ValueError) as exc:
                    reject(f"unit {unit!r} cannot be converted to {canonical} ({exc})")
                    continue
            spec = CANONICAL_VARIABLES[variable]
            if (spec.lower is not None and value < spec.lower) or (spec.upper is not None and value > spec.upper):
                reject(f"outside the physical range [{spec.lower}, {spec.upper}] of {variable} ({canonical})")
                continue
            if t < self._start_h - 1e-9:
                reject(f"before the batch start ({self._start_h:g} h)")
                continue
            key = (round(t, 9), variable, value)
            if key in self._accepted or any(g[:3] == (t, variable, value) for g in good):
                reject("duplicate of a measurement already received")
                continue
            good.append((t, variable, value, int(i)))
        return good, rejected

    def update(self, measurements, events: Iterable[Event] = ()) -> UpdateReport:
        """Assimilates new measurements (and records `events` that happened, first).

        Args:
            measurements: a DataFrame (or records) with ``time_h, variable, value`` and optionally ``unit`` (pint
                converts it to the canonical unit). Replicates at one time are fine; see the module docstring for
                what is rejected.

        Returns:
            An `UpdateReport` (accepted, rejected with reasons, the filter time, ESS, any re-filtering).
        """
        self._require_started()
        started = _time.perf_counter()
        replayed = self.record_events(events)
        good, rejected = self._parse(measurements)
        failed = 0
        if good:
            earliest = min(g[0] for g in good)
            now = self.time_h
            late = earliest < now - 1e-9 or (math.isclose(earliest, now, abs_tol=1e-9) and len(self._snapshots) > 1)
            for t, variable, value, _ in good:
                self._add(t, variable, value)
            if late:
                replay_time = self._replay_from(earliest, inclusive=True)
                replayed = replay_time if replayed is None else min(replayed, replay_time)
            else:
                first = len(self._snapshots) == 1
                for group in [g for g in self._groups if g[0] > now + 1e-9 or
                              (first and math.isclose(g[0], now, abs_tol=1e-9))]:
                    failed += self._assimilate_group(self._snapshots[-1], *group)
        ess = self._last_info["ess"] if good and self._last_info else self.ess
        return UpdateReport(len(good), tuple(rejected), self.time_h, float(ess), replayed, failed,
                            _time.perf_counter() - started)

    def _add(self, t: float, variable: str, value: float) -> None:
        """Adds a measurement to the time-ordered groups (replicates of a variable at one time are averaged)."""
        self._accepted.add((round(t, 9), variable, value))
        j = self.variables.index(variable)
        for k, (time_k, values, measured, counts) in enumerate(self._groups):
            if math.isclose(time_k, t, abs_tol=1e-9):
                values, measured, counts = values.copy(), measured.copy(), counts.copy()
                values[j] = (values[j] * counts[j] + value) / (counts[j] + 1)
                counts[j] += 1
                measured[j] = True
                self._groups[k] = (time_k, values, measured, counts)
                return
        values = np.zeros(len(self.variables))
        measured = np.zeros(len(self.variables), dtype=bool)
        counts = np.zeros(len(self.variables))
        values[j], measured[j], counts[j] = value, True, 1
        self._groups.append((t, values, measured, counts))
        self._groups.sort(key=lambda g: g[0])

    def _replay_from(self, time_h: float, *, inclusive: bool) -> float:
        """Rolls back to the last snapshot still valid for a change at `time_h` (a measurement there: snapshots
        before it, `inclusive`; an event there: snapshots up to it, which are pre-event) and re-assimilates every
        later measurement group in time order. Returns the time rolled back to."""
        keep = [s for s in self._snapshots
                if s.time_h < time_h - 1e-9 or (not inclusive and s.time_h <= time_h + 1e-9)] or self._snapshots[:1]
        self._snapshots = keep
        origin = keep[-1].time_h
        for group in self._groups:
            at_start = math.isclose(group[0], origin, abs_tol=1e-9) and len(self._snapshots) == 1
            if group[0] > origin + 1e-9 or at_start:
                self._assimilate_group(self._snapshots[-1], *group)
        return origin

    def _assimilate_group(self, snapshot: _Snapshot, time_h: float, values: np.ndarray, measured: np.ndarray,
                          counts: np.ndarray | None = None) -> int:
        """One assimilation from `snapshot` to `time_h`; appends the new snapshot. Returns failed particles."""
        kinetics = self.twin.kinetics
        rows = event_rows(kinetics, self._protocol)
        cursor = snapshot
        failed = 0
        # long intervals with many events are split so that every call has the same padded shape
        while True:
            pending = [r for r in rows if cursor.time_h - 1e-9 <= r[0] < time_h - 1e-9]
            limit = self.settings.segment_rows - 1
            end = time_h if len(pending) < limit else pending[limit - 1][0] + 0.0
            last_chunk = end >= time_h - 1e-12
            if not last_chunk and end <= cursor.time_h + 1e-12:  # many events at one time: take them in one call
                raise CampaignValidationError(Problem("events", f"more than {limit} events at {end:g} h"))
            table = segments(kinetics, rows, cursor.time_h, end, n_rows=self.settings.segment_rows)
            if last_chunk:
                obs_values, obs_measured = values, measured
            else:  # an intermediate stop: propagate only (no measurement)
                obs_values, obs_measured = np.zeros_like(values), np.zeros_like(measured)
            # host arrays go to the kernel as they are: a jnp conversion per array costs a dispatch each (measured:
            # ~0.2 ms apiece, a third of a forecast's time); random numbers are keyed by the time (late data replays)
            log_params = {k: np.log(cursor.params[k]) for k in self._varying}
            new_params, _, y, log_w, inputs_end, info = assimilate(
                kinetics, self.settings.solver, cursor.params, log_params, cursor.y, cursor.log_weights,
                Inputs(*cursor.inputs), table, self.variables, obs_values, obs_measured, self.noise,
                self._keys[0], _time_salt(end), self.settings.resample_below, self.settings.state_jitter,
                self.settings.shrinkage)
            failed += int(info["failed"])
            cursor = _Snapshot(float(end), np.asarray(y), {k: np.asarray(v) for k, v in new_params.items()},
                               np.asarray(log_w), tuple(np.asarray(a) for a in inputs_end))
            self._last_info = {k: float(v) for k, v in info.items() if np.ndim(v) == 0}
            if last_chunk:
                if np.any(obs_measured):
                    cursor.innovation = np.stack([np.asarray(obs_values, dtype=np.float64),
                                                  np.asarray(obs_measured, dtype=np.float64),
                                                  np.asarray(info["predicted_mean"]),
                                                  np.asarray(info["predicted_var"])], axis=1)
                break
        self._snapshots.append(cursor)
        return failed

    def _repr_html_(self) -> str:
        from .._html import predictor_html

        return predictor_html(self)

    @property
    def ess(self) -> float:
        """Effective sample size of the current particles."""
        self._require_started()
        lw = self._snapshots[-1].log_weights
        w = np.exp(lw - lw.max())
        w /= w.sum()
        return float(1.0 / np.sum(w ** 2))

    # -- forecasts ---------------------------------------------------------------------------------------------------
    def particles(self) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
        """The current belief: states (particles, state) at `time_h`, parameters name -> (particles,), and normalised
        weights (particles,)."""
        self._require_started()
        snap = self._snapshots[-1]
        return snap.y.copy(), {k: v.copy() for k, v in snap.params.items()}, _weights(snap)

    def innovations(self) -> pd.DataFrame:
        """Every assimilated measurement against the filter's prediction of it just before (replicates at one time
        averaged): the one-step-ahead errors that show whether the twin's spread is honest.

        Returns:
            DataFrame with ``time_h``, ``variable``, ``value`` (measured), ``predicted_mean``, ``predicted_sd`` (the
            spread of the particles' prediction), ``noise_sd`` (the measurement noise model at the prediction),
            ``interval_h`` (hours since the previous assimilation) and ``standardized``
            = (value − predicted_mean) / √(predicted_sd² + noise_sd²), canonical units. For an honest twin the
            standardized innovations have mean ≈ 0 and variance ≈ 1; a variance well above 1 means the twin is more
            certain than it should be (model error the posterior does not know about).
        """
        self._require_started()
        rows = []
        for j, variable in enumerate(self.variables):
            for time_h, interval, value, mean, var, noise_var, _ in self._innovation_records(j):
                total = math.sqrt(var + noise_var)
                rows.append({"time_h": time_h, "variable": variable, "value": value, "predicted_mean": mean,
                             "predicted_sd": math.sqrt(var), "noise_sd": math.sqrt(noise_var), "interval_h": interval,
                             "standardized": (value - mean) / total if total > 0 else math.nan})
        columns = ["time_h", "variable", "value", "predicted_mean", "predicted_sd", "noise_sd", "interval_h",
                   "standardized"]
        table = pd.DataFrame(rows, columns=columns)
        return table.sort_values("time_h", kind="stable").reset_index(drop=True)  # in time, variables in their order

    def _innovation_records(self, j: int, *, newest_first: bool = False, per: str | None = None):
        """``(time h, hours since the previous assimilation, measured value, predicted mean, predicted variance,
        measurement-noise variance at the prediction, exposure)`` of every assimilation that measured variable `j`.
        The exposure is the interval's hours, or with `per` (a state of the twin) the hours times the state's mean at
        the interval's two ends (its particles' weighted means after assimilation there), e.g. 1e6 cells/mL·h."""
        k = self._state_index(per) if per is not None else None
        pairs = list(zip(self._snapshots[:-1], self._snapshots[1:], strict=False))
        for previous, snap in reversed(pairs) if newest_first else pairs:
            if snap.innovation is None or not snap.innovation[j, 1]:
                continue
            value, _, mean, var = (float(x) for x in snap.innovation[j])
            noise_var = float(self.noise[j, 0] ** 2 + (self.noise[j, 1] * mean) ** 2)
            interval = snap.time_h - previous.time_h
            exposure = interval if k is None else interval * 0.5 * (_state_mean(previous, k) + _state_mean(snap, k))
            yield snap.time_h, interval, value, mean, max(var, 0.0), noise_var, exposure

    def _state_index(self, state: str) -> int:
        names = self.twin.kinetics.layout.names
        if state not in names:
            raise CampaignValidationError(Problem("per", f"unknown state {state!r}; the twin's states are "
                                                         f"{', '.join(names)}"))
        return names.index(state)

    def state_mean(self, state: str) -> float:
        """The current belief's weighted mean of one of the twin's states (canonical unit), at `time_h`'s latest
        assimilation."""
        self._require_started()
        return _state_mean(self._snapshots[-1], self._state_index(state))

    def innovation_drift(self, variable: str, *, last: int = 5, per: str | None = None) -> float:
        """The mean rate of the latest one-step-ahead errors of `variable`, in its unit per hour: d = Σ e / Σ Δt over
        the `last` assimilations that measured it (innovation e = measured − predicted mean, Δt the hours it was
        predicted over). 0 with fewer than two such innovations.

        With `per`, a state of the twin (``"vcd"``), the rate per hour and per unit of that state instead:
        d = Σ e / Σ Δt·x̄, x̄ the state's mean over each interval (the mean of its filtered means at the two ends).
        A consumption the twin gets wrong by a factor makes errors that grow with the cells that consume; per cell
        the rate is steady, and d·x(now) extrapolates it to the next interval where a rate per hour, averaged over
        the last days' smaller cultures, lags behind (benchmarks/README.md, session 17).

        A twin that only lacks precision has errors that scatter around zero (d near 0); a twin whose structure
        misses something has errors of one sign that grow with the interval (glucose lower than every draw, day
        after day, when the plant eats faster): d < 0 then, and ``d·Δt`` (``d·x̄·Δt``) is the part of the next error
        to expect. `cgt_twin.control.FeedingController` shifts its chance constraints' draws by it
        (`MPCConfig.drift_correction`, `MPCConfig.drift_per`).
        """
        j = self._observed_index(variable, "innovation_drift", last)
        errors = exposure = 0.0
        count = 0
        for _, interval, value, mean, _, _, weight in self._innovation_records(j, newest_first=True, per=per):
            if interval > 0:
                errors += value - mean
                exposure += weight
                count += 1
            if count == last:
                break
        return errors / exposure if count >= 2 and exposure > 0 else 0.0

    def _observed_index(self, variable: str, what: str, last: int) -> int:
        if variable not in self.variables:
            raise CampaignValidationError(Problem(what, f"unknown variable {variable!r}; the predictor observes "
                                                        f"{', '.join(self.variables)}"))
        if last < 2:
            raise CampaignValidationError(Problem(what, f"last must be >= 2, got {last}"))
        self._require_started()
        return self.variables.index(variable)

    def spread_inflation(self, variable: str, *, last: int = 5, drift: float = 0.0, per: str | None = None) -> float:
        """How much wider the twin's spread of `variable` must be to explain its latest one-step-ahead errors: the
        variance-inflation factor λ = max(1, (Σ e² − Σ σ²) / Σ s²) over the `last` assimilations that measured it
        (innovation e = measured − predicted mean, σ the measurement noise there, s the particles' predicted spread;
        a moment estimate, as in adaptive covariance inflation of ensemble Kalman filters: Anderson 2007, Tellus A
        59:210–224). 1 with fewer than two such innovations, or when the errors are within the predicted spread.
        With a `drift` d (unit/h; `innovation_drift`), the errors are taken less the drift's part, e − d·Δt: the
        scatter left once a bias is accounted for; with `per`, d is per unit of that state and its part d·x̄·Δt.

        The particles' spread covers only the uncertainty the posterior and the filter know; an inflation well above
        1 says that the twin's structure misses something (the plant eats more late in the batch than any draw, say).
        `cgt_twin.control.FeedingController` widens the chance constraints' draws by √λ around their mean.
        """
        j = self._observed_index(variable, "spread_inflation", last)
        if not math.isfinite(drift):
            raise CampaignValidationError(Problem("spread_inflation", f"drift must be finite, got {drift}"))
        recent = []  # (innovation², noise variance, predicted variance), newest first; no pandas: called every MPC step
        for _, interval, value, mean, var, noise_var, exposure in self._innovation_records(j, newest_first=True,
                                                                                          per=per):
            if interval > 0:
                recent.append(((value - mean - drift * exposure) ** 2, noise_var, var))
            if len(recent) == last:
                break
        if len(recent) < 2:
            return 1.0
        squared, noise_var, predicted_var = np.asarray(recent).sum(axis=0)
        spread = float(predicted_var)
        excess = float(squared - noise_var)
        if not spread > 0:
            return 1.0
        return float(max(1.0, excess / spread))

    def current_inputs(self):
        """The inputs (rates, set-points, event times) in force at the filter time."""
        return Inputs(*self._snapshots[-1].inputs)

    def forecast(self, horizon_h: float | None = None, plan: Sequence[Event] = (), *, step_h: float | None = None,
                 band: str = "state") -> xr.Dataset:
        """Forecast from the filter's time with the recorded events plus a planned `plan`.

        Args:
            horizon_h: how far ahead, h (default `PredictorSettings.horizon_h`).
            plan: future events (boluses of the protocol's media, set-points…), in addition to recorded ones.
            step_h: spacing of the output times, h.
            band: ``"state"`` (spread of the predicted truth) or ``"measurement"`` (of a new measurement).

        Returns:
            Dataset with dims ``(statistic, time)`` (statistic = mean and the settings' quantiles, named ``q05`` and
            ``q95`` for the default (0.05, 0.95)) for every
            observed variable, values before any event at each time; attrs: filter time, particles, ESS, failed
            particles, notes.
        """
        self._require_started()
        if band not in ("state", "measurement"):
            raise CampaignValidationError(Problem("band", f"must be 'state' or 'measurement', got {band!r}"))
        horizon = float(horizon_h if horizon_h is not None else self.settings.horizon_h)
        step = float(step_h if step_h is not None else self.settings.step_h)
        if not (horizon > 0 and step > 0 and math.isfinite(horizon) and math.isfinite(step)):
            raise CampaignValidationError(Problem("forecast", "horizon_h and step_h must be finite and positive"))
        kinetics = self.twin.kinetics
        protocol = self._protocol
        if plan:
            protocol = extend_protocol(protocol, plan, file="plan")
        snap = self._snapshots[-1]
        start, end = snap.time_h, snap.time_h + horizon
        times = np.unique(np.append(np.arange(start + step, end + 1e-9, step), end))
        rows = event_rows(kinetics, protocol)
        # rows at the events only, the output times interpolated inside them; both padded a little (every empty row
        # still costs a solver set-up for every particle; a new padded count compiles once more)
        n_rows = padded_count(1 + sum(1 for r in rows if start - 1e-9 <= r[0] < end - 1e-9), 8)
        table = segments(kinetics, rows, start, end, n_rows=n_rows)
        padded_times = np.append(times, np.full(padded_count(len(times), 8) - len(times), end))
        observed, weights, n_failed = forecast_particles(
            kinetics, self.settings.solver, snap.params, snap.y, snap.log_weights, self.current_inputs(), table,
            padded_times, self.variables, self.noise, self._keys[1], _time_salt(start),
            1.0 if band == "measurement" else 0.0)
        observed, weights = np.asarray(observed)[:, : 1 + len(times)], np.asarray(weights)
        bands = np.concatenate([np.einsum("p,prv->rv", weights, observed)[None],
                                weighted_quantiles(observed, weights, self.settings.quantiles)])
        out_times = np.concatenate([[start], times])  # column 0 of `bands` = now
        data = {name: (("statistic", "time"), bands[:, :, j], {"units": CANONICAL_VARIABLES[name].unit})
                for j, name in enumerate(self.variables)}
        q_low, q_high = self.settings.quantiles
        names = ["mean", *(f"q{100 * q:02.0f}" if 100 * q == round(100 * q) else f"q{100 * q:g}"
                           for q in self.settings.quantiles)]
        return xr.Dataset(data, coords={"statistic": names, "time": out_times},
                          attrs={"filter_time_h": start, "n_particles": self.settings.n_particles, "ess": self.ess,
                                 "failed_particles": int(n_failed), "band": band,
                                 "quantiles": json.dumps([q_low, q_high]), "notes": json.dumps(self.notes)})

    # -- persistence -------------------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Writes the filter's full state (JSON + npz, never pickle; written atomically) so a restarted loop can
        `restore` it and lose nothing."""
        self._require_started()
        from ..data.campaign import _protocol_to_json

        arrays: dict[str, np.ndarray] = {}
        for i, snap in enumerate(self._snapshots):
            arrays[f"s{i}_y"] = snap.y
            arrays[f"s{i}_log_weights"] = snap.log_weights
            for k, v in snap.params.items():
                arrays[f"s{i}_p_{k}"] = v
            for j, a in enumerate(snap.inputs):
                arrays[f"s{i}_u{j}"] = np.asarray(a)
            if snap.innovation is not None:
                arrays[f"s{i}_innovation"] = snap.innovation
        for i, (_t, values, measured, counts) in enumerate(self._groups):
            arrays[f"g{i}_values"], arrays[f"g{i}_measured"], arrays[f"g{i}_counts"] = values, measured, counts
        buffer = _io.BytesIO()
        np.savez(buffer, **arrays)
        array_bytes = buffer.getvalue()
        body = {"format": STATE_FORMAT, "schema_version": STATE_SCHEMA,
                "settings": _settings_json(self.settings), "variables": list(self.variables),
                "twin": _twin_fingerprint(self.twin), "start_h": self._start_h, "initial": self._initial,
                "protocol": _protocol_to_json(self._protocol),
                "media": {k: {"concentrations": dict(m.concentrations), "inferred": sorted(m.inferred),
                              "note": m.note} for k, m in self._protocol.media.items()},
                "snapshots": [{"time_h": s.time_h, "params": sorted(s.params)} for s in self._snapshots],
                "groups": [g[0] for g in self._groups],
                "accepted": [list(a) for a in sorted(self._accepted)], "notes": self.notes}
        body["content_hash"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode() + array_bytes).hexdigest()
        with atomic_folder(folder, overwrite=overwrite) as tmp:
            (tmp / "predictor.json").write_text(json.dumps(body, indent=1, sort_keys=True), encoding="utf-8")
            (tmp / "predictor.npz").write_bytes(array_bytes)
        return Path(folder)

    def restore(self, folder: str | os.PathLike) -> None:
        """Restores a state written by `save` (for the same twin; checked by fingerprint and content hash)."""
        from ..data.campaign import _protocol_from_json
        from ..data.protocol import Medium

        folder = Path(folder)
        try:
            body = json.loads((folder / "predictor.json").read_text(encoding="utf-8"))
            array_bytes = (folder / "predictor.npz").read_bytes()
        except (OSError, ValueError) as exc:
            raise CampaignValidationError(Problem(str(folder), f"no readable predictor state ({exc})")) from None
        if body.get("format") != STATE_FORMAT or body.get("schema_version", 99) > STATE_SCHEMA:
            raise CampaignValidationError(Problem(str(folder), "not a predictor state this library reads"))
        recorded = body.pop("content_hash", None)
        actual = hashlib.sha256(json.dumps(body, sort_keys=True).encode() + array_bytes).hexdigest()
        if recorded != actual:
            raise CampaignValidationError(Problem(str(folder), "content hash mismatch: the state was modified or "
                                                               "truncated"))
        if body["twin"] != _twin_fingerprint(self.twin) or tuple(body["variables"]) != self.variables:
            raise CampaignValidationError(Problem(str(folder), "the state was saved for another twin"))
        if body["settings"]["n_particles"] != self.settings.n_particles:
            raise CampaignValidationError(Problem(str(folder), f"the state has {body['settings']['n_particles']} "
                                                               f"particles, this predictor {self.settings.n_particles}"))
        media = {k: Medium(k, v["concentrations"], frozenset(v["inferred"]), v["note"])
                 for k, v in body["media"].items()}
        with np.load(_io.BytesIO(array_bytes), allow_pickle=False) as stored:
            arrays = {k: stored[k] for k in stored.files}
        n_inputs = len(Inputs._fields)
        self._protocol = _protocol_from_json(body["protocol"], media, {})
        self._start_h = float(body["start_h"])
        self._initial = dict(body["initial"])
        self._snapshots = [_Snapshot(float(s["time_h"]), arrays[f"s{i}_y"], {k: arrays[f"s{i}_p_{k}"]
                                                                             for k in s["params"]},
                                     arrays[f"s{i}_log_weights"], tuple(arrays[f"s{i}_u{j}"] for j in range(n_inputs)),
                                     arrays.get(f"s{i}_innovation"))
                           for i, s in enumerate(body["snapshots"])]
        self._groups = [(float(t), arrays[f"g{i}_values"], arrays[f"g{i}_measured"], arrays[f"g{i}_counts"])
                        for i, t in enumerate(body["groups"])]
        self._accepted = {(float(a[0]), str(a[1]), float(a[2])) for a in body["accepted"]}
        self.notes = list(body["notes"])


def _weights(snap: _Snapshot) -> np.ndarray:
    """A snapshot's normalised particle weights."""
    w = np.exp(snap.log_weights - snap.log_weights.max())
    return w / w.sum()


def _state_mean(snap: _Snapshot, k: int) -> float:
    """The particles' weighted mean of state `k` in a snapshot."""
    return float(np.dot(_weights(snap), snap.y[:, k]))


def _time_salt(time_h: float) -> np.ndarray:
    """The time, in seconds, folded into a random key: a call at the same time draws the same numbers (so replaying
    late data reproduces in-order arrival)."""
    return np.asarray(int(round(time_h * 3600)), dtype=np.uint32)  # an array, traced (a scalar would be static)


def extend_protocol(protocol: Protocol, events: Sequence[Event], *, file: str) -> Protocol:
    """`protocol` with more events, checked like any protocol (bad events raise, naming `file`)."""
    fields = {f.name: getattr(protocol, f.name) for f in dataclasses.fields(protocol)}
    fields["events"] = (*protocol.events, *events)
    extended, problems = Protocol.checked(file=file, batch="running", **fields)
    if problems:
        raise CampaignValidationError(problems)
    return extended


def _settings_json(settings: PredictorSettings) -> dict:
    out = dataclasses.asdict(settings)
    out["quantiles"] = list(settings.quantiles)
    return out


def _twin_fingerprint(twin: Twin) -> str:
    """A hash of the twin's structure, parameter values and noise model (what the saved particles depend on)."""
    from ..io import _model_section

    section, arrays = _model_section(twin)
    digest = hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()
