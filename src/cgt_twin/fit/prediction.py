"""Predicted measurements for a fit: solve, then observe, on the solver's grid (pure JAX, differentiable)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from ..models.kinetics import AbstractKinetics
from ..simulate import EncodedBatch, SolverSettings, _solve_batches

__all__ = ["predict_observed"]


def predict_observed(kinetics: AbstractKinetics, params, encoded: EncodedBatch, settings: SolverSettings,
                     variables: Sequence[str]):
    """Returns ``(prediction, status)``: prediction of shape (variable, batch, time, phase), status per batch."""
    pre, post, status, _ = _solve_batches(kinetics, settings, params, encoded)
    states = jnp.stack([pre, post], axis=2)  # (batch, time, phase, state)
    layout = kinetics.layout
    observed = jax.vmap(jax.vmap(jax.vmap(lambda y: kinetics.observe(layout.unpack(y), params))))(states)
    return jnp.stack([observed[v] for v in variables]), status
