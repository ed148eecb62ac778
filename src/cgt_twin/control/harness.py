"""Closed-loop testing: a controller against a plant that is *not* the twin.

The plant differs from the twin in structure, not only in parameters (by default the CHO model with the lactate
metabolic shift, which the twin lacks), each plant draw has its own parameters, and it has process noise (a daily
multiplicative disturbance of cells and metabolites), measurement noise and a measurement delay: a sample taken at
``t`` reaches the controller at ``t + delay_h``. The loop is a plain Python loop, as in a plant: measurements in,
`Predictor.update`, `FeedingController.step`, bolus set-point out.

```python
results = compare_strategies(plant, scenario, twin, posterior,
                             {"standard": None, "nominal MPC": nominal_config, "robust MPC": robust_config})
results.groupby("strategy")[["final_titer", "violation_hours", "feed_l"]].mean()
```
"""

from __future__ import annotations

import dataclasses
import math
import time as _time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..data.protocol import Event, EventKind, Protocol
from ..data.synthetic import NoiseModel
from ..models.cho import CHOFedBatch
from ..models.kinetics import Inputs
from ..models.twin import Twin
from .mpc import FeedingController, MPCConfig
from .predictor import Predictor, PredictorSettings, extend_protocol
from .propagate import event_rows, padded_count, propagate, segments

__all__ = ["Plant", "Scenario", "LoopResult", "run_closed_loop", "compare_strategies", "default_plant"]


@dataclasses.dataclass(frozen=True)
class Plant:
    """The simulated plant.

    Attributes:
        twin: the plant's model and nominal parameters (its structure should differ from the controller's twin).
        parameter_spread: log-sd of each plant draw's parameters in `spread_parameters` around the nominal ones.
        spread_parameters: parameters that vary between plant draws.
        process_noise: log-sd of the multiplicative disturbance of cells and species at every sample.
        noise: measurement noise (`cgt_twin.data.synthetic.NoiseModel`).
        delay_h: time from sampling to the result reaching the controller, h.
        measured: variables measured at every sample.
    """

    twin: Twin
    parameter_spread: float = 0.10
    spread_parameters: tuple[str, ...] = ("mu_max", "q_p", "Y_x_glc", "m_glc", "k_d")
    process_noise: float = 0.03
    noise: NoiseModel = NoiseModel()
    delay_h: float = 2.0
    measured: tuple[str, ...] = ("vcd", "glucose", "lactate", "titer")

    def draw(self, seed: int) -> dict[str, float]:
        """One plant draw's parameter values."""
        rng = np.random.default_rng(seed)
        values = {k: float(np.asarray(v)) for k, v in self.twin.params.items()}
        for name in self.spread_parameters:
            if name in values:
                values[name] *= float(np.exp(self.parameter_spread * rng.standard_normal()))
        return values


def default_plant(**changes) -> Plant:
    """The CHO plant with the lactate shift (the library's `CHOFedBatch()` twin lacks it)."""
    return Plant(Twin(CHOFedBatch(lactate_consumption=True)), **changes)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """The batch the loop runs.

    Attributes:
        protocol: the batch's protocol without the controlled boluses (initial volume, media, vessel limit, harvest).
        initial_state: the true initial state (canonical units).
        decision_times_h: times of the bolus decisions, h.
        standard_boluses_l: the standard schedule's bolus at each decision time, L (strategy "standard").
        medium: the bolus medium.
    """

    protocol: Protocol
    initial_state: Mapping[str, float]
    decision_times_h: tuple[float, ...]
    standard_boluses_l: tuple[float, ...]
    medium: str = "feed"

    def __post_init__(self):
        if len(self.decision_times_h) != len(self.standard_boluses_l):
            raise ValueError("decision_times_h and standard_boluses_l must have the same length")
        if self.protocol.harvest_time is None:
            raise ValueError("the scenario's protocol needs a harvest event (the end of the batch)")


@dataclasses.dataclass(frozen=True)
class LoopResult:
    """One closed-loop run: what the plant really did under one strategy.

    Attributes:
        strategy, plant_seed: which run.
        final_titer: true final titre, mg/L; `product_mg` titre × volume at harvest.
        feed_l: total bolus volume, L.
        violation_hours: hours (on an hourly grid) in which a true value broke a constraint: glucose below its
            minimum, lactate or ammonia above their limits, volume above the vessel's.
        min_glucose: the lowest true glucose, mM.
        fallbacks: controller calls that returned a fallback plan; `call_seconds` their median wall time.
        boluses_l: the bolus given at each decision time, L.
        trajectory: true hourly values (time_h and every state).
        innovations: the predictor's one-step-ahead errors (`Predictor.innovations`; empty without a predictor).
    """

    strategy: str
    plant_seed: int
    final_titer: float
    product_mg: float
    feed_l: float
    violation_hours: int
    min_glucose: float
    fallbacks: int
    call_seconds: float
    boluses_l: tuple[float, ...]
    trajectory: pd.DataFrame
    innovations: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def _advance(kinetics, params, y, inputs, protocol: Protocol, start: float, end: float):
    """The plant from `start` to `end`: hourly true states (times, states) and the state and inputs at `end`."""
    rows = event_rows(kinetics, protocol)
    hours = np.arange(math.floor(start) + 1.0, end - 1e-9, 1.0)
    count = 2 + len(hours) + sum(1 for r in rows if start - 1e-9 <= r[0] < end - 1e-9)
    table = segments(kinetics, rows, start, end, hours, n_rows=padded_count(count, 32))
    from ..simulate import SolverSettings

    ends, inputs_end, status = propagate(kinetics, SolverSettings(), {k: jnp.asarray([v]) for k, v in params.items()},
                                         jnp.asarray(y)[None], inputs, table)
    ends = np.asarray(ends[0])
    if int(status[0]) != 0:
        raise RuntimeError(f"the plant simulation failed between {start:g} and {end:g} h (status {int(status[0])})")
    valid = table.valid
    t_end = table.t1[valid]
    return t_end, ends[valid], ends[int(valid.sum()) - 1], inputs_end


