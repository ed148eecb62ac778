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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .models.kinetics import AbstractKinetics, Inputs, InternalState, Rates
from .models.parameters import Parameter

__all__ = ["ResidualSpec", "NeuralResidual", "HybridKinetics", "hybrid", "INPUT_FEATURES", "MODES"]

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
        features: network inputs: state names of the kinetics and/or `INPUT_FEATURES`.
        mode: ``"multiplicative"`` (q·exp(NN), keeps every rate's sign) or ``"additive"`` (q + scale·NN, a species'
            correction multiplied by c/(ε+c) so it vanishes with the species).
        hidden: widths of the hidden layers.
        additive_scale: per-target scale of an additive correction (the rate's unit), default 1e-2.
        max_log_correction: multiplicative corrections are bounded to exp(±this) by a tanh (keeps early training stable).
    """

    targets: tuple[str, ...]
    features: tuple[str, ...]
    mode: str = "multiplicative"
    hidden: tuple[int, ...] = (16, 16)
    additive_scale: Mapping[str, float] = dataclasses.field(default_factory=dict)
    max_log_correction: float = 3.0

    def __hash__(self) -> int:  # a static field of compiled programs: hashable although `additive_scale` is a dict
        return hash((self.targets, self.features, self.mode, self.hidden,
                     tuple(sorted(dict(self.additive_scale).items())), self.max_log_correction))

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
        if not self.features:
            problems.append("no features: say what the network sees")
        if len(set(self.targets)) != len(self.targets) or len(set(self.features)) != len(self.features):
            problems.append("targets and features must not repeat")
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

    def default_initial_state(self) -> dict[str, float]:
        return self.core.default_initial_state()

    def transfect(self, y, dose, params):
        return self.core.transfect(y, dose, params)

    def observe(self, state, params):
        return self.core.observe(state, params)

    def features(self, t, state: Mapping[str, Array], inputs: Inputs) -> Float[Array, " features"]:
        """The network's inputs, scaled to O(1)."""
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
        return jnp.stack(values) / jnp.asarray(self.residual.feature_scales)

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


def hybrid(kinetics: AbstractKinetics, spec: ResidualSpec, seed: int = 0) -> HybridKinetics:
    """Wraps a mechanistic kinetics with a zero-initialised neural residual (reproducible by `seed`)."""
    if isinstance(kinetics, HybridKinetics):
        raise ValueError("the kinetics already has a residual")
    spec.check(kinetics)
    residual = NeuralResidual(len(spec.features), len(spec.targets), spec.hidden, jax.random.PRNGKey(seed),
                              _feature_scales(kinetics, spec.features))
    return HybridKinetics(core=kinetics, residual=residual, spec=spec)


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
