"""The one model-specific piece: kinetics, i.e. specific rates as a function of the state.

A kinetics module says which extracellular species it tracks, which internal states it needs, which parameters it
has, and returns specific rates per cell (`Rates`). Everything else — volume, dilution, feeds, sampling, perfusion,
bolus mixing, the solver — is generic (`cgt_twin.models.balance`, `cgt_twin.simulate`), so mass conservation lives in
one place. Writing a new model is subclassing `AbstractKinetics` and writing `rates` (see ``docs/models.md``).

State vector layout (`StateLayout`): ``vcd`` and ``dead_cells`` (1e6 cells/mL), the species in their canonical units,
the internal states, then ``volume`` (L).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..data.variables import CANONICAL_VARIABLES
from .covariates import CovariateEncoding
from .parameters import Parameter

__all__ = ["AbstractKinetics", "Rates", "Inputs", "InternalState", "StateLayout", "INTERNAL_KINDS"]

INTERNAL_KINDS = ("per_cell", "volumetric", "cells")
"""How an internal state behaves under growth and volume changes:

- ``per_cell``: an amount per cell (copies/cell, molecules/cell); diluted by growth (−μ·z), untouched by adding or
  removing medium;
- ``volumetric``: an amount per culture volume that is not fed (e.g. DNA complexes in the medium); diluted by
  feeds, perfusion and medium exchange like a species;
- ``cells``: a sub-population density (1e6 cells/mL); diluted by volume like the viable cells, its own growth and death
  are entirely in the kinetics' ``internal`` rates.
"""


@dataclasses.dataclass(frozen=True)
class InternalState:
    """A model-specific state that is not an extracellular species."""

    name: str
    kind: str
    unit: str
    description: str
    default: float = 0.0
    scale: float = 1.0  # typical magnitude, used to scale the state for the solver's error control

    def __post_init__(self):
        if self.kind not in INTERNAL_KINDS:
            raise ValueError(f"internal state {self.name}: kind must be one of {INTERNAL_KINDS}")


class Inputs(NamedTuple):
    """Piecewise-constant inputs between events (what the protocol sets), all in canonical units.

    Attributes:
        feed_rate: continuous feed, L/h.
        feed_conc: composition of the continuous feed, per species (canonical units).
        perfusion_rate: perfusion (in = out, cells retained), L/h.
        perfusion_conc: composition of the perfusion medium, per species.
        bleed_rate: culture removed continuously, L/h.
        temperature: set-point, degC.
        ph: set-point, pH.
        do: set-point, % air saturation.
        stimulus: activation stimulus (bead:cell ratio; 0 = none).
        last_feed_time: time of the last bolus feed, h (−1 before any).
        transfection_time: time of the transfection, h (−1 before it).
        stimulus_time: time the stimulus was last changed, h (−1 never).
        covariates: the batch's covariates encoded for the network (`cgt_twin.models.covariates.CovariateEncoding`:
            one-hot levels and scaled numbers, dimensionless, O(1)); constant over a batch, zero-length for a model
            without covariates.
    """

    feed_rate: Float[Array, ""]
    feed_conc: Float[Array, " species"]
    perfusion_rate: Float[Array, ""]
    perfusion_conc: Float[Array, " species"]
    bleed_rate: Float[Array, ""]
    temperature: Float[Array, ""]
    ph: Float[Array, ""]
    do: Float[Array, ""]
    stimulus: Float[Array, ""]
    last_feed_time: Float[Array, ""]
    transfection_time: Float[Array, ""]
    stimulus_time: Float[Array, ""]
    covariates: Float[Array, " covariates"] = np.zeros(0)

    @classmethod
    def initial(cls, n_species: int, temperature: float = 37.0, ph: float = 7.0, do: float = 50.0,
                covariates: Float[Array, " covariates"] | None = None) -> Inputs:
        """The inputs at inoculation: nothing fed, set-points as given (degC, pH, % air saturation), no event yet, and
        the batch's encoded `covariates` (default: none, a zero-length vector)."""
        zero = jnp.asarray(0.0)
        covariates = jnp.zeros(0) if covariates is None else jnp.asarray(covariates, dtype=jnp.float64)
        return cls(zero, jnp.zeros(n_species), zero, jnp.zeros(n_species), zero, jnp.asarray(temperature),
                   jnp.asarray(ph), jnp.asarray(do), zero, jnp.asarray(-1.0), jnp.asarray(-1.0), jnp.asarray(-1.0),
                   covariates)


