"""`cgt_twin.control.Predictor`: the propagation against `simulate`, the filter against a known truth, messy
measurements (rejected with reasons, late ones re-filtered to the in-order result), save/restore."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import cgt_twin  # noqa: F401  (float64)
from cgt_twin import CampaignValidationError, Event, Medium, Protocol
from cgt_twin.control import Predictor, PredictorSettings
from cgt_twin.control.filter import weighted_quantiles
from cgt_twin.control.propagate import event_rows, inputs_at, propagate, propagate_at, segments
from cgt_twin.models import CHOFedBatch
from cgt_twin.models.twin import Twin
from cgt_twin.simulate import SolverSettings, simulate

NOISE = {"vcd": (0.02, 0.05), "glucose": (0.1, 0.03), "lactate": (0.1, 0.05), "titer": (1.0, 0.05)}
INITIAL = {"vcd": 0.5, "dead_cells": 0.01, "glucose": 30.0, "glutamine": 4.0, "lactate": 2.0, "ammonia": 0.5,
           "titer": 0.0}
N = 64


def _protocol(boluses=((48.0, 0.04), (96.0, 0.04))) -> Protocol:
    events = [Event(t, "bolus", v, "L", medium="feed") for t, v in boluses] + [Event(240.0, "harvest")]
    return Protocol(1.0, tuple(events), {"feed": Medium("feed", {"glucose": 400.0, "glutamine": 40.0})},
                    max_volume=1.5)


@pytest.fixture(scope="module")
def twin() -> Twin:
    return Twin(CHOFedBatch(), noise=NOISE)


@pytest.fixture(scope="module")
def truth(twin) -> Twin:
    return twin.with_params(mu_max=0.033)


def _measure(model: Twin, protocol: Protocol, times, variables=("vcd", "glucose", "lactate")) -> list[tuple]:
    trajectory = simulate(model, {"b": protocol}, times=list(times), initial_states={"b": {**INITIAL, "volume": 1.0}})
    return [(t, v, float(trajectory[v].sel(batch="b", phase="pre", time=t).values)) for t in times for v in variables]


def _predictor(twin, **changes) -> Predictor:
    return Predictor(twin, settings=PredictorSettings(n_particles=N, **changes))


def test_propagation_from_mid_batch_matches_simulate(twin):
    """Started at 60 h from simulate's state, with the inputs the earlier events set (a feed rate, a temperature
    shift), the control propagation reproduces simulate's later values."""
    events = (Event(24.0, "feed_rate", 0.002, "L/h", medium="feed"), Event(48.0, "setpoint", 33.0, "degC",
                                                                           target="temperature"),
              Event(72.0, "bolus", 0.05, "L", medium="feed"), Event(100.0, "feed_rate", 0.0, "L/h", medium="feed"),
              Event(144.0, "harvest"))
    protocol = Protocol(1.0, events, {"feed": Medium("feed", {"glucose": 300.0, "glutamine": 30.0})})
    model = Twin(CHOFedBatch(temperature_shift=True))
    times = [60.0, 72.0, 90.0, 120.0, 144.0]
    settings = SolverSettings(rtol=1e-9, atol=1e-11)
    reference = simulate(model, {"b": protocol}, times=times, initial_states={"b": {**INITIAL, "volume": 1.0}},
                         settings=settings)
    names = model.kinetics.layout.names
    y60 = np.asarray([float(reference[n].sel(batch="b", phase="pre", time=60.0).values) for n in names])
    rows = event_rows(model.kinetics, protocol)
    inputs = inputs_at(model.kinetics, rows, 60.0, model.params)
    assert float(inputs.temperature) == 33.0 and float(inputs.feed_rate) == pytest.approx(0.002)
    table = segments(model.kinetics, rows, 60.0, 144.0, times[1:])
    ends, _, status = propagate(model.kinetics, settings, {k: jnp.asarray([v]) for k, v in model.params.items()},
                                jnp.asarray(y60)[None], inputs, table)
    assert int(status[0]) == 0
    for t in times[1:]:
        row = int(np.searchsorted(table.t1, t - 1e-9))  # the first row ending at t: before any event there
        expected = np.asarray([float(reference[n].sel(batch="b", phase="pre", time=t).values) for n in names])
        np.testing.assert_allclose(np.asarray(ends[0, row]), expected, rtol=1e-6, atol=1e-8)


