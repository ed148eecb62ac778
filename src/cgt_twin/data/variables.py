"""The canonical variables of a campaign: names, canonical units, physical bounds.

A variable measured in a campaign must be one of these or be declared in the campaign's ``variables.csv``. Names are
lower-case; amino acids are named in English (``asparagine``, ``tyrosine`` ...).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping

from .units import MOLAR_MASSES

__all__ = ["VariableSpec", "CANONICAL_VARIABLES", "AMINO_ACIDS", "lookup", "suggest"]


@dataclasses.dataclass(frozen=True)
class VariableSpec:
    """What a variable is and how it is stored.

    Attributes:
        name: canonical name (``glucose``).
        unit: canonical unit inside the library (``mM``).
        description: one line for people.
        lower: smallest physically meaningful value (0 for concentrations), or None.
        upper: largest physically meaningful value (1 for fractions), or None.
        declared: True for variables a campaign declared itself in ``variables.csv``.
    """

    name: str
    unit: str
    description: str
    lower: float | None = 0.0
    upper: float | None = None
    declared: bool = False


AMINO_ACIDS: tuple[str, ...] = (
    "alanine", "arginine", "asparagine", "aspartate", "cysteine", "cystine", "glycine", "histidine", "isoleucine",
    "leucine", "lysine", "methionine", "phenylalanine", "proline", "serine", "threonine", "tryptophan", "tyrosine",
    "valine",
)

_CELLS = "1e6 cells/mL"


def _specs() -> dict[str, VariableSpec]:
    specs = [
        VariableSpec("vcd", _CELLS, "viable cell density"),
        VariableSpec("dead_cells", _CELLS, "dead cell density"),
        VariableSpec("total_cells", _CELLS, "total cell density (viable + dead)"),
        VariableSpec("viability", "1", "viable fraction of cells", 0.0, 1.0),
        VariableSpec("glucose", "mM", "glucose"),
        VariableSpec("lactate", "mM", "lactate (as lactic acid for g/L conversions)"),
        VariableSpec("glutamine", "mM", "glutamine"),
        VariableSpec("glutamate", "mM", "glutamate"),
        VariableSpec("ammonia", "mM", "ammonia / ammonium (as NH3 for g/L conversions)"),
        VariableSpec("pyruvate", "mM", "pyruvate (as pyruvic acid for g/L conversions)"),
        VariableSpec("ethanolamine", "mM", "ethanolamine"),
        VariableSpec("titer", "mg/L", "antibody / protein product titre"),
        VariableSpec("volume", "L", "culture volume"),
        VariableSpec("osmolality", "mOsm/kg", "osmolality"),
        VariableSpec("temperature", "degC", "culture temperature", None, None),
        VariableSpec("ph", "pH", "culture pH", 0.0, 14.0),
        VariableSpec("do", "percent", "dissolved oxygen, % of air saturation"),
        VariableSpec("il2", "IU/mL", "interleukin-2"),
        VariableSpec("vg_titer", "vg/mL", "vector genomes per mL"),
        VariableSpec("capsid_titer", "capsid/mL", "capsids (total particles) per mL; lentivirus: physical particles"),
        VariableSpec("vector_dna", "vg/mL", "total vector DNA per mL (replicated genomes, packaged or not)"),
        VariableSpec("full_capsid_fraction", "1", "fraction of capsids carrying a genome", 0.0, 1.0),
        VariableSpec("functional_titer", "TU/mL", "functional (transducing) titre"),
        VariableSpec("memory_fraction", "1", "fraction of T cells with a memory phenotype", 0.0, 1.0),
        VariableSpec("exhausted_fraction", "1", "fraction of exhausted T cells", 0.0, 1.0),
    ]
    specs += [VariableSpec(name, "mM", name) for name in AMINO_ACIDS]
    return {s.name: s for s in specs}


CANONICAL_VARIABLES: Mapping[str, VariableSpec] = _specs()
assert set(MOLAR_MASSES) <= set(CANONICAL_VARIABLES), "every species with a molar mass is a canonical variable"


def lookup(name: str, declared: Mapping[str, VariableSpec] | None = None) -> VariableSpec | None:
    """The spec of a variable: canonical first, then those a campaign declared; None if unknown."""
    if name in CANONICAL_VARIABLES:
        return CANONICAL_VARIABLES[name]
    if declared and name in declared:
        return declared[name]
    return None


def suggest(name: str, known: Iterable[str]) -> str:
    """A ' (did you mean ...?)' hint with the nearest known names, or an empty string."""
    key = str(name).strip().lower()
    candidates = [str(c) for c in known]
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    if key in by_lower:
        matches = [by_lower[key]]
    else:
        matches = [by_lower[m] for m in difflib.get_close_matches(key, list(by_lower), n=3, cutoff=0.6)]
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"
