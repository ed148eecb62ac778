"""Open-loop prediction with measurement-noise bands: what a twin expects each batch's measurements to be.

`predict(twin, campaign)` simulates every batch from its initial state and protocol and returns, per observed variable,
the mean and the 5 % / 95 % quantiles of a measurement (the twin's noise model: normal with σ² = σ_abs² + (σ_rel·ŷ)²,
kept within the variable's physical bounds). With a `cgt_twin.bayes.Posterior` the bands are posterior predictive:
every posterior draw is simulated (hierarchical batch effects drawn for new batches), and the quantiles include
measurement noise (``band="measurement"``) or only the parameter spread (``band="parameter"``). With a
`cgt_twin.bayes.ResidualEnsemble` the neural residual's uncertainty is in the bands too: every member is simulated (with
a posterior, each draw with one member), see `cgt_twin.bayes.ensemble`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from .data.variables import CANONICAL_VARIABLES
from .models.twin import Twin
from .simulate import prepare, simulate

__all__ = ["predict", "prediction_to_long", "STATISTICS"]

STATISTICS = ("mean", "q05", "q95")


def predict(twin: Twin, data, times=None, *, batches: Sequence[str] | None = None,
            quantiles: tuple[float, float] = (0.05, 0.95), posterior=None, band: str = "measurement",
            n_draws: int = 200, seed: int = 0, groups: Mapping[str, str] | None = None, ensemble=None,
            **simulate_kwargs) -> xr.Dataset:
    """Predicted measurements with bands.

    Args:
        twin: the twin (its `noise` gives the measurement bands; variables without a noise level get no band).
        data: a campaign, protocol or mapping of protocols (as for `cgt_twin.simulate.simulate`).
        times: output times, h (default: the campaign's).
        batches: only these batches of a campaign.
        quantiles: lower and upper quantile of the band.
        posterior: a `cgt_twin.bayes.Posterior` of this twin: the bands become posterior predictive ones.
        band: with a posterior, ``"measurement"`` (a new measurement: parameter spread and noise) or
            ``"parameter"`` (the spread of the predicted truth only).
        n_draws: posterior draws simulated.
        seed: random seed of the draw selection, new batch effects and noise.
        groups: batch -> group level (the posterior's grouping covariate) for batches of a campaign without it, or
            of protocols; a campaign's own batch metadata is used otherwise.
        ensemble: a `cgt_twin.bayes.ResidualEnsemble` of this twin's neural residual: every member is simulated
            (one vmapped solve) and the bands hold the members' spread — mean over members, exact quantiles of the
            mixture of the members' measurement distributions (``band="measurement"``) or of their predictions
            (``band="parameter"``). With a `posterior` too, draw j is simulated with member j mod K and the bands
            are the posterior predictive ones.
        simulate_kwargs: passed to `cgt_twin.simulate.simulate` (``settings``, ``initial_states``, ``covariates`` —
            the batch covariates a residual sees, for protocols or to override a campaign's).

    Returns:
        Dataset with dims ``(statistic, batch, time, phase)`` (statistic = mean, q05, q95) for every observed
        variable, plus ``status`` per batch; attrs carry the skipped batches and the quantiles (and, with a
        posterior, the band, the number of draws and how each batch was treated).
    """
    if posterior is not None:
        return _predict_posterior(twin, data, times, batches, quantiles, posterior, band, n_draws, seed, groups,
                                  simulate_kwargs, ensemble)
    if ensemble is not None:
        from .bayes.ensemble import _predict_ensemble

        return _predict_ensemble(twin, data, times, batches, quantiles, ensemble, band, simulate_kwargs)
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


def _predict_posterior(twin, data, times, batches, quantiles, posterior, band, n_draws, seed, groups,
                       simulate_kwargs, ensemble=None) -> xr.Dataset:
    """Posterior predictive version of `predict` (same dims and statistics)."""
    from .bayes.predictive import BANDS, predictive_bands, predictive_draws
    from .data.campaign import Campaign
    from .data.errors import CampaignValidationError, Problem

    if band not in BANDS:
        raise CampaignValidationError(Problem("band", f"must be one of {BANDS}, got {band!r}"))
    missing = [p for p in posterior.parameters if p not in twin.params]
    if missing:
        raise CampaignValidationError(Problem("posterior", f"the posterior samples {missing}, which this twin "
                                                           "does not have: it belongs to another model"))
    if ensemble is not None:
        ensemble.check_twin(twin)
    settings = simulate_kwargs.get("settings")
    prepared = prepare(twin, data, times, batches=batches, initial_states=simulate_kwargs.get("initial_states"),
                       covariates=simulate_kwargs.get("covariates"))
    point = predict(twin, prepared, quantiles=quantiles, settings=settings)
    if not prepared.names:
        return point
    group_of = dict(groups or {})
    covariate = posterior.meta.get("group")
    if covariate and isinstance(data, Campaign):
        meta = data.batch_metadata()
        if covariate in meta.columns:
            for b in prepared.names:
                value = meta.loc[b, covariate]
                if b not in group_of and pd.notna(value) and str(value).strip():
                    group_of[b] = str(value)
    observed, status, kinds, index = predictive_draws(posterior, twin, prepared, group_of, n_draws=n_draws,
                                                      seed=seed, settings=settings, ensemble=ensemble)
    bands = predictive_bands(posterior, twin, observed, index, band=band, quantiles=quantiles, seed=seed)
    ds = point.copy()
    for name in ds.data_vars:
        if name in bands and "statistic" in ds[name].dims:
            ds[name] = (("statistic", "batch", "time", "phase"), bands[name], dict(ds[name].attrs))
    failed = (status != 0).sum(axis=0)
    ds["status"] = ("batch", np.asarray(["ok" if f == 0 else f"{f} of {status.shape[0]} draws failed"
                                         for f in failed], dtype=object))
    ds.attrs = {**point.attrs, "posterior": posterior.method, "band": band, "n_draws": int(index.size),
                "batch_kinds": json.dumps(kinds), "posterior_problems": json.dumps(list(posterior.problems))}
    if ensemble is not None:
        ds.attrs["ensemble"] = int(ensemble.n_members)
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