def test_interpolated_outputs_match_simulate_and_take_pre_event_values():
    """`propagate_at` (rows at the events only, outputs interpolated inside them) reproduces simulate's values at
    output times between events and at an event time (the value before the bolus), and an empty padded row changes
    nothing; a particle whose solve fails gets NaN from its failed row on, never plausible numbers."""
    protocol = Protocol(1.0, (Event(72.0, "bolus", 0.05, "L", medium="feed"), Event(100.0, "bolus", 0.03, "L",
                                                                                       medium="feed"),
                              Event(144.0, "harvest")), {"feed": Medium("feed", {"glucose": 300.0, "glutamine": 30.0})})
    model = Twin(CHOFedBatch())
    times = [60.0, 66.5, 72.0, 80.25, 100.0, 131.0, 144.0]
    settings = SolverSettings(rtol=1e-9, atol=1e-11)
    reference = simulate(model, {"b": protocol}, times=times, initial_states={"b": {**INITIAL, "volume": 1.0}},
                         settings=settings)
    names = model.kinetics.layout.names
    expected = np.asarray([[float(reference[n].sel(batch="b", phase="pre", time=t).values) for n in names]
                           for t in times])
    rows = event_rows(model.kinetics, protocol)
    inputs = inputs_at(model.kinetics, rows, 60.0, model.params)
    params = {k: jnp.asarray([v, v]) for k, v in model.params.items()}
    y60 = jnp.asarray(np.stack([expected[0], expected[0] * np.where(np.arange(len(names)) == 0, np.nan, 1.0)]))
    for n_rows in (3, 8):  # exactly the rows needed (start, two boluses), and padded with empty rows
        table = segments(model.kinetics, rows, 60.0, 144.0, n_rows=n_rows)
        values, status = propagate_at(model.kinetics, settings, params, y60, inputs, table, jnp.asarray(times[1:]))
        assert int(status[0]) == 0 and int(status[1]) != 0
        np.testing.assert_allclose(np.asarray(values[0]), expected[1:], rtol=1e-6, atol=1e-8)
        assert np.all(np.isnan(np.asarray(values[1])))


def test_weighted_quantiles_match_numpy():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((200, 3, 2))
    weights = rng.random(200)
    weights /= weights.sum()
    got = weighted_quantiles(values, weights, (0.05, 0.5, 0.95))
    for i in range(3):
        for j in range(2):
            expected = np.quantile(values[:, i, j], [0.05, 0.5, 0.95], weights=weights, method="inverted_cdf")
            np.testing.assert_allclose(got[:, i, j], expected)


def test_filter_corrects_a_wrong_initial_state_and_tracks_the_truth(twin, truth):
    """The predictor starts 40 % off in vcd and the twin's growth rate is wrong; with daily measurements its
    estimate at the measurement time lands near the truth, far nearer than the open-loop twin."""
    protocol = _protocol()
    predictor = _predictor(twin, initial_spread=0.3)
    predictor.start(protocol, {**INITIAL, "vcd": 0.3})
    times = [24.0, 48.0, 72.0, 96.0, 120.0]
    for t in times:
        report = predictor.update(_measure(truth, protocol, [t]))
        assert report.accepted == 3 and not report.rejected
    true_vcd = _measure(truth, protocol, [120.0], ("vcd",))[0][2]
    open_loop = simulate(twin, {"b": protocol}, times=[120.0], initial_states={"b": {**INITIAL, "vcd": 0.3,
                                                                                      "volume": 1.0}})
    open_vcd = float(open_loop["vcd"].sel(batch="b", phase="pre").values[0])
    forecast = predictor.forecast(horizon_h=24.0)
    filtered = float(forecast["vcd"].sel(statistic="mean").values[0])
    assert forecast["time"].values[0] == 120.0
    assert abs(filtered - true_vcd) < 0.25 * abs(open_vcd - true_vcd)
    assert abs(filtered - true_vcd) / true_vcd < 0.08  # within about one measurement sd (5 % + 0.02)