def run_closed_loop(plant: Plant, scenario: Scenario, twin: Twin, posterior=None, *, strategy: str = "standard",
                    config: MPCConfig | None = None, policy: Callable[[Predictor, float], float] | None = None,
                    plant_seed: int = 0, predictor_settings: PredictorSettings | None = None,
                    limits: Mapping[str, float] | None = None) -> LoopResult:
    """One batch under one strategy: ``config`` None runs the standard schedule, an `MPCConfig` runs MPC with a
    `Predictor` (particle filter over the posterior's draws) on the delayed, noisy measurements.

    Args:
        policy: any other controller, ``policy(predictor, time_h) -> bolus volume (L)``, called at each decision
            with the same predictor (e.g. another MPC implementation, for a comparison); its volume is clipped to
            the vessel's headroom like a plant's interlock would.
        limits: the constraints violations are counted against (default: the MPC config's glucose_min,
            lactate_max, ammonia_max, or glucose_min = 2 mM).
    """
    kinetics = plant.twin.kinetics
    params = plant.draw(plant_seed)
    rng = np.random.default_rng(10_000 + plant_seed)
    noise = plant.noise
    end = float(scenario.protocol.harvest_time)
    decisions = list(scenario.decision_times_h)
    samples = sorted({0.0, *[max(t - plant.delay_h, 0.0) for t in decisions], end})
    protocol = scenario.protocol
    names = kinetics.layout.names
    state = {**kinetics.default_initial_state(), **dict(scenario.initial_state),
             "volume": protocol.initial_volume}
    y = np.asarray([state[n] for n in names], dtype=np.float64)
    inputs = jax.tree_util.tree_map(jnp.asarray, Inputs.initial(len(kinetics.species)))
    jitter_mask = kinetics.layout.mask(("cells", "species")) & ~np.isin(np.asarray(names), ["titer"])
    predictor = controller = None
    if config is not None or policy is not None:
        predictor = Predictor(twin, posterior, predictor_settings or PredictorSettings(n_particles=256))
        initial_measured = {k: v for k, v in scenario.initial_state.items() if k in twin.kinetics.layout.names}
        predictor.start(protocol, initial_measured)
        if config is not None:
            controller = FeedingController(twin, dataclasses.replace(config, medium=scenario.medium,
                                                                     decision_times_h=tuple(decisions), end_h=end))
            controller.warm_up(predictor)  # compile first: the calls' budgets are for optimising
    pending: list[tuple[float, list[tuple[float, str, float]]]] = []  # (delivery time, rows)
    times_all, states_all = [np.asarray([0.0])], [y[None]]
    boluses, fallbacks, call_seconds, recorded = [], 0, [], []
    clock = 0.0
    stops = sorted({*samples, *decisions, *[t + plant.delay_h for t in samples if t + plant.delay_h < end], end})
    for stop in stops:
        if stop > clock:
            t_hours, s_hours, y_end, inputs = _advance(kinetics, params, y, inputs, protocol, clock, stop)
            times_all.append(t_hours)
            states_all.append(s_hours)
            y, clock = np.asarray(y_end), stop
        if any(math.isclose(stop, t) for t in samples):  # sample: measure now, deliver later; then disturb
            observed = kinetics.observe(kinetics.layout.unpack(jnp.asarray(y)), {k: jnp.asarray(v)
                                                                              for k, v in params.items()})
            rows = [(stop, v, float(noise.apply(v, np.asarray([float(observed[v])]), rng)[0]))
                    for v in plant.measured if v in observed]
            pending.append((stop + plant.delay_h if stop > 0 else 0.0, rows))
            if stop < end and plant.process_noise > 0:
                y = y * np.exp(plant.process_noise * rng.standard_normal(y.shape) * jitter_mask)
        if predictor is not None:
            due = [rows for t, rows in pending if t <= stop + 1e-9]
            pending = [(t, rows) for t, rows in pending if t > stop + 1e-9]
            if due:
                predictor.update([r for rows in due for r in rows])
        k = next((i for i, t in enumerate(decisions) if math.isclose(t, stop)), None)
        if k is None:
            continue
        if policy is not None:
            started = _time.perf_counter()
            volume = float(policy(predictor, stop))
            call_seconds.append(_time.perf_counter() - started)
            room = np.inf if protocol.max_volume is None else protocol.max_volume - float(y[-1])
            volume = float(np.clip(volume if np.isfinite(volume) else 0.0, 0.0, max(room, 0.0)))
        elif controller is None:
            volume = scenario.standard_boluses_l[k]
        else:
            plan = controller.step(predictor)
            call_seconds.append(plan.seconds)
            fallbacks += plan.is_fallback
            volume = plan.volumes_l[0] if plan.decision_times_h and math.isclose(plan.decision_times_h[0], stop) \
                else 0.0
        boluses.append(float(volume))
        if volume > 0:
            event = Event(stop, EventKind.BOLUS, float(volume), "L", medium=scenario.medium)
            protocol = extend_protocol(protocol, [event], file="plant")
            recorded.append(event)
            if predictor is not None:
                predictor.record_events([event])
    times = np.concatenate(times_all)
    states = np.concatenate(states_all)
    trajectory = pd.DataFrame(states, columns=list(names))
    trajectory.insert(0, "time_h", times)
    trajectory = trajectory.drop_duplicates("time_h", keep="first").reset_index(drop=True)
    limits = dict(limits or {})
    if not limits:
        source = config or MPCConfig()
        limits = {k: getattr(source, k) for k in ("glucose_min", "lactate_max", "ammonia_max")
                  if getattr(source, k) is not None}
    violated = np.zeros(len(trajectory), dtype=bool)
    if "glucose_min" in limits:
        violated |= trajectory["glucose"].to_numpy() < limits["glucose_min"]
    for name, var in (("lactate_max", "lactate"), ("ammonia_max", "ammonia")):
        if name in limits:
            violated |= trajectory[var].to_numpy() > limits[name]
    max_volume = protocol.max_volume
    if max_volume is not None:
        violated |= trajectory["volume"].to_numpy() > max_volume + 1e-9
    t = trajectory["time_h"].to_numpy()
    hourly = np.isclose(t, np.round(t))
    final = trajectory.iloc[-1]
    return LoopResult(strategy, plant_seed, float(final["titer"]),
                      float(final["titer"] * final["volume"]), float(sum(boluses)), int(np.sum(violated & hourly)),
                      float(trajectory["glucose"].min()), int(fallbacks),
                      float(np.median(call_seconds)) if call_seconds else 0.0, tuple(boluses), trajectory,
                      predictor.innovations() if predictor is not None else pd.DataFrame())


