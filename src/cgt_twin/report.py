"""Validation reports: how well a twin predicts a campaign, as numbers and as pictures.

`metrics` gives, per batch and variable, the normalised RMSE (RMSE divided by the variable's range over the campaign),
the bias and the number of values, plus the error of the final value (for titres: the harvest titre error).
`plot_prediction` draws data over predicted bands per variable and batch; `plot_parity` predicted against measured;
`plot_residuals` measured − predicted over time (optionally in units of the predicted measurement sd);
`plot_feed_plan` what a protocol does over time (boluses, rates, volume, other events).
`write_report` writes them all (CSV, Markdown, PNG) to a folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from .data.campaign import Campaign
from .data.protocol import EventKind, Protocol
from .plot import finish_grid, label_panel, save_figure

__all__ = ["metrics", "plot_prediction", "plot_parity", "plot_residuals", "plot_feed_plan", "write_report"]


def _pairs(campaign: Campaign, prediction: xr.Dataset, variable: str, batch: str):
    """(times, measured, predicted mean) for uncensored values of one batch and variable."""
    data = campaign.data[variable].sel(batch=batch)
    flags = campaign.censored[variable].sel(batch=batch)
    mean = prediction[variable].sel(statistic="mean", batch=batch)
    times, measured, predicted = [], [], []
    for phase in ("pre", "post"):
        values = data.sel(phase=phase).values  # (time, replicate)
        ok = np.isfinite(values) & (flags.sel(phase=phase).values == 0)
        pred = mean.sel(phase=phase).reindex(time=data["time"].values).values
        for t_index, r_index in zip(*np.nonzero(ok), strict=True):
            if np.isfinite(pred[t_index]):
                times.append(float(data["time"].values[t_index]))
                measured.append(float(values[t_index, r_index]))
                predicted.append(float(pred[t_index]))
    return np.asarray(times), np.asarray(measured), np.asarray(predicted)


def metrics(campaign: Campaign, prediction: xr.Dataset, variables: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per batch and variable: ``nrmse``, ``bias`` (mean predicted − measured), ``n``, ``final_error``
    (relative error of the last measured value), and a row per variable with batch ``ALL`` (pooled)."""
    names = [v for v in (variables or campaign.variables) if v in prediction.data_vars]
    rows = []
    for variable in names:
        values = campaign.data[variable].values
        span = float(np.nanmax(values) - np.nanmin(values)) if np.isfinite(values).any() else math.nan
        pooled = []
        for batch in prediction["batch"].values.astype(str):
            if batch not in campaign.batches:
                continue
            times, measured, predicted = _pairs(campaign, prediction, variable, batch)
            if not times.size:
                continue
            error = predicted - measured
            pooled.append(error)
            last = np.argmax(times)
            final = (predicted[last] - measured[last]) / measured[last] if measured[last] != 0 else math.nan
            rows.append({"batch": batch, "variable": variable, "nrmse": float(np.sqrt(np.mean(error ** 2)) / span),
                         "bias": float(np.mean(error)), "n": int(times.size), "final_error": float(final)})
        if pooled:
            error = np.concatenate(pooled)
            rows.append({"batch": "ALL", "variable": variable, "nrmse": float(np.sqrt(np.mean(error ** 2)) / span),
                         "bias": float(np.mean(error)), "n": int(error.size), "final_error": math.nan})
    return pd.DataFrame(rows, columns=["batch", "variable", "nrmse", "bias", "n", "final_error"])


def plot_prediction(campaign: Campaign, prediction: xr.Dataset, variables: Sequence[str] | None = None,
                    batches: Sequence[str] | None = None, time_unit: str = "d") -> Figure:
    """Data (points) over the predicted mean (line) and 90 % measurement band (shaded): rows are variables, columns
    batches."""
    names = [v for v in (variables or campaign.variables) if v in prediction.data_vars][:8]
    batches = list(batches or [b for b in prediction["batch"].values.astype(str) if b in campaign.batches])[:6]
    scale = 24.0 if time_unit == "d" else 1.0
    fig, axes = plt.subplots(len(names), len(batches), figsize=(3.2 * len(batches), 2.4 * len(names)),
                             squeeze=False, sharex=True, layout="constrained")
    for i, variable in enumerate(names):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            band = prediction[variable].sel(batch=batch, phase="pre")
            t = prediction["time"].values / scale
            ok = np.isfinite(band.sel(statistic="mean").values)
            ax.fill_between(t[ok], band.sel(statistic="q05").values[ok], band.sel(statistic="q95").values[ok],
                            color="C0", alpha=0.2, lw=0, label="90 % band")
            ax.plot(t[ok], band.sel(statistic="mean").values[ok], color="C0", lw=1.4, label="twin")
            data = campaign.data[variable].sel(batch=batch, phase="pre").values
            flags = campaign.censored[variable].sel(batch=batch, phase="pre").values
            times = campaign.times / scale
            for r in range(data.shape[1]):
                good = np.isfinite(data[:, r]) & (flags[:, r] == 0)
                ax.plot(times[good], data[good, r], "o", color="k", ms=3, label="data" if r == 0 else None)
                low = np.isfinite(data[:, r]) & (flags[:, r] != 0)
                ax.plot(times[low], data[low, r], "v", color="k", ms=4, mfc="none")
            label_panel(ax, i, j, len(names), batch=batch, ylabel=f"{variable}\n[{campaign.unit(variable)}]",
                        time_unit=time_unit)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", fontsize="small")
    return fig


