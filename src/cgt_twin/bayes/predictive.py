"""Posterior predictive: every draw simulated on every batch, with per-batch (hierarchical) parameters.

A batch the posterior was conditioned on uses its own sampled effect; a new batch of a known group draws a new batch
effect around its group's; a batch of an unseen group draws a new group effect as well — so the three get
increasingly wide bands. ``band="measurement"`` adds measurement noise (the twin's combined error model, scaled by each
draw's noise scale); ``band="parameter"`` is the spread of the predicted truth only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..data.errors import CampaignValidationError, Problem
from ..data.variables import CANONICAL_VARIABLES
from ..models.twin import Twin
from ..simulate import Prepared, SolverSettings, _observe, _scatter, _solve_batches
from .posterior import Posterior

__all__ = ["batch_parameter_draws", "predictive_draws", "predictive_bands", "draw_observations", "BANDS"]

BANDS = ("measurement", "parameter")
_CHUNK = 64


def batch_parameter_draws(posterior: Posterior, twin: Twin, batches: Sequence[str],
                          groups: Mapping[str, str | None] | None = None, *, n_draws: int = 200,
                          seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, str]]:
    """Parameter values (spec units) of each draw for each batch.

    Returns:
        ``(values, index, kinds)``: name -> (draw, batch) for every parameter of the twin (parameters held fixed
        repeated; those the Laplace correction carried, `Posterior.carried`, with each draw's own value); the
        indices of the posterior draws used; batch -> ``"conditioned"`` / ``"new batch, known group"`` /
        ``"new batch, new group"`` / ``"population"`` (no hierarchical effects).
    """
    rng = np.random.default_rng(seed)
    total = posterior.n_chains * posterior.n_draws
    index = np.sort(rng.choice(total, size=min(n_draws, total), replace=False))
    n = index.size
    meta = posterior.meta
    groups = dict(groups or {})
    known = list(meta["batches"])
    levels = list(meta["group_levels"])
    values = {k: np.broadcast_to(float(np.asarray(v)), (n, len(batches))).copy() for k, v in twin.params.items()}
    foreign = [p for p in posterior.carried if p not in values]
    if foreign:
        raise CampaignValidationError(Problem("posterior", f"the posterior carries draws of {foreign}, which this twin "
                                                           "does not have: it belongs to another model"))
    for p in posterior.carried:  # each draw's own value, the same in every batch (no effects)
        values[p] = np.repeat(np.exp(posterior.flat(f"log_{p}")[index])[:, None], len(batches), axis=1)
    kinds = {}
    for p in posterior.parameters:
        draws = posterior.flat(f"log_{p}")[index]
        if draws.ndim == 1:
            values[p] = np.repeat(draws[:, None], len(batches), axis=1)
            continue
        prior = meta["prior"][p]  # unpooled: own values for conditioned batches, the prior for new ones
        values[p] = np.stack([draws[:, known.index(b)] if b in known else
                              prior["log_median"] + prior["log_sd"] * rng.standard_normal(n) for b in batches], axis=1)
        kinds.update({b: "conditioned" if b in known else "new batch (prior)" for b in batches})
    hierarchical = list(meta["hierarchical"])
    for j, p in enumerate(hierarchical):
        tau_b = posterior.flat("tau_batch")[index, j]
        has_group = "z_group" in posterior.samples
        tau_g = posterior.flat("tau_group")[index, j] if has_group else None
        for b, batch in enumerate(batches):
            if batch in known:
                k = known.index(batch)
                effect = tau_b * posterior.flat("z_batch")[index, k, j]
                kind = "conditioned"
                if has_group:
                    effect = effect + tau_g * posterior.flat("z_group")[index, levels.index(meta["groups"][k]), j]
            else:
                effect = tau_b * rng.standard_normal(n)
                if has_group:
                    g = groups.get(batch)
                    if g is not None and str(g) in levels:
                        effect = effect + tau_g * posterior.flat("z_group")[index, levels.index(str(g)), j]
                        kind = "new batch, known group"
                    else:
                        effect = effect + tau_g * rng.standard_normal(n)
                        kind = "new batch, new group"
                else:
                    kind = "new batch"
            values[p][:, b] = values[p][:, b] + effect
            kinds[batch] = kind
    for p in posterior.parameters:
        values[p] = np.exp(values[p])
    for batch in batches:
        kinds.setdefault(batch, "population")
    return values, index, kinds


@eqx.filter_jit
def _solve(kinetics, settings: SolverSettings, params, y0, encoded):
    """(observed: name -> (draw, batch, own time, phase), status (draw, batch)) for a chunk of draws."""

    def one(p, y):
        enc = encoded._replace(y0=y)
        pre, post, status, _ = _solve_batches(kinetics, settings, p, enc, True)
        states = jnp.stack([pre, post], axis=2)
        return _observe(kinetics, p, states, True), status

    return jax.vmap(one)(params, y0)


@eqx.filter_jit
def _solve_members(kinetics, settings: SolverSettings, residuals, params, y0, encoded):
    """Like `_solve`, each draw with its own neural residual (`residuals`: the network with a leading draw axis on
    every weight): one compilation per model structure, whatever the weights."""

    def one(r, p, y):
        model = eqx.tree_at(lambda k: k.residual, kinetics, r)
        enc = encoded._replace(y0=y)
        pre, post, status, _ = _solve_batches(model, settings, p, enc, True)
        states = jnp.stack([pre, post], axis=2)
        return _observe(model, p, states, True), status

    return jax.vmap(one)(residuals, params, y0)


def draw_observations(twin: Twin, prepared: Prepared, values: Mapping[str, np.ndarray], y0: np.ndarray, *,
                      settings: SolverSettings | None = None, residuals=None,
                      chunk: int = _CHUNK) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Solves draws of parameter values (name -> (draw, batch)) and initial states (draw, batch, state) on the
    batches of `prepared`, in equal chunks of draws (one compilation), optionally each draw with its own residual
    weights (`residuals`: the twin's network with a leading draw axis, see `cgt_twin.bayes.ResidualEnsemble`).

    Returns:
        ``(observed, status)``: name -> (draw, batch, time, phase) on ``prepared.grid`` (NaN where a batch has no
        output or its solve failed) and the status codes (draw, batch).
    """
    settings = settings or SolverSettings()
    n = y0.shape[0]
    chunk = min(chunk, n)
    padded = -(-n // chunk) * chunk
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], padded - n, axis=0)])  # noqa: E731
    full = {k: pad(np.asarray(v)) for k, v in values.items()}
    y0 = pad(np.asarray(y0))
    if residuals is not None:
        residuals = jax.tree.map(lambda a: jnp.asarray(pad(np.asarray(a))), residuals)
    parts = []
    for start in range(0, padded, chunk):
        part = {k: jnp.asarray(v[start:start + chunk]) for k, v in full.items()}
        y = jnp.asarray(y0[start:start + chunk])
        if residuals is None:
            parts.append(jax.device_get(_solve(twin.kinetics, settings, part, y, prepared.encoded)))
        else:
            weights = jax.tree.map(lambda a, start=start: a[start:start + chunk], residuals)
            parts.append(jax.device_get(_solve_members(twin.kinetics, settings, weights, part, y, prepared.encoded)))
    status = np.concatenate([p[1] for p in parts])[:n]
    observed = {}
    for name in parts[0][0]:
        own = np.concatenate([p[0][name] for p in parts])[:n]  # (draw, batch, own time, phase)
        observed[name] = _scatter(own, prepared.grid_index, prepared.grid.size)
        observed[name][status != 0] = np.nan
    return observed, status


