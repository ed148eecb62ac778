"""Plots of campaigns: trajectories per variable, one colour per batch, events marked.

Every function returns a `matplotlib.figure.Figure` (nothing is shown or saved unless asked), so a notebook displays
it and a script saves it with `save_figure`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from .data.campaign import Campaign
from .data.protocol import EventKind

__all__ = ["plot_campaign", "save_figure"]

_PREFERRED = ("vcd", "viability", "glucose", "lactate", "glutamine", "ammonia", "titer", "vg_titer", "capsid_titer")
_LABELS = {"vcd": "viable cells", "dead_cells": "dead cells", "titer": "titre", "vg_titer": "vector genomes",
           "capsid_titer": "capsids"}


def _default_variables(campaign: Campaign, limit: int) -> list[str]:
    measured = [v for v in campaign.variables if np.isfinite(campaign.data[v].values).any()]
    chosen = [v for v in _PREFERRED if v in measured]
    chosen += [v for v in measured if v not in chosen]
    return chosen[:limit]


def plot_campaign(campaign: Campaign, variables: Sequence[str] | None = None, batches: Sequence[str] | None = None,
                  *, max_panels: int = 9, time_unit: str = "d", show_events: bool = True) -> Figure:
    """Measured trajectories: one panel per variable, one colour per batch.

    Pre-event values are filled markers joined by lines; post-event values (after a feed at the same time) are hollow
    markers; replicates are drawn as separate points; censored values as downward triangles at their limit. Bolus
    feeds are ticks along the bottom of each panel.

    Args:
        campaign: the campaign.
        variables: the variables to draw (default: the most informative measured ones, at most `max_panels`).
        batches: the batches to draw (default: all).
        max_panels: at most this many panels when `variables` is not given.
        time_unit: ``"d"`` or ``"h"`` for the time axis.
        show_events: mark bolus feeds.
    """
    variables = list(variables) if variables is not None else _default_variables(campaign, max_panels)
    unknown = [v for v in variables if v not in campaign.variables]
    if unknown:
        raise ValueError(f"variables not measured in this campaign: {unknown}; measured: {list(campaign.variables)}")
    batches = list(batches) if batches is not None else list(campaign.batches)
    scale = 24.0 if time_unit == "d" else 1.0
    n = max(len(variables), 1)
    columns = min(3, n)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.3 * rows), squeeze=False,
                             layout="constrained")
    colours = plt.get_cmap("tab10" if len(batches) <= 10 else "tab20")
    times = campaign.times / scale
    for k, variable in enumerate(variables):
        ax = axes[k // columns][k % columns]
        values = campaign.data[variable]
        flags = campaign.censored[variable]
        for i, batch in enumerate(batches):
            colour = colours(i % colours.N)
            pre = values.sel(batch=batch, phase="pre").values  # (time, replicate)
            post = values.sel(batch=batch, phase="post").values
            cens = flags.sel(batch=batch, phase="pre").values
            usable = np.where(cens == 0, pre, np.nan)
            counts = np.isfinite(usable).sum(axis=1)
            ok = counts > 0
            if ok.any():  # a line through the replicate means, where there are any
                mean = np.nansum(usable[ok], axis=1) / counts[ok]
                ax.plot(times[ok], mean, "-", color=colour, lw=1.2, alpha=0.8, label=batch)
            for r in range(pre.shape[1]):
                good = np.isfinite(pre[:, r]) & (cens[:, r] == 0)
                ax.plot(times[good], pre[good, r], "o", color=colour, ms=3.5)
                low = np.isfinite(pre[:, r]) & (cens[:, r] != 0)
                ax.plot(times[low], pre[low, r], "v", color=colour, ms=5, mfc="none")
                after = np.isfinite(post[:, r])
                ax.plot(times[after], post[after, r], "o", color=colour, ms=4, mfc="none")
            if show_events and batch in campaign.protocols:
                feeds = [e.time_h / scale for e in campaign.protocols[batch].events_of(EventKind.BOLUS)]
                if feeds:
                    ax.plot(feeds, np.zeros(len(feeds)), "|", color=colour, ms=8, transform=ax.get_xaxis_transform())
        ax.set_title(_LABELS.get(variable, variable.replace("_", " ")))
        unit = campaign.unit(variable)
        ax.set_ylabel("fraction" if unit == "1" else unit)
        ax.set_xlabel(f"time [{time_unit}]")
        ax.grid(alpha=0.3)
    finish_grid(fig, axes, len(variables))
    fig.suptitle(f"{len(batches)} batches — {os.path.basename(campaign.source.rstrip('/')) or campaign.source}")
    return fig


def label_panel(ax, row: int, column: int, n_rows: int, *, batch: str, ylabel: str, time_unit: str) -> None:
    """Labels one panel of a variables × batches grid: the batch on the top row, the variable (with its unit) in the
    first column, time on the bottom row, and a light grid."""
    if row == 0:
        ax.set_title(batch, fontsize="medium")
    if column == 0:
        ax.set_ylabel(ylabel)
    if row == n_rows - 1:
        ax.set_xlabel(f"time [{time_unit}]")
    ax.grid(alpha=0.3)


def finish_grid(fig: Figure, axes, used: int, legend_title: str = "batch") -> None:
    """Hides the panels of a rows × columns grid beyond the first `used`, and puts the first panel's legend entries
    (one per batch) beside the figure."""
    rows, columns = len(axes), len(axes[0])
    for k in range(used, rows * columns):
        axes[k // columns][k % columns].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize="small", title=legend_title)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 130) -> None:
    """Saves a figure (format from the file extension) and closes it."""
    fig.savefig(os.fspath(path), dpi=dpi)
    plt.close(fig)
