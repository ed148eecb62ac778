"""Plots: each kind is rendered to PNG (Agg) and checked for what it must show.

Trajectories with bands (`plot_prediction`), parity, residuals over time and feed plans; the campaign plot too. Most
tests use a prediction built from the data (a known offset, no solver), one uses a real `predict` output.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402

from cgt_twin import Event, Medium, Protocol, read_campaign  # noqa: E402
from cgt_twin.plot import plot_campaign, save_figure  # noqa: E402
from cgt_twin.report import plot_feed_plan, plot_parity, plot_prediction, plot_residuals  # noqa: E402

OFFSET = 0.1  # the fake prediction is the data's replicate mean minus OFFSET x |mean|


@pytest.fixture(scope="module")
def campaign(example_folder):
    return read_campaign(example_folder)


@pytest.fixture(scope="module")
def prediction(campaign):
    """A prediction on the campaign's grid: mean = (1 − OFFSET)·data, 90 % band = mean ± 1.645·(0.1·|mean| + 0.01)."""
    data_vars = {}
    for variable in ("vcd", "glucose", "titer"):
        values = campaign.data[variable].mean("replicate").transpose("batch", "time", "phase").values
        values = np.where(np.isfinite(values), values, np.nan)
        mean = (1 - OFFSET) * values
        sd = 0.1 * np.abs(mean) + 0.01
        stack = np.stack([mean, mean - 1.645 * sd, mean + 1.645 * sd])
        data_vars[variable] = (("statistic", "batch", "time", "phase"), stack, {"units": campaign.unit(variable)})
    return xr.Dataset(data_vars, coords={"statistic": ["mean", "q05", "q95"], "batch": list(campaign.batches),
                                         "time": campaign.times, "phase": ["pre", "post"]})


def _render(fig, path) -> np.ndarray:
    """Saves as PNG, checks the signature and that the picture is not blank; returns the pixels."""
    save_figure(fig, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = plt.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert pixels[..., :3].std() > 0.02, "blank picture"
    return pixels


def test_campaign_plot_png(campaign, tmp_path):
    fig = plot_campaign(campaign, ["vcd", "glucose"])
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    _render(fig, tmp_path / "campaign.png")


def test_trajectories_with_bands_png(campaign, prediction, tmp_path):
    fig = plot_prediction(campaign, prediction, ["vcd", "glucose"])
    axes = [a for a in fig.axes if a.get_visible()]
    assert len(axes) == 2 * len(campaign.batches)
    for ax in axes:  # every panel has its shaded band, its mean line and data points
        assert any(isinstance(c, PolyCollection) for c in ax.collections)
        assert any(line.get_label() == "twin" for line in ax.get_lines())
        assert any(line.get_label() == "data" and len(line.get_xdata()) > 0 for line in ax.get_lines())
    _render(fig, tmp_path / "prediction.png")


def test_parity_png(campaign, prediction, tmp_path):
    fig = plot_parity(campaign, prediction, ["vcd", "glucose", "titer"])
    ax = fig.axes[0]
    points = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
    assert len(points) == len(campaign.batches)
    for line in points:  # predicted = (1 − OFFSET) · measured
        measured, predicted = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
        np.testing.assert_allclose(predicted, (1 - OFFSET) * measured, rtol=1e-12)
    _render(fig, tmp_path / "parity.png")


def test_residuals_png(campaign, prediction, tmp_path):
    fig = plot_residuals(campaign, prediction, ["vcd", "glucose"], time_unit="h")
    ax = fig.axes[0]
    points = [line for line in ax.get_lines() if line.get_linestyle() == "None"]
    assert {line.get_label() for line in points} == set(campaign.batches)
    for line in points:
        batch = line.get_label()
        times = np.asarray(line.get_xdata())
        measured = campaign.data["vcd"].sel(batch=batch, phase="pre", replicate=0).sel(time=times).values
        np.testing.assert_allclose(np.asarray(line.get_ydata()), OFFSET * measured, rtol=1e-9)
    _render(fig, tmp_path / "residuals.png")


def test_standardised_residuals(campaign, prediction, tmp_path):
    fig = plot_residuals(campaign, prediction, ["glucose"], standardised=True)
    ax = fig.axes[0]
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
    assert levels == pytest.approx([-1.6449, 1.6449], abs=1e-4)
    for line in ax.get_lines():
        if line.get_linestyle() == "None":
            z = np.asarray(line.get_ydata())
            assert np.all(np.isfinite(z)) and np.median(z) > 0.5  # data above a prediction 10 % low
    _render(fig, tmp_path / "standardised.png")


def test_feed_plan_png(campaign, tmp_path):
    fig = plot_feed_plan(campaign, time_unit="h")
    bolus_ax = fig.axes[0]
    stems = [c for c in bolus_ax.collections if isinstance(c, LineCollection)]
    assert len(stems) == len(campaign.batches)
    for batch, stem in zip(campaign.batches, stems, strict=True):
        boluses = campaign.protocols[batch].events_of("bolus")
        heights = sorted(seg[1][1] for seg in stem.get_segments())
        assert heights == pytest.approx(sorted(e.amount for e in boluses))
    assert "bolus [L]" in bolus_ax.get_ylabel()
    _render(fig, tmp_path / "feed_plan.png")


def test_feed_plan_rates_and_other_events(tmp_path):
    feed = Medium("feed", {"glucose": 400.0})
    events = (Event(0.0, "transfection", 1.0, "ug/mL"), Event(24.0, "feed_rate", 0.002, "L/h", medium="feed"),
              Event(48.0, "bolus", 0.05, "L", medium="feed"), Event(72.0, "feed_rate", 0.0, "L/h", medium="feed"),
              Event(96.0, "setpoint", 33.0, "degC", target="temperature"), Event(120.0, "harvest"))
    protocol = Protocol(1.0, events, {"feed": feed}, max_volume=2.0)
    fig = plot_feed_plan(protocol)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels[:3] == ["bolus [L]", "rate [L/h]", "volume [L]"]
    volume = fig.axes[2].get_lines()[0]
    # 1 L + 48 h × 0.002 L/h + 0.05 L bolus, then constant
    assert max(volume.get_ydata()) == pytest.approx(1.0 + 0.096 + 0.05)
    ticks = [t.get_text() for t in fig.axes[3].get_yticklabels()]
    assert ticks == ["transfection", "setpoint temperature", "harvest"]
    _render(fig, tmp_path / "feed_plan_rates.png")
    with pytest.raises(KeyError, match="unknown batches"):
        plot_feed_plan({"A": protocol}, ["B"])


def test_plots_of_a_real_prediction(campaign, tmp_path):
    """The plots take `predict`'s output as it is (one simulation of the example campaign)."""
    from cgt_twin.models import CHOFedBatch, Twin
    from cgt_twin.predict import predict
    from cgt_twin.report import write_report

    twin = Twin(CHOFedBatch()).with_noise({"vcd": (0.1, 0.05), "glucose": (0.5, 0.05)})
    result = predict(twin, campaign)
    written = write_report(campaign, result, tmp_path / "report", variables=["vcd", "glucose"])
    for key in ("prediction", "parity", "residuals"):
        pixels = plt.imread(written[key])
        assert pixels[..., :3].std() > 0.02
    fig = plot_residuals(campaign, result, ["vcd", "glucose"], standardised=True)
    z = np.concatenate([line.get_ydata() for line in fig.axes[0].get_lines() if line.get_linestyle() == "None"])
    assert z.size > 0 and all(math.isfinite(v) for v in z)
    plt.close(fig)
