"""Validation reports: how well a twin predicts a campaign, as numbers and as pictures.

`metrics` gives, per batch and variable, the normalised RMSE (RMSE divided by the variable's range over the campaign),
the bias and the number of values, plus the error of the final value (for titres: the harvest titre error).
`plot_prediction` draws data over predicted bands per variable and batch; `plot_parity` predicted against measured.
`write_report` writes them all (CSV, Markdown, PNG) to a folder.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.figure import Figure

from .data.campaign import Campaign
from .plot import save_figure

__all__ = ["metrics", "plot_prediction", "plot_parity", "write_report"]


def _pairs(campaign: Campaign, prediction: xr.Dataset, variable: str, batch: str):
    """(times, measured, predicted mean) for uncensored values of one batch and variable."""
    data = campaign.data[variable].sel(batch=batch)
    flags = campaign.censored[variable].sel(batch=batch)
    mean = prediction[variable].sel(statistic="mean", batch=batch)
    times, measured, predicted = [], [], []
    for p, phase in enumerate(("pre", "post")):
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
            if i == 0:
                ax.set_title(batch, fontsize="medium")
            if j == 0:
                ax.set_ylabel(f"{variable}\n[{campaign.unit(variable)}]")
            if i == len(names) - 1:
                ax.set_xlabel(f"time [{time_unit}]")
            ax.grid(alpha=0.3)
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
    for k in range(len(names), rows * columns):
        axes[k // columns][k % columns].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small", title="batch")
    return fig


def write_report(campaign: Campaign, prediction: xr.Dataset, out_dir: str | os.PathLike, *,
                 title: str = "Twin validation report", variables: Sequence[str] | None = None) -> dict[str, Path]:
    """Writes ``metrics.csv``, ``report.md``, ``prediction.png`` and ``parity.png`` to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = metrics(campaign, prediction, variables)
    paths = {"metrics": out / "metrics.csv", "report": out / "report.md", "prediction": out / "prediction.png",
             "parity": out / "parity.png"}
    table.to_csv(paths["metrics"], index=False)
    save_figure(plot_prediction(campaign, prediction, variables), paths["prediction"])
    save_figure(plot_parity(campaign, prediction, variables), paths["parity"])
    pooled = table[table["batch"] == "ALL"]
    lines = [f"# {title}", "", f"Campaign: `{campaign.source}`; model: {prediction.attrs.get('model', '?')}.", "",
             "Normalised RMSE (RMSE / range of the variable over the campaign), pooled over batches:", "",
             "| variable | NRMSE | bias | n |", "|---|---|---|---|"]
    lines += [f"| {r.variable} | {r.nrmse:.3f} | {r.bias:.3g} | {r.n} |" for r in pooled.itertuples()]
    lines += ["", "Per batch: `metrics.csv`. Pictures: `prediction.png` (data over 90 % measurement bands), "
              "`parity.png`.", ""]
    paths["report"].write_text("\n".join(lines), encoding="utf-8")
    return paths
