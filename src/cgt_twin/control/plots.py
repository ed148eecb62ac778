"""Plots of the control loop: a `Predictor` forecast with its band and the data it assimilated, and a controller's
`Plan` (predicted trajectories under the plan, the chance-constraint limits, the planned boluses).

Every function returns a `matplotlib.figure.Figure` (nothing is shown or saved), so a notebook displays it and a
script saves it with `cgt_twin.plot.save_figure`. Values are in canonical units (vcd 1e6 cells/mL, metabolites mM,
titre mg/L, volume L); time in h from inoculation unless ``time_unit="d"``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..data.units import UnitConversionError, convert
from ..data.variables import CANONICAL_VARIABLES

__all__ = ["plot_forecast", "plot_plan"]

_PREFERRED = ("vcd", "viability", "glucose", "lactate", "glutamine", "ammonia", "titer", "volume")
_DEFAULT = ("vcd", "glucose", "lactate", "ammonia", "titer", "volume")
_LABELS = {"vcd": "viable cells", "dead_cells": "dead cells", "titer": "titre", "vg_titer": "vector genomes",
           "capsid_titer": "capsids"}
_SCALE = {"h": 1.0, "d": 24.0}  # hours per time unit
_CONSTRAINT = re.compile(r"^\s*(?P<variable>\w+)\s*(?P<side><=|>=)\s*(?P<bound>[-+0-9.eE]+)\s*(?P<unit>\S*)\s*$")


def _unit(variable: str, data: xr.DataArray | None = None) -> str:
    """The canonical unit of `variable` (the forecast's ``units`` attribute first)."""
    if data is not None and data.attrs.get("units"):
        return str(data.attrs["units"])
    if variable == "volume":
        return "L"
    spec = CANONICAL_VARIABLES.get(variable)
    return spec.unit if spec is not None else ""


def _ylabel(variable: str, unit: str) -> str:
    return f"{_LABELS.get(variable, variable.replace('_', ' '))} [{'fraction' if unit == '1' else unit}]"


def _time_scale(time_unit: str) -> float:
    if time_unit not in _SCALE:
        raise ValueError(f"time_unit must be 'h' or 'd', got {time_unit!r}")
    return _SCALE[time_unit]


def _grid(n: int):
    """A figure with `n` panels in at most two columns, sharing the time axis."""
    columns = 1 if n == 1 else 2
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.0 * columns, 2.9 * rows), squeeze=False, sharex=True,
                             layout="constrained")
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _measurement_frame(measurements) -> pd.DataFrame:
    """Measurements (a DataFrame or records of ``time_h, variable, value[, unit]``, as `Predictor.update` takes) as
    a clean frame in canonical units: rows that are not numbers or whose unit does not convert are left out."""
    if isinstance(measurements, pd.DataFrame):
        frame = measurements.reset_index(drop=True).copy()
    else:
        frame = pd.DataFrame(list(measurements))
        if frame.shape[1] in (3, 4) and list(frame.columns) == list(range(frame.shape[1])):
            frame.columns = ["time_h", "variable", "value", "unit"][: frame.shape[1]]
    missing = [c for c in ("time_h", "variable", "value") if c not in frame.columns]
    if missing:
        raise ValueError(f"measurements miss columns {missing}; expected time_h, variable, value (and optionally "
                         "unit)")
    frame["time_h"] = pd.to_numeric(frame["time_h"], errors="coerce")
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    frame["variable"] = frame["variable"].astype(str)
    if "unit" in frame.columns:
        values = frame["value"].to_numpy(dtype=np.float64).copy()
        for i, (variable, unit) in enumerate(zip(frame["variable"], frame["unit"], strict=True)):
            canonical = _unit(variable)
            if isinstance(unit, str) and unit.strip() and canonical and unit.strip() != canonical:
                try:
                    values[i] = float(convert(np.asarray([values[i]]), unit.strip(), canonical, species=variable)[0])
                except (UnitConversionError, ValueError):
                    values[i] = np.nan
        frame["value"] = values
    finite = np.isfinite(frame["time_h"].to_numpy(dtype=np.float64)) & np.isfinite(frame["value"].to_numpy(
        dtype=np.float64))
    return frame.loc[finite, ["time_h", "variable", "value"]]


def _band_label(forecast: xr.Dataset) -> str:
    try:
        low, high = json.loads(forecast.attrs.get("quantiles", "[0.05, 0.95]"))
    except (TypeError, ValueError):
        low, high = 0.05, 0.95
    return f"{round(100 * (high - low))} % {forecast.attrs.get('band', 'state')} band"