def predictive_draws(posterior: Posterior, twin: Twin, prepared: Prepared,
                     groups: Mapping[str, str | None] | None = None, *, n_draws: int = 200, seed: int = 0,
                     settings: SolverSettings | None = None,
                     ensemble=None) -> tuple[dict[str, np.ndarray], np.ndarray, dict, np.ndarray]:
    """Predicted (noise-free) observed variables of each posterior draw on the batches of `prepared`.

    With an `ensemble` (a `cgt_twin.bayes.ResidualEnsemble` of the twin's neural residual), draw j is solved with
    member j mod K (round robin over the selected draws, so every member carries the same number of draws).

    Returns:
        ``(observed, status, kinds, index)``: name -> (draw, batch, time, phase) on ``prepared.grid`` (NaN where a
        batch has no output or its solve failed); status codes (draw, batch); batch kinds (see
        `batch_parameter_draws`); the posterior draw indices used.
    """
    settings = settings or SolverSettings()
    batches = list(prepared.names)
    values, index, kinds = batch_parameter_draws(posterior, twin, batches, groups, n_draws=n_draws, seed=seed)
    n = index.size
    y0 = np.broadcast_to(np.asarray(prepared.encoded.y0), (n, *np.shape(prepared.encoded.y0))).copy()
    if "log_initial" in posterior.samples:
        layout = twin.kinetics.layout
        states = [layout.index(s) for s in posterior.meta["initial_states"]]
        for b, batch in enumerate(batches):
            if batch in posterior.meta["batches"]:
                k = posterior.meta["batches"].index(batch)
                y0[:, b, states] = np.exp(posterior.flat("log_initial")[index, k])
    residuals = None
    if ensemble is not None:
        ensemble.check_twin(twin)
        residuals = ensemble.take(np.arange(n) % ensemble.n_members)
    observed, status = draw_observations(twin, prepared, values, y0, settings=settings, residuals=residuals)
    return observed, status, kinds, index


