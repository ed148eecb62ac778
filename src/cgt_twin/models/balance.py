"""The reactor balance, shared by every model: volume, dilution, feeds, perfusion, bleeds and event jumps.

For a species c in a culture of volume V with viable cells X_v (DESIGN.md):

    d(cV)/dt = q·X_v·V + F_feed·c_feed + F_perf·(c_perf − c) − F_bleed·c      (volumetric terms added by the kinetics)

which in concentration form, with D = F/V, is dc/dt = q·X_v + D_feed·(c_feed − c) + D_perf·(c_perf − c); a bleed takes
culture out at its own concentration (dV/dt = F_feed − F_bleed, concentrations unchanged). Perfusion retains cells.
Bolus-type events are state jumps applied between solver segments (`apply_event`), never spikes in the vector field.
Mass conservation lives here, once; the kinetics only supplies specific rates.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .kinetics import AbstractKinetics, Inputs

__all__ = ["vector_field", "apply_event", "EventCode"]


class EventCode(enum.IntEnum):
    """How an event is encoded for the solver (one `lax.switch` branch each)."""

    NOOP = 0
    SAMPLE = 1  # amount: volume removed, L
    BOLUS_MEDIUM = 2  # amount: volume added, L; conc: medium composition
    BOLUS_SPECIES = 3  # amount: species amount (unit x L); conc: one-hot of the species
    FEED_RATE = 4  # amount: L/h; conc: feed composition
    PERFUSION = 5  # amount: L/h; conc: perfusion medium composition
    BLEED = 6  # amount: L/h
    EXCHANGE = 7  # amount: fraction of medium replaced (cells retained); conc: new medium
    SPLIT = 8  # amount: fraction of culture replaced by medium (cells diluted); conc: new medium
    SETPOINT_TEMPERATURE = 9
    SETPOINT_PH = 10
    SETPOINT_DO = 11
    TRANSFECTION = 12  # amount: ug DNA per mL culture (NaN if unknown)
    STIMULUS = 13  # amount: bead:cell ratio (0 removes)
    STIMULUS_SPECIES = 14  # amount: concentration added (species unit); conc: one-hot of the species


def vector_field(kinetics: AbstractKinetics, t: Float[Array, ""], y: Float[Array, " state"], inputs: Inputs,
                 params: Mapping[str, Float[Array, ""]]) -> Float[Array, " state"]:
    """d/dt of the full state vector (canonical units per h)."""
    layout = kinetics.layout
    rates = kinetics.rates(t, layout.unpack(y), inputs, params)
    volume = y[-1]
    d_feed = inputs.feed_rate / volume
    d_perf = inputs.perfusion_rate / volume
    viable, dead = y[0], y[1]
    species = y[layout.species_slice]
    d_viable = (rates.growth - rates.death) * viable - d_feed * viable
    d_dead = rates.death * viable - rates.lysis * dead - d_feed * dead
    d_species = (rates.specific * viable + rates.volumetric + d_feed * (inputs.feed_conc - species)
                 + d_perf * (inputs.perfusion_conc - species))
    parts = [jnp.stack([d_viable, d_dead]), jnp.broadcast_to(d_species, species.shape)]
    if layout.internal:
        internal = y[layout.internal_slice]
        dilution = np.array([{"per_cell": 0.0, "volumetric": 1.0, "cells": 1.0}[s.kind] for s in layout.internal])
        growth_dilution = np.array([1.0 if s.kind == "per_cell" else 0.0 for s in layout.internal])
        perfusion = np.array([1.0 if s.kind == "volumetric" else 0.0 for s in layout.internal])
        d_internal = (jnp.asarray(rates.internal) - rates.growth * growth_dilution * internal
                      - d_feed * dilution * internal - d_perf * perfusion * internal)
        parts.append(d_internal)
    parts.append(jnp.reshape(inputs.feed_rate - inputs.bleed_rate, (1,)))
    return jnp.concatenate(parts)


def apply_event(kinetics: AbstractKinetics, t: Float[Array, ""], y: Float[Array, " state"], inputs: Inputs,
                code: Array, amount: Float[Array, ""], conc: Float[Array, " species"],
                params: Mapping[str, Float[Array, ""]]) -> tuple[Float[Array, " state"], Inputs]:
    """The state and inputs right after one event (a jump for bolus-type events, new inputs for rate-type ones)."""
    layout = kinetics.layout
    n = layout.size
    sp = layout.species_slice
    cells = jnp.asarray(layout.mask(("cells",)))
    volumetric = jnp.asarray(layout.mask(("volumetric",)))
    species_mask = jnp.asarray(layout.mask(("species",)))
    conc_full = jnp.zeros(n).at[sp].set(conc)
    volume = y[-1]

    def noop(y, u):
        return y, u

    def sample(y, u):
        return y.at[-1].set(volume - amount), u

    def bolus_medium(y, u):
        f = amount / (volume + amount)
        mixed = jnp.where(species_mask, (1 - f) * y + f * conc_full, y)
        mixed = jnp.where(cells | volumetric, (1 - f) * mixed, mixed)
        return mixed.at[-1].set(volume + amount), u._replace(last_feed_time=t)

    def bolus_species(y, u):
        return y + conc_full * amount / volume, u._replace(last_feed_time=t)

    def feed_rate(y, u):
        return y, u._replace(feed_rate=amount, feed_conc=conc)

    def perfusion(y, u):
        return y, u._replace(perfusion_rate=amount, perfusion_conc=conc)

    def bleed(y, u):
        return y, u._replace(bleed_rate=amount)

    def exchange(y, u):
        out = jnp.where(species_mask, (1 - amount) * y + amount * conc_full, y)
        return jnp.where(volumetric, (1 - amount) * out, out), u

    def split(y, u):
        out = jnp.where(species_mask, (1 - amount) * y + amount * conc_full, y)
        return jnp.where(cells | volumetric, (1 - amount) * out, out), u

    def setpoint_temperature(y, u):
        return y, u._replace(temperature=amount)

    def setpoint_ph(y, u):
        return y, u._replace(ph=amount)

    def setpoint_do(y, u):
        return y, u._replace(do=amount)

    def transfection(y, u):
        return kinetics.transfect(y, amount, params), u._replace(transfection_time=t)

    def stimulus(y, u):
        return y, u._replace(stimulus=amount, stimulus_time=t)

    def stimulus_species(y, u):  # a cytokine added: a species jump; the activation stimulus is unchanged
        return y + conc_full * amount, u

    branches = [noop, sample, bolus_medium, bolus_species, feed_rate, perfusion, bleed, exchange, split,
                setpoint_temperature, setpoint_ph, setpoint_do, transfection, stimulus, stimulus_species]
    assert len(branches) == len(EventCode)
    return jax.lax.switch(code, branches, y, inputs)
