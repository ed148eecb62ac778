"""Batch covariates (clone, donor, cell line, strain, a dose …) as inputs of a model: how each batch's metadata becomes
a fixed-length vector of numbers of order one.

- A **categorical** covariate is one-hot encoded over the levels seen in training (one input per level). A level not
  seen in training encodes as all zeros — the *population* input — and is reported (a note on the simulation and an
  `UnseenCovariateWarning`), never hidden.
- A **numeric** covariate becomes (value − centre)/scale with the centre and scale (mean and standard deviation) of the
  training batches, in the covariate's own unit.

The encoding is fitted once, on the training batches (`CovariateEncoding.fit`), stored with the twin (JSON in the
artifact) and applied on the host when batches are prepared for the solver (`cgt_twin.simulate.prepare`), so a saved
twin encodes new data exactly as it encoded its training data. Inside the solver the encoded vector is array data
(`cgt_twin.models.kinetics.Inputs.covariates`): a new campaign never recompiles anything. The kinds and levels are the
structure (static, they set the network's input width); centre and scale are arrays, so refitting them on other
batches (cross-validation folds) compiles nothing anew either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..data.errors import CampaignValidationError, Problem

__all__ = ["CovariateEncoding", "UnseenCovariateWarning", "COVARIATE_KINDS", "covariate_level"]

COVARIATE_KINDS = ("categorical", "numeric")
_EXTRAPOLATION = 3.0  # |scaled value| beyond which a numeric covariate is reported as outside the training range


class UnseenCovariateWarning(RuntimeWarning):
    """A batch's covariate level was not seen in training (population input), or a numeric covariate lies far outside
    the training range. A `RuntimeWarning`, not a `UserWarning`: callers that silence routine user warnings (skipped
    batches) still see it."""


def _missing(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating) and math.isnan(value):
        return True
    if isinstance(value, str) and not value.strip():
        return True
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


def covariate_level(value: object) -> str:
    """The level name of a categorical value: text stripped; whole numbers without a decimal point (``2.0`` -> ``"2"``,
    so a clone number read from a CSV matches the same number given in code); other numbers in ``%g`` form."""
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else f"{float(value):g}"
    return str(value).strip()


def _number(value: object) -> float | None:
    if isinstance(value, bool | np.bool_):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class CovariateEncoding(eqx.Module):
    """How batch covariates become network inputs (see the module docstring).

    Attributes:
        names: the covariates, in input order (batch metadata columns, e.g. ``"clone"``, ``"donor"``).
        kinds: ``"categorical"`` or ``"numeric"``, per covariate.
        levels: per covariate, the categorical levels seen in training (one input each), ``()`` for a numeric one.
        centre: per covariate, the centre of a numeric covariate in its own unit (0 for a categorical one).
        scale: per covariate, the scale of a numeric covariate in its own unit (1 for a categorical one).
    """

    names: tuple[str, ...] = eqx.field(static=True)
    kinds: tuple[str, ...] = eqx.field(static=True)
    levels: tuple[tuple[str, ...], ...] = eqx.field(static=True)
    centre: Float[Array, " covariates"]
    scale: Float[Array, " covariates"]

    def __check_init__(self):
        n = len(self.names)
        if not (len(self.kinds) == len(self.levels) == n and np.shape(self.centre) == np.shape(self.scale) == (n,)):
            raise ValueError("covariate encoding: names, kinds, levels, centre and scale must have one entry each")
        for name, kind, levels in zip(self.names, self.kinds, self.levels, strict=True):
            if kind not in COVARIATE_KINDS:
                raise ValueError(f"covariate {name!r}: kind must be one of {COVARIATE_KINDS}, got {kind!r}")
            if kind == "categorical" and (not levels or len(set(levels)) != len(levels)):
                raise ValueError(f"covariate {name!r}: a categorical covariate needs distinct levels, got {levels}")
            if kind == "numeric" and levels:
                raise ValueError(f"covariate {name!r}: a numeric covariate has no levels")
        if np.any(~np.isfinite(np.asarray(self.scale))) or np.any(np.asarray(self.scale) <= 0):
            raise ValueError("covariate encoding: scales must be finite and positive")

    # -- construction ------------------------------------------------------------------------------------------------
    @classmethod
    def empty(cls) -> CovariateEncoding:
        """No covariates (a zero-length vector)."""
        return cls((), (), (), jnp.zeros(0, dtype=jnp.float64), jnp.ones(0, dtype=jnp.float64))

    @classmethod
    def fit(cls, metadata: Mapping[str, Mapping[str, object]], names: Sequence[str],
            kinds: Mapping[str, str] | None = None) -> CovariateEncoding:
        """The encoding of `names` learnt from the training batches' metadata.

        Args:
            metadata: batch -> covariate name -> value (e.g. ``campaign.batch_metadata().to_dict("index")``), the
                training batches only.
            names: the covariates to encode, in input order.
            kinds: covariate -> ``"categorical"`` or ``"numeric"``; by default a covariate whose values are all
                numbers is numeric, any other categorical (give ``"categorical"`` for numbered clones or donors).

        Raises:
            CampaignValidationError: no batches, a covariate that is not in the metadata or is missing for a batch, a
                numeric covariate with a value that is not a number — every problem, each naming batch and covariate.
        """
        kinds = dict(kinds or {})
        problems = []
        batches = list(metadata)
        if not batches:
            raise CampaignValidationError(Problem("batches", "no training batches to learn the covariate encoding "
                                                             "from"))
        out_kinds, out_levels, centre, scale = [], [], [], []
        for name in names:
            values = {}
            for batch in batches:
                row = metadata[batch]
                if name not in row or _missing(row[name]):
                    problems.append(_missing_problem(batch, name))
                else:
                    values[batch] = row[name]
            kind = kinds.get(name) or ("numeric" if values and all(_number(v) is not None for v in values.values())
                                       else "categorical")
            if kind not in COVARIATE_KINDS:
                problems.append(Problem("residual", f"covariate {name!r}: kind must be one of {COVARIATE_KINDS}, got "
                                                    f"{kind!r}", column=name))
                kind = "categorical"
            if kind == "numeric":
                numbers = []
                for batch, value in values.items():
                    number = _number(value)
                    if number is None:
                        problems.append(Problem("batches", f"numeric covariate {name!r} must be a finite number, got "
                                                           f"{value!r}", batch=batch, column=name))
                    else:
                        numbers.append(number)
                mean = float(np.mean(numbers)) if numbers else 0.0
                sd = float(np.std(numbers)) if numbers else 0.0
                out_levels.append(())
                centre.append(mean)
                scale.append(sd if sd > 1e-12 * max(abs(mean), 1.0) else (abs(mean) if mean != 0 else 1.0))
            else:
                out_levels.append(tuple(dict.fromkeys(covariate_level(v) for v in values.values())) or ("",))
                centre.append(0.0)
                scale.append(1.0)
            out_kinds.append(kind)
        if problems:
            raise CampaignValidationError(problems, header="cannot encode batch covariates")
        return cls(tuple(names), tuple(out_kinds), tuple(out_levels), jnp.asarray(centre, dtype=jnp.float64),
                   jnp.asarray(scale, dtype=jnp.float64))

    # -- use -------------------------------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Length of the encoded vector (one per categorical level, one per numeric covariate)."""
        return sum(len(levels) if kind == "categorical" else 1 for kind, levels in zip(self.kinds, self.levels,
                                                                                        strict=True))

    @property
    def columns(self) -> tuple[str, ...]:
        """A name per input: ``"clone=A"`` for a level, the covariate's name for a numeric one."""
        out = []
        for name, kind, levels in zip(self.names, self.kinds, self.levels, strict=True):
            out += [f"{name}={level}" for level in levels] if kind == "categorical" else [name]
        return tuple(out)

    def encode(self, values: Mapping[str, Mapping[str, object]]) -> tuple[dict[str, np.ndarray], list[str]]:
        """Encodes batches for the network (on the host, in numpy).

        Args:
            values: batch -> covariate name -> value (raw: a level, or a number in the covariate's unit).

        Returns:
            ``(vectors, notes)``: batch -> encoded vector of length `size`; one note per unseen level (population
            input) or numeric value far outside the training range, naming batch, covariate and value.

        Raises:
            CampaignValidationError: a covariate missing for a batch, or a numeric one that is not a number (every
                problem, each naming batch and covariate).
        """
        problems, notes, vectors = [], [], {}
        centre, scale = np.asarray(self.centre), np.asarray(self.scale)
        for batch, row in values.items():
            parts = []
            for i, (name, kind, levels) in enumerate(zip(self.names, self.kinds, self.levels, strict=True)):
                value = row.get(name) if isinstance(row, Mapping) else None
                if _missing(value):
                    problems.append(_missing_problem(batch, name))
                    parts.append(np.zeros(len(levels) if kind == "categorical" else 1))
                    continue
                if kind == "categorical":
                    level = covariate_level(value)
                    one_hot = np.asarray([level == known for known in levels], dtype=np.float64)
                    if not one_hot.any():
                        notes.append(f"batch {batch}: covariate {name!r} level {level!r} was not seen in training "
                                     f"(levels {', '.join(levels)}); the network gets the population input (all "
                                     "zeros)")
                    parts.append(one_hot)
                else:
                    number = _number(value)
                    if number is None:
                        problems.append(Problem("batches", f"numeric covariate {name!r} must be a finite number, "
                                                           f"got {value!r}", batch=str(batch), column=name))
                        parts.append(np.zeros(1))
                        continue
                    scaled = (number - centre[i]) / scale[i]
                    if abs(scaled) > _EXTRAPOLATION:
                        notes.append(f"batch {batch}: covariate {name!r} = {number:g} lies {scaled:+.1f} scales from "
                                     f"the training centre {centre[i]:g} (scale {scale[i]:g}): the network "
                                     "extrapolates")
                    parts.append(np.asarray([scaled]))
            vectors[str(batch)] = np.concatenate(parts) if parts else np.zeros(0)
        if problems:
            raise CampaignValidationError(problems, header="cannot encode batch covariates")
        return vectors, notes

    def vector(self, values: Mapping[str, object], batch: str = "batch") -> np.ndarray:
        """One batch's encoded vector (covariate name -> raw value), e.g. for ``Inputs.initial(n, covariates=...)``
        in code that builds its own inputs; an unseen level or a far extrapolation is warned
        (`UnseenCovariateWarning`). Raises `CampaignValidationError` for a missing covariate."""
        import warnings

        vectors, notes = self.encode({batch: values})
        for note in notes:
            warnings.warn(note, UnseenCovariateWarning, stacklevel=2)
        return vectors[str(batch)]

    # -- artifacts -------------------------------------------------------------------------------------------------------
    def to_json(self) -> list[dict]:
        """The encoding as JSON-ready records (one per covariate)."""
        out = []
        for i, (name, kind, levels) in enumerate(zip(self.names, self.kinds, self.levels, strict=True)):
            record: dict = {"name": name, "kind": kind}
            if kind == "categorical":
                record["levels"] = list(levels)
            else:
                record["centre"] = float(np.asarray(self.centre)[i])
                record["scale"] = float(np.asarray(self.scale)[i])
            out.append(record)
        return out

    @classmethod
    def from_json(cls, records: Sequence[Mapping] | None) -> CovariateEncoding:
        """Inverse of `to_json` (``None`` or ``[]``: no covariates). Raises `ValueError`/`KeyError` when malformed."""
        if not records:
            return cls.empty()
        if not isinstance(records, list) or not all(isinstance(r, Mapping) for r in records):
            raise ValueError("covariates must be a list of records")
        names = tuple(str(r["name"]) for r in records)
        kinds = tuple(str(r["kind"]) for r in records)
        levels = tuple(tuple(str(v) for v in r["levels"]) if k == "categorical" else ()
                       for r, k in zip(records, kinds, strict=True))
        centre = [float(r["centre"]) if k == "numeric" else 0.0 for r, k in zip(records, kinds, strict=True)]
        scale = [float(r["scale"]) if k == "numeric" else 1.0 for r, k in zip(records, kinds, strict=True)]
        return cls(names, kinds, levels, jnp.asarray(centre, dtype=jnp.float64), jnp.asarray(scale, dtype=jnp.float64))


def _missing_problem(batch: object, name: str) -> Problem:
    return Problem("batches", f"batch covariate {name!r} is missing; the neural residual takes it as an input (give it "
                              "in batches.csv, or covariates={batch: {name: value}})", batch=str(batch), column=name)
