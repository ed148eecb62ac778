"""Model names as the command line and artifacts use them -> kinetics classes (imported on first use)."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping

from ..data.errors import CampaignValidationError, Problem
from .kinetics import AbstractKinetics

__all__ = ["MODELS", "make_kinetics", "register_model"]

MODELS: dict[str, str] = {
    "cho": "cgt_twin.models.cho:CHOFedBatch",
    "hek293": "cgt_twin.models.hek293:HEK293TripleTransfection",
    "hek293-lv": "cgt_twin.models.hek293:HEK293Lentivirus",
    "tcell": "cgt_twin.models.tcell:TCellExpansion",
}


def kinetics_class(name: str) -> type[AbstractKinetics]:
    try:
        module, cls = MODELS[name].split(":")
    except (KeyError, TypeError, AttributeError):
        raise CampaignValidationError(Problem("--model", f"unknown model {name!r}; known: {', '.join(MODELS)}")) \
            from None
    target = importlib.import_module(module)
    for part in cls.split("."):
        target = getattr(target, part)
    return target


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


def register_model(name: str, cls: type[AbstractKinetics]) -> None:
    """Registers a user kinetics under `name`, so that artifacts can save it and the CLI can name it. Loading an
    artifact of it needs the same registration first (artifacts never import code named in a file)."""
    if not (isinstance(cls, type) and issubclass(cls, AbstractKinetics)):
        raise TypeError(f"{cls!r} is not an AbstractKinetics subclass")
    target = f"{cls.__module__}:{cls.__qualname__}"
    if name in MODELS and MODELS[name] != target:
        raise ValueError(f"model name {name!r} is already registered for {MODELS[name]}")
    MODELS[name] = target
