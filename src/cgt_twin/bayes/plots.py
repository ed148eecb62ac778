"""Plots of a posterior and its predictions: data over posterior predictive bands, trace and pair plots.

Every function returns a `matplotlib.figure.Figure` (nothing is shown or saved), so a notebook displays it and a
script saves it with `cgt_twin.plot.save_figure`. Trace and pair plots go through ArviZ (`Posterior.to_arviz`):
kinetic parameters are drawn in the unit of their spec (e.g. ``mu_max`` in 1/h), not on the log scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..data.campaign import Campaign
from ..plot import label_panel
from .posterior import Posterior

__all__ = ["plot_predictive_bands", "plot_trace", "plot_pairs"]

_TIME_SCALE = {"d": 24.0, "h": 1.0}  # hours per time unit
_MAX_VARIABLES, _MAX_BATCHES = 8, 6


def _units(campaign: Campaign, variable: str) -> str:
    """The variable's unit as stored with the campaign's data (``data[v].attrs["units"]``)."""
    return str(campaign.data[variable].attrs.get("units") or campaign.unit(variable))


def _band_label(prediction: xr.Dataset, default: str) -> str:
    """The legend label of a prediction's band, e.g. ``"90 % measurement band"`` (from its statistics)."""
    kind = prediction.attrs.get("band", default)
    width = _band_width(prediction)
    return f"{width} % {kind} band" if width else f"{kind} band"


def _band_width(prediction: xr.Dataset) -> int | None:
    """The central width in % of the (q_low, q_high) statistics, e.g. 90 for (q05, q95); None if unreadable."""
    statistics = [str(s) for s in prediction["statistic"].values if str(s).startswith("q")]
    try:
        low, high = sorted(float(s[1:]) for s in statistics)[:2]
    except ValueError:
        return None
    return round(high - low)


def _quantile_names(prediction: xr.Dataset) -> tuple[str, str]:
    statistics = sorted((str(s) for s in prediction["statistic"].values if str(s).startswith("q")),
                        key=lambda s: float(s[1:]))
    if len(statistics) < 2:
        raise ValueError(f"a prediction needs two quantile statistics (q05, q95), got {statistics}")
    return statistics[0], statistics[-1]


def _draw_band(ax: Axes, prediction: xr.Dataset, variable: str, batch: str, scale: float, *, alpha: float,
               label: str, mean: bool) -> None:
    """Shades one batch's pre-event band (and its mean line) of one variable; times in h divided by `scale`."""
    low, high = _quantile_names(prediction)
    band = prediction[variable].sel(batch=batch, phase="pre")
    t = prediction["time"].values / scale
    centre = band.sel(statistic="mean").values
    ok = np.isfinite(centre) & np.isfinite(band.sel(statistic=low).values)
    ax.fill_between(t[ok], band.sel(statistic=low).values[ok], band.sel(statistic=high).values[ok], color="C0",
                    alpha=alpha, lw=0, label=label)
    if mean:
        ax.plot(t[ok], centre[ok], color="C0", lw=1.4, label="posterior mean")


def _draw_data(ax: Axes, campaign: Campaign, variable: str, batch: str, scale: float) -> None:
    """Measured values of one batch: filled dots before an event, hollow after it, censored ones as ▽ at the limit."""
    times = campaign.times / scale
    for phase, face in (("pre", "k"), ("post", "none")):
        data = campaign.data[variable].sel(batch=batch, phase=phase).values  # (time, replicate)
        flags = campaign.censored[variable].sel(batch=batch, phase=phase).values
        for r in range(data.shape[1]):
            good = np.isfinite(data[:, r]) & (flags[:, r] == 0)
            label = ("data" if phase == "pre" else "data after an event") if r == 0 and good.any() else None
            ax.plot(times[good], data[good, r], "o", color="k", mfc=face, ms=3.5, zorder=3, label=label)
            low = np.isfinite(data[:, r]) & (flags[:, r] != 0)
            ax.plot(times[low], data[low, r], "v", color="k", mfc="none", ms=4, zorder=3,
                    label="censored (limit)" if r == 0 and low.any() else None)


