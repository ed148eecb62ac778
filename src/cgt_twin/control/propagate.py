"""Propagating many states from *now*: the segmented solve of `cgt_twin.simulate`, started from any time, state and
inputs, vmapped over particles or posterior draws.

`cgt_twin.simulate` always starts a batch at inoculation. A control loop starts from the present: the filter's
particles (states and parameter draws) at the filter time, and the inputs (feed rate, set-points, time of the last
feed) the protocol has set so far. A `Segments` table holds what happens from then on: row i applies its event at
``t0[i]`` and integrates to ``t1[i]`` (rows padded to a fixed count with empty segments, so one compilation serves every
call). The state at the end of each row is returned: with a row boundary at every output time, those are the values
*before* any event at that time (DESIGN.md's time ties). `propagate_at` instead returns the values at given output
times interpolated inside the rows, so a forecast needs rows at its events only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..data.protocol import Protocol
from ..models.balance import EventCode, apply_event
from ..models.kinetics import AbstractKinetics, Inputs
from ..simulate import SolverSettings, _event_rows, first_failure, scan_segments

__all__ = ["Segments", "segments", "event_rows", "solve_segments", "propagate", "solve_at", "propagate_at",
           "inputs_at"]


class Segments(NamedTuple):
    """Rows of (event, then integration), padded with empty rows (``t0 = t1``, no event).

    Attributes:
        t0: row start = event time, h.
        t1: row end, h.
        code: `cgt_twin.models.balance.EventCode` of the event at ``t0``.
        amount: the event's amount (its canonical unit).
        conc: composition (per species) of a medium the event adds.
        valid: False for padding rows.
    """

    t0: np.ndarray
    t1: np.ndarray
    code: np.ndarray
    amount: np.ndarray
    conc: np.ndarray
    valid: np.ndarray


def event_rows(kinetics: AbstractKinetics, protocol: Protocol, batch: str = "running") -> list[tuple]:
    """(time h, code, amount, conc) of every event of `protocol` the model acts on, in protocol order."""
    return _event_rows(kinetics, protocol, batch)[0]


def padded_count(n: int, multiple: int = 16) -> int:
    """`n` rounded up to a multiple (fewer distinct shapes, fewer compilations)."""
    return max(multiple, int(math.ceil(n / multiple) * multiple))


def segments(kinetics: AbstractKinetics, rows: Sequence[tuple], start_h: float, end_h: float,
             boundaries: Sequence[float] = (), n_rows: int | None = None) -> Segments:
    """The table from `start_h` (events at `start_h` included: the state there is the pre-event one) to `end_h`.

    Args:
        rows: (time, code, amount, conc) events (`event_rows`); those outside ``[start_h, end_h)`` are dropped.
        boundaries: extra row boundaries (output times) in ``(start_h, end_h]``.
        n_rows: padded row count (default: the needed count rounded up to a multiple of 16).
    """
    n_species = len(kinetics.species)
    zero = np.zeros(n_species)
    kept = [r for r in rows if start_h - 1e-9 <= r[0] < end_h - 1e-9]
    event_times = {r[0] for r in kept}
    extra = sorted({float(b) for b in boundaries if start_h + 1e-9 < b < end_h - 1e-9 and b not in event_times})
    table = [(start_h, EventCode.NOOP, 0.0, zero), *kept, *[(b, EventCode.NOOP, 0.0, zero) for b in extra]]
    table.sort(key=lambda r: r[0])  # stable: protocol order at equal times
    needed = len(table)
    n_rows = padded_count(needed) if n_rows is None else n_rows
    if needed > n_rows:
        raise ValueError(f"{needed} rows do not fit the padded count {n_rows}")
    t0 = np.asarray([r[0] for r in table] + [end_h] * (n_rows - needed), dtype=np.float64)
    t1 = np.append(t0[1:needed], [end_h] * (n_rows - needed + 1))
    code = np.asarray([int(r[1]) for r in table] + [int(EventCode.NOOP)] * (n_rows - needed), dtype=np.int32)
    amount = np.asarray([float(r[2]) for r in table] + [0.0] * (n_rows - needed), dtype=np.float64)
    conc = np.stack([np.asarray(r[3], dtype=np.float64) for r in table] + [zero] * (n_rows - needed))
    valid = np.arange(n_rows) < needed
    return Segments(t0, t1, code, amount, conc, valid)


def inputs_at(kinetics: AbstractKinetics, rows: Sequence[tuple], time_h: float, params,
              covariates: np.ndarray | None = None) -> Inputs:
    """The inputs (rates, set-points, event times) in force just before `time_h`: every rate-type event before it
    applied in order to `Inputs.initial` (state jumps are not needed for inputs), with the batch's encoded
    `covariates` (`cgt_twin.models.covariates.CovariateEncoding.vector`) for a residual that sees them."""
    inputs = Inputs.initial(len(kinetics.species), covariates=covariates)
    y = jnp.ones(kinetics.layout.size)
    for t, code, amount, conc in rows:
        if t >= time_h - 1e-9:
            break
        _, inputs = apply_event(kinetics, jnp.asarray(t), y, inputs, jnp.asarray(int(code)), jnp.asarray(amount),
                                jnp.asarray(conc), params)
    return jax.tree_util.tree_map(jnp.asarray, inputs)


def solve_segments(kinetics: AbstractKinetics, settings: SolverSettings, params, y, inputs: Inputs, table: Segments):
    """One state through a `Segments` table (`cgt_twin.simulate.scan_segments`): ``(ends (rows, state), inputs
    after, status code, accepted steps)``; from the first failed row on, values are NaN and the status says why."""
    _, ends, codes, steps, inputs_end, _ = scan_segments(kinetics, settings, params, y, inputs, table.t0, table.t1,
                                                         table.code, table.amount, table.conc, dt0=0.5)
    first, status = first_failure(codes)
    ends = jnp.where((jnp.arange(codes.shape[0]) >= first)[:, None], jnp.nan, ends)
    return ends, inputs_end, status, jnp.sum(steps).astype(jnp.int32)


def solve_at(kinetics: AbstractKinetics, settings: SolverSettings, params, y, inputs: Inputs, table: Segments, times):
    """One state through a `Segments` table, returning its values at `times` ((K,) sorted, h, in ``(t0[0],
    t1[-1]]``) by the solver's interpolation inside the segments (no segment boundary at each time). The value at a
    time is the one *before* any event there (the segment ending at that time). Returns ``(values (K, state),
    status code, accepted steps)``; values from the first failed segment on are NaN."""
    _, _, codes, steps, _, saved = scan_segments(kinetics, settings, params, y, inputs, table.t0, table.t1,
                                                 table.code, table.amount, table.conc, dt0=0.5, save_ts=times)
    first, status = first_failure(codes)
    row = jnp.minimum(jnp.searchsorted(table.t1, times - 1e-9, side="left"), codes.shape[0] - 1)
    values = saved[row, jnp.arange(times.shape[0])]
    values = jnp.where((row >= first)[:, None], jnp.nan, values)
    return values, status, jnp.sum(steps).astype(jnp.int32)


@eqx.filter_jit
def propagate(kinetics: AbstractKinetics, settings: SolverSettings, params, y, inputs: Inputs, table: Segments):
    """`solve_segments` for every particle: `params` (name -> (particles,)) and `y` (particles, state) carry a leading
    particle axis; `inputs` and `table` are shared. Returns ``(ends (particles, rows, state), inputs after,
    status (particles,))``."""
    table = table._replace(valid=None)
    ends, inputs_end, status, _ = jax.vmap(lambda p, y0: solve_segments(kinetics, settings, p, y0, inputs, table))(
        params, y)
    return ends, jax.tree_util.tree_map(lambda a: a[0], inputs_end), status


@eqx.filter_jit
def propagate_at(kinetics: AbstractKinetics, settings: SolverSettings, params, y, inputs: Inputs, table: Segments,
                 times):
    """`solve_at` for every particle (leading particle axis on `params` and `y`; `inputs`, `table` and `times`
    shared): ``(values (particles, K, state), status (particles,))``."""
    table = table._replace(valid=None)
    values, status, _ = jax.vmap(lambda p, y0: solve_at(kinetics, settings, p, y0, inputs, table, times))(params, y)
    return values, status
