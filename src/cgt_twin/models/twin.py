"""The `Twin`: one model definition shared by simulation, fitting, sampling and control (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .kinetics import AbstractKinetics
from .parameters import check_values, defaults

__all__ = ["Twin"]


class Twin(eqx.Module):
    """Kinetics plus parameter values (later also a neural residual and an observation/noise model).

    Attributes:
        kinetics: the model structure (static: a different kinetics or option set compiles anew).
        params: parameter name -> value in the unit of its spec (a pytree; may carry a leading axis of draws).
    """

    kinetics: AbstractKinetics
    params: dict[str, Float[Array, "..."]]

    def __init__(self, kinetics: AbstractKinetics, params: Mapping[str, float] | None = None):
        values = defaults(kinetics.parameters)
        if params:
            check_values(kinetics.parameters, {k: v for k, v in params.items()})
            values.update({k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()})
        self.kinetics = kinetics
        self.params = values

    def with_params(self, **params: float) -> Twin:
        """A copy with some parameter values replaced (checked against their bounds)."""
        return Twin(self.kinetics, {**self.params, **params})

    @property
    def cell_type(self) -> str:
        return self.kinetics.cell_type

    def __repr__(self) -> str:
        return f"Twin({type(self.kinetics).__name__}, {len(self.params)} parameters)"
