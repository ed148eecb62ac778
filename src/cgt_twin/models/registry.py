"""Model names as the command line and artifacts use them -> kinetics classes (imported on first use)."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping

from ..data.errors import CampaignValidationError, Problem
from .kinetics import AbstractKinetics

__all__ = ["MODELS", "make_kinetics"]

MODELS: dict[str, str] = {
    "cho": "cgt_twin.models.cho:CHOFedBatch",
    "hek293": "cgt_twin.models.hek293:HEK293TripleTransfection",
    "hek293-lv": "cgt_twin.models.hek293:HEK293Lentivirus",
    "tcell": "cgt_twin.models.tcell:TCellExpansion",
}


def kinetics_class(name: str) -> type[AbstractKinetics]:
    try:
        module, cls = MODELS[name].split(":")
    except KeyError:
        raise CampaignValidationError(Problem("--model", f"unknown model {name!r}; known: {', '.join(MODELS)}")) \
            from None
    return getattr(importlib.import_module(module), cls)


def make_kinetics(name: str, options: Mapping[str, object] | None = None) -> AbstractKinetics:
    """An instance of the named model with its options (e.g. ``{"lactate_consumption": True}``)."""
    cls = kinetics_class(name)
    options = dict(options or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in options if k not in fields]
    if unknown:
        raise CampaignValidationError(Problem("--option", f"model {name!r} has no options {unknown}; its options: "
                                                          f"{', '.join(fields) or 'none'}"))
    return cls(**options)