def plot_parity(campaign: Campaign, prediction: xr.Dataset, variables: Sequence[str] | None = None) -> Figure:
    """Predicted against measured, one panel per variable, one colour per batch, with the identity line."""
    names = [v for v in (variables or campaign.variables) if v in prediction.data_vars][:9]
    columns = min(3, max(len(names), 1))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.4 * rows), squeeze=False, layout="constrained")
    batches = [b for b in prediction["batch"].values.astype(str) if b in campaign.batches]
    for k, variable in enumerate(names):
        ax = axes[k // columns][k % columns]
        low, high = math.inf, -math.inf
        for i, batch in enumerate(batches):
            _, measured, predicted = _pairs(campaign, prediction, variable, batch)
            if measured.size:
                ax.plot(measured, predicted, "o", ms=3.5, color=plt.get_cmap("tab10")(i % 10), label=batch)
                low, high = min(low, measured.min(), predicted.min()), max(high, measured.max(), predicted.max())
        if math.isfinite(low):
            ax.plot([low, high], [low, high], "--", color="grey", lw=1)
        ax.set_title(variable)
        ax.set_xlabel(f"measured [{campaign.unit(variable)}]")
        ax.set_ylabel("predicted")
        ax.grid(alpha=0.3)
    finish_grid(fig, axes, len(names))
    return fig


def _residuals(campaign: Campaign, prediction: xr.Dataset, variable: str, batch: str):
    """(times h, measured − predicted mean, predicted measurement sd) for uncensored values of one batch and
    variable; the sd is read from the 90 % band, (q95 − q05) / (2 · 1.645), NaN where there is no band."""
    data = campaign.data[variable].sel(batch=batch)
    flags = campaign.censored[variable].sel(batch=batch)
    stats_ = prediction[variable].sel(batch=batch).reindex(time=data["time"].values)
    times, residuals, sds = [], [], []
    for phase in ("pre", "post"):
        values = data.sel(phase=phase).values  # (time, replicate)
        ok = np.isfinite(values) & (flags.sel(phase=phase).values == 0)
        mean = stats_.sel(statistic="mean", phase=phase).values
        width = (stats_.sel(statistic="q95", phase=phase).values - stats_.sel(statistic="q05", phase=phase).values)
        for t_index, r_index in zip(*np.nonzero(ok), strict=True):
            if np.isfinite(mean[t_index]):
                times.append(float(data["time"].values[t_index]))
                residuals.append(float(values[t_index, r_index] - mean[t_index]))
                sd = width[t_index] / (2 * 1.6448536269514722)
                sds.append(float(sd) if np.isfinite(sd) and sd > 0 else math.nan)
    return np.asarray(times), np.asarray(residuals), np.asarray(sds)


def plot_residuals(campaign: Campaign, prediction: xr.Dataset, variables: Sequence[str] | None = None,
                   batches: Sequence[str] | None = None, *, standardised: bool = False,
                   time_unit: str = "d") -> Figure:
    """Residuals (measured − predicted mean) over time: one panel per variable, one colour per batch.

    A twin that fits leaves residuals scattered around zero with no trend in time; a drift (e.g. late in the
    culture, after a temperature shift) is what a neural residual or a better mechanism should explain.

    Args:
        campaign: the measured campaign.
        prediction: the output of `cgt_twin.predict.predict` on it.
        variables: variables to draw (default: the measured ones the prediction holds, at most 9).
        batches: batches to draw (default: every predicted batch of the campaign).
        standardised: divide each residual by the predicted measurement sd (from the 90 % band), so that about
            90 % of the points of a calibrated twin fall within ±1.645 (drawn as dotted lines); variables without a
            band are left out.
        time_unit: ``"d"`` or ``"h"`` for the time axis.
    """
    names = [v for v in (variables or campaign.variables) if v in prediction.data_vars][:9]
    batches = list(batches or [b for b in prediction["batch"].values.astype(str) if b in campaign.batches])
    scale = 24.0 if time_unit == "d" else 1.0
    columns = min(3, max(len(names), 1))
    rows = max(math.ceil(len(names) / columns), 1)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False, sharex=True,
                             layout="constrained")
    colours = plt.get_cmap("tab10" if len(batches) <= 10 else "tab20")
    for k, variable in enumerate(names):
        ax = axes[k // columns][k % columns]
        for i, batch in enumerate(batches):
            times, residuals, sds = _residuals(campaign, prediction, variable, batch)
            values = residuals / sds if standardised else residuals
            ok = np.isfinite(values)
            if ok.any():
                ax.plot(times[ok] / scale, values[ok], "o", ms=3.5, color=colours(i % colours.N), label=batch)
        ax.axhline(0.0, color="grey", lw=1)
        if standardised:
            for level in (-1.6448536269514722, 1.6448536269514722):
                ax.axhline(level, color="grey", lw=0.8, ls=":")
        ax.set_title(variable)
        ax.set_ylabel("standardised residual" if standardised else f"measured − predicted [{campaign.unit(variable)}]")
        if k // columns == rows - 1 or k + columns >= len(names):
            ax.set_xlabel(f"time [{time_unit}]")
        ax.grid(alpha=0.3)
    finish_grid(fig, axes, len(names))
    return fig


_RATE_KINDS = (EventKind.FEED_RATE, EventKind.PERFUSION, EventKind.BLEED)
_OTHER_KINDS = (EventKind.EXCHANGE, EventKind.TRANSFECTION, EventKind.STIMULUS, EventKind.SETPOINT,
                EventKind.HARVEST)


def _protocols(data) -> dict[str, Protocol]:
    if isinstance(data, Protocol):
        return {"protocol": data}
    if isinstance(data, Campaign):
        return dict(data.protocols)
    return dict(data)


def plot_feed_plan(data: Campaign | Protocol | Mapping[str, Protocol], batches: Sequence[str] | None = None, *,
                   time_unit: str = "d") -> Figure:
    """A feeding plan over time, one colour per batch: bolus additions (stems, amount in its unit: L of medium or
    an amount of one species), continuous rates (feed, perfusion, bleed, L/h, as steps), the culture volume from the
    events alone (L, with the vessel limit dashed), and the other events (exchange, transfection, stimulus,
    set-point, harvest) as labelled markers.

    Args:
        data: a `Protocol` (recorded or planned by a controller), a mapping batch -> `Protocol`, or a campaign.
        batches: only these batches (default: all, at most 10).
        time_unit: ``"d"`` or ``"h"`` for the time axis.
    """
    protocols = _protocols(data)
    names = list(batches or protocols)[:10]
    unknown = [b for b in names if b not in protocols]
    if unknown:
        raise KeyError(f"unknown batches {unknown}; known: {list(protocols)}")
    scale = 24.0 if time_unit == "d" else 1.0
    has_rates = any(p.events_of(*_RATE_KINDS) for p in (protocols[b] for b in names))
    has_other = any(p.events_of(*_OTHER_KINDS) for p in (protocols[b] for b in names))
    panels = ["bolus", *(["rates"] if has_rates else []), "volume", *(["events"] if has_other else [])]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 2.2 * len(panels) + 0.6), sharex=True, squeeze=False,
                             layout="constrained")
    ax_of = {name: axes[i][0] for i, name in enumerate(panels)}
    colours = plt.get_cmap("tab10")
    width = 0.25 / len(names)
    bolus_units: set[str] = set()
    other_labels: dict[str, int] = {}
    for i, batch in enumerate(names):
        protocol, colour = protocols[batch], colours(i % 10)
        offset = (i - (len(names) - 1) / 2) * width * (24.0 / scale)  # side by side where batches feed together
        boluses = [e for e in protocol.events_of(EventKind.BOLUS) if math.isfinite(e.amount)]
        if boluses:
            t = np.asarray([e.time_h for e in boluses]) / scale + offset
            ax_of["bolus"].vlines(t, 0.0, [e.amount for e in boluses], color=colour, lw=2, label=batch)
            ax_of["bolus"].plot(t, [e.amount for e in boluses], "o", color=colour, ms=3)
            bolus_units.update(e.unit for e in boluses)
        if has_rates:
            end = protocol.harvest_time or max([e.time_h for e in protocol.events] + [0.0])
            for j, kind in enumerate(_RATE_KINDS):
                events = protocol.events_of(kind)
                if not events:
                    continue
                t = [0.0] + [e.time_h for e in events] + [end]
                r = [0.0] + [e.amount for e in events] + [events[-1].amount]
                ax_of["rates"].step(np.asarray(t) / scale, r, where="post", color=colour,
                                    ls=("-", "--", ":")[j], label=f"{batch} {kind.value}")
        profile = protocol.volume_profile()
        t = np.repeat([p[0] for p in profile], 2) / scale
        v = np.ravel([[p[1], p[2]] for p in profile])
        ax_of["volume"].plot(t, v, color=colour, lw=1.4)
        if protocol.max_volume is not None:
            ax_of["volume"].axhline(protocol.max_volume, color=colour, ls="--", lw=0.8)
        if has_other:
            for e in protocol.events_of(*_OTHER_KINDS):
                label = e.kind.value + (f" {e.target}" if e.target else "")
                row = other_labels.setdefault(label, len(other_labels))
                y = row + (i - (len(names) - 1) / 2) * min(0.12, 0.6 / len(names))  # batches side by side
                ax_of["events"].plot(e.time_h / scale, y, "D", color=colour, ms=5)
                if math.isfinite(e.amount):
                    ax_of["events"].annotate(f"{e.amount:g}", (e.time_h / scale, y), textcoords="offset points",
                                             xytext=(3, 4), fontsize="x-small", color=colour)
    ax_of["bolus"].set_ylabel("bolus [" + ", ".join(sorted(bolus_units) or ["L"]) + "]")
    ax_of["bolus"].set_ylim(bottom=0.0)
    if not bolus_units:
        ax_of["bolus"].text(0.5, 0.5, "no bolus additions", transform=ax_of["bolus"].transAxes, ha="center",
                            color="grey")
    ax_of["bolus"].set_title("feed plan")
    if has_rates:
        ax_of["rates"].set_ylabel("rate [L/h]")
        ax_of["rates"].legend(fontsize="x-small", ncol=2)
    ax_of["volume"].set_ylabel("volume [L]")
    if has_other:
        ax_of["events"].set_yticks(range(len(other_labels)), list(other_labels))
        ax_of["events"].set_ylim(-0.7, len(other_labels) - 0.3)
    for ax in ax_of.values():
        ax.grid(alpha=0.3)
    axes[-1][0].set_xlabel(f"time [{time_unit}]")
    if len(names) > 1 or names != ["protocol"]:
        handles = [plt.Line2D([], [], color=colours(i % 10), lw=2) for i in range(len(names))]
        fig.legend(handles, names, loc="outside right upper", fontsize="small", title="batch")
    return fig


