"""Plots and HTML summaries of the control loop: `plot_forecast`, `plot_plan` (rendered to PNG with Agg and checked
for what they must show) and the HTML of a `Plan` and a `Predictor` (render, say what matters, escape text)."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402
from test_html import _parse  # noqa: E402

import cgt_twin  # noqa: E402, F401  (float64)
from cgt_twin import Event, Medium, Protocol  # noqa: E402
from cgt_twin._html import plan_html, predictor_html  # noqa: E402
from cgt_twin.control import Predictor, PredictorSettings, plot_forecast, plot_plan  # noqa: E402
from cgt_twin.control.mpc import FeedingController, MPCConfig, Plan  # noqa: E402
from cgt_twin.models import CHOFedBatch  # noqa: E402
from cgt_twin.models.twin import Twin  # noqa: E402
from cgt_twin.simulate import simulate  # noqa: E402

NOISE = {"vcd": (0.02, 0.05), "glucose": (0.1, 0.03), "lactate": (0.1, 0.05), "titer": (1.0, 0.05)}
INITIAL = {"vcd": 0.8, "dead_cells": 0.02, "glucose": 25.0, "glutamine": 4.0, "lactate": 2.0, "ammonia": 0.5,
           "titer": 5.0}
FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
PROTOCOL = Protocol(1.0, (Event(24.0, "bolus", 0.03, "L", medium="feed"), Event(144.0, "harvest")), {"feed": FEED},
                    max_volume=1.3)
MEASURED = (24.0, 48.0)  # assimilated
LATER = (72.0, 96.0)  # drawn, not assimilated
PNG = b"\x89PNG\r\n\x1a\n"


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    plt.close(fig)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def twin() -> Twin:
    return Twin(CHOFedBatch(), noise=NOISE)


@pytest.fixture(scope="module")
def rows(twin) -> pd.DataFrame:
    """Measurements of a slightly different truth (faster growth) at 24–96 h: time_h, variable, value, unit."""
    truth = twin.with_params(mu_max=0.033)
    times = [*MEASURED, *LATER]
    trajectory = simulate(truth, {"b": PROTOCOL}, times=times, initial_states={"b": {**INITIAL, "volume": 1.0}})
    units = {"vcd": "1e6 cells/mL", "glucose": "mM", "lactate": "mM", "titer": "mg/L"}
    return pd.DataFrame([{"time_h": t, "variable": v, "unit": u,
                          "value": float(trajectory[v].sel(batch="b", phase="pre", time=t).values)}
                         for t in times for v, u in units.items()])


@pytest.fixture(scope="module")
def predictor(twin, rows) -> Predictor:
    predictor = Predictor(twin, settings=PredictorSettings(n_particles=32))
    predictor.start(PROTOCOL, INITIAL)
    report = predictor.update(rows[rows["time_h"].isin(MEASURED)])
    assert report.accepted == 8 and predictor.time_h == 48.0
    return predictor


@pytest.fixture(scope="module")
def forecast(predictor):
    return predictor.forecast(horizon_h=96.0, step_h=6.0)


@pytest.fixture(scope="module")
def plan(twin, predictor) -> Plan:
    config = MPCConfig(decision_times_h=(72.0, 96.0, 120.0), n_draws=8, bolus_max_l=0.05, max_evaluations=4,
                       time_budget_s=60.0, glucose_min=2.0, lactate_max=80.0)
    return FeedingController(twin, config).step(predictor)


def _hand_made_plan(**changes) -> Plan:
    """A plan built by hand: a fallback with NaN predictions and no decisions left, a medium name to escape."""
    times = (130.0, 144.0)
    base = dict(time_h=130.0, decision_times_h=(), volumes_l=(), medium="<feed & more>",
                status="fallback: the optimiser failed (ValueError: <bad>); using the default boluses",
                objective=math.nan, constraint_probability={"glucose >= 2": 0.25}, evaluations=0, seconds=0.002,
                prediction_times_h=times,
                prediction={v: np.full((3, len(times)), np.nan) for v in ("glucose", "titer", "vcd", "volume")})
    return Plan(**{**base, **changes})


# -- plot_forecast ---------------------------------------------------------------------------------------------------
def test_plot_forecast_draws_band_mean_filter_time_and_measurements(forecast, rows):
    messy = pd.concat([rows, pd.DataFrame([
        {"time_h": 30.0, "variable": "glucose", "value": 3.6032, "unit": "g/L"},  # 20 mM, converted by pint
        {"time_h": "soon", "variable": "vcd", "value": 1.0, "unit": ""},  # not a number: left out
        {"time_h": 30.0, "variable": "glucose", "value": 1.0, "unit": "parsec"},  # no conversion: left out
    ])], ignore_index=True)
    fig = plot_forecast(forecast, messy, variables=("vcd", "glucose"))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    assert "1e6 cells/mL" in axes[0].get_ylabel() and "[mM]" in axes[1].get_ylabel()
    assert axes[1].get_xlabel() == "time [h]"
    for ax, variable in zip(axes, ("vcd", "glucose"), strict=True):
        band = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(band) == 1  # the q05–q95 band
        lines = {line.get_label(): line for line in ax.get_lines()}
        mean = lines["forecast mean"]
        np.testing.assert_allclose(mean.get_ydata(), forecast[variable].sel(statistic="mean").values)
        np.testing.assert_allclose(lines["filter time"].get_xdata(), [48.0, 48.0])
        seen = lines["assimilated"]
        later = lines["after the filter time"]
        assert set(np.round(later.get_xdata(), 6)) == set(LATER) and later.get_markerfacecolor() == "none"
        expected = set(MEASURED) | ({30.0} if variable == "glucose" else set())
        assert set(np.round(seen.get_xdata(), 6)) == expected
    glucose_at_30 = [y for x, y in zip(*lines["assimilated"].get_data(), strict=True) if x == 30.0]
    assert glucose_at_30 == [pytest.approx(20.0, rel=1e-4)]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "90 % state band" in legend and "forecast mean" in legend
    assert "48 h" in fig.get_suptitle() and "32 particles" in fig.get_suptitle()
    png = _png(fig)
    assert png.startswith(PNG) and len(png) > 10_000


def test_plot_forecast_defaults_units_and_bad_input(forecast, rows, predictor):
    fig = plot_forecast(forecast, rows)  # the measured variables, most informative first
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_visible()]
    assert [label.split(" [")[0] for label in labels] == ["viable cells", "glucose", "lactate", "titre"]
    assert "titre [mg/L]" in labels
    plt.close(fig)
    fig = plot_forecast(forecast, time_unit="d")  # no data: vcd, glucose, lactate, ammonia, titre, volume
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in visible][-1] == "volume [L]" and len(visible) == 6
    mean = [line for line in visible[0].get_lines() if line.get_label() == "forecast mean"][0]
    np.testing.assert_allclose(mean.get_xdata(), forecast["time"].values / 24.0)
    assert visible[-1].get_xlabel() == "time [d]"
    png = _png(fig)
    assert png.startswith(PNG) and len(png) > 10_000
    measurement = predictor.forecast(horizon_h=96.0, step_h=6.0, band="measurement")  # the same compiled shapes
    fig = plot_forecast(measurement, [(24.0, "vcd", 1.0)], variables=["vcd"])  # records, as update takes them
    assert "90 % measurement band" in [t.get_text() for t in fig.legends[0].get_texts()]
    plt.close(fig)
    with pytest.raises(ValueError, match="oxygen"):
        plot_forecast(forecast, variables=["vcd", "oxygen"])
    with pytest.raises(ValueError, match="time_unit"):
        plot_forecast(forecast, time_unit="min")
    with pytest.raises(ValueError, match="dims"):
        plot_forecast(forecast.isel(statistic=0, drop=True))
    with pytest.raises(ValueError, match="columns"):
        plot_forecast(forecast, pd.DataFrame({"t": [1.0]}))


# -- plot_plan -------------------------------------------------------------------------------------------------------
def test_plot_plan_draws_predictions_limits_and_boluses(plan):
    assert not plan.is_fallback, plan.status
    fig = plot_plan(plan)
    axes = fig.axes
    assert len(axes) == 5  # glucose, titre, vcd, volume, boluses
    ylabels = [ax.get_ylabel() for ax in axes]
    assert ylabels == ["glucose [mM]", "titre [mg/L]", "viable cells [1e6 cells/mL]", "volume [L]",
                       "bolus [mL of feed]"]
    assert axes[-1].get_xlabel() == "time [h]"
    for ax, variable in zip(axes[:4], ("glucose", "titer", "vcd", "volume"), strict=True):
        assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 1
        mean = [line for line in ax.get_lines() if line.get_label() == "predicted mean"][0]
        np.testing.assert_allclose(mean.get_xdata(), plan.prediction_times_h)
        np.testing.assert_allclose(mean.get_ydata(), plan.prediction[variable][0])
    dashed = lambda ax: {line.get_label(): line for line in ax.get_lines() if line.get_linestyle() == "--"}  # noqa
    glucose_limit = dashed(axes[0])
    (label,) = glucose_limit
    assert label.startswith("glucose ≥ 2 mM (met in") and glucose_limit[label].get_ydata()[0] == 2.0
    (volume_label,) = dashed(axes[3])
    assert volume_label.startswith("volume ≤ 1.3 L") and dashed(axes[3])[volume_label].get_ydata()[0] == 1.3
    assert not dashed(axes[1])  # "lactate <= 80" has no panel here
    stems = [c for c in axes[-1].collections if isinstance(c, LineCollection)][0]
    heights = [segment[1][1] for segment in stems.get_segments()]
    np.testing.assert_allclose(heights, 1000 * np.asarray(plan.volumes_l))
    np.testing.assert_allclose([s[0][0] for s in stems.get_segments()], plan.decision_times_h)
    png = _png(fig)
    assert png.startswith(PNG) and len(png) > 10_000


def test_plot_plan_other_variables_days_and_a_fallback_without_decisions(plan):
    fig = plot_plan(plan, variables=("lactate",), time_unit="d")
    assert fig.axes[0].get_ylabel() == "lactate [mM]" and fig.axes[-1].get_xlabel() == "time [d]"
    assert [line for line in fig.axes[0].get_lines() if line.get_label().startswith("lactate ≤ 80 mM")]
    plt.close(fig)
    fallback = _hand_made_plan()
    fig = plot_plan(fallback)
    assert "fallback" in fig.get_suptitle()
    assert any("no decisions left" in t.get_text() for t in fig.axes[-1].texts)
    png = _png(fig)
    assert png.startswith(PNG) and len(png) > 5_000
    with pytest.raises(ValueError, match="ammonia"):
        plot_plan(fallback, variables=("glucose", "ammonia"))
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        plot_plan(_hand_made_plan(prediction={"glucose": np.zeros((2, 2))}), variables=("glucose",))


# -- HTML ------------------------------------------------------------------------------------------------------------
# `_parse` (tests/test_html.py): the markup's text, after checking every tag we emit is closed


def test_plan_html_time_status_boluses_and_constraints(plan):
    markup = plan_html(plan)
    text = _parse(markup)
    assert "Plan" in text and "at 48 h" in text and plan.status in text and "evaluations" in text
    for t, v in zip(plan.decision_times_h, plan.volumes_l, strict=True):
        assert f"{t:g}" in text and f"{1000 * v:.1f}" in text
    for name, probability in plan.constraint_probability.items():
        assert name in text and f"{100 * probability:.0f} %" in text
    assert "volume [mL]" in text and "glucose >= 2" in text and "lactate <= 80" in text


def test_plan_html_fallback_is_red_and_text_is_escaped():
    markup = plan_html(_hand_made_plan())
    text = _parse(markup)
    assert "&lt;feed &amp; more&gt;" in markup and "<feed" not in markup
    assert "ValueError: &lt;bad&gt;" in markup and "color:#b00020" in markup
    assert "no decision left" in text and "25 %" in text and "objective —" in text
    widened = _parse(plan_html(_hand_made_plan(spread_inflation={"glucose": 4.0})))
    assert "draws' spread" in widened and "×2" in widened  # λ = 4: the draws' spread doubled
    shifted = _parse(plan_html(_hand_made_plan(drift={"glucose": -0.25})))
    assert "draws' drift" in shifted and "-6 per day" in shifted  # −0.25 mM/h


def test_predictor_html_before_and_after_start(twin, predictor):
    idle = Predictor(twin, settings=PredictorSettings(n_particles=32), compile=False)
    text = _parse(predictor_html(idle))
    assert "Predictor" in text and "CHOFedBatch" in text and "32 particles" in text and "no running batch" in text
    assert "no posterior" in text
    markup = predictor_html(predictor)
    text = _parse(markup)
    assert "filter at 48 h" in text and "ESS" in text and "of 32" in text and "2 measurement times" in text
    y, _, weights = predictor.particles()
    vcd = predictor.twin.kinetics.layout.names.index("vcd")
    assert f"{float(weights @ y[:, vcd]):.4g}" in text and "1e6 cells/mL" in text
    for note in predictor.notes:
        assert note in text
    assert "settings" in text and "Liu–West" in text


def test_repr_html_hooks_use_the_builders(plan, predictor):
    """`Plan._repr_html_` and `Predictor._repr_html_` are the builders (the classes call into `cgt_twin._html`)."""
    missing = [cls.__name__ for cls in (Plan, Predictor) if not hasattr(cls, "_repr_html_")]
    if missing:
        pytest.skip(f"_repr_html_ not yet defined on {missing} (a two-line method calling cgt_twin._html)")
    assert plan._repr_html_() == plan_html(plan)
    assert predictor._repr_html_() == predictor_html(predictor)