def _quantile_names(forecast: xr.Dataset) -> tuple[str, str]:
    """The lower and upper quantile statistics (``q05``, ``q95``) of a forecast."""
    names = [str(s) for s in forecast["statistic"].values if re.fullmatch(r"q[0-9.]+", str(s))]
    names.sort(key=lambda s: float(s[1:]))
    if "mean" not in forecast["statistic"].values or len(names) < 2:
        raise ValueError(f"a forecast needs the statistics mean and two quantiles (q05, q95), got "
                         f"{list(forecast['statistic'].values)}")
    return names[0], names[-1]


def _now(ax: Axes, t: float, label: str | None) -> None:
    ax.axvline(t, color="0.35", ls=":", lw=1.0, label=label)


def plot_forecast(forecast: xr.Dataset, measurements=None, variables: Sequence[str] | None = None, *,
                  time_unit: str = "h") -> Figure:
    """A `Predictor.forecast`: the mean as a line and the quantile band (q05–q95 by default) shaded, one panel per
    variable, with the filter time ("now") dotted and the measurements as points.

    Args:
        forecast: the Dataset `Predictor.forecast` returns (dims ``(statistic, time)``, statistics mean, q05, q95).
        measurements: measured values to draw (a DataFrame or records of ``time_h, variable, value`` and optionally
            ``unit``, as `Predictor.update` takes them; converted to the canonical unit, unusable rows left out).
            Values up to the filter time are drawn as filled dots (assimilated), later ones hollow (not yet seen by
            the filter: how the forecast compares with what happened).
        variables: the variables to draw (default: those measured, when `measurements` are given, else vcd,
            glucose, lactate, ammonia, titre and volume, where the forecast has them).
        time_unit: ``"h"`` or ``"d"`` for the time axis.
    """
    if "statistic" not in forecast.dims or "time" not in forecast.dims:
        raise ValueError("a forecast has dims (statistic, time): pass what Predictor.forecast returns")
    available = [v for v in forecast.data_vars if forecast[v].dims == ("statistic", "time")]
    scale = _time_scale(time_unit)
    data = _measurement_frame(measurements) if measurements is not None else None
    if variables is None:
        wanted = set(data["variable"]) if data is not None and len(data) else set(_DEFAULT)
        ordered = [v for v in _PREFERRED if v in available] + [v for v in available if v not in _PREFERRED]
        variables = [v for v in ordered if v in wanted] or ordered
    variables = list(variables)
    unknown = [v for v in variables if v not in available]
    if unknown or not variables:
        raise ValueError(f"variables not in the forecast: {unknown}; it has {available}")
    quantiles = _quantile_names(forecast)
    now = float(forecast.attrs.get("filter_time_h", float(forecast["time"].values[0])))
    fig, axes = _grid(len(variables))
    t = forecast["time"].values / scale
    band_label = _band_label(forecast)
    for k, variable in enumerate(variables):
        ax = axes[k]
        values = forecast[variable]
        mean, low, high = (values.sel(statistic=s).values for s in ("mean", *quantiles))
        ok = np.isfinite(mean) & np.isfinite(low) & np.isfinite(high)
        ax.fill_between(t[ok], low[ok], high[ok], color="C0", alpha=0.25, lw=0, label=band_label)
        ax.plot(t[ok], mean[ok], color="C0", lw=1.5, label="forecast mean")
        if data is not None:
            rows = data[data["variable"] == variable]
            seen = rows["time_h"].to_numpy() <= now + 1e-9
            x, y = rows["time_h"].to_numpy() / scale, rows["value"].to_numpy()
            if seen.any():
                ax.plot(x[seen], y[seen], "o", color="k", ms=3.5, label="assimilated")
            if (~seen).any():
                ax.plot(x[~seen], y[~seen], "o", color="k", ms=4, mfc="none", label="after the filter time")
        _now(ax, now / scale, "filter time")
        ax.set_ylabel(_ylabel(variable, _unit(variable, values)))
        ax.grid(alpha=0.3)
    columns = 1 if len(axes) == 1 else 2
    for k, ax in enumerate(axes):
        if k + columns >= len(axes):  # no panel below: this one carries the time axis
            ax.tick_params(labelbottom=True)
            ax.set_xlabel(f"time [{time_unit}]")
    _legend(fig, axes)
    ess = forecast.attrs.get("ess")
    particles = forecast.attrs.get("n_particles")
    details = f", ESS {ess:.0f} of {particles} particles" if ess is not None and particles else ""
    fig.suptitle(f"forecast from {now:g} h{details}")
    return fig