class Rates(NamedTuple):
    """Specific rates returned by a kinetics module.

    Attributes:
        growth: specific growth rate μ of viable cells, 1/h.
        death: specific death rate of viable cells (viable -> dead), 1/h.
        specific: per-cell production (>0) or uptake (<0) of each species, in the species' canonical unit per
            (1e6 cells/mL) per h — for a mM species that is mmol/(1e9 cells)/h (= pmol/cell/d ÷ 24); for the titre
            (mg/L) mg/(1e9 cells)/h (= pg/cell/d ÷ 24).
        volumetric: cell-independent rate of each species (spontaneous decay), species unit per h.
        internal: d/dt of each internal state *before* the generic dilution terms.
        lysis: specific lysis rate of dead cells, 1/h.
    """

    growth: Float[Array, ""]
    death: Float[Array, ""]
    specific: Float[Array, " species"]
    volumetric: Float[Array, " species"] | float = 0.0
    internal: Float[Array, " internal"] | tuple = ()
    lysis: Float[Array, ""] | float = 0.0


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """Names and positions of the states of one kinetics (vcd, dead_cells, species, internal, volume)."""

    species: tuple[str, ...]
    internal: tuple[InternalState, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return ("vcd", "dead_cells", *self.species, *(s.name for s in self.internal), "volume")

    @property
    def size(self) -> int:
        return 3 + len(self.species) + len(self.internal)

    def index(self, name: str) -> int:
        return self.names.index(name)

    @property
    def species_slice(self) -> slice:
        return slice(2, 2 + len(self.species))

    @property
    def internal_slice(self) -> slice:
        start = 2 + len(self.species)
        return slice(start, start + len(self.internal))

    def unpack(self, y: Float[Array, " state"]) -> dict[str, Float[Array, ""]]:
        """The state vector as a dict of named scalars (free under JIT)."""
        return {name: y[i] for i, name in enumerate(self.names)}

    def mask(self, kinds: tuple[str, ...]) -> np.ndarray:
        """Boolean mask over the state vector of the given categories: ``cells`` (vcd, dead_cells and internal
        'cells'), ``species``, ``volumetric`` (internal), ``per_cell`` (internal), ``volume``."""
        out = np.zeros(self.size, dtype=bool)
        if "cells" in kinds:
            out[0:2] = True
        if "species" in kinds:
            out[self.species_slice] = True
        for i, state in enumerate(self.internal):
            if state.kind in kinds:
                out[self.internal_slice.start + i] = True
        if "volume" in kinds:
            out[-1] = True
        return out

    def units(self) -> dict[str, str]:
        units = {"vcd": "1e6 cells/mL", "dead_cells": "1e6 cells/mL", "volume": "L"}
        units.update({s: CANONICAL_VARIABLES[s].unit if s in CANONICAL_VARIABLES else "" for s in self.species})
        units.update({s.name: s.unit for s in self.internal})
        return units


class AbstractKinetics(eqx.Module):
    """Base of all kinetics. Subclasses set the class variables and implement `rates`.

    Class variables:
        cell_type: ``"cho"``, ``"hek293"`` or ``"tcell"`` (checked against the campaign).
        species: extracellular species tracked (canonical variable names), in state order.
        internal: model-specific internal states.
        parameters: the parameter specs.
        solver: default solver name (``"tsit5"`` or ``"kvaerno5"``).

    Options that change the equations (e.g. ``lactate_consumption=True``) are fields of the instance: they are part
    of the model structure, so each combination compiles once.
    """

    cell_type: ClassVar[str]
    species: ClassVar[tuple[str, ...]]
    internal: ClassVar[tuple[InternalState, ...]] = ()
    parameters: ClassVar[tuple[Parameter, ...]]
    solver: ClassVar[str] = "tsit5"
    species_scales: ClassVar[Mapping[str, float]] = {}

    @abc.abstractmethod
    def rates(self, t: Float[Array, ""], state: Mapping[str, Float[Array, ""]], inputs: Inputs,
              params: Mapping[str, Float[Array, ""]]) -> Rates:
        """Specific rates at time `t` (h) for the named `state` (canonical units), `inputs` and `params`."""

    # -- optional hooks ------------------------------------------------------------------------------------------
    def transfect(self, y: Float[Array, " state"], dose: Float[Array, ""],
                  params: Mapping[str, Float[Array, ""]]) -> Float[Array, " state"]:
        """State right after a transfection with `dose` (ug DNA per mL culture; NaN if not recorded). Default: no
        change (models without transfection ignore it)."""
        return y

    def observe(self, state: Mapping[str, Float[Array, ""]],
                params: Mapping[str, Float[Array, ""]]) -> dict[str, Float[Array, ""]]:
        """Measured variables (canonical names and units) from the state. Default: cells, viability, species,
        volume."""
        total = state["vcd"] + state["dead_cells"]
        out = {"vcd": state["vcd"], "dead_cells": state["dead_cells"], "total_cells": total,
               "viability": state["vcd"] / jnp.maximum(total, 1e-12), "volume": state["volume"]}
        out.update({s: state[s] for s in self.species})
        return out

    # -- derived, not overridden -----------------------------------------------------------------------------------
    @property
    def layout(self) -> StateLayout:
        return StateLayout(tuple(self.species), tuple(self.internal))

    def state_scales(self) -> np.ndarray:
        """Typical magnitude of each state (the solver controls the error of state/scale)."""
        scales = [1.0, 1.0]
        scales += [float(self.species_scales.get(s, 1.0)) for s in self.species]
        scales += [float(s.scale) for s in self.internal]
        scales.append(1.0)
        return np.asarray(scales)

    def default_initial_state(self) -> dict[str, float]:
        """Initial values used where neither data nor the medium give one."""
        state = {"vcd": 0.5, "dead_cells": 0.0, "volume": 1.0}
        state.update({s: 0.0 for s in self.species})
        state.update({s.name: s.default for s in self.internal})
        return state

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def covariate_encoding(self) -> CovariateEncoding:
        """How batch covariates reach `Inputs.covariates` (`cgt_twin.simulate.prepare` encodes each batch with it).
        Default: none; a `cgt_twin.hybrid.HybridKinetics` whose residual sees covariates returns its encoding."""
        return CovariateEncoding.empty()
