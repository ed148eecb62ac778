"""Simulation: one traced `diffeqsolve` per event segment inside a `lax.scan`, vmapped over batches.

`simulate(twin, campaign_or_protocol)` returns a `Trajectory` — an `xarray.Dataset` on the campaign's coordinates
``(batch, time, phase)`` holding every state and every observed variable in canonical units, plus a per-batch solver
``status`` ("ok" or why not) and step count. Nothing here raises inside traced code: a solver failure becomes a status
and NaN values from the failure on, never a crash and never a silent number.

How a protocol becomes arrays (`encode`): a no-op event at t = 0, the batch's events in order, then no-op events up to a
padded count; segment i runs from event i to event i+1 (the last to the batch's end). At each segment start the event
is applied (`cgt_twin.models.balance.apply_event`): bolus-type events are jumps, rate-type ones change the inputs. A
value at a grid time t is taken ``pre`` from the last segment that starts strictly before t and ``post`` from the last
segment that starts at or before t, so measurements at event times line up with DESIGN.md's time ties.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from .data.campaign import Campaign
from .data.errors import CampaignValidationError, Problem
from .data.protocol import EventKind, Protocol
from .models.balance import EventCode, apply_event, vector_field
from .models.covariates import UnseenCovariateWarning
from .models.kinetics import AbstractKinetics, Inputs
from .models.twin import Twin

__all__ = ["SolverSettings", "simulate", "simulate_draws", "prepare", "Prepared", "Trajectory", "initial_state",
           "encode", "EncodedBatch", "STATUS_MESSAGES", "trajectory_to_long"]

Trajectory = xr.Dataset
"""A simulation result: ``xarray.Dataset`` with dims ``(batch, time, phase)`` (see `simulate`)."""

_RESULT_NAMES = {int(item._value): name for name, item in dfx.RESULTS._name_to_item.items()}
NONFINITE_STATE = 100
DRAW_CHUNK = 256  # draws per vmapped solve of `simulate_draws` on a CPU
ACCELERATOR_DRAW_CHUNK = 65_536  # on a GPU (or another accelerator)
STATUS_MESSAGES = {**{code: name.replace("_", " ") for code, name in _RESULT_NAMES.items()},
                   0: "ok", NONFINITE_STATE: "non-finite state"}


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """How to integrate.

    Attributes:
        solver: ``"tsit5"`` (explicit, default for non-stiff models), ``"kvaerno5"`` (implicit, for stiff models),
            ``"dopri8"`` (reference accuracy); None uses the kinetics' default.
        rtol, atol: error tolerances on the scaled states (state / the kinetics' typical magnitude).
        max_steps: maximum solver steps per segment; reaching it is a failure status.
        adjoint: ``"recursive"`` (reverse mode, default) or ``"forward"`` (forward mode: `jax.jacfwd`).
    """

    solver: str | None = None
    rtol: float = 1e-6
    atol: float = 1e-8
    max_steps: int = 4096
    adjoint: str = "recursive"

    def make_solver(self, kinetics: AbstractKinetics):
        name = self.solver or kinetics.solver
        solvers = {"tsit5": dfx.Tsit5, "kvaerno5": dfx.Kvaerno5, "dopri5": dfx.Dopri5, "dopri8": dfx.Dopri8}
        if name not in solvers:
            raise ValueError(f"unknown solver {name!r}; choose from {sorted(solvers)}")
        return solvers[name]()

    def make_adjoint(self):
        if self.adjoint == "recursive":
            return dfx.RecursiveCheckpointAdjoint()
        if self.adjoint == "forward":
            return dfx.ForwardMode()
        raise ValueError(f"adjoint must be 'recursive' or 'forward', got {self.adjoint!r}")


class EncodedBatch(NamedTuple):
    """One batch's protocol as padded arrays (numpy on the host, stacked over batches for the solver)."""

    t0: np.ndarray  # (N,) segment starts = event times, h
    t1: np.ndarray  # (N,) segment ends, h
    code: np.ndarray  # (N,) int32 EventCode
    amount: np.ndarray  # (N,)
    conc: np.ndarray  # (N, n_species)
    y0: np.ndarray  # (n_state,)
    grid: np.ndarray  # (G,) output times, h
    pre_index: np.ndarray  # (G,) segment giving the pre value; -1 = initial state
    post_index: np.ndarray  # (G,) segment giving the post value
    valid: np.ndarray  # (G,) grid time within the batch's span
    covariates: np.ndarray = np.zeros(0)  # (n_covariates,) the batch's encoded covariates (dimensionless, O(1))


def _round_up(n: int, multiple: int = 8) -> int:
    return max(multiple, int(math.ceil(n / multiple) * multiple))


def _event_rows(kinetics: AbstractKinetics, protocol: Protocol, batch: str) -> tuple[list, list[str]]:
    """(time, code, amount, conc) per event, and notes on events this model ignores."""
    species = list(kinetics.species)
    n = len(species)
    rows, ignored = [], []

    def composition(medium_name: str | None, event) -> np.ndarray:
        medium = protocol.media.get(medium_name) if medium_name else None
        if medium is None or not medium.is_known:
            raise CampaignValidationError(Problem(
                "protocol", f"{event.kind.value} at {event.time_h:g} h uses medium {medium_name!r}, whose "
                            "composition is not recorded; give its composition (media.csv) to simulate this batch",
                batch=batch, column="medium"))
        return np.asarray([medium.concentrations.get(s, 0.0) for s in species])

    def one_hot(target: str) -> np.ndarray:
        vector = np.zeros(n)
        vector[species.index(target)] = 1.0
        return vector

    profile = protocol.volume_profile()[1:]  # (time, volume before, volume after) of each event, in event order
    for event, (_, volume_before, _) in zip(protocol.events, profile, strict=True):
        kind, zero = event.kind, np.zeros(n)
        if kind is EventKind.SAMPLE:
            rows.append((event.time_h, EventCode.SAMPLE, event.amount, zero))
        elif kind is EventKind.BOLUS and event.unit == "L":
            rows.append((event.time_h, EventCode.BOLUS_MEDIUM, event.amount, composition(event.medium, event)))
        elif kind is EventKind.BOLUS:
            if event.target in species:
                rows.append((event.time_h, EventCode.BOLUS_SPECIES, event.amount, one_hot(event.target)))
            else:
                ignored.append(f"bolus of {event.target} at {event.time_h:g} h (not a state of this model)")
        elif kind in (EventKind.FEED_RATE, EventKind.PERFUSION):
            code = EventCode.FEED_RATE if kind is EventKind.FEED_RATE else EventCode.PERFUSION
            conc = composition(event.medium, event) if event.amount > 0 else zero
            rows.append((event.time_h, code, event.amount, conc))
        elif kind is EventKind.BLEED:
            rows.append((event.time_h, EventCode.BLEED, event.amount, zero))
        elif kind is EventKind.EXCHANGE:
            fraction = event.amount if event.unit == "1" else event.amount / volume_before
            code = EventCode.SPLIT if event.target == "split" else EventCode.EXCHANGE
            rows.append((event.time_h, code, min(max(fraction, 0.0), 1.0), composition(event.medium, event)))
        elif kind is EventKind.SETPOINT:
            code = {"temperature": EventCode.SETPOINT_TEMPERATURE, "ph": EventCode.SETPOINT_PH,
                    "do": EventCode.SETPOINT_DO}[event.target]
            rows.append((event.time_h, code, event.amount, zero))
        elif kind is EventKind.TRANSFECTION:
            rows.append((event.time_h, EventCode.TRANSFECTION, event.amount, zero))
        elif kind is EventKind.STIMULUS:
            if event.target in species:
                rows.append((event.time_h, EventCode.STIMULUS_SPECIES, event.amount, one_hot(event.target)))
            elif event.target and event.unit != "1":
                ignored.append(f"stimulus {event.target} at {event.time_h:g} h (not a state of this model)")
            else:
                rows.append((event.time_h, EventCode.STIMULUS, event.amount, zero))
        # HARVEST ends the batch (its time is the batch's end); nothing to apply.
    return rows, ignored


def batch_end(protocol: Protocol, times: np.ndarray) -> float:
    """The end of a batch: its harvest, else the last of its output times and events."""
    if protocol.harvest_time is not None:
        return float(protocol.harvest_time)
    last_event = max((e.time_h for e in protocol.events), default=0.0)
    finite = times[np.isfinite(times)]
    return float(max(last_event, finite.max() if finite.size else 0.0))


def encode(kinetics: AbstractKinetics, protocol: Protocol, y0: np.ndarray, grid: np.ndarray, t_end: float,
           n_segments: int, batch: str = "batch", n_grid: int | None = None,
           rows: tuple[list, list[str]] | None = None) -> tuple[EncodedBatch, list[str]]:
    """Encodes one protocol for the solver (see the module docstring).

    Every event and every output time is a segment boundary, so the solver only ever saves the end of a segment:
    a value at an output time t is ``pre`` = the end of the segment that ends at t, ``post`` = the start (after the
    event jumps) of the last segment that starts at t.

    Args:
        grid: output times, h (those after `t_end` are dropped).
        n_segments: padded number of segments (`segments_needed` gives the minimum).
        n_grid: padded number of output times (default: as many as in `grid`).
        rows: the protocol's rows from `_event_rows`, when the caller already has them.
    """
    rows, ignored = rows if rows is not None else _event_rows(kinetics, protocol, batch)
    n_species = len(kinetics.species)
    zero = np.zeros(n_species)
    rows = [r for r in rows if r[0] <= t_end]
    grid = np.unique(np.asarray(grid, dtype=np.float64))
    grid = grid[(grid >= 0) & (grid <= t_end + 1e-9)]
    event_times = {r[0] for r in rows}
    boundaries = [(t, EventCode.NOOP, 0.0, zero) for t in grid if t not in event_times and t > 0]
    rows = sorted([(0.0, EventCode.NOOP, 0.0, zero), *rows, *boundaries], key=lambda r: r[0])  # stable
    rows.append((t_end, EventCode.NOOP, 0.0, zero))
    if len(rows) > n_segments:
        raise ValueError(f"{len(rows)} segments do not fit the padded count {n_segments}")
    rows += [(t_end, EventCode.NOOP, 0.0, zero)] * (n_segments - len(rows))
    t0 = np.asarray([r[0] for r in rows], dtype=np.float64)
    t1 = np.append(t0[1:], t_end)
    n_grid = grid.size if n_grid is None else n_grid
    if grid.size > n_grid:
        raise ValueError(f"{grid.size} output times do not fit the padded count {n_grid}")
    valid = np.zeros(n_grid, dtype=bool)
    valid[: grid.size] = True
    padded = np.concatenate([grid, np.full(n_grid - grid.size, t_end)])
    # pre: the end of the last segment starting strictly before t (-1: the initial state);
    # post: the start of the last segment starting at or before t.
    pre_index = np.searchsorted(t0, padded, side="left") - 1
    post_index = np.searchsorted(t0, padded, side="right") - 1
    pre_index[padded <= 0] = -1
    encoded = EncodedBatch(t0, t1, np.asarray([int(r[1]) for r in rows], dtype=np.int32),
                           np.asarray([r[2] for r in rows], dtype=np.float64), np.stack([r[3] for r in rows]),
                           np.asarray(y0, dtype=np.float64), padded, pre_index.astype(np.int32),
                           post_index.astype(np.int32), valid)
    return encoded, ignored


def segments_needed(kinetics: AbstractKinetics, protocol: Protocol, grid: np.ndarray, t_end: float,
                    rows: list | None = None) -> int:
    """How many segments `encode` needs for this protocol and output grid."""
    rows = rows if rows is not None else _event_rows(kinetics, protocol, "batch")[0]
    times = {r[0] for r in rows if r[0] <= t_end}
    grid = np.asarray(grid, dtype=np.float64)
    extra = {t for t in grid[(grid > 0) & (grid <= t_end + 1e-9)] if t not in times}
    return 2 + sum(1 for r in rows if r[0] <= t_end) + len(extra)


def scan_segments(kinetics: AbstractKinetics, settings: SolverSettings, params, y0, inputs: Inputs, t0, t1, code,
                  amount, conc, dt0: float = 0.1, save_ts=None):
    """The segmented solve, shared by simulation and control: segment i applies its event at ``t0[i]``
    (`cgt_twin.models.balance.apply_event`), then integrates to ``t1[i]``, from state `y0` and `inputs`.

    The scan body is kept to the event jump and the solve: on CPU every extra small operation inside the loop costs a
    kernel launch per segment, so any selection or check happens after the scan. Each segment starts with the step
    size the previous one ended with (the first with `dt0`, h).

    Args:
        save_ts: optional sorted times (K,), h: each segment also returns its solution at these times clipped to the
            segment, by the solver's dense interpolation (no extra steps). A forecast saves its output times this way
            instead of making each a segment boundary: every boundary restarts the solver for every particle
            (measured on the 72 h forecast of 256 CHO particles: 32 ms with 16 boundaries, 13 ms with one segment
            and 12 interpolated times, while the solver took ~60 steps).

    Returns:
        ``(starts, ends, codes, steps, inputs_end, saved)``: the state right after each event and at each segment's
        end (segment, state; canonical units), a status code per segment (a diffrax result, or `NONFINITE_STATE`),
        the accepted steps per segment, the inputs after the last event, and with `save_ts` the states at those
        times (segment, K, state) — None without.
    """
    scale = jnp.asarray(kinetics.state_scales())
    solver = settings.make_solver(kinetics)
    controller = dfx.PIDController(rtol=settings.rtol, atol=settings.atol)
    adjoint = settings.make_adjoint()
    term = dfx.ODETerm(lambda t, z, u: vector_field(kinetics, t, z * scale, u, params) / scale)

    def solve(z, u, dt, start, end):
        length = end - start
        saveat = dfx.SaveAt(t1=True) if save_ts is None else dfx.SaveAt(ts=jnp.clip(save_ts, start, end), t1=True)
        sol = dfx.diffeqsolve(term, solver, start, end, jnp.clip(dt, 1e-6, jnp.maximum(length, 1e-6)), z, args=u,
                              saveat=saveat, stepsize_controller=controller,
                              max_steps=settings.max_steps, throw=False, adjoint=adjoint)
        steps = sol.stats["num_accepted_steps"]
        dt = jnp.where(steps > 0, length / jnp.maximum(steps, 1), dt)
        saved = None if save_ts is None else sol.ys[:-1]
        return sol.ys[-1], dt, sol.result._value.astype(jnp.int32), steps.astype(jnp.int32), saved

    def skip(z, u, dt, start, end):  # an empty segment (padding, or events at one time): nothing to integrate
        saved = None if save_ts is None else jnp.broadcast_to(z, (save_ts.shape[0], *z.shape))
        return z, dt, jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32), saved

    def step(carry, xs):
        z, u, dt = carry
        start, end, event, size, medium = xs
        y, u = apply_event(kinetics, start, z * scale, u, event, size, medium, params)
        z = y / scale
        # where the segment table is shared (control: vmapped over particles, one table) this is a real branch and
        # an empty row costs nothing; vmapped over batches with their own tables it becomes a select
        z_end, dt, result, steps, saved = jax.lax.cond(end > start, solve, skip, z, u, dt, start, end)
        return (z_end, u, dt), (z, z_end, result, steps, saved)

    carry0 = (jnp.asarray(y0) / scale, inputs, jnp.asarray(dt0, dtype=float))
    (_, inputs_end, _), (starts, ends, results, steps, saved) = jax.lax.scan(step, carry0,
                                                                             (t0, t1, code, amount, conc))
    finite = jnp.all(jnp.isfinite(ends), axis=1) & jnp.all(jnp.isfinite(starts), axis=1)
    codes = jnp.where((results == 0) & ~finite, NONFINITE_STATE, results).astype(jnp.int32)
    return starts * scale, ends * scale, codes, steps, inputs_end, None if saved is None else saved * scale


