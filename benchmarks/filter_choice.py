"""Which state estimator the control predictor uses, by measurement: the particle filter of `cgt_twin.control`
against an unscented (cubature) Kalman filter on the same twin, the same measurements and the same plant.

Set-up (``python benchmarks/filter_choice.py [--draws 3] [--json FILE]``):

- Plant: `CHOFedBatch(lactate_consumption=True)` (a lactate shift the twin lacks), parameters drawn as in the
  closed-loop harness (`cgt_twin.control.harness.Plant.draw`), 10 days, a 30 mL bolus every day, noise-free truth.
- Measurements every 24 h: VCD, glucose, lactate, titre with the twin's noise model (σ_abs, σ_rel), drawn once per
  plant draw and given to both filters.
- Twin: `CHOFedBatch()` at its published values (no posterior: both filters estimate the states only; the particle
  filter's parameters are then all equal and only its state jitter moves them).
- Particle filter: `Predictor`, 256 particles, default settings.
- Kalman filter: cubature rule (the unscented transform with α = 1, β = 0, κ = 0: 2n equally weighted points) on the
  logarithm of the states (positive states, multiplicative errors), the points propagated by the same compiled
  segmented solve (`cgt_twin.control.propagate.propagate`), process noise 3 % a day on cells and species (the
  plant's disturbance level), the twin's measurement noise.

Scored after each update (days 2–9): the filtered estimate and the 48 h-ahead forecast of each measured variable
against the noise-free truth, as RMSE over the times divided by the variable's range in the batch; and the median
time of one update (the Kalman filter's update includes its prediction step, as the predictor's does).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

NOISE = {"vcd": (0.05, 0.05), "glucose": (0.2, 0.03), "lactate": (0.2, 0.05), "titer": (5.0, 0.05)}
INITIAL = {"vcd": 0.5, "dead_cells": 0.01, "glucose": 30.0, "glutamine": 4.0, "lactate": 2.0, "ammonia": 0.5,
           "titer": 0.0}
FEED = {"glucose": 400.0, "glutamine": 40.0}
DAYS = 10
MEASURED = ("vcd", "glucose", "lactate", "titer")
PROCESS_NOISE_PER_DAY = 0.03  # log-sd of cells and species a day
INITIAL_SPREAD = 0.10  # log-sd of the initial belief (the predictor's default)


def _protocol():
    from cgt_twin import Event, Medium, Protocol

    events = [Event(24.0 * d + 1.0, "bolus", 0.03, "L", medium="feed") for d in range(1, DAYS)]
    return Protocol(1.0, (*events, Event(24.0 * DAYS, "harvest")), {"feed": Medium("feed", FEED)}, max_volume=1.5)


class CubatureFilter:
    """A cubature Kalman filter on z = log(y + c) (c: 1e-3 of each state's typical magnitude)."""

    def __init__(self, twin, protocol, initial: dict, noise: dict):
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        from cgt_twin.control.propagate import event_rows, inputs_at

        self.twin, self.kinetics = twin, twin.kinetics
        self.names = self.kinetics.layout.names
        self.rows = event_rows(self.kinetics, protocol)
        self.offset = 1e-3 * np.asarray(self.kinetics.state_scales())
        state = self.kinetics.default_initial_state()
        state.update(initial)
        state["volume"] = protocol.initial_volume
        y0 = np.asarray([float(state[n]) for n in self.names])
        self.mean = np.log(y0 + self.offset)
        self.noisy = np.asarray(self.kinetics.layout.mask(("cells", "species")), dtype=bool)
        self.cov = np.diag(np.where(self.noisy, INITIAL_SPREAD ** 2, 1e-10))
        self.time_h = 0.0
        self.noise = noise
        n = self.mean.size
        self.params = {k: jnp.full(2 * n, float(v)) for k, v in twin.params.items()}
        self.inputs = inputs_at(self.kinetics, self.rows, 0.0, twin.params)  # carried from solve to solve
        self._observe_all = eqx.filter_jit(jax.vmap(lambda s: self.kinetics.observe(self.kinetics.layout.unpack(s),
                                                                                     self.twin.params)))

    def _points(self):
        n = self.mean.size
        root = np.linalg.cholesky(self.cov + 1e-12 * np.eye(n))
        return self.mean[None, :] + np.sqrt(n) * np.concatenate([root.T, -root.T])  # (2n, n)

    def _propagate(self, points, to_h: float):
        """The points moved to `to_h`, and the inputs there."""
        from cgt_twin.control.propagate import padded_count, propagate, segments
        from cgt_twin.simulate import SolverSettings

        if to_h <= self.time_h + 1e-9:
            return points, self.inputs
        n_events = sum(1 for r in self.rows if self.time_h - 1e-9 <= r[0] < to_h - 1e-9)
        table = segments(self.kinetics, self.rows, self.time_h, to_h, n_rows=padded_count(1 + n_events, 8))
        y = np.maximum(np.exp(points) - self.offset, 0.0)
        ends, inputs, status = propagate(self.kinetics, SolverSettings(rtol=1e-4, atol=1e-6), self.params, y,
                                         self.inputs, table)
        last = int(np.sum(table.valid)) - 1
        out = np.asarray(ends)[:, last]
        if np.any(np.asarray(status) != 0) or not np.all(np.isfinite(out)):
            raise RuntimeError("a cubature point's solve failed")
        return np.log(np.maximum(out, 0.0) + self.offset), inputs

    def _observe(self, points) -> np.ndarray:
        out = self._observe_all(np.maximum(np.exp(points) - self.offset, 0.0))
        return np.stack([np.asarray(out[v]) for v in MEASURED], axis=1)

    def predict(self, to_h: float) -> None:
        moved, self.inputs = self._propagate(self._points(), to_h)
        days = (to_h - self.time_h) / 24.0
        self.mean = moved.mean(axis=0)
        d = moved - self.mean
        q = np.where(self.noisy, PROCESS_NOISE_PER_DAY ** 2 * days, 1e-12)
        self.cov = d.T @ d / len(moved) + np.diag(q)
        self.time_h = to_h

    def update(self, time_h: float, values: dict) -> None:
        self.predict(time_h)
        points = self._points()
        z = self._observe(points)
        z_mean = z.mean(axis=0)
        dz, dx = z - z_mean, points - self.mean
        r = np.asarray([self.noise[v][0] ** 2 + (self.noise[v][1] * z_mean[i]) ** 2 for i, v in enumerate(MEASURED)])
        s = dz.T @ dz / len(points) + np.diag(r)
        c = dx.T @ dz / len(points)
        gain = np.linalg.solve(s.T, c.T).T
        self.mean = self.mean + gain @ (np.asarray([values[v] for v in MEASURED]) - z_mean)
        self.cov = self.cov - gain @ s @ gain.T
        self.cov = 0.5 * (self.cov + self.cov.T)

    def estimate(self, ahead_h: float = 0.0) -> np.ndarray:
        """Mean of the measured variables now or `ahead_h` later (the belief itself unchanged)."""
        points = self._points()
        if ahead_h > 0:
            points, _ = self._propagate(points, self.time_h + ahead_h)
        return self._observe(points).mean(axis=0)


def run_draw(seed: int) -> dict:
    from cgt_twin.control import Predictor, PredictorSettings
    from cgt_twin.control.harness import default_plant
    from cgt_twin.models import CHOFedBatch
    from cgt_twin.models.twin import Twin
    from cgt_twin.simulate import simulate

    plant = default_plant()
    protocol = _protocol()
    times = np.arange(0.0, 24.0 * DAYS + 1e-9, 24.0)
    truth = simulate(plant.twin.with_params(**plant.draw(seed)), {"p": protocol}, times=times,
                     initial_states={"p": {**INITIAL, "volume": 1.0}})
    true = {v: truth[v].sel(batch="p", phase="pre").values for v in MEASURED}
    rng = np.random.default_rng(1000 + seed)
    measured = {v: np.maximum(true[v] + np.sqrt(NOISE[v][0] ** 2 + (NOISE[v][1] * true[v]) ** 2)
                              * rng.standard_normal(true[v].shape), 0.0) for v in MEASURED}
    twin = Twin(CHOFedBatch(), noise=NOISE)
    pf = Predictor(twin, settings=PredictorSettings(n_particles=256))
    pf.start(protocol, INITIAL)
    kf = CubatureFilter(twin, protocol, INITIAL, NOISE)
    errors = {name: {"filtered": [], "ahead_48h": []} for name in ("particle", "cubature")}
    seconds = {"particle": [], "cubature": []}
    for k in range(1, DAYS - 1):
        t = float(times[k])
        rows = [(t, v, float(measured[v][k])) for v in MEASURED]
        start = time.perf_counter()
        pf.update(rows)
        seconds["particle"].append(time.perf_counter() - start)
        start = time.perf_counter()
        kf.update(t, {v: float(measured[v][k]) for v in MEASURED})
        seconds["cubature"].append(time.perf_counter() - start)
        forecast = pf.forecast(48.0, step_h=48.0)
        estimates = {"particle": (np.asarray([float(forecast[v].sel(statistic="mean").values[0]) for v in MEASURED]),
                                  np.asarray([float(forecast[v].sel(statistic="mean").values[-1]) for v in MEASURED])),
                     "cubature": (kf.estimate(), kf.estimate(48.0))}
        for name, (now, ahead) in estimates.items():
            errors[name]["filtered"].append(now - np.asarray([true[v][k] for v in MEASURED]))
            errors[name]["ahead_48h"].append(ahead - np.asarray([true[v][k + 2] for v in MEASURED]))
    ranges = np.asarray([np.ptp(true[v]) for v in MEASURED])
    out = {"seed": seed}
    for name in errors:
        for kind, e in errors[name].items():
            nrmse = np.sqrt(np.mean(np.square(e), axis=0)) / ranges
            out[f"{name}_{kind}"] = dict(zip(MEASURED, (float(x) for x in nrmse), strict=True))
        out[f"{name}_update_ms"] = 1000 * statistics.median(seconds[name][1:])  # the first call compiles
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3, help="plant draws")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    runs = [run_draw(seed) for seed in range(args.draws)]
    summary = {}
    for name in ("particle", "cubature"):
        for kind in ("filtered", "ahead_48h"):
            summary[f"{name}_{kind}"] = {v: float(np.mean([r[f"{name}_{kind}"][v] for r in runs])) for v in MEASURED}
        summary[f"{name}_update_ms"] = float(np.median([r[f"{name}_update_ms"] for r in runs]))
    figures = {"runs": runs, "summary": summary}
    text = json.dumps(figures, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return figures


if __name__ == "__main__":
    main()
