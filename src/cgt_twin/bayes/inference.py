"""Inference on a `TwinModel`: NUTS (several chains, dense mass matrix started from the Laplace covariance) and the
Laplace approximation as the fast alternative with the same result type, plus the choice of the identifiable subset.

Kinetic models are sloppy: NUTS over every parameter saturates the tree depth. `select_identifiable` keeps the
parameters whose prior sd the data shrink most (from the curvature of the log posterior at the twin's values — the
Fisher information plus the prior) and the rest are held at the fit; the `Posterior` says which.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer import MCMC, NUTS, init_to_value
from numpyro.infer.util import initialize_model

from ..data.campaign import Campaign
from ..models.twin import Twin
from .model import NUMERICAL_PARAMETERS, BayesConfig, TwinModel, build_model
from .posterior import Posterior

__all__ = ["NutsConfig", "sample_nuts", "laplace", "select_identifiable", "potential", "sample"]


@dataclasses.dataclass(frozen=True)
class NutsConfig:
    """NUTS settings.

    Attributes:
        chains, warmup, draws: number of chains, warm-up iterations and kept draws per chain.
        chain_method: ``"vectorized"`` (all chains in one vmapped kernel: one compilation; measured fastest on a
            2-core CPU) or ``"sequential"``.
        dense_mass: adapt a dense mass matrix (started from the Laplace covariance at the twin's values).
        target_accept: target acceptance probability of step-size adaptation.
        max_tree_depth: maximum tree depth (2^depth − 1 leapfrog steps).
        init_jitter: spread of the chains' starting points, in Laplace standard deviations.
        seed: random seed.
    """

    chains: int = 4
    warmup: int = 500
    draws: int = 500
    chain_method: str = "vectorized"
    dense_mass: bool = True
    target_accept: float = 0.8
    max_tree_depth: int = 10
    init_jitter: float = 0.3
    seed: int = 0


def potential(twin_model: TwinModel, seed: int = 0):
    """``(x0, potential_fn, unravel, postprocess_fn)``: the negative log joint density in numpyro's unconstrained
    space as a function of one flat vector, its value at the model's starting point, and the maps back."""
    info = initialize_model(jax.random.PRNGKey(seed), twin_model.model,
                            init_strategy=init_to_value(values=twin_model.init_values),
                            forward_mode_differentiation=twin_model.forward_mode)
    z0 = info.param_info.z
    x0, unravel = ravel_pytree(z0)

    def flat(x):
        return info.potential_fn(unravel(x))

    return x0, flat, unravel, info.postprocess_fn


def _hessian(fn, forward: bool, step: float = 1e-4):
    """Hessian of `fn`: forward over forward mode, or (reverse mode: diffrax's checkpointed adjoint cannot be
    differentiated again) central differences of the reverse-mode gradient."""
    if forward:
        return jax.jit(jax.jacfwd(jax.jacfwd(fn)))
    grad = jax.jit(jax.grad(fn))

    def by_differences(x):
        x = jnp.asarray(x)
        eye = jnp.eye(x.size) * step
        columns = [(grad(x + e) - grad(x - e)) / (2 * step) for e in eye]
        return jnp.stack(columns, axis=1)

    return by_differences


def _grad(fn, forward: bool):
    return jax.jit(jax.jacfwd(fn) if forward else jax.grad(fn))


def _covariance(hessian: np.ndarray, floor: float = 1e-2) -> np.ndarray:
    """Inverse of a symmetrised Hessian with its eigenvalues floored (a sloppy or non-convex direction gets a
    bounded variance of 1/floor instead of an infinite or negative one)."""
    h = 0.5 * (hessian + hessian.T)
    h = np.where(np.isfinite(h), h, 0.0)
    values, vectors = np.linalg.eigh(h)
    values = np.maximum(values, floor)
    return (vectors / values) @ vectors.T


def select_identifiable(twin: Twin, campaign: Campaign, config: BayesConfig | None = None, *,
                        standard_errors: Mapping[str, float] | None = None,
                        candidates: Sequence[str] | None = None, **build_kwargs) -> tuple[str, ...]:
    """The identifiable subset: parameters whose posterior sd of the logarithm (Laplace, at the twin's values) is
    below ``config.shrinkage`` × their prior sd, at most ``config.max_parameters`` of them, best-informed first.

    Args:
        standard_errors: log-scale standard errors from a fit (`FitResult.standard_errors`); computed here from the
            curvature of the log posterior when not given.
        candidates: parameters to choose from (default: every non-numerical one).
    """
    config = config or BayesConfig()
    specs = {p.name: p for p in twin.kinetics.parameters}
    names = list(candidates) if candidates is not None else \
        [p.name for p in twin.kinetics.parameters if p.name not in NUMERICAL_PARAMETERS]
    if standard_errors is None:
        probe = dataclasses.replace(config, parameters=tuple(names), hierarchical=(), group=None, noise="fixed",
                                    initial_states=())
        twin_model = build_model(twin, campaign, probe, **build_kwargs)
        x0, fn, _, _ = potential(twin_model)
        covariance = _covariance(np.asarray(_hessian(fn, twin_model.forward_mode)(x0)), floor=1e-8)
        _, unravel = ravel_pytree({f"log_{n}": 0.0 for n in names})
        se_flat = np.sqrt(np.clip(np.diag(covariance), 0, None))
        standard_errors = {n: float(v) for n, v in unravel(jnp.asarray(se_flat)).items()}
        standard_errors = {n: standard_errors[f"log_{n}"] for n in names}
    ratio = {}
    for n in names:
        se = standard_errors.get(n)
        prior = config.priors[n].sigma if n in config.priors else specs[n].prior_sigma
        if se is not None and math.isfinite(se):
            ratio[n] = se / prior
    chosen = sorted((n for n, r in ratio.items() if r < config.shrinkage), key=lambda n: ratio[n])
    return tuple(chosen[: config.max_parameters])


def _finish(twin_model: TwinModel, samples: dict, stats: dict, method: str, settings: dict,
            seconds: float) -> Posterior:
    return Posterior.from_samples(twin_model, {k: np.asarray(v) for k, v in samples.items()},
                                  {k: np.asarray(v) for k, v in stats.items()}, method=method, settings=settings,
                                  seconds=seconds)


def laplace(twin_model: TwinModel, *, draws: int = 2000, seed: int = 0, newton_steps: int = 30) -> Posterior:
    """The Laplace approximation: a damped Newton search for the mode of the log posterior (unconstrained space)
    from the model's starting point, then a normal with the inverse Hessian as covariance; `draws` draws.

    Fast (a few Hessians) and deterministic; right when the posterior is close to normal in the log parameters,
    too narrow for funnels (hierarchical spreads) — use NUTS there.
    """
    start = time.perf_counter()
    x, fn, unravel, postprocess = potential(twin_model, seed)
    forward = twin_model.forward_mode
    value_fn, grad_fn, hess_fn = jax.jit(fn), _grad(fn, forward), _hessian(fn, forward)
    value = float(value_fn(x))
    damping = 1e-3
    for _ in range(newton_steps):
        g = np.asarray(grad_fn(x))
        h = 0.5 * np.asarray(hess_fn(x))
        h = h + h.T
        improved = False
        for _ in range(12):
            try:
                step = np.linalg.solve(h + damping * np.eye(h.shape[0]) * max(1.0, np.abs(np.diag(h)).max()), g)
            except np.linalg.LinAlgError:
                damping *= 10
                continue
            candidate = x - step
            new = float(value_fn(candidate))
            if math.isfinite(new) and new <= value:
                x, improved = candidate, True
                damping = max(damping / 10, 1e-9)
                change, value = value - new, new
                break
            damping *= 10
        if not improved or change < 1e-8:
            break
    covariance = _covariance(np.asarray(hess_fn(x)))
    rng = np.random.default_rng(seed)
    flat = rng.multivariate_normal(np.asarray(x), covariance, size=draws, method="eigh")
    constrained = jax.vmap(lambda v: postprocess(unravel(v)))(jnp.asarray(flat))
    samples = {k: np.asarray(v)[None] for k, v in constrained.items()}
    stats = {"potential_energy": np.asarray(jax.vmap(value_fn)(jnp.asarray(flat)))[None]}
    return _finish(twin_model, samples, stats, "laplace", {"draws": draws, "seed": seed, "mode_potential": value},
                   time.perf_counter() - start)


def sample_nuts(twin_model: TwinModel, config: NutsConfig | None = None) -> Posterior:
    """NUTS on the model: chains started near the twin's values (jittered by the Laplace sd), dense mass matrix
    started from the Laplace covariance and adapted in warm-up; diagnostics checked on the result (a clear
    `PosteriorWarning` when a threshold is missed)."""
    config = config or NutsConfig()
    start = time.perf_counter()
    x0, fn, unravel, _ = potential(twin_model, config.seed)
    covariance = _covariance(np.asarray(_hessian(fn, twin_model.forward_mode)(x0)))
    rng = np.random.default_rng(config.seed)
    sd = np.sqrt(np.diag(covariance))
    starts = np.stack([np.asarray(x0) + (config.init_jitter * sd * rng.standard_normal(sd.shape) if c else 0.0)
                       for c in range(config.chains)])
    init_params = jax.vmap(unravel)(jnp.asarray(starts)) if config.chains > 1 else unravel(jnp.asarray(starts[0]))
    kernel = NUTS(twin_model.model, dense_mass=config.dense_mass,
                  inverse_mass_matrix=jnp.asarray(covariance if config.dense_mass else np.diag(covariance)),
                  target_accept_prob=config.target_accept, max_tree_depth=config.max_tree_depth,
                  forward_mode_differentiation=twin_model.forward_mode,
                  init_strategy=init_to_value(values=twin_model.init_values))
    mcmc = MCMC(kernel, num_warmup=config.warmup, num_samples=config.draws, num_chains=config.chains,
                chain_method=config.chain_method, progress_bar=False)
    mcmc.run(jax.random.PRNGKey(config.seed), init_params=init_params,
             extra_fields=("diverging", "num_steps", "energy", "accept_prob"))
    samples = mcmc.get_samples(group_by_chain=True)
    stats = mcmc.get_extra_fields(group_by_chain=True)
    settings = {**dataclasses.asdict(config), "forward_mode": twin_model.forward_mode}
    return _finish(twin_model, samples, stats, "nuts", settings, time.perf_counter() - start)


def sample(twin: Twin, campaign: Campaign, config: BayesConfig | None = None, nuts: NutsConfig | None = None, *,
           method: str = "nuts", standard_errors: Mapping[str, float] | None = None,
           forward_mode: bool = True, **build_kwargs) -> Posterior:
    """The posterior of `twin` on `campaign` in one call: choose the identifiable subset when
    ``config.parameters`` is None, build the model, run NUTS (or ``method="laplace"``).

    Args:
        standard_errors: a fit's log-scale standard errors, used to choose the identifiable subset.
        build_kwargs: passed to `build_model` (``batches``, ``initial_states``).
    """
    config = config or BayesConfig()
    if method not in ("nuts", "laplace"):
        from ..data.errors import CampaignValidationError, Problem

        raise CampaignValidationError(Problem("method", f"must be 'nuts' or 'laplace', got {method!r}"))
    if config.parameters is None:
        chosen = select_identifiable(twin, campaign, config, standard_errors=standard_errors,
                                     forward_mode=forward_mode, **build_kwargs)
        chosen = tuple(dict.fromkeys((*chosen, *config.hierarchical)))
        config = dataclasses.replace(config, parameters=chosen)
    twin_model = build_model(twin, campaign, config, forward_mode=forward_mode, **build_kwargs)
    if method == "laplace":
        nuts = nuts or NutsConfig()
        return laplace(twin_model, draws=nuts.chains * nuts.draws, seed=nuts.seed)
    return sample_nuts(twin_model, nuts)