def test_forecast_bands_are_ordered_and_measurement_bands_wider(twin):
    predictor = Predictor(twin, settings=PredictorSettings(n_particles=N), noise={"glucose": (0.5, 0.3)})
    predictor.start(_protocol(), INITIAL)
    state = predictor.forecast(horizon_h=72.0, step_h=12.0)
    noisy = predictor.forecast(horizon_h=72.0, step_h=12.0, band="measurement")
    assert list(state["time"].values) == [0.0, 12.0, 24.0, 36.0, 48.0, 60.0, 72.0]
    for name in ("vcd", "glucose", "titer"):
        mean, low, high = state[name].values
        assert np.all(low <= mean + 1e-9) and np.all(mean <= high + 1e-9)
    width = lambda ds: ds["glucose"].sel(statistic="q95").values - ds["glucose"].sel(statistic="q05").values  # noqa
    assert np.all(width(noisy)[1:] > width(state)[1:])
    # the bolus at 48 h: the value at 48 h is before it (pre), glucose is up by 60 h
    glucose = state["glucose"].sel(statistic="mean").values
    assert glucose[5] > glucose[4] - 5.0
    plan = predictor.forecast(horizon_h=72.0, step_h=12.0, plan=[Event(24.0, "bolus", 0.1, "L", medium="feed")])
    assert plan["glucose"].sel(statistic="mean", time=36.0) > state["glucose"].sel(statistic="mean", time=36.0) + 10


def test_bad_measurements_are_rejected_with_reasons_and_change_nothing(twin, truth):
    protocol = _protocol()
    predictor = _predictor(twin)
    predictor.start(protocol, INITIAL, time_h=0.0)
    good = _measure(truth, protocol, [24.0])
    predictor.update(good)
    before = predictor.particles()
    bad = pd.DataFrame([
        {"time_h": np.nan, "variable": "vcd", "value": 1.0, "unit": ""},
        {"time_h": 30.0, "variable": "vcd", "value": np.inf, "unit": ""},
        {"time_h": 30.0, "variable": "oxygen", "value": 1.0, "unit": ""},
        {"time_h": 30.0, "variable": "glucose", "value": -2.0, "unit": ""},
        {"time_h": -1.0, "variable": "glucose", "value": 2.0, "unit": ""},
        {"time_h": 30.0, "variable": "glucose", "value": 2.0, "unit": "parsec"},
        {"time_h": "soon", "variable": "glucose", "value": 2.0, "unit": ""},
        {"time_h": good[0][0], "variable": good[0][1], "value": good[0][2], "unit": ""},
    ])
    report = predictor.update(bad)
    assert report.accepted == 0 and len(report.rejected) == 8
    reasons = [r.reason for r in report.rejected]
    assert "non-finite time" in reasons[0] and "non-finite value" in reasons[1]
    assert "not a variable" in reasons[2] and "physical range" in reasons[3] and "batch start" in reasons[4]
    assert "unit 'parsec'" in reasons[5] and "not a number" in reasons[6] and "duplicate" in reasons[7]
    assert "rejected 8" in str(report)
    after = predictor.particles()
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[2], after[2])
    assert predictor.time_h == 24.0


def test_units_are_converted_at_the_boundary(twin):
    """Glucose in g/L (pint, molar mass 180.16 g/mol) weighs particles exactly as the same value in mM."""
    results = []
    for value, unit in ((18.016, "g/L"), (100.0, "mM")):
        predictor = _predictor(twin)
        predictor.start(_protocol(), INITIAL)
        predictor.update(pd.DataFrame([{"time_h": 24.0, "variable": "glucose", "value": value, "unit": unit}]))
        results.append(predictor.particles())
    np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-9)