def first_failure(codes):
    """``(index of the first failed segment (the count if none), status code of that failure (0 if none))``."""
    n_segments = codes.shape[0]
    failed = codes != 0
    first = jnp.where(jnp.any(failed), jnp.argmax(failed), n_segments)
    return first, jnp.where(first < n_segments, codes[jnp.minimum(first, n_segments - 1)], 0)


def _solve_one(kinetics: AbstractKinetics, settings: SolverSettings, params, enc: EncodedBatch):
    """Solves one encoded batch (`scan_segments` from inoculation): returns (pre (G, n), post (G, n), status code,
    accepted steps); from the first failed segment on, values are NaN, never plausible numbers."""
    inputs = Inputs.initial(len(kinetics.species), covariates=enc.covariates)
    y0 = jnp.asarray(enc.y0)
    starts, ends, codes, steps, _, _ = scan_segments(kinetics, settings, params, y0, inputs, enc.t0, enc.t1, enc.code,
                                                     enc.amount, enc.conc)
    pre = jnp.where((enc.pre_index >= 0)[:, None], ends[jnp.maximum(enc.pre_index, 0)], y0)
    post = starts[enc.post_index]
    first, status = first_failure(codes)
    pre = jnp.where(((enc.pre_index >= first) | ~enc.valid)[:, None], jnp.nan, pre)
    post = jnp.where(((enc.post_index >= first) | ~enc.valid)[:, None], jnp.nan, post)
    return pre, post, status, jnp.sum(steps).astype(jnp.int32)


