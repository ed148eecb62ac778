"""The do-mpc peer of the feeding benchmark (benchmarks/dompc_cho.py) poses the same problem as the library.

Skipped where do-mpc is not installed (it comes with the ``bench`` extra, which CI does not install).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("do_mpc")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import dompc_cho  # noqa: E402

from cgt_twin import Event, Medium, Protocol  # noqa: E402
from cgt_twin.models import CHOFedBatch  # noqa: E402
from cgt_twin.simulate import SolverSettings, simulate  # noqa: E402

FEED = {"glucose": 400.0, "glutamine": 40.0}
STATE = {"vcd": 0.5, "dead_cells": 0.02, "glucose": 30.0, "glutamine": 4.0, "lactate": 2.0, "ammonia": 0.5,
         "titer": 10.0, "volume": 1.0}


def _vector(state):
    return np.array([state[s] for s in dompc_cho.STATES])


@pytest.mark.parametrize("params", [None, {"mu_max": 0.04, "q_p": 2.0, "k_d": 0.03}], ids=["default", "changed"])
def test_discrete_step_matches_simulate(params):
    """Φ_24h(bolus(x, u)) in CasADi = `simulate` of a bolus at 24 h (states at 24 h before it and at 48 h)."""
    bolus = 0.08
    feed = {**FEED, "lactate": 5.0, "titer": 20.0}  # every species mixing path, not only glucose and glutamine
    protocol = Protocol(STATE["volume"], (Event(24.0, "bolus", bolus, "L", medium="feed"), Event(48.0, "harvest")),
                        {"feed": Medium("feed", feed)})
    ds = simulate(CHOFedBatch(), protocol, [0.0, 24.0, 48.0], initial_states=STATE, params=params,
                  settings=SolverSettings(rtol=1e-10, atol=1e-12, max_steps=100000)).isel(batch=0)
    assert str(ds.status.values) == "ok"
    reference = {t: np.array([float(ds[s].sel(time=t, phase="pre")) for s in dompc_cho.STATES]) for t in (24.0, 48.0)}

    full = {**dompc_cho.default_params(), **(params or {})}
    day = dompc_cho.make_day_step(full, feed)
    day1 = np.asarray(day(_vector(STATE), 0.0, np.zeros(0))).ravel()
    day2 = np.asarray(day(day1, bolus, np.zeros(0))).ravel()
    np.testing.assert_allclose(day1, reference[24.0], rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(day2, reference[48.0], rtol=1e-4, atol=1e-9)
    assert day2[-1] == pytest.approx(STATE["volume"] + bolus)
    assert day2[2] > day1[2] - 1.0  # the bolus mattered (glucose raised against the day's uptake)

    # uncertain parameters as inputs give the same map as constants
    uncertain = ("mu_max", "Y_x_glc")
    day_p = dompc_cho.make_day_step(full, feed, uncertain)
    again = np.asarray(day_p(day1, bolus, np.array([full[k] for k in uncertain]))).ravel()
    np.testing.assert_allclose(again, day2, rtol=1e-12)


def _rollout(controller, x0, us, scenario):
    xs = [x0]
    for u in us:
        xs.append(np.asarray(controller.day_step(xs[-1], u, scenario)).ravel())
    return np.array(xs)


def test_nominal_controller_respects_bounds_and_glucose_floor():
    # a feed cost makes feeding worth saving, so the glucose floor binds on the plan
    controller = dompc_cho.DoMPCFeeding(feed_conc=FEED, u_max=0.1, max_volume=1.5, glucose_min=2.0, feed_cost=3000.0)
    u, stats = controller.plan(STATE, 1)
    assert stats["success"], stats["status"]
    assert 0.0 <= u <= 0.1
    assert stats["horizon"] == 13 and stats["iterations"] > 0 and stats["solve_s"] > 0
    plan = stats["u_plan"][:, 0]
    assert plan[0] == pytest.approx(u, abs=1e-9)
    assert np.all(plan >= -1e-9) and np.all(plan <= 0.1 + 1e-9)
    # its prediction, and a roll-out of its plan through the same discrete map, keep to the constraints
    predicted = np.column_stack([stats["prediction"][s][:, 0] for s in dompc_cho.STATES])
    rolled = _rollout(controller, _vector(STATE), plan, np.zeros(0))
    np.testing.assert_allclose(predicted, rolled, rtol=1e-6, atol=1e-8)
    glucose = rolled[1:, 2]
    assert np.all(glucose >= 2.0 - 1e-6)
    assert glucose.min() < 2.01  # the floor is active somewhere
    assert np.all(rolled[:, -1] <= 1.5 + 1e-9)
    assert stats["objective_mg"] == pytest.approx(rolled[-1, 6] * rolled[-1, 7] - 3000.0 * plan.sum(), rel=1e-6)


def test_robust_controller_holds_the_floor_in_every_scenario():
    params = dompc_cho.default_params()
    scenarios = {"mu_max": [0.8 * params["mu_max"], params["mu_max"], 1.2 * params["mu_max"]],
                 "Y_x_glc": [0.8 * params["Y_x_glc"], params["Y_x_glc"], 1.2 * params["Y_x_glc"]]}
    controller = dompc_cho.DoMPCFeeding(feed_conc=FEED, u_max=0.1, max_volume=1.5, feed_cost=3000.0,
                                        scenarios=scenarios)
    state = {**STATE, "vcd": 4.0, "glucose": 12.0, "glutamine": 0.5, "lactate": 60.0, "ammonia": 2.8,
             "titer": 600.0, "volume": 1.1}
    u, stats = controller.plan(state, 11)  # three days to the harvest
    assert stats["success"], stats["status"]
    assert stats["n_scenarios"] == 9 and stats["horizon"] == 3
    assert 0.0 <= u <= 0.1
    glucose = stats["prediction"]["glucose"][1:]
    assert np.all(glucose >= 2.0 - 1e-6)
    assert np.all(stats["prediction"]["volume"] <= 1.5 + 1e-9)
    # scenario s is predicted with its own parameters: roll its plan out with them
    for s, values in enumerate(controller.scenario_values):
        plan = stats["u_plan"][:, s]
        assert plan[0] == pytest.approx(u, abs=1e-9)  # the first bolus is common (robust horizon 1)
        rolled = _rollout(controller, _vector(state), plan, values)
        predicted = np.column_stack([stats["prediction"][n][:, s] for n in dompc_cho.STATES])
        np.testing.assert_allclose(predicted, rolled, rtol=1e-6, atol=1e-8)
    # after the common first bolus the scenarios part (their later boluses differ, each meeting the floor)
    assert np.ptp(stats["prediction"]["glucose"][1]) > 0.1
    assert np.ptp(stats["u_plan"][1:], axis=1).max() > 1e-3
