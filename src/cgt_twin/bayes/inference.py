"""Inference on a `TwinModel`: NUTS (several chains, dense mass matrix started from the Laplace covariance) and the
Laplace approximation as the fast alternative with the same result type, plus the choice of the identifiable subset.

Kinetic models are sloppy: NUTS over every parameter saturates the tree depth. `select_identifiable` keeps the
parameters whose prior sd the data shrink most (from the curvature of the log posterior at the twin's values — the
Fisher information plus the prior) and the rest are held at the fit; the `Posterior` says which.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS, init_to_value
from numpyro.infer.hmc import hmc
from numpyro.infer.util import ParamInfo, initialize_model, log_density
from numpyro.util import set_host_device_count

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..models.twin import Twin
from .held import HeldCorrection, laplace_correction
from .model import (
    FAILED_SOLVE_LOG_DENSITY,
    NUMERICAL_PARAMETERS,
    BayesConfig,
    TwinModel,
    build_model,
    carriable_parameters,
    curvature_config,
)
from .posterior import Posterior

__all__ = ["NutsConfig", "sample_nuts", "laplace", "select_identifiable", "potential", "sample", "gradient_times",
           "held_correction", "Curvature", "curvature_at_twin", "curvature_at_mode", "host_devices_for_chains"]


CHAIN_METHODS = ("vectorized", "sequential", "parallel")


@dataclasses.dataclass(frozen=True)
class NutsConfig:
    """NUTS settings.

    Attributes:
        chains, warmup, draws: number of chains, warm-up iterations and kept draws per chain.
        chain_method: ``"vectorized"`` (all chains in one vmapped kernel: one compilation; measured fastest on a
            2-core CPU with one JAX device), ``"sequential"``, or ``"parallel"``: the chains split into as many
            groups as there are JAX devices (at most one per chain), each group vectorised on its own device, the
            groups run at once from one thread each. XLA runs one vectorised kernel on one CPU core, so with one
            device the other cores stay idle; on a CPU, make one device per chain with `host_devices_for_chains`
            before the process's first JAX computation (importing cgt_twin runs none). Each group adapts its own
            step sizes and mass matrices, as each chain does anyway. Refused with fewer than two devices, and with
            `independent_batches`.
        dense_mass: adapt a dense mass matrix (started from the Laplace covariance at the starting point).
        target_accept: target acceptance probability of step-size adaptation.
        max_tree_depth: maximum tree depth (2^depth − 1 leapfrog steps).
        init_jitter: spread of the chains' starting points, in Laplace standard deviations.
        seed: random seed.
        mode_steps: damped Newton steps from the twin's values towards the posterior mode before sampling (0: start
            at the twin's values). The chains start at and around the mode, and the initial mass matrix is the
            inverse Hessian there. The twin's values are a fit's, but the posterior's other quantities (noise
            scales, spreads, effects) start at their priors' centres, and the Hessian at a point that is not a mode
            is indefinite: floored, it gives a mass matrix with directions far too wide, whose warm-up proposals
            land where the solver runs to its step limit (measured on the UMN posterior held at the data's initial
            VCD instead of the fit's: 0.3 Laplace sd of jitter from the fit raised the potential from 3.7e3 to
            4.5e4-7e6, and a gradient there took up to 0.9 s against 67 ms at the fit).
        progress: show numpyro's progress bar (iterations; with one chain also the step size and leapfrog steps)
            while sampling; off when the environment variable ``CGT_TWIN_NO_PROGRESS`` is set. Not shown with
            `independent_batches`.
        independent_batches: unpooled models with fixed noise only (``BayesConfig(pooling="none",
            noise="fixed")``): sample each batch's posterior on its own — its own `chains`, started at and around
            its posterior mode, its own step size and mass matrix (from its Laplace covariance there) adapted in its
            own warm-up — all batches in one vectorised kernel (one compilation). The draws have the layout of the
            joint run, (chain, draw, batch), and so have the sampler statistics. Right for many small independent
            posteriors (replicated datasets of a calibration check): one joint run shares one step size and mass
            matrix among all batches and takes as many leapfrog steps as its worst batch needs, in a space whose
            dimension grows with the batches.
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
    mode_steps: int = 30
    progress: bool = True
    independent_batches: bool = False

    def __post_init__(self):
        bad = []
        for name, least in (("chains", 1), ("warmup", 0), ("draws", 1), ("max_tree_depth", 1), ("mode_steps", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                bad.append(Problem("sampler", f"{name} must be an integer >= {least}, got {value!r}", column=name))
        if self.chain_method not in CHAIN_METHODS:
            bad.append(Problem("sampler", f"chain_method must be one of {', '.join(map(repr, CHAIN_METHODS))}, got "
                                          f"{self.chain_method!r}", column="chain_method"))
        if self.chain_method == "parallel" and self.independent_batches is True:
            bad.append(Problem("sampler", "chain_method='parallel' cannot be combined with independent_batches (all "
                                          "batches and chains run in one vectorised kernel)", column="chain_method"))
        if not (isinstance(self.target_accept, (int, float)) and 0 < self.target_accept < 1):
            bad.append(Problem("sampler", f"target_accept must be in (0, 1), got {self.target_accept!r}",
                               column="target_accept"))
        if not (isinstance(self.init_jitter, (int, float)) and math.isfinite(self.init_jitter)
                and self.init_jitter >= 0):
            bad.append(Problem("sampler", f"init_jitter must be a finite number >= 0, got {self.init_jitter!r}",
                               column="init_jitter"))
        if bad:
            raise CampaignValidationError(bad, header="invalid NUTS settings")


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


def _covariance(hessian: np.ndarray, floor: float = 1e-2) -> np.ndarray:
    """Inverse of a symmetrised Hessian with its eigenvalues floored (a sloppy or non-convex direction gets a
    bounded variance of 1/floor instead of an infinite or negative one)."""
    h = 0.5 * (hessian + hessian.T)
    h = np.where(np.isfinite(h), h, 0.0)
    values, vectors = np.linalg.eigh(h)
    values = np.maximum(values, floor)
    return (vectors / values) @ vectors.T


@dataclasses.dataclass(frozen=True)
class Curvature:
    """The curvature of a model's negative log posterior at the twin's values (`curvature_at_twin`).

    Attributes:
        names: the kinetic parameters, in the flat vector's order (numpyro sorts the sites).
        log_values: their log values there (log of the spec unit), (parameter,).
        value: the negative log posterior there.
        hessian: its Hessian over the log parameters, (parameter, parameter).
        seconds: wall time of computing it (compilation included), s.
    """

    names: tuple[str, ...]
    log_values: np.ndarray
    value: float
    hessian: np.ndarray
    seconds: float = 0.0
    start_log_values: np.ndarray | None = None
    start_value: float | None = None

    def block(self, names: Sequence[str]) -> np.ndarray:
        """The Hessian over `names` (a subset, in that order) with the other parameters held at the twin's values:
        the sub-block of the Hessian over all of them."""
        index = [self.names.index(n) for n in names]
        return self.hessian[np.ix_(index, index)]

    def values(self) -> dict[str, float]:
        """The parameters where the curvature was taken (spec units)."""
        return {n: float(np.exp(v)) for n, v in zip(self.names, self.log_values, strict=True)}

    def search(self) -> dict | None:
        """What `curvature_at_mode` did (JSON-able), None for a curvature taken at the twin's values: the negative
        log posterior at the twin's values and at the mode, and each parameter's value at both (spec units) with
        its relative change."""
        if self.start_log_values is None:
            return None
        start, end = np.exp(self.start_log_values), np.exp(self.log_values)
        return {"potential": [self.start_value, self.value],
                "values": {n: {"twin": float(a), "mode": float(b), "change": float(b / a - 1.0)}
                           for n, a, b in zip(self.names, start, end, strict=True)},
                "seconds": float(self.seconds)}


def _kinetic_potential(twin_model: TwinModel) -> tuple[np.ndarray, object, tuple[str, ...], float]:
    """``(x0, potential_fn, parameter order, potential at x0)`` of a model that samples kinetic parameters only."""
    x0, fn, _, _ = potential(twin_model)
    names = list(twin_model.parameters)
    order, _ = ravel_pytree({f"log_{n}": float(i) for i, n in enumerate(names)})
    order = tuple(names[int(i)] for i in np.asarray(order))
    if len(order) != np.size(x0):
        raise ValueError(f"a curvature needs a model that samples kinetic parameters only (curvature_config); "
                         f"this one has {np.size(x0)} unconstrained coordinates for {len(order)} parameters")
    return np.asarray(x0, dtype=np.float64), fn, order, float(jax.jit(fn)(x0))


def _solve_failed(value: float) -> bool:
    return not math.isfinite(value) or value >= -0.5 * FAILED_SOLVE_LOG_DENSITY


def curvature_at_twin(twin_model: TwinModel) -> Curvature:
    """The Hessian of the negative log posterior of a model that samples kinetic parameters only (a
    `curvature_config` model: noise fixed, no effects, initial states held) at the twin's values: forward over
    forward mode, or central differences of the reverse-mode gradient. Where the solve fails at the twin's values the
    Hessian is not computed (NaN; `value` says why)."""
    start = time.perf_counter()
    x0, fn, order, value = _kinetic_potential(twin_model)
    if _solve_failed(value):  # fail fast: no Hessian of a failure
        hessian = np.full((len(order), len(order)), np.nan)
    else:
        hessian = np.asarray(_hessian(fn, twin_model.forward_mode)(x0))
    return Curvature(order, x0, value, hessian, time.perf_counter() - start)


def curvature_at_mode(twin_model: TwinModel, *, newton_steps: int = 50) -> Curvature:
    """The curvature of a `curvature_config` model's negative log posterior at its mode, found from the twin's values
    by damped Newton steps (the Hessian by central differences of the gradient, as `laplace` does); the twin's
    values and the potential there are kept (`Curvature.search`).

    The Laplace correction of the held parameters is an expansion about a mode. A fit is one only up to its
    optimiser's tolerance: on the synthetic CHO repeats of `benchmarks/bench_bayes.py` (dataset 101, five initial
    states fitted) the fit's gradient norm was 95 and the curvature had an eigenvalue of −0.18 along KD_amm; twelve
    parameters moved by 0.1–1.2 % to the mode (potential 611.625 → 611.589), where the smallest eigenvalue was 0.95
    and the gradient norm 8e-6. Where the solve fails at the twin's values nothing is searched (a NaN Hessian, as
    `curvature_at_twin`)."""
    start = time.perf_counter()
    x0, fn, order, value = _kinetic_potential(twin_model)
    if _solve_failed(value):
        return Curvature(order, x0, value, np.full((len(order), len(order)), np.nan), time.perf_counter() - start,
                         x0, value)
    mode, hessian, at_mode = _joint_mode(fn, x0, twin_model.forward_mode, newton_steps)
    return Curvature(order, np.asarray(mode, dtype=np.float64), at_mode, np.asarray(hessian),
                     time.perf_counter() - start, x0, value)


def _probe_curvature(twin: Twin, campaign: Campaign, config: BayesConfig, names: Sequence[str],
                     **build_kwargs) -> Curvature:
    """`curvature_at_twin` of the `curvature_config` model over `names`."""
    return curvature_at_twin(build_model(twin, campaign, curvature_config(config, names), **build_kwargs))


def _standard_errors(curvature: Curvature) -> dict[str, float]:
    covariance = _covariance(curvature.hessian, floor=1e-8)
    return {n: float(np.sqrt(max(covariance[i, i], 0.0))) for i, n in enumerate(curvature.names)}


def _candidates(twin: Twin) -> list[str]:
    return [p.name for p in twin.kinetics.parameters if p.name not in NUMERICAL_PARAMETERS]


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
    names = list(candidates) if candidates is not None else _candidates(twin)
    if standard_errors is None:
        standard_errors = _standard_errors(_probe_curvature(twin, campaign, config, names, **build_kwargs))
    ratio = {}
    for n in names:
        se = standard_errors.get(n)
        prior = config.priors[n].sigma if n in config.priors else specs[n].prior_sigma
        if se is not None and math.isfinite(se):
            ratio[n] = se / prior
    chosen = sorted((n for n, r in ratio.items() if r < config.shrinkage), key=lambda n: ratio[n])
    return tuple(chosen[: config.max_parameters])


def held_correction(twin_model: TwinModel, curvature: Curvature | None = None) -> HeldCorrection | None:
    """The Laplace correction that carries the held parameters' uncertainty into the posterior (`cgt_twin.bayes.held`),
    from the Hessian of the negative log posterior over the log of every candidate parameter at the twin's values
    (`TwinModel.joint`: the curvature `select_identifiable` uses, prior included); None when the model carries
    nothing (``held_uncertainty="none"`` or nothing held).

    Args:
        curvature: that curvature already computed (`curvature_at_twin` of a `curvature_config` model of the same
            twin, campaign, batches and initial states over these parameters or more): its block is used, nothing is
            recomputed. `sample` passes the one it chose the identifiable subset from.

    Raises:
        CampaignValidationError: when the solve fails at the twin's values, or the curvature there is not finite or
            not positive definite (naming the parameters concerned).
        ValueError: when `curvature` lacks some of the model's parameters.
    """
    joint = twin_model.joint
    if joint is None:
        return None
    start = time.perf_counter()
    names = list(joint.parameters)
    if curvature is None:
        curvature = curvature_at_twin(joint)
    missing = [n for n in names if n not in curvature.names]
    if missing:
        raise ValueError(f"the curvature given does not cover {', '.join(missing)}")
    if _solve_failed(curvature.value):
        problem = Problem("held_uncertainty", f"the solve fails at the twin's values of {', '.join(names)}; the "
                                              "held parameters' curvature cannot be computed there")
        raise CampaignValidationError(problem, header="cannot carry the held parameters' uncertainty")
    order = [n for n in curvature.names if n in names]
    log_values = {n: float(curvature.log_values[curvature.names.index(n)]) for n in order}
    bounds = {n: (float(joint.lower[i]), float(joint.upper[i])) for i, n in enumerate(names)}
    correction = laplace_correction(curvature.block(order), order, twin_model.parameters, twin_model.carried,
                                    log_values, bounds)
    return dataclasses.replace(correction, seconds=time.perf_counter() - start)


def _finish(twin_model: TwinModel, samples: dict, stats: dict, method: str, settings: dict,
            seconds: float, correction: HeldCorrection | None = None, seed: int = 0) -> Posterior:
    return Posterior.from_samples(twin_model, {k: np.asarray(v) for k, v in samples.items()},
                                  {k: np.asarray(v) for k, v in stats.items()}, method=method, settings=settings,
                                  seconds=seconds, correction=correction, correction_seed=seed)


def _value_and_grad(fn, forward: bool):
    """``(x, *args) -> (fn(x, *args), its gradient in x)`` in one pass: forward mode (the value as auxiliary output
    of the Jacobian) or reverse mode."""
    if not forward:
        return jax.value_and_grad(fn)

    def both(x, *args):
        def with_value(x):
            value = fn(x, *args)
            return value, value

        grad, value = jax.jacfwd(with_value, has_aux=True)(x)
        return value, grad

    return both


def _modes(evaluate, x0: np.ndarray, lanes: int, *, newton_steps: int = 50, step: float = 1e-4):
    """Posterior modes of independent problems at once: damped Newton steps from `x0` (problem, dim), the Hessians
    by central differences of the gradient, a step kept only where it lowers the potential (else the damping grows).
    `evaluate` maps points (problem, lanes, dim) to potentials and gradients; each Newton step is one call (the point
    and its 2·dim neighbours, ``lanes ≥ 1 + 2·dim``). Returns the modes, the Hessians and the potentials there."""
    n, dim = x0.shape
    offsets = np.zeros((lanes, dim))
    offsets[1:1 + dim], offsets[1 + dim:1 + 2 * dim] = step * np.eye(dim), -step * np.eye(dim)

    def at(x):
        values, grads = evaluate(x[:, None, :] + offsets)
        hessians = (grads[:, 1:1 + dim] - grads[:, 1 + dim:1 + 2 * dim]).transpose(0, 2, 1) / (2 * step)
        return values[:, 0].copy(), grads[:, 0].copy(), 0.5 * (hessians + hessians.transpose(0, 2, 1))

    x = np.array(x0, dtype=float)
    value, grad, hessian = at(x)
    damping, done = np.full(n, 1e-3), np.zeros(n, dtype=bool)
    for _ in range(newton_steps):
        eigenvalues, vectors = np.linalg.eigh(np.where(np.isfinite(hessian), hessian, 0.0))
        scale = np.maximum(1.0, np.abs(eigenvalues).max(axis=1))
        shrink = 1.0 / (np.maximum(eigenvalues, 0.0) + (damping * scale)[:, None])
        move = -np.einsum("bij,bj,bkj,bk->bi", vectors, shrink, vectors, grad)
        move[done] = 0.0
        candidate = x + move
        new_value, new_grad, new_hessian = at(candidate)
        better = np.isfinite(new_value) & (new_value <= value) & ~done
        done |= better & (value - new_value < 1e-8)
        done |= ~better & (damping > 1e8)  # no lower point nearby: a mode up to the solver's accuracy
        x[better], value[better], grad[better], hessian[better] = (candidate[better], new_value[better],
                                                                  new_grad[better], new_hessian[better])
        damping = np.where(better, np.maximum(damping / 10, 1e-9), damping * 10)
        if done.all():
            break
    return x, hessian, value


def _joint_mode(fn, x0: np.ndarray, forward: bool, newton_steps: int):
    """`_modes` on one potential `fn` of a flat vector: (mode, Hessian there, potential there)."""
    dim = x0.size
    lanes = 1 + 2 * dim
    gradient = jax.jit(jax.vmap(_value_and_grad(fn, forward)))

    def evaluate(points):  # (1, lanes, dim) -> values (1, lanes), gradients (1, lanes, dim)
        values, grads = gradient(jnp.asarray(points.reshape(lanes, dim)))
        return np.asarray(values)[None], np.asarray(grads)[None]

    mode, hessian, value = _modes(evaluate, np.asarray(x0)[None], lanes, newton_steps=newton_steps)
    return mode[0], hessian[0], float(value[0])


def laplace(twin_model: TwinModel, *, draws: int = 2000, seed: int = 0, newton_steps: int = 30,
            curvature: Curvature | None = None) -> Posterior:
    """The Laplace approximation: a damped Newton search for the mode of the log posterior (unconstrained space)
    from the model's starting point, then a normal with the inverse Hessian as covariance; `draws` draws.

    Fast (a few Hessians) and deterministic; right when the posterior is close to normal in the log parameters,
    too narrow for funnels (hierarchical spreads) — use NUTS there. `curvature`: see `held_correction`.
    """
    start = time.perf_counter()
    correction = held_correction(twin_model, curvature)  # before the search: a bad curvature fails fast
    x, fn, unravel, postprocess = potential(twin_model, seed)
    x, hessian, value = _joint_mode(fn, x, twin_model.forward_mode, newton_steps)
    covariance = _covariance(hessian)
    value_fn = jax.jit(fn)
    rng = np.random.default_rng(seed)
    flat = rng.multivariate_normal(np.asarray(x), covariance, size=draws, method="eigh")
    constrained = jax.vmap(lambda v: postprocess(unravel(v)))(jnp.asarray(flat))
    samples = {k: np.asarray(v)[None] for k, v in constrained.items()}
    stats = {"potential_energy": np.asarray(jax.vmap(value_fn)(jnp.asarray(flat)))[None]}
    return _finish(twin_model, samples, stats, "laplace", {"draws": draws, "seed": seed, "mode_potential": value},
                   time.perf_counter() - start, correction, seed)


def sample_nuts(twin_model: TwinModel, config: NutsConfig | None = None, *,
                curvature: Curvature | None = None) -> Posterior:
    """NUTS on the model: chains started at and around the posterior mode found from the twin's values
    (``config.mode_steps``; jittered by the Laplace sd), dense mass matrix started from the Laplace covariance there
    and adapted in warm-up; diagnostics checked on the result (a clear
    `PosteriorWarning` when a threshold is missed). With ``config.independent_batches`` each batch of an unpooled
    model is sampled as its own posterior, all batches vectorised (see `NutsConfig`). `curvature`: see
    `held_correction`."""
    config = config or NutsConfig()
    if config.independent_batches:
        return _sample_batches_independently(twin_model, config)
    devices = _chain_devices(config) if config.chain_method == "parallel" else None
    start = time.perf_counter()
    correction = held_correction(twin_model, curvature)  # before sampling: a bad curvature fails in seconds
    x0, fn, unravel, postprocess = potential(twin_model, config.seed)
    x0 = np.asarray(x0)
    if config.mode_steps > 0:
        x0, hessian, _ = _joint_mode(fn, x0, twin_model.forward_mode, config.mode_steps)
    else:
        hessian = np.asarray(_hessian(fn, twin_model.forward_mode)(jnp.asarray(x0)))
    covariance = _covariance(hessian)
    rng = np.random.default_rng(config.seed)
    sd = np.sqrt(np.diag(covariance))
    starts = np.stack([x0 + (config.init_jitter * sd * rng.standard_normal(sd.shape) if c else 0.0)
                       for c in range(config.chains)])
    inverse_mass = covariance if config.dense_mass else np.diag(covariance)
    progress = config.progress and not os.environ.get("CGT_TWIN_NO_PROGRESS")
    if config.chain_method == "parallel":
        samples, stats = _run_chain_groups(fn, postprocess, unravel, starts, inverse_mass, config,
                                           twin_model.forward_mode, devices, progress)
    else:
        kernel = NUTS(twin_model.model, dense_mass=config.dense_mass, inverse_mass_matrix=jnp.asarray(inverse_mass),
                      target_accept_prob=config.target_accept, max_tree_depth=config.max_tree_depth,
                      forward_mode_differentiation=twin_model.forward_mode,
                      init_strategy=init_to_value(values=twin_model.init_values))
        samples, stats = _run_chains(kernel, None, unravel, starts, config, config.chain_method,
                                     jax.random.PRNGKey(config.seed), progress)
    settings = {**dataclasses.asdict(config), "forward_mode": twin_model.forward_mode}
    return _finish(twin_model, samples, stats, "nuts", settings, time.perf_counter() - start, correction,
                   config.seed)


_EXTRA_FIELDS = ("diverging", "num_steps", "energy", "accept_prob")


def host_devices_for_chains(chains: int) -> int | None:
    """Asks XLA for one CPU host device per chain, at most one per core, for ``chain_method="parallel"``
    (`numpyro.set_host_device_count`). XLA reads the flag once, at the process's first JAX computation (importing
    cgt_twin runs none), so call this before it. A device count already in ``XLA_FLAGS`` is kept. Returns the count
    asked for, or None when one was already set."""
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    count = max(1, min(int(chains), os.cpu_count() or 1))
    set_host_device_count(count)
    return count


def _chain_devices(config: NutsConfig) -> list:
    """The devices `chain_method="parallel"` spreads the chains over (at most one per chain); refused, before any
    work, when there are fewer than two."""
    devices = jax.local_devices()
    if len(devices) < 2 or config.chains < 2:
        raise CampaignValidationError(Problem(
            "sampler", f"chain_method='parallel' needs at least two chains and two JAX devices; got {config.chains} "
                       f"chain(s) and {len(devices)} {devices[0].platform} device(s). On a CPU call "
                       "cgt_twin.bayes.host_devices_for_chains(N) before the process's first JAX computation (or set "
                       "XLA_FLAGS=--xla_force_host_platform_device_count=N before starting it); or use "
                       "chain_method='vectorized'",
            column="chain_method"))
    return devices[:config.chains]


def _run_chains(kernel, postprocess, unravel, starts: np.ndarray, config: NutsConfig, chain_method: str, key,
                progress: bool) -> tuple[dict, dict]:
    """One numpyro `MCMC` run of ``len(starts)`` chains from `starts` (chain, dim): draws and sampler statistics,
    grouped by chain. `postprocess`: MCMC's map from unconstrained to reported values (None: the kernel's model's)."""
    chains = len(starts)
    init_params = jax.vmap(unravel)(jnp.asarray(starts)) if chains > 1 else unravel(jnp.asarray(starts[0]))
    mcmc = MCMC(kernel, num_warmup=config.warmup, num_samples=config.draws, num_chains=chains,
                chain_method=chain_method, progress_bar=progress, postprocess_fn=postprocess)
    mcmc.run(key, init_params=init_params, extra_fields=_EXTRA_FIELDS)
    return ({k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()},
            {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()})


def _run_chain_groups(flat_potential, postprocess, unravel, starts: np.ndarray, inverse_mass: np.ndarray,
                      config: NutsConfig, forward_mode: bool, devices: Sequence,
                      progress: bool) -> tuple[dict, dict]:
    """`chain_method="parallel"`: the chains split into one group per device, each group's chains vectorised on its
    device (its own kernel; keys ``split(PRNGKey(seed), groups)``), all groups at once from one thread each (XLA
    releases the GIL while it computes). Draws and statistics concatenated along the chain axis, in chain order;
    the progress bar, if any, is the first group's.

    numpyro's effect handlers share one global stack, so two threads tracing the model at once mix their handlers
    (measured: "all sites must have unique names"). The kernels therefore get the potential and the map to
    reported values as functions that hold a lock while they are traced; the compiled samplers run without it."""
    lock = threading.Lock()

    def locked(f):
        def call(*args):
            with lock:
                return f(*args)
        return call

    potential_of_sites = locked(lambda z: flat_potential(ravel_pytree(z)[0]))
    postprocess = locked(postprocess)
    groups = np.array_split(np.arange(len(starts)), len(devices))
    keys = jax.random.split(jax.random.PRNGKey(config.seed), len(groups))

    def run(g: int):
        with jax.default_device(devices[g]):
            kernel = NUTS(potential_fn=potential_of_sites, dense_mass=config.dense_mass,
                          inverse_mass_matrix=jnp.asarray(inverse_mass), target_accept_prob=config.target_accept,
                          max_tree_depth=config.max_tree_depth, forward_mode_differentiation=forward_mode)
            chains = groups[g]
            return _run_chains(kernel, postprocess, unravel, starts[chains], config,
                               "vectorized" if len(chains) > 1 else "sequential",
                               jax.device_put(keys[g], devices[g]), progress and g == 0)

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        results = list(pool.map(run, range(len(groups))))  # re-raises a group's error, if any
    return tuple({k: np.concatenate([r[i][k] for r in results]) for k in results[0][i]} for i in (0, 1))


def _is_real(constraint) -> bool:
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint is constraints.real


def _sample_batches_independently(twin_model: TwinModel, config: NutsConfig) -> Posterior:
    """NUTS on each batch of an unpooled model alone (``twin_model.model(batch=b)``): one lane per batch and chain,
    each with its own state, step size and mass matrix (numpyro's `hmc` kernel vmapped over the lanes, the
    iterations a `lax.scan`). Each batch's chains start at and around its posterior mode (`_modes`, from the twin's
    values), jittered by its Laplace sd, with its Laplace covariance as the initial mass matrix: a lane started far
    from its mode with a poor mass matrix takes deep trees in warm-up, and every lane waits for the deepest. The model
    is compiled twice: its vmapped gradient (modes, Hessians, starting points) and the sampler."""
    bayes = twin_model.config
    if bayes.pooling != "none" or bayes.noise != "fixed":
        raise CampaignValidationError(Problem(
            "independent_batches", "batches are independent only without pooling and with fixed noise "
                                   f"(BayesConfig(pooling='none', noise='fixed')); got pooling={bayes.pooling!r}, "
                                   f"noise={bayes.noise!r}"))
    start = time.perf_counter()
    forward = twin_model.forward_mode
    n_batch, chains = len(twin_model.batches), config.chains
    init_values = {k: np.asarray(v) for k, v in twin_model.init_values.items()}  # every site has a batch axis
    _, unravel = ravel_pytree({k: jnp.asarray(v[:1]) for k, v in init_values.items()})
    x0 = np.stack([np.asarray(ravel_pytree({k: jnp.asarray(v[b:b + 1]) for k, v in init_values.items()})[0])
                   for b in range(n_batch)])  # (batch, dim)
    dim = x0.shape[1]

    def batch_potential(z, b):
        log_joint, trace = log_density(twin_model.model, (), {"batch": b}, z)
        bounded = [k for k, site in trace.items() if site["type"] == "sample" and not site["is_observed"]
                   and not _is_real(site["fn"].support)]
        if bounded:  # sampled as they are: only real-valued (log-scale) sites need no transform
            raise ValueError(f"independent batches need real-valued sample sites; {bounded} are bounded")
        return -log_joint

    def flat(x, b):
        return batch_potential(unravel(x), b)

    lanes = max(1 + 2 * dim, chains)  # points per batch in each call of the gradient
    lane_batch = jnp.repeat(jnp.arange(n_batch), lanes)
    gradient = jax.jit(jax.vmap(_value_and_grad(flat, forward)))

    def evaluate(points):  # (batch, lanes, dim) -> values (batch, lanes), gradients (batch, lanes, dim)
        values, grads = gradient(jnp.asarray(points.reshape(-1, dim)), lane_batch)
        return np.asarray(values).reshape(n_batch, lanes), np.asarray(grads).reshape(n_batch, lanes, dim)

    mode, hessians, _ = _modes(evaluate, x0, lanes)
    covariances = np.stack([_covariance(h) for h in hessians])  # (batch, dim, dim)
    rng = np.random.default_rng(config.seed)
    sd = np.sqrt(np.diagonal(covariances, axis1=1, axis2=2))
    starts = mode[:, None, :] + config.init_jitter * sd[:, None, :] * rng.standard_normal((n_batch, lanes, dim))
    starts[:, 0] = mode  # the first chain starts at the mode
    values, grads = evaluate(starts)
    starts, values, grads = (a[:, :chains].reshape(n_batch * chains, *a.shape[2:]) for a in (starts, values, grads))
    init_params = ParamInfo(jax.vmap(unravel)(jnp.asarray(starts)), jnp.asarray(values),
                            jax.vmap(unravel)(jnp.asarray(grads)))  # lane = batch · chains + chain
    mass = covariances if config.dense_mass else np.diagonal(covariances, axis1=1, axis2=2)
    mass = jnp.asarray(np.repeat(mass, chains, axis=0))
    lane_batch = jnp.repeat(jnp.arange(n_batch), chains)
    init_kernel, sample_kernel = hmc(potential_fn_gen=lambda batch: partial(batch_potential, b=batch), algo="NUTS")

    def init_lane(params, inverse_mass, b, key):
        return init_kernel(params, config.warmup, inverse_mass_matrix=inverse_mass, dense_mass=config.dense_mass,
                           target_accept_prob=config.target_accept, max_tree_depth=config.max_tree_depth,
                           forward_mode_differentiation=forward, model_kwargs={"batch": b}, rng_key=key)

    def iteration(state, _):
        state = jax.vmap(lambda s, b: sample_kernel(s, model_kwargs={"batch": b}))(state, lane_batch)
        return state, (state.z, {"diverging": state.diverging, "num_steps": state.num_steps, "energy": state.energy,
                                 "accept_prob": state.accept_prob, "potential_energy": state.potential_energy})

    @jax.jit
    def run(params, inverse_mass, keys):
        state = jax.vmap(init_lane)(params, inverse_mass, lane_batch, keys)
        _, (draws, stats) = jax.lax.scan(iteration, state, None, length=config.warmup + config.draws)
        return jax.tree_util.tree_map(lambda a: a[config.warmup:], (draws, stats))  # (draw, lane, ...)

    draws, stats = run(init_params, mass, jax.random.split(jax.random.PRNGKey(config.seed), n_batch * chains))

    def by_chain(value, site: bool):  # (draw, lane, [1: the batch plate of a site], ...) -> (chain, draw, batch, ...)
        value = np.asarray(value)
        return np.moveaxis(value.reshape(config.draws, n_batch, chains, *value.shape[2 + site:]), 2, 0)

    samples = {k: by_chain(v, True) for k, v in draws.items()}
    stats = {k: by_chain(v, False) for k, v in stats.items()}
    samples["solver_failed"] = stats.pop("potential_energy") >= -0.5 * FAILED_SOLVE_LOG_DENSITY
    settings = {**dataclasses.asdict(config), "forward_mode": twin_model.forward_mode}
    return _finish(twin_model, samples, stats, "nuts", settings, time.perf_counter() - start)


def gradient_times(twin: Twin, campaign: Campaign, config: BayesConfig, *, repeats: int = 5,
                   **build_kwargs) -> dict[str, float]:
    """Median wall time (ms) of one gradient of the model's log density in forward and in reverse mode, each after
    its compilation, at the model's starting point: ``{"forward": ms, "reverse": ms}``. Forward mode costs about one
    solve per sampled coordinate, reverse mode a constant multiple of one solve, so which is faster depends on the
    model and the number of sampled quantities (measured in `benchmarks/bench_bayes.py`)."""
    times = {}
    for forward in (True, False):
        x0, fn, _, _ = potential(build_model(twin, campaign, config, forward_mode=forward, **build_kwargs))
        gradient = jax.jit(jax.jacfwd(fn) if forward else jax.grad(fn))
        jax.block_until_ready(gradient(x0))
        runs = []
        for i in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(gradient(x0 + 1e-6 * (i + 1)))
            runs.append(time.perf_counter() - started)
        times["forward" if forward else "reverse"] = 1e3 * float(np.median(runs))
    return times


def sample(twin: Twin, campaign: Campaign, config: BayesConfig | None = None, nuts: NutsConfig | None = None, *,
           method: str = "nuts", standard_errors: Mapping[str, float] | None = None,
           forward_mode: bool | str = "auto", **build_kwargs) -> Posterior:
    """The posterior of `twin` on `campaign` in one call: choose the identifiable subset when
    ``config.parameters`` is None, build the model, run NUTS (or ``method="laplace"``).

    With ``config.held_uncertainty="laplace"`` the twin's kinetic parameters are first moved to the mode of the
    posterior over every parameter the correction can carry (`curvature_at_mode`: a fit stops within its optimiser's
    tolerance of the mode, sometimes where the curvature is not yet positive definite); the subset is chosen from
    the curvature there, NUTS holds the others there and the correction is centred there. The move is recorded in
    ``posterior.meta["held_uncertainty"]["mode"]`` and in `Posterior.report`; the twin passed in is not changed.

    Args:
        standard_errors: a fit's log-scale standard errors, used to choose the identifiable subset.
        forward_mode: ``"auto"`` (the default): time one gradient each way (`gradient_times`, two extra
            compilations) and use the faster; the times and the choice are kept in
            ``posterior.meta["settings"]["gradient_ms"]`` and ``["forward_mode"]``. True or False force forward-mode
            sensitivities or reverse mode. Which is faster depends on the model and how many quantities are sampled
            (measured figures in docs/bayesian.md).
        build_kwargs: passed to `build_model` (``batches``, ``initial_states``).
    """
    config = config or BayesConfig()
    if method not in ("nuts", "laplace"):
        raise CampaignValidationError(Problem("method", f"must be 'nuts' or 'laplace', got {method!r}"))
    if forward_mode not in (True, False, "auto"):
        raise CampaignValidationError(Problem("forward_mode", f"must be true, false or 'auto', got {forward_mode!r}"))
    auto = forward_mode == "auto"
    if auto:
        forward_mode = True  # for the identifiable subset's Hessian (forward over forward: exact)
    curvature = None
    asked = tuple(config.parameters or ())
    carriable = carriable_parameters(twin, config)
    if config.held_uncertainty == "laplace" and (config.parameters is None or set(carriable) - set(asked)):
        # the correction expands about a mode: move the twin there first (the candidates the correction carries,
        # and any parameter asked for), so NUTS's held values, its start and the correction's centre agree
        names = list(dict.fromkeys((*carriable, *asked)))
        curvature = curvature_at_mode(build_model(twin, campaign, curvature_config(config, names),
                                                  forward_mode=forward_mode, **build_kwargs))
        if not _solve_failed(curvature.value):
            twin = twin.with_params(**curvature.values())
    if config.parameters is None:
        if standard_errors is None:  # the curvature the subset is chosen from, reused by the held correction
            if curvature is None:
                curvature = _probe_curvature(twin, campaign, config, _candidates(twin), forward_mode=forward_mode,
                                             **build_kwargs)
            standard_errors = _standard_errors(curvature)
        chosen = select_identifiable(twin, campaign, config, standard_errors=standard_errors)
        chosen = tuple(dict.fromkeys((*chosen, *config.hierarchical)))
        config = dataclasses.replace(config, parameters=chosen)
    times = None
    if auto:
        times = gradient_times(twin, campaign, config, **build_kwargs)
        forward_mode = times["forward"] <= times["reverse"]
    twin_model = build_model(twin, campaign, config, forward_mode=forward_mode, **build_kwargs)
    if method == "laplace":
        nuts = nuts or NutsConfig()
        posterior = laplace(twin_model, draws=nuts.chains * nuts.draws, seed=nuts.seed, curvature=curvature)
    else:
        posterior = sample_nuts(twin_model, nuts, curvature=curvature)
    posterior.meta["settings"]["forward_mode"] = bool(forward_mode)
    if times is not None:
        posterior.meta["settings"]["gradient_ms"] = times
    search = curvature.search() if curvature is not None else None
    if search is not None and "held_uncertainty" in posterior.meta:
        posterior.meta["held_uncertainty"]["mode"] = search
    return posterior