def compare_strategies(plant: Plant, scenario: Scenario, twin: Twin, posterior=None, *,
                       strategies: Mapping[str, MPCConfig | Callable | None], plant_seeds: Sequence[int] = (0, 1, 2),
                       predictor_settings: PredictorSettings | None = None, progress: bool = True,
                       objective: str = "product", feed_cost: float = 0.0,
                       limits: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Every strategy on every plant draw (the same draws for all strategies): one row per run with the
    `LoopResult` figures and the closed-loop objective, the true ``product_mg`` (``objective="product"``) or
    ``final_titer`` (``"titer"``) minus ``feed_cost·feed_l``. A strategy is None (the standard schedule), an
    `MPCConfig` (our MPC) or a policy callable (see `run_closed_loop`). Violations are counted against `limits`
    (``glucose_min``, ``lactate_max``, ``ammonia_max``; default: the first MPC config's), the same for every strategy,
    so a controller may plan with a safety margin and still be judged by the process's limits."""
    if objective not in ("product", "titer"):
        raise ValueError(f"objective must be 'product' or 'titer', got {objective!r}")
    from tqdm.auto import tqdm

    for config in strategies.values():
        if limits is not None:
            break
        if isinstance(config, MPCConfig):
            limits = {k: getattr(config, k) for k in ("glucose_min", "lactate_max", "ammonia_max")
                      if getattr(config, k) is not None}
            break
    runs = [(name, config, seed) for seed in plant_seeds for name, config in strategies.items()]
    rows = []
    for name, config, seed in tqdm(runs, desc="closed loop", disable=not progress):
        started = _time.perf_counter()
        policy = config if callable(config) and not isinstance(config, MPCConfig) else None
        result = run_closed_loop(plant, scenario, twin, posterior, strategy=name,
                                 config=config if isinstance(config, MPCConfig) else None, policy=policy,
                                 plant_seed=seed, predictor_settings=predictor_settings, limits=limits)
        rows.append({"strategy": name, "plant_seed": seed, "final_titer": result.final_titer,
                     "product_mg": result.product_mg, "feed_l": result.feed_l,
                     "violation_hours": result.violation_hours, "min_glucose": result.min_glucose,
                     "objective": (result.product_mg if objective == "product" else result.final_titer)
                     - feed_cost * result.feed_l,
                     "fallbacks": result.fallbacks, "call_seconds": result.call_seconds,
                     "run_seconds": _time.perf_counter() - started})
    return pd.DataFrame(rows)
