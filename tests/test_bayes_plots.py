"""Plots of a posterior (predictive bands, trace, pairs) and its HTML summary, on the 2-parameter toy model with the
Laplace approximation (fast); a synthetic NUTS posterior checks that failed diagnostics are highlighted."""

from __future__ import annotations

import dataclasses
import html
import io
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_bayes_toy import FAST_SOLVER, NOISE, GrowthDeath, growth_campaign  # noqa: E402

from cgt_twin._html import posterior_html  # noqa: E402
from cgt_twin.bayes import BayesConfig, Posterior, build_model, laplace, plots  # noqa: E402
from cgt_twin.models import Twin  # noqa: E402
from cgt_twin.predict import predict  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def toy():
    campaign = growth_campaign({"A": {"mu_max": 0.03}, "B": {"mu_max": 0.035}}, seed=3)
    twin = Twin(GrowthDeath(), {}, NOISE)
    model = build_model(twin, campaign, BayesConfig(parameters=("mu_max", "k_d"), noise="fixed", solver=FAST_SOLVER),
                        forward_mode=False)
    posterior = laplace(model, draws=300)
    measurement = predict(twin, campaign, posterior=posterior, band="measurement", n_draws=40, settings=FAST_SOLVER)
    parameter = predict(twin, campaign, posterior=posterior, band="parameter", n_draws=40, settings=FAST_SOLVER)
    return campaign, posterior, measurement, parameter


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    plt.close(fig)
    return buffer.getvalue()


def _axes_with_data(fig) -> list:
    return [ax for ax in fig.axes if ax.lines or ax.collections or ax.patches]


def test_predictive_bands_draw_data_over_both_bands(toy):
    campaign, _, measurement, parameter = toy
    fig = plots.plot_predictive_bands(campaign, measurement, ["vcd", "dead_cells"], ["A", "B"], parameter=parameter)
    panels = _axes_with_data(fig)
    assert len(panels) == 4  # 2 variables × 2 batches, each with bands and data
    first = fig.axes[0]
    assert len(first.collections) == 2  # measurement band and the darker parameter band
    light, dark = first.collections
    assert dark.get_alpha() > light.get_alpha()
    assert first.get_ylabel() == f"vcd\n[{campaign.data['vcd'].attrs['units']}]"
    assert fig.axes[-1].get_xlabel() == "time [d]"
    data = [line for line in first.lines if line.get_label() == "data"]
    assert data and np.nanmax(data[0].get_xdata()) == pytest.approx(campaign.times.max() / 24.0)
    labels = {t.get_text() for t in fig.legends[0].get_texts()}
    assert {"90 % measurement band", "90 % parameter band", "posterior mean", "data"} <= labels
    assert _png(fig).startswith(PNG_SIGNATURE)


def test_predictive_bands_without_the_parameter_band(toy):
    campaign, _, measurement, _ = toy
    fig = plots.plot_predictive_bands(campaign, measurement, batches=["B"], time_unit="h")
    assert len(_axes_with_data(fig)) == len([v for v in campaign.variables if v in measurement.data_vars])
    assert all(len(ax.collections) == 1 for ax in fig.axes)
    assert fig.axes[-1].get_xlabel() == "time [h]"
    assert _png(fig).startswith(PNG_SIGNATURE)


def test_predictive_bands_reject_what_cannot_be_drawn(toy):
    campaign, _, measurement, _ = toy
    with pytest.raises(ValueError, match="not predicted"):
        plots.plot_predictive_bands(campaign, measurement, batches=["nope"])
    with pytest.raises(ValueError, match="time_unit"):
        plots.plot_predictive_bands(campaign, measurement, time_unit="min")


def test_trace_plot_has_two_panels_per_parameter(toy):
    _, posterior, _, _ = toy
    fig = plots.plot_trace(posterior)
    assert len(_axes_with_data(fig)) == 2 * len(posterior.parameters)
    titles = {ax.get_title() for ax in fig.axes}
    assert set(posterior.parameters) <= titles
    assert _png(fig).startswith(PNG_SIGNATURE)


@pytest.mark.parametrize("kind", ["scatter", "kde"])
def test_pair_plot_is_a_grid_of_the_parameters(toy, kind):
    _, posterior, _, _ = toy
    fig = plots.plot_pairs(posterior, kind=kind)
    assert len(_axes_with_data(fig)) == 3  # 2 marginals and 1 joint panel
    assert _png(fig).startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="two scalar"):
        plots.plot_pairs(posterior, ["mu_max"])


def _nuts_like(posterior: Posterior, shift: float) -> Posterior:
    """The toy posterior re-labelled as 4 NUTS chains of iid normal draws, chain c shifted by c·`shift` sd."""
    rng = np.random.default_rng(7)
    samples = {}
    for p in posterior.parameters:
        flat = posterior.flat(f"log_{p}")
        draws = flat.mean() + flat.std() * rng.standard_normal((4, 250))
        samples[f"log_{p}"] = draws + shift * flat.std() * np.arange(4)[:, None]
    stats = {"diverging": np.zeros((4, 250), bool), "num_steps": np.full((4, 250), 7),
             "energy": rng.standard_normal((4, 250)), "accept_prob": np.full((4, 250), 0.8)}
    if shift:
        stats["diverging"][0, :3] = True
    meta = {**posterior.meta, "method": "nuts", "settings": {"max_tree_depth": 10}}
    fake = Posterior(samples, stats, meta)
    diagnostics, problems = fake._diagnose()
    return dataclasses.replace(fake, diagnostics=diagnostics, problems=tuple(problems))


def test_posterior_html_of_a_laplace_posterior(toy):
    _, posterior, _, _ = toy
    text = posterior._repr_html_()
    assert text == posterior_html(posterior)
    assert text.startswith("<div>") and text.endswith("</div>") and "<script" not in text
    assert "laplace" in text and f"1 chain(s) × {posterior.n_draws} draws" in text
    for column in ("mean", "sd", "r hat", "ess bulk", "ess tail"):
        assert f">{column}<" in text
    assert "mu_max [1/h]" in text and "held fixed: nothing" in text
    assert "no sampler diagnostics" in text and "b00020" not in text  # nothing failed, nothing red


def test_posterior_html_highlights_failed_checks(toy):
    _, posterior, _, _ = toy
    good = _nuts_like(posterior, shift=0.0)
    assert good.check(), good.problems
    good_html = posterior_html(good)
    assert "all diagnostics met their thresholds" in good_html and "b00020" not in good_html
    assert "split R-hat (max)" in good_html and "≤ 1.01" in good_html and "≥ 400" in good_html

    bad = _nuts_like(posterior, shift=3.0)
    assert not bad.check()
    bad_html = posterior_html(bad)
    assert f"{len(bad.problems)} diagnostic(s) failed" in bad_html
    assert bad_html.count("failed</span>") >= 2  # R-hat and divergences at least
    for problem in bad.problems:
        assert html.escape(problem) in bad_html


def test_posterior_html_escapes_text(toy):
    _, posterior, _, _ = toy
    meta = {**posterior.meta, "description": "<script>alert(1)</script>", "held": {"k_<b>": 1.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text = posterior_html(dataclasses.replace(posterior, meta=meta))
    assert "<script>" not in text and "&lt;script&gt;" in text and "k_&lt;b&gt;" in text
