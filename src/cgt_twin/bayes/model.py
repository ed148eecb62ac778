"""A `numpyro` model built from any twin: priors from the parameter specs, the fit's likelihood, batches as a plate.

What is sampled (all on the natural-log scale of the parameter, in the spec's unit):

- ``log_<name>`` for every sampled kinetic parameter: Normal(log prior median, prior σ) — the spec's log-normal prior
  (`cgt_twin.models.parameters.Parameter`), overridable with `Prior`; the value is kept within the spec's bounds.
- hierarchical parameters (non-centred): per batch ``log θ_b = log θ + τ_group·z_group[g(b)] + τ_batch·z_batch[b]``
  with ``z ~ N(0, 1)`` and ``τ ~ HalfNormal(tau_sigma)`` (a between-batch spread on the log scale: τ = 0.1 is about
  10 % variation). The group term is present when a grouping covariate (donor, clone, cell line) is given; with
  `BayesConfig.group_tau` its spread τ_group is fixed (a deterministic site) instead of sampled.
- ``noise_scale`` (optional, one per observed variable): the twin's σ_abs and σ_rel multiplied by exp(noise_scale),
  noise_scale ~ N(0, noise_sigma) — the shape of the error model stays the fitted one, its size is uncertain.
- per-batch log initial states (optional), Normal(log of the held value, initial_sigma).

Everything else (other kinetic parameters, the neural residual's weights, the other initial states) is held at the
twin's values, and the `TwinModel` says which. The likelihood is `cgt_twin.fit.likelihood.negative_log_likelihood`
(combined error model, values below/above a limit as censored, missing values masked), added with ``numpyro.factor``;
a failed solve gives a log-density of −1e20 (the proposal is rejected), never a silent number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..fit.likelihood import negative_log_likelihood
from ..fit.observations import ObservationData, align, observable_variables
from ..models.twin import Twin
from ..simulate import EncodedBatch, SolverSettings, _observe, _solve_batches, prepare
from .held import HELD_UNCERTAINTY

__all__ = ["Prior", "BayesConfig", "TwinModel", "build_model", "carriable_parameters", "NUMERICAL_PARAMETERS"]

NUMERICAL_PARAMETERS = ("eps_switch",)
"""Parameters of the numerics, not the biology: never sampled."""
FAILED_SOLVE_LOG_DENSITY = -1e20
"""Log-likelihood of a draw whose solve failed (the proposal is rejected)."""


@dataclasses.dataclass(frozen=True)
class Prior:
    """A log-normal prior of a positive parameter, overriding its spec's.

    Attributes:
        median: prior median, in the parameter's unit (> 0).
        sigma: standard deviation of the natural logarithm (> 0, finite).
        lower, upper: support, in the parameter's unit (default: the spec's bounds).
    """

    median: float
    sigma: float
    lower: float | None = None
    upper: float | None = None


@dataclasses.dataclass(frozen=True)
class BayesConfig:
    """What the Bayesian model samples and how it is built.

    Attributes:
        parameters: kinetic parameters to sample (None: the identifiable subset, `select_identifiable`; the others
            are held at the twin's values).
        hierarchical: sampled parameters that vary between batches (non-centred random effects on the log scale).
        group: batch covariate (``cell_line``, ``clone``, ``donor``, …) grouping batches; adds a group-level effect
            to every hierarchical parameter.
        variables: observed variables in the likelihood (default: every measured variable with a noise level in the
            twin, or every predicted one that is measured when the twin has no noise model).
        priors: parameter -> `Prior` overriding the spec's.
        tau_sigma: scale of the half-normal prior of each between-batch / between-group spread (log scale).
        group_tau: the between-group spread (log scale) fixed at this value instead of sampled; None samples it.
            With two or three groups the data cannot tell their spread from the population value (measured on the
            UMN runs, two cell lines: τ_group's chains disagreed, split R-hat 1.42, with 78 divergences in its
            funnel); fixing it at what earlier campaigns or process knowledge say (0.2 ≈ 20 % between cell lines)
            removes the funnel, and a batch of an unseen group still draws a group effect of that size.
        noise: ``"scale"`` (sample one log multiplier of the noise per variable) or ``"fixed"``.
        noise_sigma: prior sd of the log noise multiplier.
        noise_floor: lower bound of each variable's σ_abs, as a fraction of the variable's typical magnitude (the
            95th percentile of its measured values); 0 keeps the twin's noise model as it is. A fit's estimate of a
            combined error model drives σ_abs to the fit's own floor (0.1 % of that magnitude) when the relative term
            dominates; a prediction that then falls towards zero (a depleted metabolite, a crashed culture) costs
            ((y − ŷ)/σ_abs)²: a cliff in the posterior, where NUTS's step size collapses and the solver runs towards
            its step limit. Measured on the UMN posterior: 0.3 Laplace sd from the mode, predicted lactate fell to
            zero against 11.9 mM measured with σ_abs = 0.019 mM, raising the potential by 2e5. The floor is kept in
            the posterior's noise model (``meta["base_noise"]``), so its predictive bands use it too.
        initial_states: states whose per-batch initial value is sampled (log scale).
        initial_sigma: prior sd of a sampled log initial state around its held value.
        max_parameters: cap on the identifiable subset chosen when `parameters` is None.
        shrinkage: a parameter counts as identifiable when the data shrink its prior sd below this fraction.
        solver: solver settings inside the model (``adjoint`` is set by the differentiation mode).
        pooling: ``"partial"`` (one population value per parameter, hierarchical effects as configured) or
            ``"none"`` (every batch has its own independent values of the sampled parameters, each with the spec's
            prior: independent batches in one vectorised model, e.g. replicated datasets for calibration checks).
        held_uncertainty: what the posterior says about the kinetic parameters held at the twin's values (every
            positive, non-numerical parameter that is not sampled). ``"none"``: nothing — they are held, and the
            sampled parameters' intervals are those of the posterior *given* them (too narrow when the held values
            are a fit's: measured in benchmarks/bench_bayes.py, 9 of 30 true values inside their 95 % intervals).
            ``"laplace"``: their uncertainty is carried into the draws by the linear-Gaussian (Laplace) correction
            (`cgt_twin.bayes.held`): the Laplace covariance Σ of the log of every candidate parameter at the twin's
            values (prior curvature included) gives each draw held log values log θ̂_h + δ_h, δ_h ~ N(0, Σ_hh), and
            shifts its sampled population log values by Σ_sh Σ_hh⁻¹ δ_h — exact for a Gaussian joint posterior,
            keeping the non-Gaussian shape NUTS found. Not for unpooled models (``pooling="none"``).
    """

    parameters: tuple[str, ...] | None = None
    hierarchical: tuple[str, ...] = ()
    group: str | None = None
    variables: tuple[str, ...] | None = None
    priors: Mapping[str, Prior] = dataclasses.field(default_factory=dict)
    tau_sigma: float = 0.3
    group_tau: float | None = None
    noise: str = "scale"
    noise_sigma: float = 0.5
    noise_floor: float = 0.0
    initial_states: tuple[str, ...] = ()
    initial_sigma: float = 0.3
    max_parameters: int = 6
    shrinkage: float = 0.5
    solver: SolverSettings = SolverSettings(max_steps=1024)
    pooling: str = "partial"
    held_uncertainty: str = "none"


@dataclasses.dataclass(frozen=True)
class TwinModel:
    """A numpyro model of a twin on a campaign, with what is needed to start, read and predict from it.

    Attributes:
        model: the numpyro model (no arguments; call it under handlers or pass it to NUTS); ``model(batch=i)`` is
            batch i alone, for the independent batches of an unpooled model with fixed noise.
        twin: the twin (held values come from it).
        config: the configuration it was built with.
        parameters: sampled kinetic parameters, in order.
        held: kinetic parameters held at the twin's values -> value.
        batches: batches in the plate, in order.
        groups: group level of each batch (empty without a grouping covariate).
        group_levels: the distinct group levels, in order.
        variables: observed variables in the likelihood.
        base_noise: variable -> (σ_abs, σ_rel) the noise scale multiplies.
        prior_loc, prior_scale, lower, upper: log-scale prior and support of the sampled parameters.
        init_values: a starting point for every sample site (the twin's values, zero effects).
        initial_values: held initial state (canonical unit) of each batch: (batch, state).
        forward_mode: whether the model's solver is set up for forward-mode differentiation.
        joint: with ``config.held_uncertainty == "laplace"`` and some parameter held, the model over every candidate
            kinetic parameter (the sampled and the carried held ones; noise fixed, no effects, no initial states) at
            the twin's values, whose curvature gives the held parameters' Laplace correction; else None.
    """

    model: object
    twin: Twin
    config: BayesConfig
    parameters: tuple[str, ...]
    held: dict[str, float]
    batches: tuple[str, ...]
    groups: tuple[str, ...]
    group_levels: tuple[str, ...]
    variables: tuple[str, ...]
    base_noise: dict[str, tuple[float, float]]
    prior_loc: np.ndarray
    prior_scale: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    init_values: dict[str, np.ndarray]
    initial_values: np.ndarray
    forward_mode: bool
    observations: ObservationData = dataclasses.field(repr=False)
    encoded: EncodedBatch = dataclasses.field(repr=False)
    joint: TwinModel | None = dataclasses.field(default=None, repr=False)

    @property
    def carried(self) -> tuple[str, ...]:
        """Held parameters whose uncertainty the Laplace correction carries into the posterior (see `joint`)."""
        if self.joint is None:
            return ()
        return tuple(p for p in self.joint.parameters if p not in self.parameters)

    @property
    def n_dims(self) -> int:
        """Number of unconstrained dimensions sampled."""
        return int(sum(np.size(v) for v in self.init_values.values()))

    def describe(self) -> str:
        """One paragraph saying what is sampled and what is held fixed."""
        parts = [f"sampled: {', '.join(self.parameters) or 'no kinetic parameter'}"]
        if self.config.hierarchical:
            parts.append(f"between-batch effects on {', '.join(self.config.hierarchical)}"
                         + (f" with groups by {self.config.group} ({len(self.group_levels)} levels)"
                            if self.config.group else "")
                         + (f", the between-group spread fixed at {self.config.group_tau:g} (log scale)"
                            if self.config.group and self.config.group_tau is not None else ""))
        if self.config.noise == "scale":
            parts.append(f"noise scale of {', '.join(self.variables)}")
        if self.config.initial_states:
            parts.append(f"initial {', '.join(self.config.initial_states)} per batch")
        fixed = [p for p in self.held if p not in self.carried]
        residual = "; neural residual held at its fitted weights" if hasattr(self.twin.kinetics, "residual") else ""
        carried = (f"; held at the twin's values while sampling, their uncertainty then carried into the draws by the "
                   f"Laplace (linear-Gaussian) correction: {', '.join(self.carried)}" if self.carried else "")
        return "; ".join(parts) + f"{carried}; held at the twin's values: {', '.join(fixed) or 'none'}{residual}"


def _prior_of(spec, override: Prior | None) -> tuple[float, float, float, float]:
    """(log median, log sd, lower, upper) of a parameter's prior."""
    if override is None:
        return math.log(spec.default), float(spec.prior_sigma), spec.lower, spec.upper
    lower = spec.lower if override.lower is None else override.lower
    upper = spec.upper if override.upper is None else override.upper
    median = override.median
    return (math.log(median) if median > 0 else math.nan), float(override.sigma), lower, upper


def _inside_support(spec, override: Prior | None, value: float) -> bool:
    """Whether a value (spec unit) lies strictly inside the parameter's prior support (a fit pinned at a bound is
    held there, not carried)."""
    _, _, lower, upper = _prior_of(spec, override)
    return math.isfinite(value) and value > 0 and lower < value < upper


def _check(twin: Twin, campaign: Campaign, config: BayesConfig, parameters: Sequence[str],
           batches: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every input problem, raised before anything is compiled. Returns (variables, group of each batch)."""
    problems: list[Problem] = []
    specs = {p.name: p for p in twin.kinetics.parameters}
    for name in parameters:
        if name not in specs:
            problems.append(Problem("parameters", f"unknown parameter {name!r} of {type(twin.kinetics).__name__}"))
        elif not specs[name].positive:
            problems.append(Problem("parameters", f"{name} is not a positive parameter; only log-normal priors of "
                                                  "positive parameters are supported"))
    for name in config.priors:
        if name not in specs:
            problems.append(Problem("priors", f"prior given for unknown parameter {name!r}"))
    for name in config.hierarchical:
        if name not in parameters:
            problems.append(Problem("hierarchical", f"{name!r} varies between batches but is not sampled; add it to "
                                                    "the sampled parameters"))
    for name in parameters:
        if name not in specs:
            continue
        override = config.priors.get(name)
        if override is not None and not (isinstance(override.median, int | float) and override.median > 0
                                         and math.isfinite(override.median)):
            problems.append(Problem("priors", f"{name}: prior median must be a finite number > 0, got "
                                              f"{override.median!r}", column=name))
            continue
        loc, sd, lower, upper = _prior_of(specs[name], override)
        if not (math.isfinite(sd) and sd > 0):
            problems.append(Problem("priors", f"{name}: improper prior, log sd must be finite and > 0, got {sd!r}",
                                    column=name))
        if not (lower < upper) or lower < 0:
            problems.append(Problem("priors", f"{name}: inconsistent support [{lower:g}, {upper:g}]", column=name))
        elif not (lower <= math.exp(loc) <= upper):
            problems.append(Problem("priors", f"{name}: prior median {math.exp(loc):g} {specs[name].unit} outside its "
                                              f"support [{lower:g}, {upper:g}]", column=name))
        value = float(np.asarray(twin.params[name]))
        if not (math.isfinite(value) and lower < value < upper) or value <= 0:
            problems.append(Problem("twin", f"{name} = {value:g} {specs[name].unit} lies outside the prior support "
                                            f"({lower:g}, {upper:g}); sampling cannot start there", column=name))
    for label, value in (("tau_sigma", config.tau_sigma), ("noise_sigma", config.noise_sigma),
                         ("initial_sigma", config.initial_sigma)):
        if not (math.isfinite(value) and value > 0):
            problems.append(Problem(label, f"{label}: improper prior, must be finite and > 0, got {value!r}"))
    if config.group_tau is not None:
        if not (isinstance(config.group_tau, int | float) and math.isfinite(config.group_tau)
                and config.group_tau > 0):
            problems.append(Problem("group_tau", f"the fixed between-group spread must be finite and > 0, got "
                                                 f"{config.group_tau!r}"))
        if config.group is None:
            problems.append(Problem("group_tau", "a fixed between-group spread needs a grouping covariate (group)"))
    if not (isinstance(config.noise_floor, (int, float)) and math.isfinite(config.noise_floor)
            and 0 <= config.noise_floor < 1):
        problems.append(Problem("noise_floor", f"must be a fraction in [0, 1), got {config.noise_floor!r}"))
    if config.pooling not in ("partial", "none"):
        problems.append(Problem("pooling", f"must be 'partial' or 'none', got {config.pooling!r}"))
    if config.pooling == "none" and config.hierarchical:
        problems.append(Problem("pooling", "unpooled batches have no hierarchical effects"))
    if config.held_uncertainty not in HELD_UNCERTAINTY:
        problems.append(Problem("held_uncertainty", f"must be one of {', '.join(map(repr, HELD_UNCERTAINTY))}, got "
                                                    f"{config.held_uncertainty!r}"))
    elif config.held_uncertainty == "laplace" and config.pooling == "none":
        problems.append(Problem("held_uncertainty", "the Laplace correction shifts population values; unpooled "
                                                    "batches (pooling='none') have none: use held_uncertainty='none'"))
    if config.noise not in ("scale", "fixed"):
        problems.append(Problem("noise", f"must be 'scale' or 'fixed', got {config.noise!r}"))
    for state in config.initial_states:
        if state not in twin.kinetics.layout.names:
            problems.append(Problem("initial_states", f"unknown state {state!r}"))
    meta = campaign.batch_metadata()
    groups: list[str] = []
    if config.group is not None:
        if config.group not in meta.columns:
            problems.append(Problem("group", f"unknown batch covariate {config.group!r}; the campaign has "
                                             f"{', '.join(map(str, meta.columns))}"))
        else:
            column = meta.loc[list(batches), config.group]
            missing = [b for b, v in column.items() if v is None or (isinstance(v, float) and math.isnan(v))
                       or str(v).strip() == ""]
            if missing:
                problems.append(Problem("group", f"covariate {config.group!r} is missing for batches {missing}"))
            groups = [str(v) for v in column.values]
        if not config.hierarchical:
            problems.append(Problem("group", "a grouping covariate needs at least one hierarchical parameter"))
    predicted = observable_variables(twin.kinetics, twin.params)

    def measured(v: str) -> bool:
        return v in campaign.variables and bool(np.isfinite(campaign.data[v].sel(batch=list(batches)).values).any())

    if config.variables is not None:
        variables = list(config.variables)
        for v in variables:
            if v not in predicted:
                problems.append(Problem("variables", f"the model cannot predict {v!r}", column=v))
            elif not measured(v):
                problems.append(Problem("variables", f"{v!r} has no measured values in these batches", column=v))
    else:
        noisy = [v for v in predicted if v in twin.noise and measured(v)]
        variables = noisy or [v for v in predicted if measured(v)]
    if not variables:
        problems.append(Problem("variables", "no measured variable is predicted by the model"))
    if problems:
        raise CampaignValidationError(problems, header="cannot build the Bayesian model")
    return variables, groups


def build_model(twin: Twin, campaign: Campaign, config: BayesConfig | None = None, *,
                batches: Sequence[str] | None = None,
                initial_states: Mapping[str, Mapping[str, float]] | None = None,
                forward_mode: bool = True) -> TwinModel:
    """Builds the numpyro model of `twin` on `campaign` (see the module docstring for what is sampled).

    Args:
        twin: the (fitted) twin: held values, starting point and the noise model.
        campaign: the measurements.
        config: what to sample (default `BayesConfig()`; `parameters` None samples every non-numerical kinetic
            parameter here — use `select_identifiable` to choose the identifiable subset first).
        batches: the batches in the likelihood (default: every batch with recorded feeds).
        initial_states: batch -> state -> value (canonical units) held fixed, e.g. a fit's `initial_states`
            (default: from the data).
        forward_mode: set the solver up for forward-mode differentiation (numpyro
            ``forward_mode_differentiation=True``); False for reverse mode.

    Raises:
        CampaignValidationError: before anything is compiled, for improper or inconsistent priors, unknown names, a
            grouping covariate missing for some batches, or twin values outside the prior support.
    """
    config = config or BayesConfig()
    kinetics = twin.kinetics
    specs = {p.name: p for p in kinetics.parameters}
    parameters = list(config.parameters) if config.parameters is not None else \
        [p.name for p in kinetics.parameters if p.name not in NUMERICAL_PARAMETERS]
    if batches is None:
        batches = [b for b in campaign.batches if campaign.protocols[b].feeds_known]
    unknown = [b for b in batches if b not in campaign.batches]
    if unknown:
        raise CampaignValidationError(Problem("batches", f"unknown batches {unknown}"))
    if not batches:
        raise CampaignValidationError(Problem("campaign", "no batch with recorded feeds to sample on"))
    variables, groups = _check(twin, campaign, config, parameters, batches)
    prepared = prepare(twin, campaign, batches=list(batches), initial_states=initial_states)
    if prepared.skipped:
        raise CampaignValidationError([Problem("campaign", f"batch {b} cannot be simulated: {why}")
                                       for b, why in prepared.skipped.items()])
    batches = list(prepared.names)
    if groups:
        meta = campaign.batch_metadata()
        groups = [str(meta.loc[b, config.group]) for b in batches]
    data = align(campaign, prepared, variables)
    settings = dataclasses.replace(config.solver, adjoint="forward" if forward_mode else "recursive")

    priors = [_prior_of(specs[p], config.priors.get(p)) for p in parameters]
    prior_loc = np.asarray([p[0] for p in priors])
    prior_scale = np.asarray([p[1] for p in priors])
    lower = np.log(np.maximum([p[2] for p in priors], 1e-300)) if priors else np.zeros(0)
    upper = np.asarray([math.log(p[3]) if math.isfinite(p[3]) else 700.0 for p in priors])
    held = {k: float(np.asarray(v)) for k, v in twin.params.items() if k not in parameters}
    base_noise = {}
    for i, v in enumerate(variables):
        sigma_abs, sigma_rel = twin.noise.get(v, (0.05 * float(data.scales[i]), 0.05))
        base_noise[v] = (max(float(sigma_abs), config.noise_floor * float(data.scales[i])), float(sigma_rel))
    sigma_abs0 = jnp.asarray([max(base_noise[v][0], 1e-6 * float(data.scales[i])) for i, v in enumerate(variables)])
    sigma_rel0 = jnp.asarray([base_noise[v][1] for v in variables])
    group_levels = tuple(dict.fromkeys(groups))
    group_index = jnp.asarray([group_levels.index(g) for g in groups], dtype=jnp.int32) if groups else None
    state_index = np.asarray([kinetics.layout.index(s) for s in config.initial_states], dtype=np.int64)
    y0 = np.asarray(prepared.encoded.y0)
    log_y0 = jnp.asarray(np.log(np.maximum(y0[:, state_index], 1e-12)))
    base = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in twin.params.items()}
    encoded = prepared.encoded
    n_batch = len(batches)
    loc_j, scale_j = jnp.asarray(prior_loc), jnp.asarray(prior_scale)
    lower_j, upper_j = jnp.asarray(lower), jnp.asarray(upper)

    shared_fields = [bool(np.all(np.asarray(a) == np.asarray(a)[:1])) for a in encoded]

    def model(batch=None):
        """The model of every batch, or with `batch` (an index, may be traced) of that batch alone: sites of batch
        size 1 and its data only. Batches of an unpooled model with fixed noise are independent, so the posterior of
        the whole model is the product of these (see `NutsConfig.independent_batches`)."""
        n, enc, y0_log = n_batch, encoded, log_y0
        values, mask, censored = data.values, data.mask, data.censored
        if batch is not None:
            if config.pooling != "none" or config.noise != "fixed":
                raise ValueError("a batch alone is a model of its own only when batches are independent "
                                 "(pooling='none', noise='fixed')")

            def one(a, axis=0):
                return jax.lax.dynamic_slice_in_dim(jnp.asarray(a), batch, 1, axis=axis)

            n, y0_log = 1, one(log_y0)
            # a protocol table every batch shares is taken as it is: vmapped over batches it stays unbatched, and
            # the solver's segment branches stay branches (a table gathered per batch makes every branch a select)
            enc = type(encoded)(*(jnp.asarray(np.asarray(a)[:1]) if shared else one(a)
                                  for a, shared in zip(encoded, shared_fields, strict=True)))
            values, mask, censored = (one(a, axis=1) for a in (values, mask, censored))
        log_values = {}
        if config.pooling == "none":
            with numpyro.plate("batch", n):
                for i, name in enumerate(parameters):
                    log_values[name] = numpyro.sample(f"log_{name}", dist.Normal(loc_j[i], scale_j[i]))
        else:
            for i, name in enumerate(parameters):
                log_values[name] = numpyro.sample(f"log_{name}", dist.Normal(loc_j[i], scale_j[i]))
        per_batch = {k: jnp.broadcast_to(v, (n,)) for k, v in base.items()}
        effects = {name: jnp.zeros(n) for name in config.hierarchical}
        if config.hierarchical:
            n_h = len(config.hierarchical)
            tau = numpyro.sample("tau_batch", dist.HalfNormal(config.tau_sigma * jnp.ones(n_h)).to_event(1))
            with numpyro.plate("batch", n):
                z = numpyro.sample("z_batch", dist.Normal(jnp.zeros(n_h), 1.0).to_event(1))
            total = tau * z
            if group_index is not None:
                if config.group_tau is None:
                    tau_g = numpyro.sample("tau_group", dist.HalfNormal(config.tau_sigma * jnp.ones(n_h)).to_event(1))
                else:
                    tau_g = numpyro.deterministic("tau_group", jnp.full(n_h, float(config.group_tau)))
                with numpyro.plate("group", len(group_levels)):
                    z_g = numpyro.sample("z_group", dist.Normal(jnp.zeros(n_h), 1.0).to_event(1))
                total = total + (tau_g * z_g)[group_index]
            effects = {name: total[:, j] for j, name in enumerate(config.hierarchical)}
        for i, name in enumerate(parameters):
            value = log_values[name] + effects.get(name, 0.0)
            per_batch[name] = jnp.broadcast_to(jnp.exp(jnp.clip(value, lower_j[i], upper_j[i])), (n,))
        if state_index.size:
            with numpyro.plate("batch", n):
                log_init = numpyro.sample("log_initial", dist.Normal(y0_log, config.initial_sigma).to_event(1))
            enc = enc._replace(y0=enc.y0.at[:, state_index].set(jnp.exp(log_init)))
        if config.noise == "scale":
            scale = jnp.exp(numpyro.sample("noise_scale", dist.Normal(jnp.zeros(len(variables)),
                                                                      config.noise_sigma).to_event(1)))
        else:
            scale = jnp.ones(len(variables))
        prediction, status = _predict(kinetics, settings, per_batch, enc, variables)
        sigma_abs = (sigma_abs0 * scale)[:, None, None, None, None]
        sigma_rel = (sigma_rel0 * scale)[:, None, None, None, None]
        nll = negative_log_likelihood(prediction[..., None], values, mask, censored, sigma_abs, sigma_rel)
        ok = jnp.all(status == 0) & jnp.isfinite(nll)
        numpyro.deterministic("solver_failed", jnp.logical_not(ok))
        numpyro.factor("loglik", jnp.where(ok, -nll, FAILED_SOLVE_LOG_DENSITY))

    init = {f"log_{p}": np.asarray(math.log(float(np.asarray(twin.params[p])))) for p in parameters}
    if config.pooling == "none":
        init = {k: np.full(n_batch, v) for k, v in init.items()}
    if config.hierarchical:
        n_h = len(config.hierarchical)
        init["tau_batch"] = np.full(n_h, 0.5 * config.tau_sigma)
        init["z_batch"] = np.zeros((n_batch, n_h))
        if group_index is not None:
            if config.group_tau is None:
                init["tau_group"] = np.full(n_h, 0.5 * config.tau_sigma)
            init["z_group"] = np.zeros((len(group_levels), n_h))
    if state_index.size:
        init["log_initial"] = np.asarray(log_y0)
    if config.noise == "scale":
        init["noise_scale"] = np.zeros(len(variables))
    joint = _joint_model(twin, campaign, config, parameters, batches, initial_states, forward_mode)
    return TwinModel(model, twin, config, tuple(parameters), held, tuple(batches), tuple(groups), group_levels,
                     tuple(variables), base_noise, prior_loc, prior_scale, lower, upper, init, y0, forward_mode,
                     data, encoded, joint)


def _joint_model(twin: Twin, campaign: Campaign, config: BayesConfig, parameters: Sequence[str],
                 batches: Sequence[str], initial_states, forward_mode: bool) -> TwinModel | None:
    """The model over the sampled and the carried held parameters at the twin's values, for the Laplace correction
    (see `TwinModel.joint`): the curvature `select_identifiable` uses (noise fixed, no effects, held initial states),
    or None when there is nothing to carry."""
    if config.held_uncertainty != "laplace":
        return None
    carried = [p for p in carriable_parameters(twin, config) if p not in parameters]
    if not carried:
        return None
    return build_model(twin, campaign, curvature_config(config, (*parameters, *carried)), batches=batches,
                       initial_states=initial_states, forward_mode=forward_mode)


def carriable_parameters(twin: Twin, config: BayesConfig) -> tuple[str, ...]:
    """The kinetic parameters whose uncertainty the Laplace correction can carry when held: positive (sampled on
    the log scale), not numerical, and at a value strictly inside their prior support."""
    return tuple(p.name for p in twin.kinetics.parameters
                 if p.positive and p.name not in NUMERICAL_PARAMETERS
                 and _inside_support(p, config.priors.get(p.name), float(np.asarray(twin.params[p.name]))))


def curvature_config(config: BayesConfig, parameters: Sequence[str]) -> BayesConfig:
    """The configuration whose model's curvature at the twin's values ranks the identifiable parameters
    (`select_identifiable`) and gives the held parameters' Laplace correction (`TwinModel.joint`): `parameters`
    sampled, noise fixed, no hierarchical effects, held initial states, nothing carried."""
    return dataclasses.replace(config, parameters=tuple(parameters), hierarchical=(), group=None, group_tau=None,
                               noise="fixed", initial_states=(), held_uncertainty="none")


def _predict(kinetics, settings: SolverSettings, per_batch_params, encoded: EncodedBatch, variables: Sequence[str]):
    """(prediction (variable, batch, time, phase), status per batch) with parameters of leading axis batch."""
    pre, post, status, _ = _solve_batches(kinetics, settings, per_batch_params, encoded, True)
    states = jnp.stack([pre, post], axis=2)  # (batch, time, phase, state)
    observed = _observe(kinetics, per_batch_params, states, True)
    return jnp.stack([observed[v] for v in variables]), status


def batch_log_parameters(twin_model: TwinModel, sample: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Per-batch log values (batch,) of the sampled parameters for one draw (used by tests and predictive code)."""
    out = {}
    n_batch = len(twin_model.batches)
    for name in twin_model.parameters:
        out[name] = jnp.broadcast_to(sample[f"log_{name}"], (n_batch,))
    for j, name in enumerate(twin_model.config.hierarchical):
        effect = sample["tau_batch"][j] * sample["z_batch"][:, j]
        if "z_group" in sample:
            gi = jnp.asarray([twin_model.group_levels.index(g) for g in twin_model.groups])
            effect = effect + sample["tau_group"][j] * sample["z_group"][gi, j]
        out[name] = out[name] + effect
    return out