def _legend(fig: Figure, axes: Sequence[Axes], loc: str = "outside right upper", ncols: int = 1) -> None:
    """One legend outside the panels (beside or below them) with every distinct entry of the panels."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc=loc, ncols=ncols, fontsize="small")


def _constraints(plan) -> list[tuple[str, str, float, float, str]]:
    """(variable, side, bound, probability, label) of each of the plan's constraints that names a variable."""
    out = []
    for name, probability in plan.constraint_probability.items():
        match = _CONSTRAINT.match(name)
        if match is None:
            continue
        try:
            bound = float(match["bound"])
        except ValueError:
            continue
        variable, side = match["variable"], match["side"]
        unit = match["unit"] or _unit(variable)
        symbol = "≥" if side == ">=" else "≤"
        out.append((variable, side, bound, float(probability),
                    f"{variable} {symbol} {bound:g} {unit}".rstrip() + f" (met in {probability:.0%} of draws)"))
    return out


def plot_plan(plan, variables: Sequence[str] = ("glucose", "titer", "vcd", "volume"), *,
              time_unit: str = "h") -> Figure:
    """A `Plan`: the predicted trajectories under the plan (mean line, band between the draws' lower and upper
    constraint quantiles), the chance-constraint limits as dashed lines (with the fraction of draws meeting each),
    and the planned boluses in mL as stems in a panel below; one column, so every panel shares the time axis.

    The predicted values are those at the plan's check times (before any event there: before each bolus, and at the
    end), joined by lines for the eye; set `MPCConfig.check_every_h` for a denser curve.

    Args:
        plan: a `cgt_twin.control.mpc.Plan` (from `FeedingController.step` or `plan`).
        variables: the predicted variables to draw (those in ``plan.prediction``).
        time_unit: ``"h"`` or ``"d"`` for the time axis.
    """
    variables = list(variables)
    available = list(plan.prediction)
    unknown = [v for v in variables if v not in available]
    if unknown or not variables:
        raise ValueError(f"variables not predicted by the plan: {unknown}; it predicts {available}")
    scale = _time_scale(time_unit)
    fig, all_axes = plt.subplots(len(variables) + 1, 1, figsize=(7.5, 2.0 * len(variables) + 2.2), sharex=True,
                                 squeeze=False, height_ratios=[1.0] * len(variables) + [0.8], layout="constrained")
    axes, bolus_ax = [row[0] for row in all_axes[:-1]], all_axes[-1][0]
    times = np.asarray(plan.prediction_times_h, dtype=np.float64)
    t = times / scale
    limits = _constraints(plan)
    for k, variable in enumerate(variables):
        ax = axes[k]
        values = np.asarray(plan.prediction[variable], dtype=np.float64)
        if values.ndim != 2 or values.shape[0] != 3 or values.shape[1] != times.size:
            raise ValueError(f"plan.prediction[{variable!r}] must be (3, {times.size}) mean, low, high; got "
                             f"{values.shape}")
        mean, low, high = values
        ok = np.isfinite(mean) & np.isfinite(low) & np.isfinite(high)
        ax.fill_between(t[ok], low[ok], high[ok], color="C0", alpha=0.25, lw=0, label="band over the draws")
        ax.plot(t[ok], mean[ok], "o-", color="C0", lw=1.5, ms=3, label="predicted mean")
        for var, side, bound, _, label in limits:
            if var == variable:
                colour = "C3" if side == ">=" else "C1"
                ax.axhline(bound, color=colour, ls="--", lw=1.2, label=label)
        _now(ax, plan.time_h / scale, "plan time")
        ax.set_ylabel(_ylabel(variable, _unit(variable)))
        ax.grid(alpha=0.3)
    decisions = np.asarray(plan.decision_times_h, dtype=np.float64)
    volumes_ml = 1000.0 * np.asarray(plan.volumes_l, dtype=np.float64)
    if decisions.size:
        bolus_ax.vlines(decisions / scale, 0.0, volumes_ml, color="C2", lw=3, label=f"planned bolus ({plan.medium})")
        bolus_ax.plot(decisions / scale, volumes_ml, "o", color="C2", ms=4)
        for x, v in zip(decisions / scale, volumes_ml, strict=True):
            bolus_ax.annotate(f"{v:.1f}", (x, v), textcoords="offset points", xytext=(0, 4), ha="center",
                              fontsize="small")
        bolus_ax.set_ylim(0.0, max(float(np.nanmax(volumes_ml)) * 1.25, 1.0))
    else:
        bolus_ax.text(0.5, 0.5, "no decisions left before the end of the batch", ha="center", va="center",
                      transform=bolus_ax.transAxes)
    _now(bolus_ax, plan.time_h / scale, None)
    bolus_ax.set_ylabel(f"bolus [mL of {plan.medium}]")
    bolus_ax.set_xlabel(f"time [{time_unit}]")
    bolus_ax.grid(alpha=0.3)
    _legend(fig, [*axes, bolus_ax], loc="outside lower center", ncols=2)
    total = float(np.nansum(volumes_ml))
    fig.suptitle(f"plan at {plan.time_h:g} h [{plan.status}]: {total:.1f} mL in {int(np.sum(volumes_ml > 0))} "
                 "boluses")
    return fig