def test_late_out_of_order_measurements_give_the_in_order_result(twin, truth):
    protocol = _protocol()
    rows = _measure(truth, protocol, [24.0, 48.0, 72.0, 96.0])
    in_order = _predictor(twin)
    in_order.start(protocol, INITIAL)
    for t in (24.0, 48.0, 72.0, 96.0):
        in_order.update([r for r in rows if r[0] == t])
    shuffled = _predictor(twin)
    shuffled.start(protocol, INITIAL)
    shuffled.update([r for r in rows if r[0] == 96.0])
    report = shuffled.update([r for r in rows if r[0] in (24.0, 72.0)])
    assert report.replayed_from == 0.0
    report = shuffled.update([r for r in rows if r[0] == 48.0][::-1])
    assert report.replayed_from == 24.0 and shuffled.time_h == 96.0
    a, b = in_order.particles(), shuffled.particles()
    np.testing.assert_allclose(a[0], b[0], rtol=1e-12)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-12)


def test_an_event_recorded_late_refilters_from_its_time(twin, truth):
    protocol = _protocol(boluses=((48.0, 0.04),))
    without = _protocol(boluses=())
    rows = _measure(truth, protocol, [24.0, 72.0])
    on_time = _predictor(twin)
    on_time.start(protocol, INITIAL)
    on_time.update(rows)
    late = _predictor(twin)
    late.start(without, INITIAL)
    late.update(rows)
    assert late.record_events([Event(48.0, "bolus", 0.04, "L", medium="feed")]) == 24.0
    np.testing.assert_allclose(on_time.particles()[0], late.particles()[0], rtol=1e-12)


def test_save_and_restore_lose_nothing(twin, truth, tmp_path):
    protocol = _protocol()
    predictor = _predictor(twin)
    predictor.start(protocol, INITIAL)
    predictor.update(_measure(truth, protocol, [24.0, 48.0]))
    predictor.save(tmp_path / "state")
    restored = _predictor(twin)
    restored.restore(tmp_path / "state")
    assert restored.time_h == predictor.time_h
    np.testing.assert_array_equal(restored.particles()[0], predictor.particles()[0])
    more = _measure(truth, protocol, [72.0, 30.0])  # a new one and a late one: both continue identically
    a, b = predictor.update(more), restored.update(more)
    assert a.replayed_from == b.replayed_from == 24.0
    np.testing.assert_allclose(restored.particles()[0], predictor.particles()[0], rtol=1e-12)
    xr_a, xr_b = predictor.forecast(24.0), restored.forecast(24.0)
    np.testing.assert_allclose(xr_a["vcd"].values, xr_b["vcd"].values, rtol=1e-12)
    assert len(predictor.innovations()) == 4 * 3  # 24, 30 (late), 48 and 72 h; three variables each
    pd.testing.assert_frame_equal(restored.innovations(), predictor.innovations())
    # tampering, another twin, another particle count: clear errors
    document = json.loads((tmp_path / "state" / "predictor.json").read_text())
    document["start_h"] = 5.0
    (tmp_path / "state" / "predictor.json").write_text(json.dumps(document))
    with pytest.raises(CampaignValidationError, match="content hash"):
        _predictor(twin).restore(tmp_path / "state")
    predictor.save(tmp_path / "state")
    with pytest.raises(CampaignValidationError, match="another twin"):
        Predictor(twin.with_params(mu_max=0.02), settings=PredictorSettings(n_particles=N)).restore(tmp_path / "state")