def _solve_batches(kinetics: AbstractKinetics, settings: SolverSettings, params, encoded: EncodedBatch,
                   params_per_batch: bool = False):
    """All batches at once: one `vmap` of the segmented solve (one compilation per model structure, settings and
    shape), through `_batch_solver`. Returns ``(pre, post, status, steps)`` as `_solve_one`, with a leading batch axis.
    """
    leaves, structure = jax.tree.flatten(kinetics)
    arrays = [leaf if eqx.is_array(leaf) else None for leaf in leaves]  # e.g. a neural residual's weights
    others = tuple(None if eqx.is_array(leaf) else leaf for leaf in leaves)
    return _batch_solver(structure, others, settings, bool(params_per_batch))(arrays, params, encoded)


@functools.lru_cache(maxsize=64)
def _batch_solver(structure, others: tuple, settings: SolverSettings, params_per_batch: bool):
    """The compiled all-batches solve for one model structure and solver settings: a `jax.jit` function of
    ``(the kinetics' array leaves, params, encoded)``, cached by the kinetics' tree structure and its other leaves, so
    that each call goes through `jax.jit`'s own dispatch; `eqx.filter_jit` partitions and hashes every argument on
    every call (measured on the 14-day CHO benchmark, 2-core CPU: 65 µs more per call, a quarter of the solve).

    A single batch is solved without the `vmap`: a batched solve runs every segment's `lax.cond` as a select and
    every while loop in lock-step form, which for one batch only adds work (same benchmark: 0.32 ms vmapped, 0.24 ms
    without; from 3 batches on the `vmap` is faster than a sequential `lax.map`, and far faster for
    gradients)."""

    def solve(arrays, params, encoded: EncodedBatch):
        leaves = [other if array is None else array for array, other in zip(arrays, others, strict=True)]
        kinetics = jax.tree.unflatten(structure, leaves)
        if encoded.t0.shape[0] == 1:
            squeeze = lambda tree: jax.tree.map(lambda a: a[0], tree)  # noqa: E731
            one = _solve_one(kinetics, settings, squeeze(params) if params_per_batch else params, squeeze(encoded))
            return jax.tree.map(lambda a: jnp.asarray(a)[None], one)
        in_axes = (0 if params_per_batch else None, 0)
        return jax.vmap(lambda p, e: _solve_one(kinetics, settings, p, e), in_axes=in_axes)(params, encoded)

    return jax.jit(solve)