def predictive_bands(posterior: Posterior, twin: Twin, observed: Mapping[str, np.ndarray], index: np.ndarray, *,
                     band: str = "measurement", quantiles: tuple[float, float] = (0.05, 0.95), seed: int = 0,
                     noise_replicates: int = 8) -> dict[str, np.ndarray]:
    """Mean and the two quantiles, name -> (3, batch, time, phase), of the predictive draws.

    The mean is the posterior mean of the prediction; with ``band="measurement"`` the quantiles are those of a new
    measurement (each draw's prediction plus `noise_replicates` normal errors of σ² = σ_abs² + (σ_rel·ŷ)², scaled by
    the draw's noise scale, kept within the variable's physical bounds).
    """
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    rng = np.random.default_rng(seed + 1)
    variables = list(posterior.meta["variables"])
    scales = posterior.flat("noise_scale")[index] if "noise_scale" in posterior.samples else None
    base = {k: tuple(v) for k, v in posterior.meta["base_noise"].items()}
    out = {}
    for name, draws in observed.items():
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(draws, axis=0)
                noise = base.get(name, twin.noise.get(name))
                if band == "measurement" and noise is not None:
                    factor = np.ones(draws.shape[0])
                    if scales is not None and name in variables:
                        factor = np.exp(scales[:, variables.index(name)])
                    factor = factor.reshape(-1, *([1] * (draws.ndim - 1)))
                    sd = np.sqrt((noise[0] * factor) ** 2 + (noise[1] * factor * draws) ** 2)
                    reps = draws[None] + sd[None] * rng.standard_normal((noise_replicates, *draws.shape))
                    spec = CANONICAL_VARIABLES.get(name)
                    lower = spec.lower if spec is not None and spec.lower is not None else -np.inf
                    upper = spec.upper if spec is not None and spec.upper is not None else np.inf
                    pool = np.clip(reps, lower, upper).reshape(-1, *draws.shape[1:])
                else:
                    pool = draws
                low, high = np.nanquantile(pool, quantiles, axis=0)
        out[name] = np.stack([mean, low, high])
    return out