def test_bad_settings_and_state_are_rejected(twin):
    with pytest.raises(CampaignValidationError, match="n_particles"):
        Predictor(twin, settings=PredictorSettings(n_particles=1), compile=False)
    predictor = Predictor(twin, settings=PredictorSettings(n_particles=N), compile=False)
    with pytest.raises(RuntimeError, match="start"):
        predictor.update([(1.0, "vcd", 1.0)])
    with pytest.raises(CampaignValidationError, match="unknown state 'glucoze'"):
        predictor.start(_protocol(), {"glucoze": 1.0})
    with pytest.raises(CampaignValidationError, match="vcd must be finite"):
        predictor.start(_protocol(), {"vcd": -1.0})
    predictor.start(_protocol(), INITIAL)
    with pytest.raises(CampaignValidationError, match="missing columns"):
        predictor.update(pd.DataFrame({"t": [1.0]}))
    with pytest.raises(CampaignValidationError, match="band"):
        predictor.forecast(band="both")


def test_a_hybrid_that_sees_batch_covariates_gets_the_batch_s_own(twin):
    """The clone reaches the network through the predictor's inputs: with perturbed last-layer weights two clones
    forecast differently; a missing clone is rejected before anything runs."""
    import equinox as eqx

    from cgt_twin.hybrid import ResidualSpec, hybrid
    from cgt_twin.models.covariates import CovariateEncoding

    spec = ResidualSpec(targets=("growth",), features=("glucose",), covariates=("clone",),
                        covariate_kinds={"clone": "categorical"}, hidden=(4,))
    encoding = CovariateEncoding.fit({"a": {"clone": "A"}, "b": {"clone": "B"}}, ["clone"], {"clone": "categorical"})
    kinetics = hybrid(CHOFedBatch(), spec, encoding=encoding)
    last = kinetics.residual.layers[-1]
    kinetics = eqx.tree_at(lambda k: k.residual.layers[-1].weight, kinetics, last.weight + 0.5)
    model = Twin(kinetics, noise=NOISE)
    predictor = _predictor(model)
    with pytest.raises(CampaignValidationError, match="clone"):
        predictor.start(_protocol(), INITIAL)
    forecasts = {}
    for clone in ("A", "B"):
        predictor.start(_protocol(), INITIAL, covariates={"clone": clone})
        forecasts[clone] = predictor.forecast(horizon_h=48.0)["vcd"].sel(statistic="mean").values
    assert abs(forecasts["A"][-1] - forecasts["B"][-1]) > 1e-3 * forecasts["A"][-1]