@eqx.filter_jit
def _observe(kinetics: AbstractKinetics, params, states, params_per_batch: bool = False):
    """Observed variables for states of shape (batch, ..., state)."""

    def one_batch(p, batch_states):
        flat = batch_states.reshape(-1, batch_states.shape[-1])
        out = jax.vmap(lambda y: kinetics.observe(kinetics.layout.unpack(y), p))(flat)
        return {k: v.reshape(batch_states.shape[:-1]) for k, v in out.items()}

    return jax.vmap(one_batch, in_axes=(0 if params_per_batch else None, 0))(params, states)


def initial_state(kinetics: AbstractKinetics, campaign: Campaign, batch: str) -> tuple[dict[str, float], dict]:
    """A batch's initial state from its data: the measured value at t = 0 (mean of replicates, censored values
    not used), else the initial medium's concentration, else the model's default. Dead cells come from viability
    when only viable cells and viability were measured.

    Returns:
        ``(state, source)``: values in canonical units and, per state, where the value came from.
    """
    protocol = campaign.protocols[batch]
    state = kinetics.default_initial_state()
    source = {name: "model default" for name in state}
    state["volume"], source["volume"] = protocol.initial_volume, "protocol"
    medium = protocol.media.get(protocol.initial_medium) if protocol.initial_medium else None
    if medium is not None:
        for name in kinetics.species:
            if name in medium.concentrations:
                state[name], source[name] = float(medium.concentrations[name]), f"medium {medium.name}"
    times = campaign.times
    at_zero = np.nonzero(np.isclose(times, 0.0, atol=1e-9))[0]

    def measured(variable: str) -> float | None:
        if variable not in campaign.variables or not at_zero.size:
            return None
        values = campaign.data[variable].sel(batch=batch, phase="pre").values[at_zero[0]]
        flags = campaign.censored[variable].sel(batch=batch, phase="pre").values[at_zero[0]]
        usable = values[np.isfinite(values) & (flags == 0)]
        return float(usable.mean()) if usable.size else None

    for name in ("vcd", "dead_cells", *kinetics.species):
        value = measured(name)
        if value is not None:
            state[name], source[name] = value, "measured at 0 h"
    if source["dead_cells"] == "model default":
        viability = measured("viability")
        if viability is not None and source["vcd"] == "measured at 0 h" and viability > 0:
            state["dead_cells"] = state["vcd"] * (1 - viability) / viability
            source["dead_cells"] = "from viability at 0 h"
    return state, source


