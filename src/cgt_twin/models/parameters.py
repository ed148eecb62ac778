"""Named kinetic parameters with units, bounds, priors and their unconstrained transform.

Every kinetics module lists its parameters as `Parameter` specs. Values travel through JAX code as a plain ``dict``
of name -> array (a pytree, so it can be vmapped over posterior draws and differentiated), always in the unit the
spec states. Positive parameters are optimised and sampled as their natural logarithm.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from ..data.errors import CampaignValidationError, Problem
from ..data.units import UnitConversionError, convert

__all__ = ["Parameter", "defaults", "check_values", "to_unconstrained", "from_unconstrained", "read_parameter_file",
           "parameter_table"]


@dataclasses.dataclass(frozen=True)
class Parameter:
    """A kinetic parameter.

    Attributes:
        name: identifier used in code, files and reports (``mu_max``).
        default: published or chosen default value, in `unit`.
        unit: unit of the value (pint syntax; ``"1/h"``, ``"mM"``, ``"mmol/(1e9 cells)/h"``).
        description: what it means.
        source: where the default comes from (paper, table, code).
        lower, upper: hard bounds of physically meaningful values, in `unit`.
        prior_sigma: standard deviation of the log-normal prior around `default` (natural-log scale); 0.5 is a
            factor of about 1.65 at one sigma.
        positive: optimised in log space (True for rate constants, yields, half-saturation constants).
    """

    name: str
    default: float
    unit: str
    description: str
    source: str = ""
    lower: float = 0.0
    upper: float = math.inf
    prior_sigma: float = 0.5
    positive: bool = True

    def __post_init__(self):
        if not (self.lower <= self.default <= self.upper):
            raise ValueError(f"parameter {self.name}: default {self.default} outside bounds [{self.lower}, "
                             f"{self.upper}]")
        if self.positive and self.default <= 0:
            raise ValueError(f"parameter {self.name}: positive parameter with default {self.default}")
        if not self.prior_sigma > 0:
            raise ValueError(f"parameter {self.name}: prior_sigma must be > 0")


def defaults(specs: Sequence[Parameter]) -> dict[str, jnp.ndarray]:
    """The default values as a dict of float64 scalars."""
    return {p.name: jnp.asarray(p.default, dtype=jnp.float64) for p in specs}


def check_values(specs: Sequence[Parameter], values: Mapping[str, float], source: str = "parameters") -> None:
    """Raises `CampaignValidationError` for unknown names, non-finite values or values outside bounds."""
    known = {p.name: p for p in specs}
    problems = []
    for name, value in values.items():
        if name not in known:
            from ..data.variables import suggest

            problems.append(Problem(source, f"unknown parameter {name!r}{suggest(name, known)}", column=name))
            continue
        array = np.asarray(value, dtype=np.float64)
        spec = known[name]
        if not np.all(np.isfinite(array)):
            problems.append(Problem(source, f"{name} must be finite, got {value!r}", column=name))
        elif np.any(array < spec.lower) or np.any(array > spec.upper) or (spec.positive and np.any(array <= 0)):
            problems.append(Problem(source, f"{name} = {value!r} {spec.unit} outside its bounds "
                                            f"[{spec.lower:g}, {spec.upper:g}]" + (" (must be > 0)" if spec.positive
                                                                                   else ""), column=name))
    if problems:
        raise CampaignValidationError(problems)


def to_unconstrained(specs: Sequence[Parameter], values: Mapping[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """Natural values -> optimisation space (log for positive parameters)."""
    known = {p.name: p for p in specs}
    return {k: jnp.log(v) if known[k].positive else v for k, v in values.items()}


def from_unconstrained(specs: Sequence[Parameter], values: Mapping[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    """Optimisation space -> natural values (inverse of `to_unconstrained`)."""
    known = {p.name: p for p in specs}
    return {k: jnp.exp(v) if known[k].positive else v for k, v in values.items()}


def read_parameter_file(path: str | os.PathLike, specs: Sequence[Parameter]) -> dict[str, float]:
    """Reads parameter values from JSON: ``{"mu_max": 0.03}`` (in the spec's unit) or
    ``{"mu_max": {"value": 0.72, "unit": "1/d"}}`` (converted with pint). Checks names, units and bounds."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CampaignValidationError(Problem(str(path), "parameter file not found")) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CampaignValidationError(Problem(str(path), f"not valid JSON ({exc})")) from None
    if not isinstance(raw, dict):
        raise CampaignValidationError(Problem(str(path), "expected a JSON object of name -> value"))
    known = {p.name: p for p in specs}
    values: dict[str, float] = {}
    problems = []
    for name, entry in raw.items():
        spec = known.get(name)
        if isinstance(entry, dict):
            value, unit = entry.get("value"), entry.get("unit")
        else:
            value, unit = entry, None
        if not isinstance(value, int | float) or isinstance(value, bool):
            problems.append(Problem(str(path), f"{name}: value must be a number, got {value!r}", column=name))
            continue
        if spec is not None and unit is not None:
            try:
                value = float(convert(value, unit, spec.unit))
            except UnitConversionError as exc:
                problems.append(Problem(str(path), f"{name}: {exc}", column=name))
                continue
        values[name] = float(value)
    if problems:
        raise CampaignValidationError(problems)
    check_values(specs, values, str(path))
    return values


def parameter_table(specs: Sequence[Parameter]) -> str:
    """A Markdown table of the parameters (for docs and docstrings)."""
    lines = ["| name | default | unit | bounds | prior σ (log) | meaning | source |", "|---|---|---|---|---|---|---|"]
    for p in specs:
        lines.append(f"| `{p.name}` | {p.default:g} | {p.unit} | [{p.lower:g}, {p.upper:g}] | {p.prior_sigma:g} | "
                     f"{p.description} | {p.source} |")
    return "\n".join(lines)
