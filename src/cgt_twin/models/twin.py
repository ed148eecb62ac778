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
    """Kinetics (with its neural residual, if any), parameter values and the measurement noise model.

    Attributes:
        kinetics: the model structure (static: a different kinetics or option set compiles anew); a
            `cgt_twin.hybrid.HybridKinetics` carries the neural residual.
        params: parameter name -> value in the unit of its spec (a pytree; may carry a leading axis of draws).
        noise_items: the measurement noise model, read as the `noise` mapping: variable -> (σ_abs in its canonical
            unit, σ_rel) of the combined error model of `cgt_twin.fit.likelihood` (estimated by a fit; empty for an
            unfitted twin). Stored as sorted pairs so that the twin stays hashable.
    """

    kinetics: AbstractKinetics
    params: dict[str, Float[Array, ...]]
    noise_items: tuple[tuple[str, tuple[float, float]], ...] = eqx.field(static=True)

    def __init__(self, kinetics: AbstractKinetics, params: Mapping[str, float] | None = None,
                 noise: Mapping[str, tuple[float, float]] | None = None):
        values = defaults(kinetics.parameters)
        if params:
            check_values(kinetics.parameters, {k: v for k, v in params.items()})
            values.update({k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()})
        self.kinetics = kinetics
        self.params = values
        self.noise_items = tuple(sorted((str(k), (float(a), float(r))) for k, (a, r) in (noise or {}).items()))

    @property
    def noise(self) -> dict[str, tuple[float, float]]:
        """Measured variable -> (σ_abs, σ_rel)."""
        return dict(self.noise_items)

    def with_params(self, **params: float) -> Twin:
        """A copy with some parameter values replaced (checked against their bounds)."""
        return Twin(self.kinetics, {**self.params, **params}, self.noise)

    def with_noise(self, noise: Mapping[str, tuple[float, float]]) -> Twin:
        """A copy with another noise model."""
        return Twin(self.kinetics, self.params, noise)

    @property
    def cell_type(self) -> str:
        return self.kinetics.cell_type

    def __repr__(self) -> str:
        return f"Twin({type(self.kinetics).__name__}, {len(self.params)} parameters)"

    def _repr_html_(self) -> str:
        """An HTML summary for Jupyter (model, parameters with units, noise model)."""
        from .._html import twin_html

        return twin_html(self)