def _as_twin(model: Twin | AbstractKinetics) -> Twin:
    if isinstance(model, Twin):
        return model
    if isinstance(model, AbstractKinetics):
        return Twin(model)
    raise TypeError(f"expected a Twin or a kinetics, got {type(model).__name__}")


class Prepared(NamedTuple):
    """A campaign or set of protocols encoded for the solver (host-side work done once, reusable across solves).

    Attributes:
        twin: the model.
        names: the simulated batches, in order.
        grid: the output times, h (unpadded).
        encoded: the stacked, padded protocols (JAX arrays with a leading batch axis).
        skipped: batch -> why it was not simulated.
        notes: events the model ignores and covariate levels it has not seen, per batch.
        grid_index: where each batch's own output times sit in `grid` (a campaign's batches are solved at their own
            measurement times only, then placed on the common grid).
    """

    twin: Twin
    names: tuple[str, ...]
    grid: np.ndarray
    encoded: EncodedBatch
    skipped: dict[str, str]
    notes: list[str]
    grid_index: np.ndarray  # (batch, own grid) -> index into `grid`, -1 for padding


def prepare(model: Twin | AbstractKinetics, data: Campaign | Protocol | Mapping[str, Protocol],
            times: Sequence[float] | np.ndarray | None = None, *,
            initial_states: Mapping[str, Mapping[str, float]] | Mapping[str, float] | None = None,
            batches: Sequence[str] | None = None,
            covariates: Mapping[str, Mapping[str, object]] | Mapping[str, object] | None = None) -> Prepared:
    """Checks and encodes what `simulate` will solve (see `simulate` for the arguments). Fitting and sampling call
    this once and then solve many times with other parameters."""
    twin = _as_twin(model)
    kinetics = twin.kinetics
    protocols, states, skipped, notes = _collect(kinetics, data, initial_states, batches)
    encoding = kinetics.covariate_encoding
    covariate_vectors: dict[str, np.ndarray] = {}
    if encoding.names and protocols:
        covariate_vectors, covariate_notes = encoding.encode(_covariate_rows(data, tuple(protocols), covariates,
                                                                             encoding.names))
        notes = [*notes, *covariate_notes]
        for note in covariate_notes:
            warnings.warn(note, UnseenCovariateWarning, stacklevel=2)
    explicit_times = times
    if times is None:
        if isinstance(data, Campaign):
            times = data.times
        else:
            end = max(batch_end(p, np.asarray([0.0])) for p in protocols.values()) if protocols else 0.0
            times = np.arange(0.0, end + 1e-9, 1.0)
    grid = np.unique(np.asarray(times, dtype=np.float64))
    if grid.size == 0 or np.any(grid < 0) or not np.all(np.isfinite(grid)):
        raise CampaignValidationError(Problem("times", "output times must be finite, >= 0 and not empty"))
    names = tuple(protocols)
    if not names:
        return Prepared(twin, names, grid, None, skipped, notes, None)
    own_grids, ends = {}, {}
    for name in names:
        own = _batch_times(data, name, grid) if isinstance(data, Campaign) and explicit_times is None else grid
        ends[name] = batch_end(protocols[name], own)
        own_grids[name] = own[own <= ends[name] + 1e-9]
    rows = {name: _event_rows(kinetics, protocols[name], name) for name in names}  # once per batch
    n_grid = _round_up(max(g.size for g in own_grids.values()), 8)
    n_segments = _round_up(max(segments_needed(kinetics, protocols[n], own_grids[n], ends[n], rows[n][0])
                               for n in names), 8)
    encoded, grid_index = [], np.full((len(names), n_grid), -1, dtype=np.int64)
    for i, name in enumerate(names):
        y0 = np.asarray([states[name][s] for s in kinetics.layout.names], dtype=np.float64)
        enc, ignored = encode(kinetics, protocols[name], y0, own_grids[name], ends[name], n_segments, name, n_grid,
                              rows[name])
        if name in covariate_vectors:
            enc = enc._replace(covariates=covariate_vectors[name])
        encoded.append(enc)
        grid_index[i, : own_grids[name].size] = np.searchsorted(grid, own_grids[name])
        notes += [f"batch {name}: {note}" for note in ignored]
    stacked = EncodedBatch(*(jnp.asarray(np.stack(field)) for field in zip(*encoded, strict=True)))
    return Prepared(twin, names, grid, stacked, skipped, notes, grid_index)


def _covariate_rows(data, names: Sequence[str], overrides, wanted: Sequence[str]) -> dict[str, dict[str, object]]:
    """batch -> covariate -> raw value: a campaign's batch metadata, overridden by `overrides` (batch -> covariate ->
    value; for a single protocol, covariate -> value). Missing ones are left out (the encoding rejects them)."""
    overrides = dict(overrides or {})
    rows: dict[str, dict[str, object]] = {b: {} for b in names}
    if isinstance(data, Campaign):
        meta = data.batch_metadata()
        for b in names:
            rows[b].update({n: meta.loc[b, n] for n in wanted if n in meta.columns})
    for b in names:
        given = overrides if isinstance(data, Protocol) else overrides.get(b, {})
        if not isinstance(given, Mapping):
            raise CampaignValidationError(Problem("covariates", "give covariates as batch -> covariate -> value (a "
                                                                "single protocol: covariate -> value)", batch=b))
        rows[b].update({n: v for n, v in given.items() if n in wanted})
    return rows