def plot_predictive_bands(campaign: Campaign, prediction: xr.Dataset, variables: Sequence[str] | None = None,
                          batches: Sequence[str] | None = None, *, parameter: xr.Dataset | None = None,
                          time_unit: str = "d") -> Figure:
    """Data points over the posterior predictive bands: rows are variables, columns batches.

    Args:
        campaign: the measurements (points; units from ``campaign.data[v].attrs["units"]``).
        prediction: `cgt_twin.predict.predict(..., posterior=..., band="measurement")`: the band a new measurement
            falls in (light shade) and the posterior mean (line), canonical units, time in h.
        variables: variables to draw (default: those both predicted and measured; at most 8).
        batches: batches to draw (default: the predicted batches of the campaign; at most 6).
        parameter: optionally the same prediction with ``band="parameter"``: the spread of the predicted truth only,
            shaded darker inside the measurement band.
        time_unit: ``"d"`` (days, default) or ``"h"``.

    Returns:
        The figure, one panel per variable and batch, the legend below.
    """
    if time_unit not in _TIME_SCALE:
        raise ValueError(f"time_unit must be one of {tuple(_TIME_SCALE)}, got {time_unit!r}")
    scale = _TIME_SCALE[time_unit]
    names = [v for v in (variables or campaign.variables) if v in prediction.data_vars and v in campaign.variables]
    names = names[:_MAX_VARIABLES]
    predicted = list(prediction["batch"].values.astype(str))
    chosen = list(batches or [b for b in predicted if b in campaign.batches])[:_MAX_BATCHES]
    missing = [b for b in chosen if b not in predicted]
    if missing or not names or not chosen:
        raise ValueError(f"nothing to draw: variables {names}, batches {chosen} (not predicted: {missing})")
    size = (max(3.4 * len(chosen), 5.0), 2.5 * len(names) + 0.6)  # inches; room for the legend below
    fig, axes = plt.subplots(len(names), len(chosen), figsize=size, squeeze=False, sharex=True, layout="constrained")
    for i, variable in enumerate(names):
        for j, batch in enumerate(chosen):
            ax = axes[i][j]
            _draw_band(ax, prediction, variable, batch, scale, alpha=0.2, label=_band_label(prediction, "measurement"),
                       mean=parameter is None)
            if parameter is not None:
                _draw_band(ax, parameter, variable, batch, scale, alpha=0.45,
                           label=_band_label(parameter, "parameter"), mean=True)
            if batch in campaign.batches:
                _draw_data(ax, campaign, variable, batch, scale)
            label_panel(ax, i, j, len(names), batch=batch, ylabel=f"{variable}\n[{_units(campaign, variable)}]",
                        time_unit=time_unit)
    handles = {}
    for ax in axes.flat:  # the union of every panel's entries (a panel may lack data or censored values)
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncols=min(len(labels), 3),
               fontsize="small")
    kind = prediction.attrs.get("posterior", "")
    if kind:
        fig.suptitle(f"posterior predictive ({kind}, {prediction.attrs.get('n_draws', '?')} draws)",
                     fontsize="medium")
    return fig


def _default_names(posterior: Posterior) -> list[str]:
    """The sampled kinetic parameters (spec units) and the hierarchical spreads, when there are any."""
    return [*posterior.parameters, *[k for k in ("tau_batch", "tau_group") if k in posterior.sampled_sites]]


def _figure_of(axes) -> Figure:
    return np.asarray(axes).ravel()[0].get_figure()


def plot_trace(posterior: Posterior, var_names: Sequence[str] | None = None) -> Figure:
    """`arviz.plot_trace`: per quantity, its marginal density per chain (left) and its draws in order (right).

    Args:
        posterior: a `Posterior` (NUTS: divergent transitions are ticked along the x axis; Laplace: independent draws,
            so the trace shows no autocorrelation by construction).
        var_names: quantities of `Posterior.to_arviz` (default: the sampled parameters in their spec units, e.g.
            ``mu_max`` in 1/h, and ``tau_batch`` / ``tau_group`` (log-scale sds) when hierarchical).

    Returns:
        The figure: two panels per quantity.
    """
    import arviz as az

    names = list(var_names or _default_names(posterior))
    axes = az.plot_trace(posterior.to_arviz(), var_names=names, compact=True,
                         divergences="bottom" if "diverging" in posterior.stats else None,
                         figsize=(9.0, 2.0 * len(names)))
    fig = _figure_of(axes)
    fig.suptitle(f"trace ({posterior.method}, {posterior.n_chains} chain(s) × {posterior.n_draws} draws)",
                 fontsize="medium")
    fig.set_layout_engine("constrained")
    return fig


def plot_pairs(posterior: Posterior, var_names: Sequence[str] | None = None, *, kind: str = "scatter") -> Figure:
    """`arviz.plot_pair`: the joint posterior of every pair of quantities, with the marginals on the diagonal.

    Correlated pairs (a ridge) are what the data cannot tell apart; with NUTS divergent transitions are drawn in red
    (where they cluster, the sampler missed part of the posterior).

    Args:
        posterior: a `Posterior`.
        var_names: quantities of `Posterior.to_arviz` (default: as `plot_trace`); together at least two scalars.
        kind: ``"scatter"`` (default), ``"kde"`` or ``"hexbin"``.

    Returns:
        The figure: an n × n lower-triangular grid (n scalar quantities), spec units.
    """
    import arviz as az

    if kind not in ("scatter", "kde", "hexbin"):
        raise ValueError(f"kind must be 'scatter', 'kde' or 'hexbin', got {kind!r}")
    names = list(var_names or _default_names(posterior))
    idata = posterior.to_arviz()
    scalars = sum(int(np.prod(idata.posterior[n].shape[2:])) for n in names)
    if scalars < 2:
        raise ValueError(f"a pair plot needs at least two scalar quantities, got {names} ({scalars})")
    divergences = "diverging" in posterior.stats
    any_divergent = divergences and bool(np.any(posterior.stats["diverging"]))
    axes = az.plot_pair(idata, var_names=names, kind=kind, marginals=True, divergences=divergences,
                        scatter_kwargs={"alpha": 0.3, "s": 4} if kind == "scatter" else None,
                        figsize=(2.4 * scalars + 1.0, 2.4 * scalars + 1.0))
    fig = _figure_of(axes)
    fig.suptitle(f"pairs ({posterior.method}, {posterior.n_chains * posterior.n_draws} draws"
                 + (", divergences in red)" if any_divergent else ")"), fontsize="medium")
    return fig
