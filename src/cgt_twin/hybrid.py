"""Neural residuals: an `equinox` network that corrects chosen specific rates *inside* the reactor balance.

The hybrid keeps the material balances exact: the network only rescales (``multiplicative``: q·exp(NN)) or shifts
(``additive``: q + s·NN·c/(ε+c)) specific rates before the generic balance turns them into d/dt, so mass conservation,
dilution and feeding stay the mechanistic ones, and uptakes still vanish with their substrate (non-negativity by
construction). The last layer starts at zero, so an untrained hybrid *is* its mechanistic core.

Which rates are corrected and which inputs the network sees is configuration (`ResidualSpec`), not code:

```python
from cgt_twin.hybrid import ResidualSpec, hybrid
spec = ResidualSpec(targets=("growth", "lactate", "titer"),
                    features=("glucose", "lactate", "vcd", "temperature", "time_since_feed"))
kinetics = hybrid(CHOFedBatch(), spec, seed=0)     # an AbstractKinetics: simulate, fit, sample as usual
```

Inputs are scaled to O(1): states by the model's typical magnitudes (log1p for cell densities), temperature as
(T − 37)/5, pH as (pH − 7)/0.5, times in days.

Batch covariates (clone, donor, cell line, strain, a dose …: columns of ``batches.csv``) are inputs too, named in
``covariates``. Their encoding (`cgt_twin.models.covariates.CovariateEncoding`: one-hot over the levels seen in training,
numbers centred and scaled) is learnt from the training batches when the hybrid is made and is stored with the twin:

```python
spec = ResidualSpec(targets=("growth", "titer"), features=("glucose", "vcd", "time"), covariates=("clone",))
kinetics = hybrid(CHOFedBatch(), spec, campaign=training_campaign)   # levels of `clone` from its batches
```

A level not seen in training gets the all-zero *population* input (reported as a note on the simulation and an
`cgt_twin.models.covariates.UnseenCovariateWarning`); a batch without a required covariate is rejected.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .models.covariates import COVARIATE_KINDS, CovariateEncoding
from .models.kinetics import AbstractKinetics, Inputs, InternalState, Rates
from .models.parameters import Parameter

__all__ = ["ResidualSpec", "NeuralResidual", "HybridKinetics", "hybrid", "fit_covariate_encoding", "covariate_values",
           "INPUT_FEATURES", "MODES"]

MODES = ("multiplicative", "additive")
INPUT_FEATURES: Mapping[str, str] = {
    "temperature": "culture temperature set-point, (T − 37 °C)/5",
    "ph": "pH set-point, (pH − 7)/0.5",
    "do": "dissolved-oxygen set-point, % / 50",
    "stimulus": "activation stimulus (bead:cell ratio)",
    "time": "time from inoculation, days",
    "time_since_feed": "time since the last bolus feed, days (0 before any)",
    "time_since_transfection": "time since transfection, days (0 before it)",
    "time_since_stimulus": "time since the stimulus last changed, days (0 if never)",
}
_CELL_STATES = ("vcd", "dead_cells")


@dataclasses.dataclass(frozen=True)
class ResidualSpec:
    """What the network corrects and what it sees.

    Attributes:
        targets: rates to correct: ``"growth"``, ``"death"`` or a species of the kinetics (its specific rate).
        features: network inputs: state names of the kinetics and/or `INPUT_FEATURES` (may be empty when
            `covariates` are given: the network then corrects each batch's rates by its covariates only).
        mode: ``"multiplicative"`` (q·exp(NN), keeps every rate's sign) or ``"additive"`` (q + scale·NN, a species'
            correction multiplied by c/(ε+c) so it vanishes with the species).
        hidden: widths of the hidden layers.
        additive_scale: per-target scale of an additive correction (the rate's unit), default 1e-2.
        max_log_correction: multiplicative corrections are bounded to exp(±this) by a tanh (keeps early training stable).
        covariates: batch covariates the network also sees (columns of the campaign's batch metadata, e.g.
            ``("clone",)``, ``("donor", "dose")``), constant over a batch. A categorical one is one-hot encoded over the
            levels of the training batches (one input per level; a level not seen in training is the all-zero
            population input, and is reported); a numeric one is (value − mean)/sd of the training batches. The
            encoding is learnt by `hybrid` from the training campaign and saved with the twin.
        covariate_kinds: covariate -> ``"categorical"`` or ``"numeric"`` where the data would say otherwise (by
            default a covariate whose values are all numbers is numeric: give ``{"clone": "categorical"}`` for
            numbered clones).

    In ``fit.toml``: ``[residual]`` with ``covariates = ["clone"]`` (and ``covariate_kinds = {clone =
    "categorical"}``); with ``--hybrid``, targets and features left out of the table are those of the default
    residual of the cell type.
    """

    targets: tuple[str, ...]
    features: tuple[str, ...]
    mode: str = "multiplicative"
    hidden: tuple[int, ...] = (16, 16)
    additive_scale: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_log_correction: float = 3.0
    covariates: tuple[str, ...] = ()
    covariate_kinds: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("targets", "features", "covariates"):  # a bare string is one name, not a tuple of letters
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    def __hash__(self) -> int:  # a static field of compiled programs: hashable although the mappings are dicts
        return hash((self.targets, self.features, self.mode, self.hidden,
                     tuple(sorted(dict(self.additive_scale).items())), self.max_log_correction, self.covariates,
                     tuple(sorted(dict(self.covariate_kinds).items()))))

    def check(self, kinetics: AbstractKinetics) -> None:
        """Raises `ValueError` naming every unknown target or feature and what is allowed."""
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        allowed_targets = ("growth", "death", *kinetics.species)
        for target in self.targets:
            if target not in allowed_targets:
                problems.append(f"unknown target {target!r}; choose from {', '.join(allowed_targets)}")
        allowed_features = (*kinetics.layout.names, *INPUT_FEATURES)
        for feature in self.features:
            if feature not in allowed_features:
                problems.append(f"unknown feature {feature!r}; choose from {', '.join(allowed_features)}")
        if not self.targets:
            problems.append("no targets: say which rates the network corrects")
        if not self.features and not self.covariates:
            problems.append("no features: say what the network sees")
        if len(set(self.targets)) != len(self.targets) or len(set(self.features)) != len(self.features):
            problems.append("targets and features must not repeat")
        if len(set(self.covariates)) != len(self.covariates):
            problems.append("covariates must not repeat")
        for name in self.covariates:
            if not isinstance(name, str) or not name.strip():
                problems.append(f"covariate names must be non-empty strings, got {name!r}")
            elif name in self.features:
                problems.append(f"{name!r} is both a feature and a covariate")
        for name, kind in dict(self.covariate_kinds).items():
            if name not in self.covariates:
                problems.append(f"covariate_kinds names {name!r}, which is not one of the covariates "
                                f"{list(self.covariates)}")
            if kind not in COVARIATE_KINDS:
                problems.append(f"covariate {name!r}: kind must be one of {COVARIATE_KINDS}, got {kind!r}")
        if problems:
            raise ValueError("invalid residual specification: " + "; ".join(problems))


class NeuralResidual(eqx.Module):
    """A small MLP from scaled features to one correction per target, last layer initialised to zero."""

    layers: tuple[eqx.nn.Linear, ...]
    feature_scales: tuple[float, ...] = eqx.field(static=True)

    def __init__(self, n_features: int, n_targets: int, hidden: Sequence[int], key: jax.Array,
                 feature_scales: Sequence[float]):
        widths = [n_features, *hidden, n_targets]
        keys = jax.random.split(key, len(widths) - 1)
        layers = [eqx.nn.Linear(a, b, key=k, dtype=jnp.float64) for a, b, k in zip(widths[:-1], widths[1:], keys,
                                                                                   strict=True)]
        last = layers[-1]
        last = eqx.tree_at(lambda layer: (layer.weight, layer.bias), last, (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)))
        self.layers = (*layers[:-1], last)
        self.feature_scales = tuple(float(v) for v in feature_scales)

    def __call__(self, x: Float[Array, " features"]) -> Float[Array, " targets"]:
        for layer in self.layers[:-1]:
            x = jnp.tanh(layer(x))
        return self.layers[-1](x)


class HybridKinetics(AbstractKinetics):
    """A mechanistic kinetics whose rates a `NeuralResidual` corrects (see the module docstring). It is itself a
    kinetics: it has the core's states, species, parameters and solver, so every simulation, fitting and sampling
    entry point takes it unchanged."""

    core: AbstractKinetics
    residual: NeuralResidual
    spec: ResidualSpec = eqx.field(static=True)
    encoding: CovariateEncoding = eqx.field(default_factory=CovariateEncoding.empty)

    # the core's structure, seen through the hybrid
    @property
    def cell_type(self) -> str:  # type: ignore[override]
        return self.core.cell_type

    @property
    def species(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.core.species)

    @property
    def internal(self) -> tuple[InternalState, ...]:  # type: ignore[override]
        return tuple(self.core.internal)

    @property
    def parameters(self) -> tuple[Parameter, ...]:  # type: ignore[override]
        return tuple(self.core.parameters)

    @property
    def solver(self) -> str:  # type: ignore[override]
        return self.core.solver

    @property
    def species_scales(self) -> Mapping[str, float]:  # type: ignore[override]
        return self.core.species_scales

    @property
    def covariate_encoding(self) -> CovariateEncoding:
        return self.encoding

    def default_initial_state(self) -> dict[str, float]:
        return self.core.default_initial_state()

    def transfect(self, y, dose, params):
        return self.core.transfect(y, dose, params)

    def observe(self, state, params):
        return self.core.observe(state, params)

    def features(self, t, state: Mapping[str, Array], inputs: Inputs) -> Float[Array, " features"]:
        """The network's inputs, scaled to O(1): the spec's features, then the batch's encoded covariates.

        Inputs without covariates (a zero-length ``inputs.covariates``, as `Inputs.initial` makes by default) give
        the population input (zeros) with a warning at trace time."""
        values = []
        for name in self.spec.features:
            if name in state:
                value = state[name]
                if name in _CELL_STATES:
                    value = jnp.log1p(jnp.maximum(value, 0.0))
                values.append(value)
            elif name == "temperature":
                values.append((inputs.temperature - 37.0) / 5.0)
            elif name == "ph":
                values.append((inputs.ph - 7.0) / 0.5)
            elif name == "do":
                values.append(inputs.do / 50.0)
            elif name == "stimulus":
                values.append(inputs.stimulus)
            elif name == "time":
                values.append(t / 24.0)
            else:
                since = {"time_since_feed": inputs.last_feed_time,
                         "time_since_transfection": inputs.transfection_time,
                         "time_since_stimulus": inputs.stimulus_time}[name]
                values.append(jnp.where(since >= 0, (t - since) / 24.0, 0.0))
        parts = [jnp.stack(values) / jnp.asarray(self.residual.feature_scales)] if values else []
        n_covariates = self.encoding.size
        if n_covariates:
            parts.append(self._covariate_inputs(inputs, n_covariates))
        return jnp.concatenate(parts)

    def _covariate_inputs(self, inputs: Inputs, n: int) -> Float[Array, " covariates"]:
        covariates = jnp.asarray(inputs.covariates, dtype=jnp.float64)
        if covariates.shape == (n,):
            return covariates
        if covariates.size == 0:  # a caller that builds its own inputs and gives no covariates: shapes are static
            warnings.warn(f"the residual sees batch covariates {list(self.encoding.names)} but the inputs carry none: "
                          "the network gets the population input (zeros); give Inputs.initial(..., covariates="
                          "kinetics.covariate_encoding.vector({...})) for a batch's own", stacklevel=3)
            return jnp.zeros(n)
        raise ValueError(f"inputs.covariates has shape {covariates.shape}; this residual's encoding "
                         f"({', '.join(self.encoding.columns)}) has {n} inputs")

    def rates(self, t, state, inputs, params) -> Rates:
        rates = self.core.rates(t, state, inputs, params)
        out = self.residual(self.features(t, state, inputs))
        specific = jnp.asarray(rates.specific)
        growth, death = rates.growth, rates.death
        species = list(self.species)
        for i, target in enumerate(self.spec.targets):
            if self.spec.mode == "multiplicative":
                factor = jnp.exp(self.spec.max_log_correction * jnp.tanh(out[i] / self.spec.max_log_correction))
                if target == "growth":
                    growth = growth * factor
                elif target == "death":
                    death = death * factor
                else:
                    j = species.index(target)
                    specific = specific.at[j].multiply(factor)
            else:
                shift = self.spec.additive_scale.get(target, 1e-2) * out[i]
                if target == "growth":
                    growth = growth + shift
                elif target == "death":
                    death = death + shift * (death >= 0)
                else:
                    j = species.index(target)
                    c = state[target]
                    specific = specific.at[j].add(shift * c / (0.1 * self.core.species_scales.get(target, 1.0) + c))
        return rates._replace(growth=growth, death=death, specific=specific)


def _feature_scales(kinetics: AbstractKinetics, features: Sequence[str]) -> tuple[float, ...]:
    names = kinetics.layout.names
    scales = kinetics.state_scales()
    out = []
    for feature in features:
        if feature in _CELL_STATES or feature not in names:
            out.append(1.0)
        else:
            out.append(float(scales[names.index(feature)]))
    return tuple(out)


def hybrid(kinetics: AbstractKinetics, spec: ResidualSpec, seed: int = 0, *, campaign=None,
           encoding: CovariateEncoding | None = None) -> HybridKinetics:
    """Wraps a mechanistic kinetics with a zero-initialised neural residual (reproducible by `seed`).

    Args:
        kinetics: the mechanistic core.
        spec: what the network corrects and sees.
        seed: seed of the network's initial weights.
        campaign: the training campaign (a `cgt_twin.data.Campaign`), needed when ``spec.covariates`` is not empty:
            the covariate encoding is learnt from its batches whose feeds are recorded (those a fit trains on).
        encoding: a covariate encoding to use instead of learning one (e.g. read from an artifact).

    Raises:
        ValueError: for an invalid `spec`, covariates without `campaign` or `encoding`, or an `encoding` of other
            covariates.
        CampaignValidationError: a covariate missing for a training batch or not in the campaign.
    """
    if isinstance(kinetics, HybridKinetics):
        raise ValueError("the kinetics already has a residual")
    spec.check(kinetics)
    if not spec.covariates:
        encoding = CovariateEncoding.empty()
    elif encoding is None:
        if campaign is None:
            raise ValueError(f"the residual sees batch covariates {list(spec.covariates)}: give the training campaign "
                             "(hybrid(..., campaign=...)) to learn their encoding, or an encoding")
        encoding = fit_covariate_encoding(campaign, spec)
    if encoding.names != spec.covariates:
        raise ValueError(f"the covariate encoding is of {list(encoding.names)}, the specification names "
                         f"{list(spec.covariates)}")
    kinds = dict(spec.covariate_kinds)
    wrong = [n for n, k in zip(encoding.names, encoding.kinds, strict=True) if kinds.get(n, k) != k]
    if wrong:
        raise ValueError(f"the covariate encoding's kinds differ from the specification's for {wrong}")
    residual = NeuralResidual(len(spec.features) + encoding.size, len(spec.targets), spec.hidden,
                              jax.random.PRNGKey(seed), _feature_scales(kinetics, spec.features))
    return HybridKinetics(core=kinetics, residual=residual, spec=spec, encoding=encoding)


def fit_covariate_encoding(campaign, spec: ResidualSpec, batches: Sequence[str] | None = None) -> CovariateEncoding:
    """The encoding of ``spec.covariates`` learnt from a campaign's training batches (default: those whose feeds are
    recorded). Raises `cgt_twin.data.CampaignValidationError` for a covariate missing from a batch or the campaign."""
    if batches is None:
        batches = [b for b in campaign.batches if campaign.protocols[b].feeds_known]
    return CovariateEncoding.fit(covariate_values(campaign, batches, spec.covariates), spec.covariates,
                                 spec.covariate_kinds)


def covariate_values(campaign, batches: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, object]]:
    """batch -> covariate -> value from a campaign's batch metadata. Raises `cgt_twin.data.CampaignValidationError`
    naming every covariate the campaign does not have."""
    from .data.errors import CampaignValidationError, Problem

    meta = campaign.batch_metadata()
    absent = [n for n in names if n not in meta.columns]
    if absent:
        raise CampaignValidationError([Problem("batches", f"no batch covariate {n!r} in the campaign, which the neural "
                                                          f"residual takes as an input; the campaign has: "
                                                          f"{', '.join(campaign.covariates) or 'none'}", column=n)
                                       for n in absent], header="cannot encode batch covariates")
    return {str(b): {n: meta.loc[b, n] for n in names} for b in batches}


DEFAULT_RESIDUALS: Mapping[str, ResidualSpec] = {
    # what each model is known to miss (../shared/reference/models.md, "Not captured"), seen through what at-line
    # sensors measure
    "cho": ResidualSpec(targets=("growth", "death", "lactate", "titer"),
                        features=("glucose", "lactate", "ammonia", "vcd", "temperature", "time_since_feed")),
    "hek293": ResidualSpec(targets=("growth", "glucose", "lactate"),
                           features=("glucose", "lactate", "vcd", "time_since_transfection")),
    "tcell": ResidualSpec(targets=("growth", "death"), features=("glucose", "lactate", "il2", "vcd", "stimulus",
                                                                 "time_since_stimulus")),
}
"""A starting residual per cell type (used by ``cgt-twin fit --hybrid`` unless the config names one)."""