def _scatter(values: np.ndarray, grid_index: np.ndarray, n_grid: int) -> np.ndarray:
    """Per-batch outputs (..., batch, own time, ...) onto the common grid (..., batch, time, ...), NaN elsewhere."""
    values = np.asarray(values)
    batch_axis = values.ndim - 3  # (..., batch, own_time, state)
    shape = list(values.shape)
    shape[batch_axis + 1] = n_grid
    out = np.full(shape, np.nan)
    for b in range(grid_index.shape[0]):
        ok = grid_index[b] >= 0
        index = [slice(None)] * values.ndim
        index[batch_axis] = b
        target = list(index)
        index[batch_axis + 1] = np.nonzero(ok)[0]
        target[batch_axis + 1] = grid_index[b][ok]
        out[tuple(target)] = values[tuple(index)]
    return out


def _per_batch_params(kinetics, params, names, skipped, batch_params):
    unknown = set(batch_params) - set(names) - set(skipped)
    if unknown:
        raise CampaignValidationError(Problem("batch_params", f"unknown batches {sorted(unknown)}"))
    from .models.parameters import check_values

    for b, values in batch_params.items():
        check_values(kinetics.parameters, values, f"batch_params[{b!r}]")
    return {k: jnp.asarray([batch_params.get(b, {}).get(k, v) for b in names], dtype=jnp.float64)
            for k, v in params.items()}


def simulate(model: Twin | AbstractKinetics, data: Campaign | Protocol | Mapping[str, Protocol] | Prepared,
             times: Sequence[float] | np.ndarray | None = None, *,
             initial_states: Mapping[str, Mapping[str, float]] | Mapping[str, float] | None = None,
             batches: Sequence[str] | None = None, settings: SolverSettings | None = None,
             params: Mapping | None = None,
             batch_params: Mapping[str, Mapping[str, float]] | None = None,
             covariates: Mapping[str, Mapping[str, object]] | Mapping[str, object] | None = None) -> Trajectory:
    """Simulates every batch's protocol from its initial state.

    Args:
        model: a `Twin` (kinetics + parameter values) or a kinetics (default parameters).
        data: a `Campaign` (each batch's protocol; initial states from its data), one `Protocol`, a mapping of
            batch name -> `Protocol`, or the result of `prepare`.
        times: output times in h (default: the campaign's measurement times; for protocols, hourly to the end).
        initial_states: initial state (canonical units, by state name) for a protocol, or batch -> state; for a
            campaign, overrides per batch. States not given come from the data, the medium or the model default.
        batches: simulate only these batches of a campaign.
        settings: solver settings.
        params: parameter values overriding the twin's (a pytree; values may be JAX arrays, for gradients).
        batch_params: batch -> parameter values for that batch only (batch-to-batch variation).
        covariates: batch covariates for a model whose neural residual sees them (`cgt_twin.hybrid.ResidualSpec`):
            batch -> covariate -> value (clone, donor, a dose in its unit …); for one protocol, covariate -> value.
            For a campaign they come from its batch metadata and these override them. Ignored by models without
            covariates. A level not seen in training is the population input, noted in ``attrs["notes"]`` and warned
            (`cgt_twin.models.covariates.UnseenCovariateWarning`).

    Returns:
        A `Trajectory`: dims ``(batch, time, phase)``; one data variable per state and per observed variable
        (canonical units in ``attrs["units"]``), ``status`` per batch ("ok" or the failure), ``num_steps`` per
        batch; ``attrs["skipped"]`` lists batches that were not simulated and why (e.g. feeds not recorded).

    Raises:
        CampaignValidationError: for a campaign of another cell type, unknown batches, a protocol this model
            cannot simulate, or a batch without a covariate the model needs.
    """
    twin = _as_twin(model)
    prepared = data if isinstance(data, Prepared) else prepare(twin, data, times, initial_states=initial_states,
                                                               batches=batches, covariates=covariates)
    kinetics = twin.kinetics
    settings = settings or SolverSettings()
    params = dict(twin.params) if params is None else \
        {**twin.params, **{k: jnp.asarray(v, dtype=jnp.float64) for k, v in params.items()}}  # arrays: no retrace
    if not prepared.names:
        return _empty_trajectory(kinetics, prepared.grid, prepared.skipped)
    per_batch = bool(batch_params)
    if per_batch:
        params = _per_batch_params(kinetics, params, prepared.names, prepared.skipped, batch_params)
    pre, post, status, steps = _solve_batches(kinetics, settings, params, prepared.encoded, per_batch)
    n = prepared.grid.size
    states_out = np.stack([_scatter(pre, prepared.grid_index, n), _scatter(post, prepared.grid_index, n)],
                          axis=2)  # (batch, time, phase, state)
    return _to_dataset(twin, params, list(prepared.names), prepared.grid, states_out,
                       np.asarray(status), np.asarray(steps), prepared.skipped, prepared.notes, settings, per_batch)


@eqx.filter_jit
def _solve_draws(kinetics: AbstractKinetics, settings: SolverSettings, draws, encoded: EncodedBatch):
    """Every parameter draw on every batch: a `vmap` over draws of the `vmap` over batches."""
    return jax.vmap(lambda p: jax.vmap(lambda e: _solve_one(kinetics, settings, p, e))(encoded))(draws)


def _default_draw_chunk() -> int:
    """Draws per vmapped solve when the caller gives none: `DRAW_CHUNK` on a CPU, `ACCELERATOR_DRAW_CHUNK` else."""
    return DRAW_CHUNK if jax.default_backend() == "cpu" else ACCELERATOR_DRAW_CHUNK


