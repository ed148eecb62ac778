"""Model-predictive feeding: bolus volumes over a receding (shrinking) horizon, chosen against posterior draws.

```python
controller = FeedingController(twin, MPCConfig(medium="feed", bolus_max_l=0.08, glucose_min=2.0, probability=0.95))
plan = controller.step(predictor)        # the predictor's particles are the draws; plan.events = the next boluses
plan.write_csv("plan.csv")               # events.csv format
```

The decision variables are the volumes of the bolus feeds at the planned decision times (default: daily) from now to
the end of the batch. The objective is configuration: a weighted sum of the final titre (mg/L), the harvested product
(titre × volume, mg), the viable-cell yield (vcd × volume, 1e9 cells) and glucose-band tracking (−mean squared distance
of glucose from a band, mM²), minus a feed cost per litre. Constraints — vessel volume, bolus bounds, glucose
minimum/maximum, lactate and ammonia limits — are *chance constraints* over the draws: "glucose ≥ 2 mM in 95 % of
draws" means the draws' 5 % quantile stays above 2 mM at every check time (each row end: before every bolus and every
`check_every_h`). They enter the optimiser as squared-hinge penalties on that quantile; the bolus bounds are box
constraints and the volume limit is also enforced exactly by projection, so a returned plan never overfills.
The draws carry the posterior's and the filter's uncertainty but not the twin's structural error. By default the
predictor's latest one-step-ahead errors correct them for it, in two parts: a *drift*, the mean rate of those errors
(`Predictor.innovation_drift`, e.g. mM/h when the plant eats glucose faster than every draw), shifts each
constrained variable's draws in the direction that tightens its limit, growing with time until the decision after the
next one and constant after it (later decisions see the drift in their own measurements and correct for it); and the
errors' remaining scatter widens the draws around their mean by √λ, the variance inflation it calls for
(`Predictor.spread_inflation`; 1 while the twin predicts within its own spread).

A penalty on a quantile goes flat where the quantile's draws are depleted: once glucose runs out before a check time, a
somewhat larger bolus is eaten before that time too, and the gradient vanishes while the constraint is broken.
Where the gradient has stopped helping (the iteration would count as converged) while a limit on a species the feed
carries is still broken by more than 5 % of its bound, the controller takes *feasibility-restoration* steps instead:
more feed before each broken check of a lower limit (less for an upper limit), a step that doubles until the merit
improves — the direction is known without a gradient, since the feed raises that species.

Each call is a *real-time iteration*: projected-gradient steps with Barzilai–Borwein step sizes, continued from the
previous call's plan, step size and next candidate, with a bounded number of objective-and-gradient evaluations
(reverse mode through the solver) and a time budget, so the plan improves call by call within the loop's latency. If the optimiser fails, produces non-finite values or runs out of time before it has a
usable plan, the controller returns a safe fallback (the previous plan, else the configured default boluses), always
clipped to the bounds and the volume limit, with a status saying why. No returned volume is ever negative, NaN or out
of bounds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time as _time
from collections.abc import Mapping, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..data.errors import CampaignValidationError, Problem
from ..data.protocol import Event, EventKind, Protocol
from ..data.tables import EVENT_COLUMNS
from ..models.balance import EventCode
from ..models.twin import Twin
from ..simulate import SolverSettings
from .filter import observe_particles, systematic_resample
from .propagate import Segments, event_rows, inputs_at, padded_count, propagate, segments

__all__ = ["MPCConfig", "FeedingController", "Plan", "OBJECTIVE_TERMS"]

OBJECTIVE_TERMS = {
    "titer": "final titre, mg/L (mean over draws)",
    "product": "harvested product, final titre × volume, mg",
    "viable_cells": "viable-cell yield, final vcd × volume, 1e9 cells",
    "glucose_band": "−mean squared distance of glucose from `glucose_band` over the check times, mM²",
}
INITIAL_PLANS = ("track_limits", "even")
_TRACK_PASSES = 4  # solves of the tracking start (`MPCConfig.initial_plan`); 2 reached 1 565 of 1 566 mg/L (session 17)
_RESTORE_AT = 0.05  # relative violation of a fed species' limit at which restoration steps start
_STALL = 10  # evaluations without progress that end the iteration (see `MPCConfig.tolerance`)
_LIMITS = (("glucose", "glucose_min", "lower"), ("glucose", "glucose_max", "upper"),
           ("lactate", "lactate_max", "upper"), ("ammonia", "ammonia_max", "upper"))


@dataclasses.dataclass(frozen=True)
class MPCConfig:
    """What the controller decides, wants and must respect (canonical units: h, L, mM, mg/L).

    Attributes:
        medium: the feed medium given as boluses (a medium of the running protocol).
        decision_times_h: bolus decision times; default every `decision_every_h` from `decision_every_h` to before
            the end.
        decision_every_h: spacing of the default decision times, h.
        end_h: end of the batch (harvest), h; default the protocol's harvest.
        bolus_min_l, bolus_max_l: bounds of each bolus, L.
        max_volume_l: vessel working-volume limit, L; default the protocol's.
        objective: term -> weight (`OBJECTIVE_TERMS`).
        feed_cost: subtracted per litre of feed, in the objective's units.
        glucose_band: (low, high) mM, for the ``glucose_band`` term.
        glucose_min, glucose_max, lactate_max, ammonia_max: limits (mM; None = none).
        probability: the chance constraints hold in at least this fraction of draws.
        n_draws: draws (particles of the predictor) the plan is optimised over; 1 = nominal MPC (the mean state and
            the twin's point parameters).
        spread_inflation: how the chance constraints account for model error the posterior does not know about:
            ``"innovations"`` (default) widens each constrained variable's draws around their mean by √λ, with λ the
            predictor's `Predictor.spread_inflation` estimated from its latest one-step-ahead errors (1 while the
            twin predicts within its own spread); a number ≥ 1 fixes λ for every constrained variable (1 = the draws
            as they are). Nominal MPC (one draw) has no spread to widen.
        inflation_window: the number of latest innovations λ (and the drift) are estimated from (``"innovations"``).
        drift_correction: with ``spread_inflation="innovations"``, also shift the constrained variables' draws by the
            drift of the innovations (`Predictor.innovation_drift`; see the module docstring) and estimate λ from the
            innovations less that drift. A twin whose errors are a bias (the plant eats more every day) otherwise gets
            all of the bias as spread, widened over the whole horizon, and overfeeds (measured on the closed-loop
            benchmark's plant draw 6: λ up to 52, glucose kept at 23–26 mM or more late; benchmarks/README.md,
            session 16). `step` of nominal MPC (one draw) asks for neither; `plan` applies a `drift` given to it
            whatever the draws.
        drift_per: what the drift is a rate of: ``"hour"`` (default) a constant rate per hour; or a state of the
            twin (``"vcd"``: the error per hour and per 1e6 cells/mL, `Predictor.innovation_drift` with ``per``),
            applied at the state's current mean — a consumption the twin gets wrong grows with the cells, and a rate
            per hour averaged over the last days' smaller cultures lags behind it. Measured on the closed-loop
            benchmark at 99 % (benchmarks/README.md, session 17): with ``initial_plan="track_limits"``, whose plans
            keep glucose near its limit, ``"vcd"`` is needed (7 violation hours with the rate per hour, 1 with the
            rate per cell); with the even start it cost 2 mg/L and 1 violation hour, so it is not the default.
        initial_plan: where the optimiser starts when there is no previous plan: ``"even"`` (default) the vessel's
            headroom spread evenly over the decisions; ``"track_limits"`` the plan that keeps the chance constraint
            of every lower limit on a species the feed carries (glucose) on its bound until the next decision, found
            from the even start by a few passes of a linearised mixing balance (`_TRACK_PASSES` solves without
            gradients, within the call's time budget). The real-time iteration is local and keeps much of where it
            starts, so choose the start near the optimum you expect. Where the objective wants as little feed as
            the limit allows (titre diluted by feed, as in the closed-loop benchmark) the tracking start is better:
            there the iteration fed from day 1 from the even start (1 522 mg/L predicted at t = 0) and not before
            day 3 from the tracking start (1 560 mg/L; benchmarks/README.md, session 17). Where the optimum lies
            off the limit it can be worse: on the tests' two-bolus problem it ended 0.3 % below the even start's
            plan, with all the late feed in the last bolus.
        check_every_h: spacing of extra constraint checks, h. None (default) checks before every decision and at the
            end only: between boluses glucose falls and lactate and ammonia rise monotonically in a fed-batch, so those
            are the extremes, and every extra check is a solver segment (a cost in every evaluation).
        penalty: weight of the squared relative constraint violation against the (normalised) objective.
        max_evaluations: objective-and-gradient evaluations per call (the real-time iteration's bound).
        tolerance: the plan counts as ``"converged"`` when the projected gradient of the penalised merit (objective
            normalised by its first value; volumes relative to `bolus_max_l`) is below this in every decision, or
            when 10 evaluations in a row (across calls) improved the merit by less than this, relatively (the chance
            constraints' quantiles have kinks, where gradients need not vanish).
        time_budget_s: wall-time budget of one call, s.
        fallback_bolus_l: the default bolus (L) at every decision when there is no previous plan to fall back to.
        seed: draw selection.
        solver: ODE settings (looser than simulation's, as for the predictor).
    """

    medium: str = "feed"
    decision_times_h: tuple[float, ...] | None = None
    decision_every_h: float = 24.0
    end_h: float | None = None
    bolus_min_l: float = 0.0
    bolus_max_l: float = 0.1
    max_volume_l: float | None = None
    objective: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"titer": 1.0})
    feed_cost: float = 0.0
    glucose_band: tuple[float, float] = (2.0, 10.0)
    glucose_min: float | None = 2.0
    glucose_max: float | None = None
    lactate_max: float | None = None
    ammonia_max: float | None = None
    probability: float = 0.95
    n_draws: int = 64
    spread_inflation: str | float = "innovations"
    inflation_window: int = 5
    drift_correction: bool = True
    drift_per: str = "hour"
    initial_plan: str = "even"
    check_every_h: float | None = None
    penalty: float = 100.0
    max_evaluations: int = 6
    tolerance: float = 1e-3
    time_budget_s: float = 0.2
    fallback_bolus_l: float = 0.0
    seed: int = 0
    solver: SolverSettings = SolverSettings(rtol=1e-4, atol=1e-6)

    def check(self) -> None:
        """Raises `CampaignValidationError` listing every inconsistent setting."""
        problems = []
        unknown = sorted(set(self.objective) - set(OBJECTIVE_TERMS))
        if unknown:
            problems.append(f"unknown objective terms {unknown}; choose from {sorted(OBJECTIVE_TERMS)}")
        if not self.objective or not all(math.isfinite(w) for w in self.objective.values()):
            problems.append("objective needs at least one term with a finite weight")
        if not (0 <= self.bolus_min_l <= self.bolus_max_l) or not math.isfinite(self.bolus_max_l):
            problems.append(f"need 0 <= bolus_min_l <= bolus_max_l < inf, got {self.bolus_min_l}, "
                            f"{self.bolus_max_l}")
        if not self.bolus_min_l <= self.fallback_bolus_l <= self.bolus_max_l:
            problems.append("fallback_bolus_l must lie within the bolus bounds")
        if not 0.5 <= self.probability < 1:
            problems.append(f"probability must be in [0.5, 1), got {self.probability}")
        if self.n_draws < 1 or self.max_evaluations < 1 or self.time_budget_s <= 0:
            problems.append("n_draws and max_evaluations must be >= 1 and time_budget_s > 0")
        if not self.decision_every_h > 0 or (self.check_every_h is not None and not self.check_every_h > 0):
            problems.append("decision_every_h and check_every_h must be positive")
        if isinstance(self.spread_inflation, str):
            if self.spread_inflation != "innovations":
                problems.append(f"spread_inflation must be 'innovations' or a number >= 1, got "
                                f"{self.spread_inflation!r}")
        elif not (isinstance(self.spread_inflation, int | float) and math.isfinite(self.spread_inflation)
                  and self.spread_inflation >= 1):
            problems.append(f"spread_inflation must be 'innovations' or a finite number >= 1, got "
                            f"{self.spread_inflation!r}")
        if not (isinstance(self.inflation_window, int) and self.inflation_window >= 2):
            problems.append(f"inflation_window must be an integer >= 2, got {self.inflation_window!r}")
        if not isinstance(self.drift_correction, bool):
            problems.append(f"drift_correction must be true or false, got {self.drift_correction!r}")
        if not (isinstance(self.drift_per, str) and self.drift_per):
            problems.append(f"drift_per must be a state of the twin (e.g. 'vcd') or 'hour', got {self.drift_per!r}")
        if self.initial_plan not in INITIAL_PLANS:
            problems.append(f"initial_plan must be one of {', '.join(INITIAL_PLANS)}, got {self.initial_plan!r}")
        if not 0 < self.tolerance < 1:
            problems.append("tolerance must be in (0, 1)")
        if self.glucose_band[0] >= self.glucose_band[1]:
            problems.append(f"glucose_band must be (low, high) with low < high, got {self.glucose_band}")
        if (self.glucose_min is not None and self.glucose_max is not None
                and self.glucose_min >= self.glucose_max):
            problems.append("glucose_min must be below glucose_max")
        for name in ("glucose_min", "glucose_max", "lactate_max", "ammonia_max", "max_volume_l", "feed_cost"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be finite and >= 0, got {value}")
        if self.decision_times_h is not None and any(not (math.isfinite(t) and t >= 0)
                                                     for t in self.decision_times_h):
            problems.append("decision_times_h must be finite and >= 0")
        if problems:
            raise CampaignValidationError([Problem("mpc config", p) for p in problems])

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> MPCConfig:
        """Reads an ``[mpc]`` table (or a flat file) of these fields from a TOML file."""
        import tomllib

        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise CampaignValidationError(Problem(str(path), f"unreadable MPC config ({exc})")) from None
        table = document.get("mpc", document)
        known = {f.name for f in dataclasses.fields(cls)} - {"solver"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise CampaignValidationError(Problem(str(path), f"unknown MPC settings {unknown}; known: "
                                                             f"{', '.join(sorted(known))}"))
        values = dict(table)
        for name in ("decision_times_h", "glucose_band"):
            if name in values:
                values[name] = tuple(float(v) for v in values[name])
        try:
            config = cls(**values)
        except TypeError as exc:
            raise CampaignValidationError(Problem(str(path), str(exc))) from None
        config.check()
        return config


@dataclasses.dataclass(frozen=True)
class Plan:
    """One controller call's result.

    Attributes:
        time_h: when the plan was made, h.
        decision_times_h: the future decision times, h; `volumes_l` the bolus volume at each, L.
        medium: the medium fed.
        status: ``"converged"``, ``"improving"`` (the call's evaluation or time budget ended first: call again),
            or ``"fallback: <why>"``.
        objective: the plan's objective value (configured units; NaN for an unevaluated fallback).
        constraint_probability: constraint -> fraction of draws meeting it at every check time (within 0.1 % of the
            bound: a penalised optimum lies on it).
        evaluations: objective-and-gradient evaluations in this call; `seconds` its wall time.
        prediction: name -> (3, time) mean, lower and upper quantile of vcd, glucose, lactate, ammonia, titer and
            volume under this plan, at `prediction_times_h` (for plots; the draws as they are, not inflated).
        spread_inflation: constrained variable -> the variance-inflation factor λ its chance constraint used
            (`MPCConfig.spread_inflation`); `constraint_probability` is computed on the widened draws.
        drift: constrained variable -> the drift its draws were shifted by, in its unit per hour (0: none;
            `MPCConfig.drift_correction`).
    """

    time_h: float
    decision_times_h: tuple[float, ...]
    volumes_l: tuple[float, ...]
    medium: str
    status: str
    objective: float
    constraint_probability: Mapping[str, float]
    evaluations: int
    seconds: float
    prediction_times_h: tuple[float, ...] = ()
    prediction: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    spread_inflation: Mapping[str, float] = dataclasses.field(default_factory=dict)
    drift: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def is_fallback(self) -> bool:
        return self.status.startswith("fallback")

    @property
    def events(self) -> tuple[Event, ...]:
        """The planned boluses as events (volumes > 0)."""
        return tuple(Event(t, EventKind.BOLUS, v, "L", medium=self.medium, note=f"mpc plan at {self.time_h:g} h")
                     for t, v in zip(self.decision_times_h, self.volumes_l, strict=True) if v > 0)

    @property
    def next_bolus_l(self) -> float:
        """The volume to give at the first decision time (0 when there is none left)."""
        return float(self.volumes_l[0]) if self.volumes_l else 0.0

    def to_events(self, batch: str = "running") -> pd.DataFrame:
        """The plan in the ``events.csv`` format of a campaign folder."""
        rows = [{"batch": batch, "time_h": e.time_h, "kind": e.kind.value, "target": "", "amount": e.amount,
                 "unit": e.unit, "medium": e.medium, "note": e.note} for e in self.events]
        return pd.DataFrame(rows, columns=[*EVENT_COLUMNS, "note"])

    def write_csv(self, path: str | os.PathLike, batch: str = "running") -> Path:
        """Writes `to_events` to `path` (CSV)."""
        path = Path(path)
        self.to_events(batch).to_csv(path, index=False)
        return path

    def _repr_html_(self) -> str:
        from .._html import plan_html

        return plan_html(self)

    def __str__(self) -> str:
        volumes = ", ".join(f"{t:g} h: {v * 1000:.1f} mL" for t, v in zip(self.decision_times_h, self.volumes_l,
                                                                           strict=True))
        chances = ", ".join(f"{k} {v:.0%}" for k, v in self.constraint_probability.items())
        widened = ", ".join(f"{k} ×{math.sqrt(v):.2g}" for k, v in self.spread_inflation.items() if v > 1)
        shifted = ", ".join(f"{k} {v * 24:+.3g} per day" for k, v in self.drift.items() if v != 0)
        return (f"Plan at {self.time_h:g} h [{self.status}], objective {self.objective:.4g}, "
                f"{self.evaluations} evaluations in {self.seconds * 1000:.0f} ms\n  boluses: {volumes or 'none'}\n"
                f"  constraints met in: {chances or 'no constraints'}"
                + (f"\n  draws widened for model error (sd): {widened}" if widened else "")
                + (f"\n  draws shifted for the twin's drift: {shifted}" if shifted else ""))


@dataclasses.dataclass(frozen=True)
class _Call:
    """One controller call's problem: when, which decisions, the compiled problem and its arrays, the vessel."""

    time_h: float
    future: np.ndarray  # decision times from now on, h
    problem: _Problem
    dyn: dict
    volume_now: float  # L
    samples: tuple[tuple[float, float], ...]  # future (time h, volume L) sample removals
    max_volume: float | None  # L
    fallback: np.ndarray  # L per future decision
    why_fallback: str
    started: float  # perf_counter at the call's start
    feed: Mapping[str, float] = dataclasses.field(default_factory=dict)  # species -> concentration in the feed, mM
    inflation: Mapping[str, float] = dataclasses.field(default_factory=dict)  # constrained variable -> λ
    drift: Mapping[str, float] = dataclasses.field(default_factory=dict)  # constrained variable -> unit/h

    @property
    def volume_limit(self) -> float:
        return np.inf if self.max_volume is None else float(self.max_volume)

    def removed_until(self, t: float) -> float:
        """Volume removed by samples up to and including `t`, L."""
        return sum(a for ts, a in self.samples if ts <= t + 1e-9)


class FeedingController:
    """Chooses bolus feeds by MPC (see the module docstring). One controller serves one running batch.

    Args:
        twin: the twin (hybrid or not).
        config: `MPCConfig`.
    """

    def __init__(self, twin: Twin, config: MPCConfig | None = None):
        self.twin = twin
        self.config = config or MPCConfig()
        self.config.check()
        kinetics = twin.kinetics
        probe = kinetics.observe(kinetics.layout.unpack(jnp.ones(kinetics.layout.size)), twin.params)
        needed = {"titer", "vcd", "volume", "glucose"} if any(
            k in self.config.objective for k in ("titer", "product", "viable_cells", "glucose_band")) else set()
        needed |= {var for var, field, _ in _LIMITS if getattr(self.config, field) is not None}
        missing = sorted(v for v in needed if v not in probe)
        relevant_missing = [v for v in missing if v != "titer" or {"titer", "product"} & set(self.config.objective)]
        if relevant_missing:
            raise CampaignValidationError(Problem("mpc config", f"the model does not predict {relevant_missing}, "
                                                                "which the objective or constraints use"))
        per = self.config.drift_per
        if (self.config.drift_correction and self.config.spread_inflation == "innovations" and per != "hour"
                and per not in kinetics.layout.names):
            raise CampaignValidationError(Problem("mpc config", f"drift_per {per!r} is not a state of the model; "
                                                                f"choose 'hour' or one of "
                                                                f"{', '.join(kinetics.layout.names)}"))
        self.variables = tuple(v for v in ("vcd", "glucose", "lactate", "ammonia", "titer", "volume") if v in probe)
        self._previous: np.ndarray | None = None
        self._previous_times: tuple[float, ...] = ()
        self._scale: float | None = None
        self._iterate: dict | None = None  # the real-time iteration's state, carried from call to call
        self._n_rows: int | None = None

    def warm_up(self, predictor) -> float:
        """Compiles the controller's programs for this batch (one full call, then forgotten), so that the loop's
        calls do not compile. Returns the seconds it took."""
        started = _time.perf_counter()
        saved = (self.config, self._previous, self._previous_times, self._scale, self._iterate)
        self.config = dataclasses.replace(self.config, max_evaluations=1, time_budget_s=1e9)
        try:
            self.step(predictor)
        finally:
            self.config, self._previous, self._previous_times, self._scale, self._iterate = saved
        return _time.perf_counter() - started

    # -- inputs of one call --------------------------------------------------------------------------------------------
    def _decision_times(self, protocol: Protocol) -> tuple[np.ndarray, float]:
        config = self.config
        end = config.end_h if config.end_h is not None else protocol.harvest_time
        if end is None:
            raise CampaignValidationError(Problem("mpc config", "the batch has no harvest event: set end_h"))
        if config.decision_times_h is not None:
            times = np.asarray(sorted(config.decision_times_h), dtype=np.float64)
        else:
            times = np.arange(config.decision_every_h, end - 1e-9, config.decision_every_h)
        return times[times < end], float(end)

    def _draws(self, predictor, n_draws: int):
        """(states (D, n), params name -> (D,)) drawn from the predictor's weighted particles."""
        y, params, weights = predictor.particles()
        if n_draws == 1:  # nominal: the weighted mean state, the twin's point parameters
            return (np.einsum("p,pn->n", weights, y)[None, :],
                    {k: np.full(1, float(np.asarray(v))) for k, v in self.twin.params.items()})
        key = jax.random.PRNGKey(self.config.seed)
        index = np.asarray(systematic_resample(jax.random.fold_in(key, int(round(predictor.time_h * 3600))),
                                               jnp.asarray(weights)))
        pick = index[np.linspace(0, index.size - 1, n_draws).round().astype(int)]
        return y[pick], {k: v[pick] for k, v in params.items()}

    def step(self, predictor) -> Plan:
        """Plans from a `cgt_twin.control.Predictor`'s current belief (its particles, time and protocol)."""
        y, params = self._draws(predictor, self.config.n_draws)
        inflation = drift = None
        if self.config.spread_inflation == "innovations" and self.config.n_draws > 1:
            window = self.config.inflation_window
            measured = sorted({var for var, _, _ in self._limits() if var in predictor.variables})
            per = None if self.config.drift_per == "hour" else self.config.drift_per
            rates = {var: self._tightening(var, predictor.innovation_drift(var, last=window, per=per))
                     if self.config.drift_correction else 0.0 for var in measured}  # per hour (and per unit of per)
            inflation = {var: predictor.spread_inflation(var, last=window, drift=rates[var], per=per)
                         for var in measured}
            level = predictor.state_mean(per) if per is not None and any(rates.values()) else 1.0
            drift = {var: rate * level for var, rate in rates.items()}
        return self.plan(predictor.time_h, y, params, predictor.protocol, predictor.current_inputs(),
                         spread_inflation=inflation, drift=drift)

    def plan(self, time_h: float, states: np.ndarray, params: Mapping[str, np.ndarray], protocol: Protocol,
             inputs=None, *, spread_inflation: Mapping[str, float] | None = None,
             drift: Mapping[str, float] | None = None) -> Plan:
        """Plans from explicit draws: `states` (draws, state) at `time_h` (pre-event values there) and `params`
        name -> (draws,); `protocol` is the batch's recorded protocol (its future boluses of the controlled medium
        are replaced by the plan). `inputs` (`cgt_twin.models.kinetics.Inputs`) in force at `time_h` default to
        those the protocol's events set; a twin whose residual sees batch covariates needs them given (as
        `Predictor.current_inputs` does). `spread_inflation` (constrained variable -> λ ≥ 1) widens the draws of
        the chance constraints (`MPCConfig.spread_inflation`; `step` takes λ from the predictor's innovations);
        without it a numeric `MPCConfig.spread_inflation` applies, else none. `drift` (constrained variable -> rate,
        its unit per hour) shifts them (`MPCConfig.drift_correction`; `step` takes it from the innovations): the
        part that tightens the variable's limit is used, the rest ignored; without it, none."""
        call = self._setup(time_h, states, params, protocol, inputs, spread_inflation, drift)
        if not len(call.future):
            return self._finish(call, np.zeros(0), "converged", 0)
        return self._optimise(call, self._initial_guess(call))

    def evaluate(self, time_h: float, states: np.ndarray, params: Mapping[str, np.ndarray], protocol: Protocol,
                 volumes: Sequence[float], inputs=None, *, spread_inflation: Mapping[str, float] | None = None,
                 drift: Mapping[str, float] | None = None) -> tuple[float, float, np.ndarray]:
        """A given plan's ``(objective, penalty, gradient of objective - config.penalty·penalty per decision)``
        for the same draws as `plan` (for checks and what-if questions; `volumes` one per future decision)."""
        call = self._setup(time_h, states, params, protocol, inputs, spread_inflation, drift)
        values, grads, _ = _value_and_grad(call.problem, _full(np.asarray(volumes, dtype=np.float64), call.dyn),
                                           _arrays(call.dyn), jnp.asarray(call.volume_limit))
        values, grads = np.asarray(values), np.asarray(grads)[:, call.dyn["active"]]
        return float(values[0]), float(values[1]), grads[0] - self.config.penalty * grads[1]

    def _inflation(self, given: Mapping[str, float] | None) -> dict[str, float]:
        """Constrained variable -> λ: `given` (checked), else a numeric `MPCConfig.spread_inflation`, else 1."""
        constrained = sorted({var for var, _, _ in self._limits()})
        if given is None:
            fixed = self.config.spread_inflation
            return {var: float(fixed) if not isinstance(fixed, str) else 1.0 for var in constrained}
        unknown = sorted(set(given) - set(constrained))
        bad = {k: v for k, v in given.items() if not (math.isfinite(v) and v >= 1)}
        if unknown or bad:
            raise CampaignValidationError(Problem("mpc", f"spread_inflation must map constrained variables "
                                                         f"{constrained} to numbers >= 1; got {dict(given)}"))
        return {var: float(given.get(var, 1.0)) for var in constrained}

    def _tightening(self, variable: str, rate: float) -> float:
        """The part of a drift `rate` that tightens `variable`'s limits: downwards for a lower limit, upwards for an
        upper one, either way for a variable with both."""
        sides = {side for var, _, side in self._limits() if var == variable}
        if sides == {"lower"}:
            return min(rate, 0.0)
        if sides == {"upper"}:
            return max(rate, 0.0)
        return rate if sides else 0.0

    def _drift(self, given: Mapping[str, float] | None) -> dict[str, float]:
        """Constrained variable -> the drift used, unit/h: the tightening part of `given` (checked), else 0."""
        constrained = sorted({var for var, _, _ in self._limits()})
        given = dict(given or {})
        unknown = sorted(set(given) - set(constrained))
        bad = {k: v for k, v in given.items() if not math.isfinite(v)}
        if unknown or bad:
            raise CampaignValidationError(Problem("mpc", f"drift must map constrained variables {constrained} to "
                                                         f"finite rates (their unit per hour); got {given}"))
        return {var: self._tightening(var, float(given.get(var, 0.0))) for var in constrained}

    def _setup(self, time_h, states, params, protocol, inputs, spread_inflation=None, drift=None) -> _Call:
        """Everything one call needs: the table from now to the end with a row per future decision, the draws."""
        started = _time.perf_counter()
        config = self.config
        kinetics = self.twin.kinetics
        if config.medium not in protocol.media or not protocol.media[config.medium].is_known:
            raise CampaignValidationError(Problem("mpc config", f"medium {config.medium!r} is not a medium of the "
                                                                "running protocol with a known composition"))
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != kinetics.layout.size:
            raise CampaignValidationError(Problem("mpc", f"states must be (draws, {kinetics.layout.size}), got "
                                                         f"{states.shape}"))
        times, end = self._decision_times(protocol)
        max_volume = config.max_volume_l if config.max_volume_l is not None else protocol.max_volume
        future = times[times >= time_h - 1e-9]
        kept = tuple(e for e in protocol.events if not (e.kind is EventKind.BOLUS and e.medium == config.medium
                                                          and e.time_h >= time_h - 1e-9))
        rows = event_rows(kinetics, dataclasses.replace(protocol, events=kept))
        if inputs is None:
            if kinetics.covariate_encoding.names:
                raise CampaignValidationError(Problem("mpc", "this twin's residual sees batch covariates: pass the "
                                                             "inputs with the batch's covariates (or use step)"))
            inputs = inputs_at(kinetics, rows, time_h, self.twin.params)
        conc = np.asarray([protocol.media[config.medium].concentrations.get(s, 0.0) for s in kinetics.species])
        decision_rows = [(t, EventCode.BOLUS_MEDIUM, 0.0, conc) for t in future]
        every = config.check_every_h
        checks = np.arange(time_h + every, end - 1e-9, every) if every else np.zeros(0)
        all_rows = sorted([*rows, *decision_rows], key=lambda r: (r[0], r[1] == EventCode.BOLUS_MEDIUM))
        if self._n_rows is None:  # sized once for the whole batch (from t = 0): one compilation per controller
            full_checks = np.arange(every, end - 1e-9, every) if every else np.zeros(0)
            self._n_rows = padded_count(2 + len(rows) + len(times) + len(full_checks), 8)
        needed = 2 + sum(1 for r in all_rows if time_h - 1e-9 <= r[0] < end) + len(checks)
        if needed > self._n_rows:
            self._n_rows = padded_count(needed, 8)
        table = segments(kinetics, all_rows, time_h, end, checks, n_rows=self._n_rows)
        # one column per decision time of the whole batch (passed ones stay empty): the same shapes on every call
        matrix = np.zeros((table.t0.size, max(len(times), 1)))
        active = np.searchsorted(times, future - 1e-9)
        for k, t in zip(active, future, strict=True):
            hits = np.nonzero((np.abs(table.t0 - t) < 1e-9) & (table.code == int(EventCode.BOLUS_MEDIUM))
                              & (table.amount == 0.0) & table.valid)[0]
            matrix[hits[-1], k] = 1.0
        volume_now = float(np.median(states[:, -1]))
        samples = tuple((e.time_h, e.amount) for e in kept if e.kind is EventKind.SAMPLE
                        and e.time_h >= time_h - 1e-9 and np.isfinite(e.amount))
        problem = _Problem(kinetics, config.solver, self.variables, tuple(config.objective.items()), self._limits(),
                           config.probability, config.glucose_band, config.feed_cost)
        inflation = self._inflation(spread_inflation)
        widen = np.asarray([math.sqrt(inflation.get(v, 1.0)) for v in self.variables])  # sd factor per variable
        drift = self._drift(drift)
        rates = np.asarray([drift.get(v, 0.0) for v in self.variables])  # unit/h per variable
        # the drift accumulates until the decision after the next one, where the measurements have shown it again
        until = future[1] if len(future) > 1 else end
        shift = np.clip(np.asarray(table.t1) - time_h, 0.0, max(until - time_h, 0.0))[:, None] * rates[None, :]
        dyn = dict(params={k: jnp.asarray(np.asarray(v, dtype=np.float64)) for k, v in params.items()},
                   y=jnp.asarray(states), inputs=inputs, table=table._replace(valid=jnp.asarray(table.valid)),
                   matrix=jnp.asarray(matrix), widen=jnp.asarray(widen), shift=jnp.asarray(shift), active=active,
                   n_decisions=matrix.shape[1])
        fallback, why = self._fallback(future)
        call = _Call(float(time_h), future, problem, dyn, volume_now, samples, max_volume, fallback, why, started,
                     dict(zip(kinetics.species, conc.tolist(), strict=True)), inflation, drift)
        return dataclasses.replace(call, fallback=self._project(fallback, call))

    def _initial_guess(self, call: _Call) -> np.ndarray:
        """Where the optimiser starts without a previous plan: the even start (the vessel's headroom spread evenly
        over the decisions, at most `bolus_max_l` each), moved onto the lower limits' bounds with
        `MPCConfig.initial_plan` ``"track_limits"`` (`_track_limits`). A generous start is a feasible one for the
        lower limits (glucose), and a penalty method must start from a feasible side: from no feed, glucose is
        depleted in every draw, where more feed is eaten at once and the penalty is flat — measured: the optimiser
        stalled there with glucose ≥ 2 mM in 3 % of draws (and the tracking passes, started there, too)."""
        if call.why_fallback == "the previous plan":
            return np.clip(call.fallback, self.config.bolus_min_l, self.config.bolus_max_l)
        k = len(call.future)
        room = np.inf if call.max_volume is None else call.max_volume - call.volume_now + call.removed_until(np.inf)
        even = np.full(k, self.config.bolus_max_l if not np.isfinite(room) else
                       min(self.config.bolus_max_l, max(room, 0.0) / k))
        even = self._project(np.maximum(even, self.config.bolus_min_l), call)
        return self._track_limits(call, even) if self.config.initial_plan == "track_limits" else even

    def _track_limits(self, call: _Call, volumes: np.ndarray) -> np.ndarray:
        """The plan that keeps each lower chance constraint on a species the feed carries (glucose ≥ 2 mM in 95 % of
        draws) on its bound until the next decision: from `volumes`, `_TRACK_PASSES` passes, each one solve of the
        draws and, decision by decision in time order, the bolus changed by the margin left (or missing) at its
        tightest check before the next decision, divided by the rise one litre gives, (feed − level)/volume (mixing;
        consumption assumed unchanged), less what the earlier decisions' changes carried into that window; what a
        decision at its maximum cannot bring, the latest earlier ones with room bring (a window left depleted is
        where the penalty is flat). No such limit, or a solve that fails: `volumes` as given. Stops early at the
        call's time budget."""
        config = self.config
        lower = [(var, bound) for var, bound, side in self._limits()
                 if side == "lower" and bound > 0 and call.feed.get(var, 0.0) > bound]
        if not lower or not len(call.future):
            return volumes
        table = call.dyn["table"]
        valid, t_end = np.asarray(table.valid), np.asarray(table.t1)
        nxt = np.append(call.future[1:], np.inf)
        windows = [valid & (t_end > t + 1e-9) & (t_end <= t_next + 1e-9) for t, t_next in zip(call.future, nxt,
                                                                                                  strict=True)]
        level = 1 - config.probability
        column = self.variables.index("volume")
        for _ in range(_TRACK_PASSES):
            if _time.perf_counter() - call.started > config.time_budget_s:
                break
            observed, ok, _ = _evaluate(call.problem, _full(volumes, call.dyn), _arrays(call.dyn))
            observed, ok = np.asarray(observed), np.asarray(ok)
            if not ok.any() or not np.all(np.isfinite(observed[ok])):
                break
            widened = _widened(observed, ok, np.asarray(call.dyn["widen"]), np.asarray(call.dyn["shift"]))
            vessel = np.median(observed[ok][:, :, column], axis=0)  # L per row end
            change = np.zeros(len(volumes))
            for var, bound in lower:
                values = np.where(ok[:, None], widened[:, :, self.variables.index(var)], 0.0)  # as the penalty's
                quantile = np.quantile(values, level, axis=0)
                carried = 0.0  # the rise (mM) earlier decisions' changes in this pass bring to later windows
                rises = np.zeros(len(volumes))
                for k, window in enumerate(windows):
                    if not window.any():
                        continue
                    first = np.nonzero(window)[0][0]
                    rises[k] = (call.feed[var] - max(quantile[first], 0.0)) / max(vessel[first], 1e-9)  # mM per L
                    if rises[k] <= 0:
                        continue  # above the feed's own concentration: feeding cannot raise it here
                    wanted = volumes[k] + change[k] + (bound - quantile[window].min() - carried) / rises[k]
                    step = float(np.clip(wanted, config.bolus_min_l, config.bolus_max_l)) - volumes[k] - change[k]
                    change[k] += step
                    carried += step * rises[k]
                    short = max(wanted - config.bolus_max_l, 0.0) * rises[k]  # mM this decision cannot bring
                    for j in range(k - 1, -1, -1):  # ... brought by the latest earlier decisions with room left
                        if short <= 0:
                            break
                        if rises[j] > 0:
                            more = min(config.bolus_max_l - volumes[j] - change[j], short / rises[j])
                            change[j] += more
                            carried += more * rises[j]
                            short -= more * rises[j]
            volumes = self._project(volumes + change, call)
        return volumes

    def _limits(self) -> tuple[tuple[str, float, str], ...]:
        return tuple((var, float(getattr(self.config, field)), side) for var, field, side in _LIMITS
                     if getattr(self.config, field) is not None)

    def _fallback(self, future: np.ndarray) -> tuple[np.ndarray, str]:
        if self._previous is not None:
            lookup = dict(zip(self._previous_times, self._previous, strict=True))
            if all(t in lookup for t in future):
                return np.asarray([lookup[t] for t in future]), "the previous plan"
        return np.full(len(future), self.config.fallback_bolus_l), "the default boluses"

    def _restoration(self, call: _Call, observed: np.ndarray, ok: np.ndarray) -> np.ndarray | None:
        """The feasibility-restoration direction at a plan's predictions `observed` (draws, rows, variables): for
        each check where the chance constraint on a species the feed carries is broken by more than `_RESTORE_AT` of
        its bound, +1 (lower limit, the feed richer than the bound) or −1 (upper limit, the feed richer than the bound)
        on the last decision before that check; None when no such constraint is broken."""
        table = call.dyn["table"]
        valid, t_end = np.asarray(table.valid), np.asarray(table.t1)
        observed = _widened(observed, ok, np.asarray(call.dyn["widen"]), np.asarray(call.dyn["shift"]))
        direction = np.zeros(len(call.future))
        for var, bound, side in self._limits():
            if call.feed.get(var, 0.0) <= bound or bound <= 0:
                continue  # feeding does not move this limit's species towards its bound
            values = np.where(ok[:, None], observed[:, :, self.variables.index(var)], 0.0 if side == "lower" else 1e6)
            level = 1 - self.config.probability if side == "lower" else self.config.probability
            quantile = np.quantile(values, level, axis=0)
            broken = valid & ((bound - quantile if side == "lower" else quantile - bound) > _RESTORE_AT * bound)
            for t in t_end[broken]:
                before = np.nonzero(call.future < t - 1e-9)[0]
                if before.size:
                    direction[before[-1]] = 1.0 if side == "lower" else -1.0
        return direction if np.any(direction) else None

    def _project(self, volumes: np.ndarray, call: _Call) -> np.ndarray:
        """Clips to the bolus bounds (non-finite -> the lower bound) and, in time order, to the vessel's headroom."""
        config = self.config
        volumes = np.where(np.isfinite(volumes), volumes, config.bolus_min_l)
        volumes = np.clip(volumes, config.bolus_min_l, config.bolus_max_l)
        if call.max_volume is None:
            return volumes
        out = volumes.copy()
        for k, t in enumerate(call.future):
            volume_before = call.volume_now + out[:k].sum() - call.removed_until(t)
            out[k] = min(out[k], max(call.max_volume - volume_before, 0.0))
        return np.maximum(out, 0.0)

    # -- the optimisation ----------------------------------------------------------------------------------------------
    def _optimise(self, call: _Call, x0: np.ndarray) -> Plan:
        """One real-time iteration: projected-gradient steps with Barzilai–Borwein step sizes inside a trust region
        (the largest change of any bolus, relative to `bolus_max_l`; doubled after a success, halved after a failure)
        on the penalised merit, continued across calls (step size, trust region and the next candidate are kept),
        each call evaluating as many candidates as its budgets allow and returning the best plan it has evaluated.

        Within one belief (same time and draws) a candidate is accepted only if it lowers the merit (else the step
        halves); when the belief has changed since the last call (new measurements, a later time) the candidate
        computed from the last gradient is taken as it is — the real-time iteration of Diehl et al. (2005): one
        cheap step per call tracks the moving optimum instead of re-solving from scratch.

        Diehl M, Bock HG, Schlöder JP. A real-time iteration scheme for nonlinear optimization in optimal feedback
        control. SIAM J Control Optim 2005;43(5):1714–1736.
        """
        config = self.config
        u_max = config.bolus_max_l
        low = config.bolus_min_l / u_max
        problem, dyn, started = call.problem, call.dyn, call.started
        context = (call.time_h, hashlib.sha1(np.ascontiguousarray(np.asarray(dyn["y"])).tobytes()).hexdigest())
        state = self._carry_iterate(call, x0 / u_max)
        same_belief = state.get("context") == context
        if self._scale is None:  # the objective's scale, fixed once per controller: merits of calls stay comparable
            _, _, objective0 = _evaluate(problem, _full(state["x"] * u_max, dyn), _arrays(dyn))
            if np.isfinite(float(objective0)):
                self._scale = max(abs(float(objective0)), 1.0)
        scale = self._scale or 1.0
        project = lambda x: np.clip(x, low, 1.0)  # noqa: E731  (the volume limit: by penalty, then `_project`)
        evaluations, last_seconds, status = 0, 0.0, "improving"
        best = dict(state) if same_belief and state.get("f") is not None else {"x": state["x"], "f": None}
        candidate = state.get("candidate")
        alpha, radius, stall = state.get("alpha"), state.get("radius", 0.2), state.get("stall", 0)
        restore = None  # the length of the last feasibility-restoration step (relative to u_max), None: none taken

        def propose(x, g):
            """The next candidate: a Barzilai–Borwein step (a normalised gradient step before there is one),
            limited to `radius` in every decision (a trust region), projected on the bolus bounds."""
            scale_g = max(float(np.max(np.abs(g), initial=0.0)), 1e-300)
            step = alpha * g if alpha is not None else g / scale_g * radius
            largest = float(np.max(np.abs(step), initial=0.0))
            if largest > radius:
                step = step * (radius / largest)
            return project(x - step)

        try:
            while evaluations < config.max_evaluations:
                if evaluations and _time.perf_counter() - started + last_seconds > config.time_budget_s:
                    break
                trial = candidate if candidate is not None else best["x"]
                t0 = _time.perf_counter()
                merit, grad, report = _merit_and_grad(problem, _full(trial * u_max, dyn), _arrays(dyn),
                                                      jnp.asarray(call.volume_limit), jnp.asarray(scale),
                                                      jnp.asarray(config.penalty))
                evaluations += 1
                last_seconds = _time.perf_counter() - t0
                merit = float(merit)
                grad = np.asarray(grad)[dyn["active"]] * u_max  # d/dx = d/du · u_max, future decisions only
                finite = np.isfinite(merit) and np.all(np.isfinite(grad))
                if not finite and best.get("g") is None:
                    break  # the current plan itself cannot be evaluated: fall back
                gain = (best["f"] - merit) if (finite and best["f"] is not None and same_belief) else np.inf
                stall = stall + 1 if gain <= config.tolerance * max(abs(best["f"] or 0.0), 1.0) else 0
                if finite and (best["f"] is None or merit < best["f"] or not same_belief):
                    if best.get("g") is not None and candidate is not None:
                        step, change = trial - best["x"], grad - best["g"]
                        curvature = float(step @ change)
                        alpha = float(step @ step / curvature) if curvature > 1e-300 else None
                    best = {"x": trial, "f": merit, "g": grad, "report": report}
                    same_belief = True  # from here on, candidates must improve on this evaluation
                    radius, restore = min(2 * radius, 0.5), None
                else:  # worse or not finite: a shorter step
                    radius /= 2
                candidate = propose(best["x"], best["g"])
                pg = np.max(np.abs(project(best["x"] - best["g"]) - best["x"]), initial=0.0)
                if pg <= config.tolerance or radius < 1e-7 or stall >= _STALL:
                    (observed, ok), _ = best["report"]
                    direction = self._restoration(call, np.asarray(observed), np.asarray(ok))
                    restore = 0.1 if restore is None else 2 * restore
                    restored = None if direction is None else project(best["x"] + restore * direction)
                    if restored is None or np.array_equal(restored, best["x"]) or restore > 1.0:
                        status = "converged"
                        break
                    candidate, radius, stall = restored, 0.2, 0  # a restoration step: accepted if it lowers the merit
        except Exception as exc:  # noqa: BLE001  (any optimiser failure becomes a status, never a crash)
            status = f"fallback: the optimiser failed ({type(exc).__name__}: {exc}); using {call.why_fallback}"
        if best.get("report") is None and not status.startswith("fallback"):
            status = (f"fallback: no finite plan within the budget ({evaluations} evaluations, "
                      f"{_time.perf_counter() - started:.3f} s); using {call.why_fallback}")
        if status.startswith("fallback"):
            self._iterate = None
            return self._finish(call, call.fallback, status, evaluations)
        self._iterate = {"times": tuple(float(t) for t in call.future), "x": best["x"], "f": best["f"],
                         "g": best["g"], "candidate": candidate, "alpha": alpha, "radius": radius, "stall": stall,
                         "context": context, "report": best["report"]}
        volumes = best["x"] * u_max
        projected = self._project(volumes, call)
        reuse = best["report"] if np.allclose(projected, volumes, rtol=0, atol=1e-15) else None
        return self._finish(call, projected, status, evaluations, reuse)

    def _carry_iterate(self, call: _Call, x0: np.ndarray) -> dict:
        """The kept iterate restricted to this call's future decisions (passed ones dropped), or a fresh one at
        `x0` (scaled volumes) when there is none or the decision times changed."""
        kept = self._iterate
        future = tuple(float(t) for t in call.future)
        if kept is None or not set(future) <= set(kept["times"]):
            return {"x": x0}
        index = [kept["times"].index(t) for t in future]
        pick = lambda a: None if a is None else np.asarray(a)[index]  # noqa: E731
        whole = len(index) == len(kept["times"])  # same decisions: the kept merit and predictions still apply
        return {"x": pick(kept["x"]), "f": kept["f"] if whole else None, "g": pick(kept["g"]),
                "candidate": pick(kept["candidate"]), "alpha": kept["alpha"], "radius": kept["radius"],
                "stall": kept["stall"] if whole else 0,
                "context": kept["context"] if whole else None, "report": kept["report"] if whole else None}

    def _finish(self, call: _Call, volumes: np.ndarray, status: str, evaluations: int, reuse=None) -> Plan:
        """Evaluates the final plan (predictions for plots, constraint probabilities; reusing the optimiser's last
        solve of it when given) and remembers it."""
        config = self.config
        future, dyn = call.future, call.dyn
        if reuse is not None:
            (observed, ok), objective = reuse
        else:
            observed, ok, objective = _evaluate(call.problem, _full(volumes, dyn), _arrays(dyn))
        observed, ok = np.asarray(observed), np.asarray(ok)
        table = dyn["table"]
        valid = np.asarray(table.valid)
        t_end = np.asarray(table.t1)[valid]
        # the first row ending at each distinct time: values before any event there
        times, first = np.unique(t_end, return_index=True)
        keep_rows = np.nonzero(valid)[0][first]
        quantiles = (1 - config.probability, config.probability)
        prediction = {}
        for j, name in enumerate(self.variables):
            values = observed[ok][:, keep_rows, j] if ok.any() else np.full((1, keep_rows.size), np.nan)
            prediction[name] = np.stack([values.mean(axis=0), *np.quantile(values, quantiles, axis=0)])
        probabilities = {}
        widened = _widened(observed, ok, np.asarray(dyn["widen"]), np.asarray(dyn["shift"]))
        for var, bound, side in self._limits():
            j = self.variables.index(var)
            values = widened[:, np.nonzero(valid)[0], j]
            slack = 1e-3 * max(abs(bound), 1e-3)  # a penalty optimum sits on its bound, within a hair
            met = np.all(values >= bound - slack, axis=1) if side == "lower" else np.all(values <= bound + slack,
                                                                                            axis=1)
            probabilities[f"{var} {'>=' if side == 'lower' else '<='} {bound:g}"] = float(np.mean(met & ok))
        if call.max_volume is not None and len(future):
            volume = call.volume_now + np.cumsum(volumes) - np.asarray([call.removed_until(t) for t in future])
            probabilities[f"volume <= {call.max_volume:g} L"] = float(np.all(volume <= call.max_volume + 1e-9))
        volumes = np.asarray(volumes, dtype=np.float64)
        if len(future) and not status.startswith("fallback"):
            self._previous, self._previous_times = volumes.copy(), tuple(float(t) for t in future)
        elif len(future) and self._previous is None:
            self._previous, self._previous_times = volumes.copy(), tuple(float(t) for t in future)
        return Plan(call.time_h, tuple(float(t) for t in future), tuple(float(v) for v in volumes), config.medium,
                    status, float(objective), probabilities, evaluations, _time.perf_counter() - call.started,
                    tuple(float(t) for t in times), prediction, dict(call.inflation), dict(call.drift))


def _full(volumes, dyn) -> jnp.ndarray:
    """The future decisions' volumes placed in the vector over every decision time of the batch."""
    u = np.zeros(dyn["n_decisions"])
    u[dyn["active"]] = np.asarray(volumes, dtype=np.float64)
    return jnp.asarray(u)


def _arrays(dyn) -> dict:
    return {k: dyn[k] for k in ("params", "y", "inputs", "table", "matrix", "widen", "shift")}


def _widened(observed, ok, widen, shift=None):
    """The draws' predictions (draws, rows, variables) spread by `widen` (variables,) around their mean over the
    draws that solved, then moved by `shift` (rows, variables) (numpy or JAX arrays): the chance constraints' view of
    them (`MPCConfig.spread_inflation`, `MPCConfig.drift_correction`)."""
    xp = jnp if isinstance(observed, jax.Array) else np
    weight = ok / xp.maximum(xp.sum(ok), 1)
    mean = xp.einsum("d,drv->rv", weight, observed)
    widened = mean[None] + widen * (observed - mean[None])
    return widened if shift is None else widened + shift[None]


class _Problem(eqx.Module):
    """The static part of one MPC problem (model, solver, objective and constraint structure)."""

    kinetics: object = eqx.field(static=True)
    settings: SolverSettings = eqx.field(static=True)
    variables: tuple[str, ...] = eqx.field(static=True)
    objective: tuple[tuple[str, float], ...] = eqx.field(static=True)
    limits: tuple[tuple[str, float, str], ...] = eqx.field(static=True)
    probability: float = eqx.field(static=True)
    glucose_band: tuple[float, float] = eqx.field(static=True)
    feed_cost: float = eqx.field(static=True)


def _simulate_plan(problem: _Problem, u, dyn):
    table: Segments = dyn["table"]
    amount = table.amount + dyn["matrix"] @ u
    ends, _, status = propagate(problem.kinetics, problem.settings, dyn["params"], dyn["y"], dyn["inputs"],
                                table._replace(amount=amount))
    observed = observe_particles(problem.kinetics, dyn["params"], ends, problem.variables)  # (draws, rows, var)
    ok = (status == 0) & jnp.all(jnp.isfinite(observed), axis=(1, 2))
    observed = jnp.where(ok[:, None, None], observed, 0.0)
    return observed, ok


def _terms(problem: _Problem, u, dyn, volume_limit, observed, ok):
    """(objective, penalty) of plan `u` from the draws' predictions: the objective in its configured units, the
    penalty as the summed squared relative violations of the chance constraints and the volume limit."""
    table: Segments = dyn["table"]
    valid = table.valid
    last = jnp.maximum(jnp.sum(valid.astype(jnp.int32)) - 1, 0)
    index = {v: i for i, v in enumerate(problem.variables)}
    final = observed[:, last]
    weight = ok / jnp.maximum(jnp.sum(ok), 1)
    objective = 0.0
    for term, w in problem.objective:
        if term == "titer":
            value = jnp.sum(weight * final[:, index["titer"]])
        elif term == "product":
            value = jnp.sum(weight * final[:, index["titer"]] * final[:, index["volume"]])
        elif term == "viable_cells":
            value = jnp.sum(weight * final[:, index["vcd"]] * final[:, index["volume"]])
        else:  # glucose_band
            glucose = observed[:, :, index["glucose"]]
            low, high = problem.glucose_band
            distance = jnp.maximum(low - glucose, 0.0) + jnp.maximum(glucose - high, 0.0)
            value = -jnp.sum(weight[:, None] * valid[None, :] * distance ** 2) / jnp.maximum(jnp.sum(valid), 1)
        objective = objective + w * value
    objective = objective - problem.feed_cost * jnp.sum(u)
    penalty = 0.0
    widened = _widened(observed, ok, dyn["widen"], dyn["shift"])
    for var, bound, side in problem.limits:
        values = jnp.where(ok[:, None], widened[:, :, index[var]], 0.0 if side == "lower" else 1e6)
        level = 1 - problem.probability if side == "lower" else problem.probability
        quantile = jnp.quantile(values, level, axis=0)  # per row, over draws
        violation = (bound - quantile) if side == "lower" else (quantile - bound)
        relative = jnp.maximum(violation, 0.0) / max(bound, 1e-3)
        penalty = penalty + jnp.sum(jnp.where(valid, relative ** 2, 0.0))
    volume = observed[:, :, index["volume"]] if "volume" in index else None
    if volume is not None:
        over = jnp.maximum(jnp.max(jnp.where(valid[None, :], volume, 0.0)) - volume_limit, 0.0)
        penalty = penalty + over ** 2 / jnp.maximum(volume_limit, 1e-3) ** 2
    return objective, penalty


@eqx.filter_jit
def _value_and_grad(problem: _Problem, u, dyn, volume_limit):
    """Objective and penalty, ``values (2,)``, their gradients wrt the bolus volumes, ``(2, decisions)`` (reverse
    mode through the solver: one forward solve, two backward passes), and the forward solve's predictions
    ``(observed, ok)`` (kept so that the plan's report needs no extra solve)."""

    def both(v):
        observed, ok = _simulate_plan(problem, v, dyn)
        return jnp.stack(_terms(problem, v, dyn, volume_limit, observed, ok)), (observed, ok)

    values, vjp, predictions = jax.vjp(both, u, has_aux=True)
    grads = jnp.stack([vjp(jnp.asarray([1.0, 0.0]))[0], vjp(jnp.asarray([0.0, 1.0]))[0]])
    return values, grads, predictions


@eqx.filter_jit
def _merit_and_grad(problem: _Problem, u, dyn, volume_limit, scale, penalty):
    """The penalised merit −objective/scale + penalty·violations and its gradient wrt the bolus volumes (one
    forward solve, one backward pass), with the forward solve's ``((observed, ok), objective)`` for the report."""

    def merit(v):
        observed, ok = _simulate_plan(problem, v, dyn)
        objective, violations = _terms(problem, v, dyn, volume_limit, observed, ok)
        return -objective / scale + penalty * violations, ((observed, ok), objective)

    (value, report), grad = jax.value_and_grad(merit, has_aux=True)(u)
    return value, grad, report


@eqx.filter_jit
def _evaluate(problem: _Problem, u, dyn):
    """Every draw's predicted variables under plan `u`, which draws solved, and the objective."""
    observed, ok = _simulate_plan(problem, u, dyn)
    objective, _ = _terms(problem, u, dyn, jnp.asarray(jnp.inf), observed, ok)
    return observed, ok, objective
