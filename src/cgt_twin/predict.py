"""Open-loop prediction with measurement-noise bands: what a twin expects each batch's measurements to be.

`predict(twin, campaign)` simulates every batch from its initial state and protocol and returns, per observed variable,
the mean and the 5 % / 95 % quantiles of a measurement (the twin's noise model: normal with σ² = σ_abs² + (σ_rel·ŷ)²,
kept within the variable's physical bounds). A posterior (issue: Bayesian uncertainty) will add parameter spread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from .data.variables import CANONICAL_VARIABLES
from .models.twin import Twin
from .simulate import simulate

__all__ = ["predict", "prediction_to_long", "STATISTICS"]

STATISTICS = ("mean", "q05", "q95")


def predict(twin: Twin, data, times=None, *, batches: Sequence[str] | None = None,
            quantiles: tuple[float, float] = (0.05, 0.95), **simulate_kwargs) -> xr.Dataset:
    """Predicted measurements with bands.

    Args:
        twin: the twin (its `noise` gives the measurement bands; variables without a noise level get no band).
        data: a campaign, protocol or mapping of protocols (as for `cgt_twin.simulate.simulate`).
        times: output times, h (default: the campaign's).
        batches: only these batches of a campaign.
        quantiles: lower and upper quantile of the band.

    Returns:
        Dataset with dims ``(statistic, batch, time, phase)`` (statistic = mean, q05, q95) for every observed
        variable, plus ``status`` per batch; attrs carry the skipped batches and the quantiles.
    """
    trajectory = simulate(twin, data, times, batches=batches, **simulate_kwargs)
    layout_states = set(json.loads(trajectory.attrs.get("states", "[]")))
    z_low, z_high = stats.norm.ppf(quantiles[0]), stats.norm.ppf(quantiles[1])
    data_vars = {}
    for name, values in trajectory.data_vars.items():
        if name in ("status", "num_steps") or (name in layout_states and name not in CANONICAL_VARIABLES):
            continue
        mean = values.values
        sigma_abs, sigma_rel = twin.noise.get(name, (0.0, 0.0))
        sd = np.sqrt(sigma_abs ** 2 + (sigma_rel * mean) ** 2)
        spec = CANONICAL_VARIABLES.get(name)
        lower = spec.lower if spec is not None and spec.lower is not None else -np.inf
        upper = spec.upper if spec is not None and spec.upper is not None else np.inf
        stack = np.stack([mean, np.clip(mean + z_low * sd, lower, upper), np.clip(mean + z_high * sd, lower, upper)])
        data_vars[name] = (("statistic", "batch", "time", "phase"), stack, dict(values.attrs))
    data_vars["status"] = trajectory["status"]
    ds = xr.Dataset(data_vars, coords={"statistic": list(STATISTICS), "batch": trajectory["batch"].values,
                                       "time": trajectory["time"].values, "phase": ["pre", "post"]})
    ds.attrs = {**trajectory.attrs, "quantiles": json.dumps(list(quantiles))}
    return ds


def prediction_to_long(prediction: xr.Dataset) -> pd.DataFrame:
    """``batch, time_h, variable, mean, q05, q95, unit, phase`` (finite means; post rows where they differ from pre)."""
    frames = []
    for name, values in prediction.data_vars.items():
        if "statistic" not in values.dims:
            continue
        array = values.transpose("statistic", "batch", "time", "phase").values
        for p, phase in enumerate(("pre", "post")):
            mean = array[0, :, :, p]
            keep = np.isfinite(mean)
            if phase == "post":
                keep &= ~np.isclose(mean, array[0, :, :, 0], rtol=1e-12, atol=0)
            b, t = np.nonzero(keep)
            frames.append(pd.DataFrame({"batch": prediction["batch"].values[b].astype(str),
                                        "time_h": prediction["time"].values[t], "variable": name,
                                        "mean": mean[b, t], "q05": array[1, b, t, p], "q95": array[2, b, t, p],
                                        "unit": values.attrs.get("units", ""), "phase": phase}))
    columns = ["batch", "time_h", "variable", "mean", "q05", "q95", "unit", "phase"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns].sort_values(["batch", "time_h", "variable", "phase"],
                                                                     kind="stable").reset_index(drop=True)