def simulate_draws(model: Twin | AbstractKinetics, data: Campaign | Protocol | Mapping[str, Protocol] | Prepared,
                   draws: Mapping[str, np.ndarray], times: Sequence[float] | np.ndarray | None = None, *,
                   settings: SolverSettings | None = None, chunk_size: int | None = None,
                   **prepare_kwargs) -> xr.Dataset:
    """Simulates many parameter draws (posterior or ensemble) of the same batches in one vectorised solve.

    Args:
        model: the twin; parameters not in `draws` keep its values.
        data: as for `simulate`.
        draws: parameter name -> array of shape (n_draws,).
        times: output times, h.
        settings: solver settings.
        chunk_size: draws solved together (default `DRAW_CHUNK`, 256, on a CPU; `ACCELERATOR_DRAW_CHUNK`, 65 536,
            on a GPU). On a CPU lanes of one vmapped adaptive solve advance in lock-step and large arrays leave the
            cache, so moderate chunks are fastest (2-core CPU, 2 000 CHO draws: 0.58 s in chunks of 32, 0.31 s of
            256, 0.72 s of 1 000, 0.94 s all at once). On a GPU each solver step costs a kernel launch whatever the
            number of lanes, so the more the better (H200, 65 536 CHO draws: 14.2 s in chunks of 256, 2.13 s of
            4 096, 0.79 s all at once).

    Returns:
        A Dataset like `simulate`'s with a leading ``draw`` dimension on every variable, and ``status`` /
        ``num_steps`` of dims ``(draw, batch)``.
    """
    twin = _as_twin(model)
    prepared = data if isinstance(data, Prepared) else prepare(twin, data, times, **prepare_kwargs)
    settings = settings or SolverSettings()
    sizes = {k: np.shape(v)[0] for k, v in draws.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"every parameter needs the same number of draws, got {sizes}")
    n = next(iter(sizes.values()))
    from .models.parameters import check_values

    check_values(twin.kinetics.parameters, {k: np.asarray(v) for k, v in draws.items()}, "draws")
    full = {k: jnp.asarray(draws[k], dtype=jnp.float64) if k in draws else jnp.full(n, v, dtype=jnp.float64)
            for k, v in twin.params.items()}
    chunk = min(chunk_size or _default_draw_chunk(), n)
    padded = -(-n // chunk) * chunk  # every chunk the same size: one compilation
    full_padded = {k: jnp.concatenate([v, jnp.repeat(v[-1:], padded - n)]) for k, v in full.items()}
    outputs = []
    for start in range(0, padded, chunk):
        part = jax.tree.map(lambda a, start=start: a[start:start + chunk], full_padded)
        outputs.append(jax.device_get(_solve_draws(twin.kinetics, settings, part, prepared.encoded)))
    pre, post, status, steps = (np.concatenate(parts)[:n] for parts in zip(*outputs, strict=True))
    n_grid = prepared.grid.size
    states = np.stack([_scatter(pre, prepared.grid_index, n_grid), _scatter(post, prepared.grid_index, n_grid)],
                      axis=3)  # (draw, batch, time, phase, state)
    observed = jax.vmap(lambda p, s: _observe(twin.kinetics, p, s))(full, jnp.asarray(states))
    layout = twin.kinetics.layout
    units = layout.units()
    from .data.variables import CANONICAL_VARIABLES

    dims = ("draw", "batch", "time", "phase")
    data_vars = {name: (dims, np.asarray(values), {"units": CANONICAL_VARIABLES[name].unit
                                                   if name in CANONICAL_VARIABLES else units.get(name, "")})
                 for name, values in observed.items()}
    for i, name in enumerate(layout.names):
        if name not in data_vars:
            data_vars[name] = (dims, states[..., i], {"units": units[name], "kind": "state"})
    data_vars["status"] = (("draw", "batch"), np.vectorize(lambda s: STATUS_MESSAGES.get(int(s), f"code {s}"),
                                                           otypes=[object])(status))
    data_vars["num_steps"] = (("draw", "batch"), steps.astype(np.int64))
    for k, v in full.items():
        data_vars[f"param_{k}"] = (("draw",), np.asarray(v))
    ds = xr.Dataset(data_vars, coords={"draw": np.arange(n), "batch": np.asarray(prepared.names, dtype=object),
                                       "time": prepared.grid, "phase": ["pre", "post"]})
    ds.attrs = {"model": type(twin.kinetics).__name__, "skipped": json.dumps(prepared.skipped)}
    return ds


def _batch_times(campaign: Campaign, batch: str, grid: np.ndarray) -> np.ndarray:
    measured = np.zeros(campaign.times.size, dtype=bool)
    for variable in campaign.variables:
        values = campaign.data[variable].sel(batch=batch).values
        measured |= np.isfinite(values).reshape(values.shape[0], -1).any(axis=1)
    return campaign.times[measured] if measured.any() else grid


def _collect(kinetics, data, initial_states, batches):
    """Protocols and initial states per batch; batches that cannot be simulated go to `skipped` with a reason."""
    skipped: dict[str, str] = {}
    protocols: dict[str, Protocol] = {}
    states: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    overrides = dict(initial_states or {})
    if isinstance(data, Campaign):
        wanted = list(batches) if batches is not None else list(data.batches)
        unknown = [b for b in wanted if b not in data.protocols]
        if unknown:
            raise CampaignValidationError(Problem("campaign", f"unknown batches {unknown}"))
        meta = data.batch_metadata()
        wrong = [b for b in wanted if meta.loc[b, "cell_type"] != kinetics.cell_type]
        if wrong:
            raise CampaignValidationError(Problem(
                "campaign", f"batches {wrong} are not {kinetics.cell_type} cultures (model "
                            f"{type(kinetics).__name__}); pick the model for their cell type"))
        for b in wanted:
            protocol = data.protocols[b]
            if not protocol.feeds_known:
                skipped[b] = "feeds not recorded (feeds_known = false): simulating it as unfed would be wrong"
                continue
            state, _ = initial_state(kinetics, data, b)
            state.update(overrides.get(b, {}))
            protocols[b], states[b] = protocol, state
    else:
        mapping = {"batch": data} if isinstance(data, Protocol) else dict(data)
        single = isinstance(data, Protocol)
        for b, protocol in mapping.items():
            if not protocol.feeds_known:
                skipped[b] = "feeds not recorded (feeds_known = false): simulating it as unfed would be wrong"
                continue
            state = kinetics.default_initial_state()
            state["volume"] = protocol.initial_volume
            medium = protocol.media.get(protocol.initial_medium) if protocol.initial_medium else None
            if medium is not None:
                state.update({s: v for s, v in medium.concentrations.items() if s in kinetics.species})
            given = overrides if single else overrides.get(b, {})
            state.update(given)
            protocols[b], states[b] = protocol, state
    for b in list(protocols):
        try:
            _event_rows(kinetics, protocols[b], b)
        except CampaignValidationError as err:
            skipped[b] = "; ".join(p.message for p in err.problems)
            del protocols[b], states[b]
        else:
            unknown_states = set(states[b]) - set(kinetics.layout.names)
            if unknown_states:
                raise CampaignValidationError(Problem("initial state", f"unknown states {sorted(unknown_states)} "
                                                                       f"for {type(kinetics).__name__}", batch=b))
            bad = {k: v for k, v in states[b].items() if not (math.isfinite(v) and v >= 0)}
            if bad:
                raise CampaignValidationError(Problem("initial state", f"initial values must be finite and >= 0: "
                                                                       f"{bad}", batch=b))
    for b, why in skipped.items():
        warnings.warn(f"batch {b} not simulated: {why}", stacklevel=3)
    return protocols, states, skipped, notes


def _to_dataset(twin, params, names, grid, states, status, steps, skipped, notes, settings,
                per_batch=False) -> xr.Dataset:
    kinetics = twin.kinetics
    layout = kinetics.layout
    units = layout.units()
    coords = {"batch": np.asarray(names, dtype=object), "time": grid, "phase": ["pre", "post"]}
    data_vars = {}
    observed = _observe(kinetics, params, jnp.asarray(states), per_batch)
    from .data.variables import CANONICAL_VARIABLES

    for name, values in observed.items():
        unit = CANONICAL_VARIABLES[name].unit if name in CANONICAL_VARIABLES else units.get(name, "")
        data_vars[name] = (("batch", "time", "phase"), np.asarray(values), {"units": unit})
    for i, name in enumerate(layout.names):
        key = name if name not in data_vars else name
        if key in data_vars:
            continue
        data_vars[key] = (("batch", "time", "phase"), states[..., i], {"units": units[name], "kind": "state"})
    data_vars["status"] = (("batch",), np.asarray([STATUS_MESSAGES.get(int(s), f"solver code {int(s)}")
                                                   for s in status], dtype=object))
    data_vars["num_steps"] = (("batch",), steps.astype(np.int64))
    ds = xr.Dataset(data_vars, coords=coords)
    ds["time"].attrs = {"units": "h", "long_name": "time from inoculation"}
    ds.attrs = {"model": type(kinetics).__name__, "cell_type": kinetics.cell_type,
                "params": json.dumps({k: np.asarray(v).tolist() for k, v in params.items()}),
                "solver": json.dumps(dataclasses.asdict(settings)), "skipped": json.dumps(skipped),
                "notes": json.dumps(notes), "states": json.dumps(list(layout.names))}
    return ds


def _empty_trajectory(kinetics, grid, skipped) -> xr.Dataset:
    ds = xr.Dataset(coords={"batch": np.asarray([], dtype=object), "time": grid, "phase": ["pre", "post"]})
    ds.attrs = {"model": type(kinetics).__name__, "skipped": json.dumps(skipped), "notes": "[]"}
    return ds


def trajectory_to_long(trajectory: xr.Dataset, variables: Sequence[str] | None = None) -> pd.DataFrame:  # noqa: F821
    """A trajectory as the long table ``batch, time_h, variable, value, unit, phase`` (finite values only; post
    rows only where they differ from pre)."""
    import pandas as pd

    skip = {"status", "num_steps"}
    variables = [v for v in (variables or trajectory.data_vars) if v not in skip]
    frames = []
    for variable in variables:
        values = trajectory[variable].transpose("batch", "time", "phase").values
        pre, post = values[..., 0], values[..., 1]
        for phase, array, keep in (("pre", pre, np.isfinite(pre)),
                                   ("post", post, np.isfinite(post) & ~np.isclose(post, pre, rtol=1e-12, atol=0))):
            b, t = np.nonzero(keep)
            frames.append(pd.DataFrame({"batch": trajectory["batch"].values[b].astype(str),
                                        "time_h": trajectory["time"].values[t], "variable": variable,
                                        "value": array[b, t], "unit": trajectory[variable].attrs.get("units", ""),
                                        "phase": phase}))
    if not frames:
        return pd.DataFrame(columns=["batch", "time_h", "variable", "value", "unit", "phase"])
    return pd.concat(frames, ignore_index=True).sort_values(["batch", "time_h", "variable", "phase"],
                                                            kind="stable").reset_index(drop=True)
