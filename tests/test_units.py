import math

import numpy as np
import pytest

from cgt_twin.data.units import MOLAR_MASSES, UnitConversionError, conversion_factor, convert, is_convertible


@pytest.mark.parametrize(
    ("value", "source", "target", "species", "expected"),
    [
        (1.0, "g/L", "mM", "glucose", 1000 / 180.16),
        (1.0, "g/L", "mM", "lactate", 1000 / 90.08),
        (18.0, "mg/L", "mM", "ammonia", 18.0 / 17.03),
        (500.0, "umol/L", "mM", None, 0.5),
        (500.0, "µmol/L", "mM", None, 0.5),
        (2.5e6, "cells/mL", "1e6 cells/mL", None, 2.5),
        (2.5e9, "cells/L", "1e6 cells/mL", None, 2.5),
        (95.0, "%", "1", None, 0.95),
        (1.2, "g/L", "mg/L", None, 1200.0),
        (1.2, "mg/mL", "mg/L", None, 1200.0),
        (250.0, "mL", "L", None, 0.25),
        (37.0, "degC", "degC", None, 37.0),
        (98.6, "degF", "degC", None, 37.0),
        (300.0, "mOsm/kg", "mOsm/kg", None, 300.0),
        (1e10, "vg/mL", "vg/mL", None, 1e10),
        (100.0, "IU/mL", "IU/mL", None, 100.0),
        (7.0, "pH", "pH", None, 7.0),
        (2.0, "mL/d", "L/h", None, 2.0 / 1000 / 24),
    ],
)
def test_conversions(value, source, target, species, expected):
    assert float(convert(value, source, target, species)) == pytest.approx(expected, rel=1e-12)


def test_molar_mass_table_matches_design():
    # DESIGN.md lists these forms; a change here must be a deliberate decision.
    assert MOLAR_MASSES["glucose"] == 180.16
    assert MOLAR_MASSES["lactate"] == 90.08
    assert MOLAR_MASSES["glutamine"] == 146.14
    assert MOLAR_MASSES["glutamate"] == 147.13
    assert MOLAR_MASSES["ammonia"] == 17.03


@pytest.mark.parametrize(
    ("source", "target", "species"),
    [
        ("cells/mL", "mM", "glucose"),  # the classic mistake: glucose in a cell-count unit
        ("g/L", "mM", None),  # mass -> amount without a species has no molar mass
        ("g/L", "mM", "titer"),  # no molar mass for the product
        ("vg/mL", "capsid/mL", None),  # genomes are not capsids
        ("cells/mL", "vg/mL", None),
        ("mL", "mM", None),
    ],
)
def test_incompatible_units_are_rejected(source, target, species):
    assert not is_convertible(source, target, species)
    with pytest.raises(UnitConversionError, match="does not convert"):
        convert(1.0, source, target, species)


@pytest.mark.parametrize("bad", ["furlongs per fortnight", "mM)", "", "0 mM", "nan mM"])
def test_unparseable_units_are_rejected(bad):
    if bad == "":  # empty means dimensionless, which must not convert to mM
        assert not is_convertible(bad, "mM")
        return
    with pytest.raises(UnitConversionError):
        convert(1.0, bad, "mM")


def test_arrays_and_factor_agree():
    values = np.array([0.0, 1.0, 2.5])
    out = convert(values, "g/L", "mM", "glucose")
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, values * conversion_factor("g/L", "mM", "glucose"))
    assert math.isclose(conversion_factor("mM", "g/L", "glucose") * conversion_factor("g/L", "mM", "glucose"), 1.0)