def test_innovations_are_the_one_step_predictions_and_reveal_a_biased_twin(twin):
    """Each innovation's prediction is the forecast made just before the measurement (an independent path:
    `forecast` interpolates inside the solve, `update` solves to the measurement time), the standardized
    innovation follows from its parts, and the spread inflation stays 1 for measurements the twin explains but
    rises above 1 when glucose is consumed faster than any particle predicts (model error)."""
    protocol = _protocol()
    times = [24.0, 48.0, 72.0, 96.0, 120.0]
    honest = _measure(twin, protocol, times, ("vcd", "glucose"))
    for biased in (False, True):
        predictor = _predictor(twin)
        predictor.start(protocol, INITIAL)
        forecasts, cells = [], [predictor.state_mean("vcd")]
        for t in times:
            rows = [r for r in honest if r[0] == t]
            if biased:  # the plant eats glucose 25 % faster than the twin: lower and lower glucose
                rows = [(t, v, x * (1 - 0.25 * t / 120) if v == "glucose" else x) for t_, v, x in rows]
            ahead = t - predictor.time_h
            forecasts.append(float(predictor.forecast(horizon_h=ahead, step_h=ahead)["glucose"]
                                   .sel(statistic="mean").values[-1]))
            predictor.update(rows)
            cells.append(predictor.state_mean("vcd"))
        table = predictor.innovations()
        glucose = table[table["variable"] == "glucose"]
        assert list(glucose["time_h"]) == times and list(glucose["interval_h"]) == [24.0] * 5
        np.testing.assert_allclose(glucose["predicted_mean"], forecasts, rtol=1e-3)
        noise_sd = np.sqrt(0.1 ** 2 + (0.03 * glucose["predicted_mean"]) ** 2)
        np.testing.assert_allclose(glucose["noise_sd"], noise_sd, rtol=1e-12)
        expected = (glucose["value"] - glucose["predicted_mean"]) / np.sqrt(glucose["predicted_sd"] ** 2 + noise_sd ** 2)
        np.testing.assert_allclose(glucose["standardized"], expected, rtol=1e-12)
        inflation = predictor.spread_inflation("glucose")
        recent = glucose.tail(5)  # the estimate from the table's last five glucose innovations
        moment = (np.sum((recent["value"] - recent["predicted_mean"]) ** 2) - np.sum(recent["noise_sd"] ** 2)) \
            / np.sum(recent["predicted_sd"] ** 2)
        assert inflation == pytest.approx(max(1.0, moment), rel=1e-12)
        assert predictor.spread_inflation("glucose", last=2) == pytest.approx(max(1.0, (
            np.sum((glucose["value"] - glucose["predicted_mean"]).tail(2) ** 2) - np.sum(glucose["noise_sd"].tail(2) ** 2))
            / np.sum(glucose["predicted_sd"].tail(2) ** 2)), rel=1e-12)
        if biased:
            assert np.all(glucose["standardized"].to_numpy()[2:] < -2) and inflation > 1.8, inflation
        else:
            assert np.all(np.abs(glucose["standardized"]) < 2) and inflation < 1.2, inflation
        # the drift: the errors' mean rate; λ from the errors less the drift's part of each
        errors = (recent["value"] - recent["predicted_mean"]).to_numpy()
        drift = predictor.innovation_drift("glucose")
        assert drift == pytest.approx(errors.sum() / recent["interval_h"].sum(), rel=1e-12)
        scatter = errors - drift * recent["interval_h"].to_numpy()
        assert predictor.spread_inflation("glucose", drift=drift) == pytest.approx(max(1.0, (
            np.sum(scatter ** 2) - np.sum(recent["noise_sd"] ** 2)) / np.sum(recent["predicted_sd"] ** 2)), rel=1e-12)
        # per cell: the errors over the cell-hours, each interval's cells the mean of the filter's at its two ends
        per_cell = predictor.innovation_drift("glucose", per="vcd")
        cell_hours = 24.0 * 0.5 * (np.asarray(cells[:-1]) + np.asarray(cells[1:]))
        assert per_cell == pytest.approx(errors.sum() / cell_hours.sum(), rel=1e-12)
        assert predictor.spread_inflation("glucose", drift=per_cell, per="vcd") == pytest.approx(max(1.0, (
            np.sum((errors - per_cell * cell_hours) ** 2) - np.sum(recent["noise_sd"] ** 2))
            / np.sum(recent["predicted_sd"] ** 2)), rel=1e-12)
        assert cells[-1] == pytest.approx(predictor.particles()[0][:, 0] @ predictor.particles()[2], rel=1e-12)
        if biased:  # glucose below every prediction: a drift downwards, which takes part of λ with it; the errors
            # grow with the cells, so the rate per cell at today's cells is steeper than the days' mean rate
            assert drift < -0.01 and predictor.spread_inflation("glucose", drift=drift) < inflation
            assert per_cell * cells[-1] < 1.2 * drift, (per_cell * cells[-1], drift)
        else:
            assert abs(drift) < 0.01, drift
    with pytest.raises(CampaignValidationError, match="unknown variable"):
        predictor.spread_inflation("happiness")
    with pytest.raises(CampaignValidationError, match="last"):
        predictor.spread_inflation("glucose", last=1)
    with pytest.raises(CampaignValidationError, match="unknown variable"):
        predictor.innovation_drift("happiness")
    with pytest.raises(CampaignValidationError, match="last"):
        predictor.innovation_drift("glucose", last=1)
    with pytest.raises(CampaignValidationError, match="drift"):
        predictor.spread_inflation("glucose", drift=float("nan"))
    with pytest.raises(CampaignValidationError, match="unknown state 'happiness'"):
        predictor.innovation_drift("glucose", per="happiness")
    with pytest.raises(CampaignValidationError, match="unknown state"):
        predictor.state_mean("happiness")