def write_report(campaign: Campaign, prediction: xr.Dataset, out_dir: str | os.PathLike, *,
                 title: str = "Twin validation report", variables: Sequence[str] | None = None) -> dict[str, Path]:
    """Writes ``metrics.csv``, ``report.md``, ``prediction.png``, ``parity.png`` and ``residuals.png`` to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics(campaign, prediction, variables)
    paths = {"metrics": out / "metrics.csv", "report": out / "report.md", "prediction": out / "prediction.png",
             "parity": out / "parity.png", "residuals": out / "residuals.png"}
    table.to_csv(paths["metrics"], index=False)
    save_figure(plot_prediction(campaign, prediction, variables), paths["prediction"])
    save_figure(plot_parity(campaign, prediction, variables), paths["parity"])
    save_figure(plot_residuals(campaign, prediction, variables), paths["residuals"])
    pooled = table[table["batch"] == "ALL"]
    lines = [f"# {title}", "", f"Campaign: `{campaign.source}`; model: {prediction.attrs.get('model', '?')}.", "",
             "Normalised RMSE (RMSE / range of the variable over the campaign), pooled over batches:", "",
             "| variable | NRMSE | bias | n |", "|---|---|---|---|"]
    lines += [f"| {r.variable} | {r.nrmse:.3f} | {r.bias:.3g} | {r.n} |" for r in pooled.itertuples()]
    lines += ["", "Per batch: `metrics.csv`. Pictures: `prediction.png` (data over 90 % measurement bands), "
              "`parity.png`, `residuals.png` (measured − predicted over time).", ""]
    paths["report"].write_text("\n".join(lines), encoding="utf-8")
    return paths
