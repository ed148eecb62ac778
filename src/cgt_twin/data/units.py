"""Units: one pint registry for the package, canonical units and conversion at I/O.

Inside the library every quantity is a float in its canonical unit (DESIGN.md, "Units"). Conversion happens only
where data enters or leaves, through `convert`, which accepts anything pint can parse, including scaled expressions
such as ``"1e6 cells/mL"`` (pint rejects a scaling factor in ``parse_units``, so unit strings are parsed as
expressions), and mass ↔ amount conversions through a molar mass (``g/L`` ↔ ``mM``).
"""

from __future__ import annotations

import functools
import importlib.resources
import math

import numpy as np
import pint

__all__ = ["ureg", "UnitConversionError", "parse_unit", "convert", "conversion_factor", "is_convertible",
           "MOLAR_MASSES"]


class UnitConversionError(ValueError):
    """A unit string that does not parse, or does not convert to the unit asked for."""


def _build_registry() -> pint.UnitRegistry:
    registry = pint.UnitRegistry(autoconvert_offset_to_baseunit=True, cache_folder=None)
    definitions = importlib.resources.files("cgt_twin.data").joinpath("units.txt").read_text()
    for line in definitions.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            registry.define(line)
    return registry


ureg: pint.UnitRegistry = _build_registry()
"""The package's unit registry (pint defaults plus ``units.txt``)."""

# Molar masses in g/mol of the form each species is reported in (used for g/L <-> mM). Lactate and pyruvate are
# counted as the free acids, ammonia as NH3 (NH4+ would be 18.04), amino acids as the free (neutral) amino acids.
MOLAR_MASSES: dict[str, float] = {
    "glucose": 180.16,
    "lactate": 90.08,  # lactic acid
    "pyruvate": 88.06,  # pyruvic acid
    "glutamine": 146.14,
    "glutamate": 147.13,  # glutamic acid
    "ammonia": 17.03,  # NH3
    "ethanolamine": 61.08,
    "alanine": 89.09,
    "arginine": 174.20,
    "asparagine": 132.12,
    "aspartate": 133.10,  # aspartic acid
    "cysteine": 121.16,
    "cystine": 240.30,
    "glycine": 75.07,
    "histidine": 155.15,
    "isoleucine": 131.17,
    "leucine": 131.17,
    "lysine": 146.19,
    "methionine": 149.21,
    "phenylalanine": 165.19,
    "proline": 115.13,
    "serine": 105.09,
    "threonine": 119.12,
    "tryptophan": 204.23,
    "tyrosine": 181.19,
    "valine": 117.15,
}

_ALIASES = {"%": "percent", "": "dimensionless", "1": "dimensionless", "-": "dimensionless",
            "fraction": "dimensionless", "ratio": "dimensionless"}


@functools.lru_cache(maxsize=512)
def parse_unit(unit: str) -> pint.Quantity:
    """Parses a unit string, scaled or not (``"mM"``, ``"1e6 cells/mL"``, ``"%"``), to a pint quantity of 1 such unit.

    Raises:
        UnitConversionError: if pint cannot parse it.
    """
    if not isinstance(unit, str):
        raise UnitConversionError(f"unit must be a string, got {unit!r}")
    text = unit.strip()
    text = _ALIASES.get(text, text).replace("µ", "u").replace("μ", "u")
    try:
        quantity = ureg.parse_expression(text)
    except Exception as exc:  # pint raises several unrelated types (UndefinedUnitError, TokenError, ...)
        raise UnitConversionError(f"unit {unit!r} is not a unit pint understands ({exc})") from None
    try:
        if not isinstance(quantity, pint.Quantity):  # a bare number such as "1000"
            quantity = ureg.Quantity(float(quantity), "dimensionless")
        scale = float(quantity.magnitude)
    except (OverflowError, TypeError, ValueError) as exc:
        raise UnitConversionError(f"unit {unit!r} has an unusable scale ({exc})") from None
    if not math.isfinite(scale) or scale == 0:
        raise UnitConversionError(f"unit {unit!r} has a zero or non-finite scale")
    return quantity


def _is_offset(quantity: pint.Quantity) -> bool:
    return not quantity._is_multiplicative  # degC, degF: conversion is affine, not a factor


def convert(values, from_unit: str, to_unit: str, species: str | None = None) -> np.ndarray:
    """Converts values from one unit to another (affine units such as degC included).

    Args:
        values: a number or array in `from_unit`.
        from_unit: any unit string pint parses, scaled expressions included (``"1e6 cells/mL"``).
        to_unit: the target unit string.
        species: the species measured, for conversions between mass and amount through its molar mass
            (``MOLAR_MASSES``), e.g. glucose in g/L to mM.

    Returns:
        A float64 array (0-d for a scalar input) in `to_unit`.

    Raises:
        UnitConversionError: if either unit does not parse or the dimensions do not convert.
    """
    source, target = parse_unit(from_unit), parse_unit(to_unit)
    array = np.asarray(values, dtype=np.float64)
    if _is_offset(source) or _is_offset(target):
        if source.magnitude != 1 or target.magnitude != 1:
            raise UnitConversionError(f"cannot scale the offset unit in {from_unit!r} -> {to_unit!r}")
        try:
            return np.asarray(ureg.Quantity(array, source.units).to(target.units).magnitude, dtype=np.float64)
        except pint.DimensionalityError:
            raise UnitConversionError(_mismatch(from_unit, to_unit, species)) from None
    return array * conversion_factor(from_unit, to_unit, species)


@functools.lru_cache(maxsize=1024)
def conversion_factor(from_unit: str, to_unit: str, species: str | None = None) -> float:
    """The factor f with value_in_to_unit = f · value_in_from_unit (not for offset units such as degC)."""
    source, target = parse_unit(from_unit), parse_unit(to_unit)
    if _is_offset(source) or _is_offset(target):
        raise UnitConversionError(f"{from_unit!r} -> {to_unit!r} is an affine conversion, not a factor")
    ratio = source / target
    try:
        return float(ratio.to("dimensionless").magnitude)
    except pint.DimensionalityError:
        pass
    if species is not None and species in MOLAR_MASSES:
        # mass <-> amount of substance through the molar mass, and nothing else
        molar_mass = ureg.Quantity(MOLAR_MASSES[species], "g/mol")
        for candidate in (source / molar_mass / target, source * molar_mass / target):
            if candidate.dimensionless:
                return float(candidate.to("dimensionless").magnitude)
    raise UnitConversionError(_mismatch(from_unit, to_unit, species))


def _mismatch(from_unit: str, to_unit: str, species: str | None) -> str:
    source, target = parse_unit(from_unit), parse_unit(to_unit)
    what = f" for {species}" if species else ""
    return (f"unit {from_unit!r} ({source.dimensionality}) does not convert to {to_unit!r} "
            f"({target.dimensionality}){what}")


def is_convertible(from_unit: str, to_unit: str, species: str | None = None) -> bool:
    """Whether `from_unit` converts to `to_unit` (for `species`, through its molar mass)."""
    try:
        convert(1.0, from_unit, to_unit, species)
    except UnitConversionError:
        return False
    return True
