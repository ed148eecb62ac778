"""Fitting the mechanistic parameters of a twin to a campaign: maximum a-posteriori by L-BFGS, multi-start.

The objective is the negative log-likelihood of every measurement (`cgt_twin.fit.likelihood`, noise estimated per
variable) plus the log-normal priors of the fitted parameters (their specs' σ around the default) — the priors keep
the sloppy directions of kinetic models where the literature puts them. It is minimised by L-BFGS (optax, zoom line
search; measured on the 5-batch synthetic CHO campaign: an optimistix BFGS step cost about 30 objective gradients, an
optax L-BFGS step a few). Parameters are optimised as logarithms; each
batch's initial state of the chosen species can be fitted too (per-batch parameters). One compiled objective serves
every start.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..models.twin import Twin
from ..simulate import SolverSettings, prepare
from .likelihood import negative_log_likelihood
from .observations import ObservationData, align, observable_variables
from .prediction import predict_observed

__all__ = ["FitConfig", "FitResult", "fit_mechanistic"]

@dataclasses.dataclass(frozen=True)
class FitConfig:
    """What to fit and how.

    Attributes:
        variables: measured variables to fit (default: every measured variable the model predicts).
        parameters: kinetic parameters to fit (default: all but numerical ones such as ``eps_switch``; the priors
            hold the ones the data do not inform).
        initial_states: states whose initial value is fitted per batch (log scale; started at the data).
        holdout: batches left out of the fit (for validation).
        n_starts: optimisation starts: the first at the current values, the others drawn from the priors.
        max_steps: L-BFGS iterations per start.
        seed: random seed for the starts.
        solver: solver settings for the simulations inside the fit (a tight ``max_steps`` per segment makes trial
            points with extreme parameters fail fast instead of grinding through a stiff solve).
        prior_weight: multiplies the log-prior (1 = the priors of the specs; 0 = maximum likelihood).
    """

    variables: tuple[str, ...] | None = None
    parameters: tuple[str, ...] | None = None
    initial_states: tuple[str, ...] = ("vcd",)
    holdout: tuple[str, ...] = ()
    n_starts: int = 1
    max_steps: int = 500
    seed: int = 0
    solver: SolverSettings = SolverSettings(max_steps=512)
    prior_weight: float = 1.0


@dataclasses.dataclass
class FitResult:
    """A fitted twin and how well it fits.

    Attributes:
        twin: the twin with fitted parameter values.
        initial_states: batch -> fitted initial values (canonical units) of `FitConfig.initial_states`.
        noise: variable -> (σ_abs, σ_rel) estimated.
        objective: final value of the objective (NLL + prior penalty) of the best start.
        starts: the final objective of every start.
        metrics: per batch and variable: normalised RMSE (RMSE / data range) and the number of values.
        standard_errors: fitted parameter -> standard error of its logarithm (Laplace approximation).
        correlations: correlation matrix of the fitted log-parameters (order of `standard_errors`).
        not_identifiable: parameters whose log standard error exceeds 1 (an e-fold) — the data do not pin them.
        batches: the batches the fit used.
        seconds: wall time.
        status: "ok" or why the optimiser stopped.
    """

    twin: Twin
    initial_states: dict[str, dict[str, float]]
    noise: dict[str, tuple[float, float]]
    objective: float
    starts: list[float]
    metrics: dict[str, dict[str, tuple[float, int]]]
    standard_errors: dict[str, float]
    correlations: np.ndarray
    not_identifiable: tuple[str, ...]
    batches: tuple[str, ...]
    seconds: float
    status: str

    def __repr__(self) -> str:
        return (f"FitResult({type(self.twin.kinetics).__name__}, {len(self.batches)} batches, objective "
                f"{self.objective:.4g}, status {self.status!r}, not identifiable: {list(self.not_identifiable)})")


def _check(twin: Twin, campaign: Campaign, config: FitConfig) -> tuple[list[str], list[str], list[str]]:
    """Every input problem, raised before anything is compiled."""
    problems: list[Problem] = []
    kinetics = twin.kinetics
    meta = campaign.batch_metadata()
    wrong = [b for b in campaign.batches if meta.loc[b, "cell_type"] != kinetics.cell_type]
    if wrong:
        problems.append(Problem("campaign", f"batches {wrong} are not {kinetics.cell_type} cultures; the model is "
                                            f"{type(kinetics).__name__}"))
    unknown_holdout = [b for b in config.holdout if b not in campaign.batches]
    if unknown_holdout:
        problems.append(Problem("holdout", f"unknown batches {unknown_holdout}"))
    batches = [b for b in campaign.batches if b not in config.holdout and campaign.protocols[b].feeds_known]
    if not batches:
        problems.append(Problem("campaign", "no batches left to fit after the holdout and the batches whose feeds "
                                            "are not recorded"))
    predicted = observable_variables(kinetics, twin.params)
    def measured(v: str) -> bool:
        return v in campaign.variables and bool(batches) and \
            bool(np.isfinite(campaign.data[v].sel(batch=batches).values).any())

    variables = list(config.variables) if config.variables is not None else \
        [v for v in campaign.variables if v in predicted and measured(v)]
    for v in variables:
        if v not in predicted:
            problems.append(Problem("variables", f"the model cannot predict {v!r}; it predicts "
                                                 f"{', '.join(predicted)}", column=v))
        elif not measured(v):
            problems.append(Problem("variables", f"{v!r} has no measured values in the batches to fit", column=v))
    if not variables:
        problems.append(Problem("variables", "nothing to fit: no measured variable is predicted by the model"))
    names = [p.name for p in kinetics.parameters]
    parameters = list(config.parameters) if config.parameters is not None else \
        [n for n in names if n != "eps_switch"]
    for p in parameters:
        if p not in names:
            problems.append(Problem("parameters", f"unknown parameter {p!r} of {type(kinetics).__name__}"))
    for s in config.initial_states:
        if s not in kinetics.layout.names:
            problems.append(Problem("initial_states", f"unknown state {s!r}"))
    if problems:
        raise CampaignValidationError(problems, header="cannot fit")
    return batches, variables, parameters


def fit_mechanistic(twin: Twin, campaign: Campaign, config: FitConfig | None = None) -> FitResult:
    """Fits the chosen parameters (and per-batch initial states) of `twin` to `campaign`.

    Raises:
        CampaignValidationError: before any compilation, for variables the model cannot predict, variables with no
            data, no batches left, a campaign of another cell type, unknown parameters or states.
    """
    config = config or FitConfig()
    start_time = time.perf_counter()
    batches, variables, parameters = _check(twin, campaign, config)
    kinetics = twin.kinetics
    specs = {p.name: p for p in kinetics.parameters}
    prepared = prepare(twin, campaign, batches=batches)
    skipped = [b for b in batches if b not in prepared.names]
    batches = list(prepared.names)
    if not batches:
        raise CampaignValidationError(Problem("campaign", f"no batch can be simulated: {prepared.skipped}"))
    data = align(campaign, prepared, variables)
    layout = kinetics.layout
    state_index = np.asarray([layout.index(s) for s in config.initial_states], dtype=np.int64)
    y0 = np.asarray(prepared.encoded.y0)
    start_states = np.log(np.maximum(y0[:, state_index], 1e-12)) if state_index.size else np.zeros((len(batches), 0))

    base = {k: jnp.asarray(v) for k, v in twin.params.items()}
    prior_mean = jnp.asarray([math.log(specs[p].default) for p in parameters])
    prior_sd = jnp.asarray([specs[p].prior_sigma for p in parameters])
    lower = jnp.asarray([math.log(max(specs[p].lower, 1e-300)) for p in parameters])
    upper = jnp.asarray([math.log(specs[p].upper) if math.isfinite(specs[p].upper) else 700.0 for p in parameters])
    floors = jnp.asarray(1e-3 * data.scales)
    settings = config.solver

    def unpack(theta):
        log_params = theta["params"]
        values = dict(base)
        for i, name in enumerate(parameters):
            values[name] = jnp.exp(jnp.clip(log_params[i], lower[i], upper[i]))
        return values

    def predict(theta, settings=settings):
        values = unpack(theta)
        encoded = prepared.encoded
        if state_index.size:
            new_y0 = encoded.y0.at[:, state_index].set(jnp.exp(theta["initial"]))
            encoded = encoded._replace(y0=new_y0)
        prediction, status = predict_observed(kinetics, values, encoded, settings, variables)
        return prediction, status

    def objective(theta, _args=None, settings=settings):
        prediction, status = predict(theta, settings)
        sigma_abs = floors[:, None, None, None, None] + jnp.exp(theta["log_sigma_abs"])[:, None, None, None, None]
        sigma_rel = jnp.exp(theta["log_sigma_rel"])[:, None, None, None, None]
        nll = negative_log_likelihood(prediction[..., None], data.values, data.mask, data.censored, sigma_abs,
                                      sigma_rel)
        prior = 0.5 * jnp.sum(((theta["params"] - prior_mean) / prior_sd) ** 2)
        value = nll + config.prior_weight * prior
        return jnp.where(jnp.all(status == 0) & jnp.isfinite(value), value, 1e20)

    def initial_theta(log_params):
        return {"params": jnp.asarray(log_params),
                "initial": jnp.asarray(start_states),
                "log_sigma_abs": jnp.log(jnp.asarray(0.05 * data.scales)),
                "log_sigma_rel": jnp.full(len(variables), math.log(0.05))}

    objective_jit = jax.jit(objective)
    optimiser = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    @jax.jit
    def lbfgs_step(theta, state):
        value, grad = value_and_grad(theta, state=state)
        updates, state = optimiser.update(grad, state, theta, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(theta, updates), state, value, optax.tree_utils.tree_norm(grad)

    def run(theta):
        """L-BFGS with a zoom line search until the objective stops improving (relative change < 1e-6 over 10
        steps) or the gradient vanishes; returns (theta, value, status, steps)."""
        # strong types throughout, as the step returns them: otherwise the second step compiles again
        theta, state = _strong((theta, optimiser.init(theta)))
        values: list[float] = []
        for index in range(config.max_steps):
            theta, state, value, grad_norm = lbfgs_step(theta, state)
            values.append(float(value))
            if not math.isfinite(values[-1]) or values[-1] >= 1e19:
                return theta, values[-1], "non-finite objective (a simulation failed)", index + 1
            if float(grad_norm) < 1e-6 or (len(values) > 10 and
                                           abs(values[-11] - values[-1]) <= 1e-6 * max(1.0, abs(values[-1]))):
                return theta, float(objective_jit(theta)), "ok", index + 1
        return theta, float(objective_jit(theta)), "maximum steps reached", config.max_steps

    rng = np.random.default_rng(config.seed)
    current = np.asarray([math.log(float(base[p])) for p in parameters])
    starts = [current] + [np.clip(np.asarray(prior_mean) + np.asarray(prior_sd) * rng.normal(size=len(parameters)),
                                  np.asarray(lower), np.asarray(upper)) for _ in range(config.n_starts - 1)]
    results = []
    for log_params in starts:
        theta, value, status, steps = run(initial_theta(log_params))
        results.append((float(value), theta, status, int(steps)))
    best_value, best_theta, status, steps = min(results, key=lambda r: r[0])

    fitted = unpack(best_theta)
    initial = {b: {s: float(np.exp(best_theta["initial"][i, j])) for j, s in enumerate(config.initial_states)}
               for i, b in enumerate(batches)}
    noise = {v: (float(floors[i] + np.exp(best_theta["log_sigma_abs"][i])), float(np.exp(best_theta["log_sigma_rel"][i])))
             for i, v in enumerate(variables)}
    result_twin = Twin(kinetics, {k: float(v) for k, v in fitted.items()}, {**twin.noise, **noise})
    prediction, _ = jax.jit(predict)(best_theta)
    metrics = _metrics(np.asarray(prediction), data, batches)
    forward = dataclasses.replace(settings, adjoint="forward")  # forward-over-forward Hessian
    standard_errors, correlations, weak = _laplace(lambda t: objective(t, settings=forward), best_theta, parameters)
    if skipped:
        status += f"; not simulated: {skipped}"
    return FitResult(result_twin, initial, noise, best_value, [r[0] for r in results], metrics, standard_errors,
                     correlations, weak, tuple(batches), time.perf_counter() - start_time, status)


def _strong(tree):
    """The same pytree with every leaf a strongly typed array (JAX compiles again when weak types turn strong)."""
    return jax.tree.map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), tree)


def _metrics(prediction: np.ndarray, data: ObservationData, batches: Sequence[str]) -> dict:
    """Normalised RMSE per batch and variable (uncensored values; RMSE divided by the data's range)."""
    out: dict[str, dict[str, tuple[float, int]]] = {}
    values, mask, censored = np.asarray(data.values), np.asarray(data.mask), np.asarray(data.censored)
    for b, batch in enumerate(batches):
        out[batch] = {}
        for i, variable in enumerate(data.variables):
            ok = mask[i, b] & (censored[i, b] == 0)
            if not ok.any():
                continue
            predicted = np.broadcast_to(prediction[i, b][..., None], ok.shape)[ok]
            measured = values[i, b][ok]
            span = max(np.ptp(values[i][mask[i]]), 1e-12)
            out[batch][variable] = (float(np.sqrt(np.mean((predicted - measured) ** 2)) / span), int(ok.sum()))
    return out


def _laplace(objective, theta, parameters: Sequence[str]) -> tuple[dict[str, float], np.ndarray, tuple[str, ...]]:
    """Standard errors and correlations of the fitted log-parameters from the Hessian of the objective (all other
    unknowns held at their optimum)."""
    log_params = theta["params"]

    def f(p):
        return objective({**theta, "params": p})

    hessian = np.asarray(jax.jit(jax.jacfwd(jax.jacfwd(f)))(log_params))
    hessian = 0.5 * (hessian + hessian.T)
    try:
        covariance = np.linalg.pinv(hessian, hermitian=True)
    except np.linalg.LinAlgError:
        covariance = np.full_like(hessian, np.nan)
    variances = np.clip(np.diag(covariance), 0.0, None)
    se = np.sqrt(variances)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlations = covariance / np.outer(se, se)
    standard_errors = {p: float(s) for p, s in zip(parameters, se, strict=True)}
    weak = tuple(p for p, s in standard_errors.items() if not (s <= 1.0))
    return standard_errors, correlations, weak
