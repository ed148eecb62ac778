"""Measurements aligned with a simulation: which variable, batch, output time, phase and replicate each value is.

`align` puts a campaign's measurements onto the arrays `cgt_twin.simulate.prepare` solves on (each batch at its own
measurement times, padded), so a likelihood compares prediction and data with no reindexing inside traced code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..models.kinetics import AbstractKinetics
from ..simulate import Prepared

__all__ = ["ObservationData", "align", "observable_variables"]


@dataclasses.dataclass(frozen=True)
class ObservationData:
    """Measurements on the solver's grid.

    Attributes:
        variables: the observed variables, in order.
        values: (variable, batch, time, phase, replicate) in canonical units; 0 where `mask` is False.
        mask: True where a value was measured.
        censored: −1 below a limit (the value is the limit), +1 above, 0 not censored.
        scales: typical magnitude of each variable (its data's 95th percentile of |value|), for noise floors and
            normalised errors.
    """

    variables: tuple[str, ...]
    values: jnp.ndarray
    mask: jnp.ndarray
    censored: jnp.ndarray
    scales: np.ndarray

    @property
    def count(self) -> dict[str, int]:
        return {v: int(np.asarray(self.mask[i]).sum()) for i, v in enumerate(self.variables)}


def observable_variables(kinetics: AbstractKinetics, params) -> tuple[str, ...]:
    """The variables a model predicts (the keys of its `observe`), found without compiling anything."""
    state = {name: jnp.asarray(1.0) for name in kinetics.layout.names}
    return tuple(kinetics.observe(state, params))


def align(campaign: Campaign, prepared: Prepared, variables: Sequence[str]) -> ObservationData:
    """The campaign's measurements of `variables` on the grid of `prepared` (same batches, same order)."""
    problems = [Problem("campaign", f"variable {v!r} is not measured in this campaign", column=v)
                for v in variables if v not in campaign.variables]
    if problems:
        raise CampaignValidationError(problems)
    n_batch, n_grid = prepared.grid_index.shape
    n_rep = campaign.data.sizes["replicate"]
    shape = (len(variables), n_batch, n_grid, 2, n_rep)
    values = np.zeros(shape)
    mask = np.zeros(shape, dtype=bool)
    censored = np.zeros(shape, dtype=np.int8)
    for i, variable in enumerate(variables):
        data = campaign.data[variable].transpose("batch", "time", "phase", "replicate")
        flags = campaign.censored[variable].transpose("batch", "time", "phase", "replicate")
        for b, batch in enumerate(prepared.names):
            index = prepared.grid_index[b]
            ok = index >= 0
            block = data.sel(batch=batch).values[index[ok]]  # (own times, phase, replicate)
            flag = flags.sel(batch=batch).values[index[ok]]
            finite = np.isfinite(block)
            values[i, b, np.nonzero(ok)[0]] = np.where(finite, block, 0.0)
            mask[i, b, np.nonzero(ok)[0]] = finite
            censored[i, b, np.nonzero(ok)[0]] = np.where(finite, flag, 0)
    scales = np.asarray([max(float(np.percentile(np.abs(values[i][mask[i]]), 95)), 1e-12) if mask[i].any() else 1.0
                         for i in range(len(variables))])
    return ObservationData(tuple(variables), jnp.asarray(values), jnp.asarray(mask), jnp.asarray(censored), scales)
