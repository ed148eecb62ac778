"""What was done to a batch (or what a controller plans to do): media, events and the vessel.

A `Protocol` is the pivot of the library (DESIGN.md): read from recorded data, or produced by the controller. It holds
the initial volume, the vessel's maximum volume, the media used and a time-ordered tuple of `Event`s, all in canonical
units (time in h from inoculation, volumes in L, rates in L/h, species amounts in mmol ...). Construction checks the
protocol and raises `CampaignValidationError` naming every problem.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from .errors import CampaignValidationError, Problem
from .variables import VariableSpec, lookup, suggest

__all__ = ["EventKind", "Event", "Medium", "Protocol", "EVENT_ORDER", "amount_unit"]


class EventKind(str, enum.Enum):  # noqa: UP042 (StrEnum would change str(kind), which messages use)
    """The kinds of event; the value is the name used in ``events.csv``."""

    BOLUS = "bolus"  # volume of a medium (L), or an amount of one species (canonical concentration unit x L)
    FEED_RATE = "feed_rate"  # continuous feed of a medium, L/h, piecewise constant; 0 stops it
    SAMPLE = "sample"  # volume removed, L
    PERFUSION = "perfusion"  # medium in = out with cell retention, L/h; 0 stops it
    BLEED = "bleed"  # culture (with cells) removed, L/h; 0 stops it
    EXCHANGE = "exchange"  # medium exchange / split / passage: fraction (1) or volume (L) of medium replaced
    SETPOINT = "setpoint"  # target = temperature | ph | do; the new value
    TRANSFECTION = "transfection"  # plasmid DNA dose, ug per mL of culture
    STIMULUS = "stimulus"  # activation beads (bead:cell ratio, 1) or cytokines (their concentration); 0 removes
    HARVEST = "harvest"  # end of the batch; no amount

    def __str__(self) -> str:
        return self.value


EVENT_ORDER: Mapping[EventKind, int] = MappingProxyType({
    # DESIGN.md "Time ties": at one time the sample comes first, then volume changes, then set-points; harvest last.
    EventKind.SAMPLE: 0,
    EventKind.EXCHANGE: 1,
    EventKind.BOLUS: 2,
    EventKind.TRANSFECTION: 3,
    EventKind.STIMULUS: 3,
    EventKind.FEED_RATE: 4,
    EventKind.PERFUSION: 4,
    EventKind.BLEED: 4,
    EventKind.SETPOINT: 5,
    EventKind.HARVEST: 6,
})

RATE_KINDS = frozenset({EventKind.FEED_RATE, EventKind.PERFUSION, EventKind.BLEED})
SETPOINT_TARGETS: Mapping[str, str] = MappingProxyType({"temperature": "degC", "ph": "pH", "do": "percent"})


def amount_unit(kind: EventKind, target: str | None, unit_hint: str | None = None,
                declared: Mapping[str, VariableSpec] | None = None) -> str | None:
    """The canonical unit of an event's amount, or None if the kind/target has no amount or is unknown.

    For a bolus of a species the amount is the species' canonical concentration unit times L (mM -> mmol); for an
    exchange it is a fraction ("1") or a volume ("L") depending on the unit given (`unit_hint`).
    """
    from .units import is_convertible

    if kind in (EventKind.SAMPLE,):
        return "L"
    if kind in RATE_KINDS:
        return "L/h"
    if kind is EventKind.BOLUS:
        if target in (None, "", "medium", "volume"):
            return "L"
        spec = lookup(target, declared)
        return None if spec is None else f"({spec.unit})*L"
    if kind is EventKind.EXCHANGE:
        if unit_hint is not None and is_convertible(unit_hint, "L"):
            return "L"
        return "1"
    if kind is EventKind.SETPOINT:
        return SETPOINT_TARGETS.get(target or "")
    if kind is EventKind.TRANSFECTION:
        return "ug/mL"
    if kind is EventKind.STIMULUS:
        spec = lookup(target or "", declared)
        if spec is not None:
            return spec.unit
        if unit_hint is not None and is_convertible(unit_hint, "ng/mL"):
            return "ng/mL"
        return "1"
    if kind is EventKind.HARVEST:
        return "1"
    return None


@dataclasses.dataclass(frozen=True)
class Medium:
    """A medium (or feed) composition.

    Attributes:
        name: the medium's name, as ``media.csv`` and ``events.csv`` use it.
        concentrations: species -> concentration in the species' canonical unit (mM for metabolites).
        inferred: species whose concentration was inferred (e.g. from after-feed measurements), not recorded.
        note: free text (where the composition comes from).
    """

    name: str
    concentrations: Mapping[str, float] = dataclasses.field(default_factory=dict)
    inferred: frozenset[str] = frozenset()
    note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "concentrations", MappingProxyType(dict(self.concentrations)))
        object.__setattr__(self, "inferred", frozenset(self.inferred))

    @property
    def is_known(self) -> bool:
        """False for a medium with no composition at all (e.g. a feed whose composition was not recorded)."""
        return bool(self.concentrations)


@dataclasses.dataclass(frozen=True, eq=False)
class Event:
    """One event, in canonical units.

    Attributes:
        time_h: time in h from inoculation.
        kind: the `EventKind`.
        amount: the amount in `unit` (NaN where the kind has none, or where a dose is unknown).
        unit: the canonical unit of `amount` (see `amount_unit`).
        target: the species (bolus of one species), set-point (temperature, ph, do) or stimulus concerned.
        medium: the medium added (bolus, feed_rate, perfusion, exchange).
        note: free text.
    """

    time_h: float
    kind: EventKind
    amount: float = math.nan
    unit: str = "1"
    target: str | None = None
    medium: str | None = None
    note: str = ""

    def __post_init__(self):
        object.__setattr__(self, "kind", EventKind(self.kind))
        object.__setattr__(self, "time_h", float(self.time_h))
        object.__setattr__(self, "amount", float(self.amount))

    def _key(self) -> tuple:
        amount = None if math.isnan(self.amount) else self.amount  # "no amount" equals "no amount"
        return (self.time_h, self.kind, amount, self.unit, self.target, self.medium, self.note)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def sort_key(self) -> tuple[float, int]:
        return (self.time_h, EVENT_ORDER[self.kind])


def _event_label(index: int, event: Event) -> str:
    return f"event {index} ({event.kind.value} at {event.time_h:g} h)"


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What is done to one batch.

    Attributes:
        initial_volume: culture volume at inoculation, L.
        events: the events, ordered by time and, at one time, by `EVENT_ORDER` (stable otherwise).
        media: the media the events refer to, by name.
        max_volume: the vessel's working-volume limit, L (None if not given).
        initial_medium: name of the medium the culture starts in (None if not given).
        feeds_known: False when the batch was fed but the feeds were not recorded: such a batch must not be
            simulated as unfed.
        declared: variables declared by the campaign beyond the canonical ones (species media may hold).
    """

    initial_volume: float
    events: tuple[Event, ...] = ()
    media: Mapping[str, Medium] = dataclasses.field(default_factory=dict)
    max_volume: float | None = None
    initial_medium: str | None = None
    feeds_known: bool = True
    declared: Mapping[str, VariableSpec] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "declared", MappingProxyType(dict(self.declared)))
        given = tuple(self.events)
        # Events are ordered here, by time and at one time by DESIGN.md's time ties (sample, then boluses, then
        # set-points): the order in which they are listed carries no information, so it is not an error.
        events = tuple(sorted(given, key=lambda e: e.sort_key))
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "media", MappingProxyType(dict(self.media)))
        object.__setattr__(self, "initial_volume", float(self.initial_volume))
        if self.max_volume is not None and not (isinstance(self.max_volume, float) and math.isnan(self.max_volume)):
            object.__setattr__(self, "max_volume", float(self.max_volume))
        else:
            object.__setattr__(self, "max_volume", None)
        if getattr(self, "_skip_check", False):
            return
        problems = self.check()
        if problems:
            raise CampaignValidationError(problems, header="invalid protocol")

    # -- derived views -------------------------------------------------------------------------------------------
    @property
    def harvest_time(self) -> float | None:
        """Time of the first harvest event, h (None if the protocol has none)."""
        for event in self.events:
            if event.kind is EventKind.HARVEST:
                return event.time_h
        return None

    def events_of(self, *kinds: EventKind | str) -> tuple[Event, ...]:
        """The events of the given kinds, in order."""
        wanted = {EventKind(k) for k in kinds}
        return tuple(e for e in self.events if e.kind in wanted)

    def volume_profile(self) -> list[tuple[float, float, float]]:
        """Volume bookkeeping from the events alone (no evaporation, no kinetics).

        Returns:
            ``(time_h, volume_before_L, volume_after_L)`` at the start and at every event time. Continuous rates
            (feed_rate in, bleed out; perfusion in = out) are integrated between events.
        """
        volume = self.initial_volume
        time = 0.0
        feed_rate = 0.0
        bleed_rate = 0.0
        profile = [(0.0, volume, volume)]
        for event in self.events:
            volume += (feed_rate - bleed_rate) * (event.time_h - time)
            time = event.time_h
            before = volume
            if event.kind is EventKind.SAMPLE:
                volume -= event.amount
            elif event.kind is EventKind.BOLUS and event.unit == "L" and math.isfinite(event.amount):
                volume += event.amount
            elif event.kind is EventKind.FEED_RATE:
                feed_rate = event.amount
            elif event.kind is EventKind.BLEED:
                bleed_rate = event.amount
            profile.append((time, before, volume))
        return profile

    def _known_names(self) -> list[str]:
        from .variables import CANONICAL_VARIABLES

        return [*CANONICAL_VARIABLES, *self.declared]

    # -- checks ----------------------------------------------------------------------------------------------------
    def check(self, file: str = "protocol", batch: str | None = None, *, event_rows: Sequence[int] | None = None,
              batch_file: str | None = None, batch_row: int | None = None) -> list[Problem]:
        """Every problem with this protocol (empty if none); the constructor raises them.

        Args:
            file: where the events come from (named in event problems).
            batch: the batch, named in every problem.
            event_rows: the file row of each event, in the protocol's (sorted) order, to name it in problems.
            batch_file, batch_row: where the batch's volumes and initial medium come from (default: `file`).
        """
        problems: list[Problem] = []

        def add(message: str, column: str | None = None, event: int | None = None) -> None:
            if event is None:
                problems.append(Problem(file=batch_file or file, message=message, batch=batch, column=column,
                                        row=batch_row))
            else:
                row = event_rows[event] if event_rows is not None else None
                problems.append(Problem(file=file, message=message, batch=batch, column=column, row=row))

        volume_valid = math.isfinite(self.initial_volume) and self.initial_volume > 0
        if not volume_valid:
            add(f"initial volume must be a positive finite number of L, got {self.initial_volume!r}",
                "initial_volume")
        if self.max_volume is not None:
            if not (math.isfinite(self.max_volume) and self.max_volume > 0):
                add(f"max_volume must be a positive finite number of L, got {self.max_volume!r}", "max_volume")
            elif self.initial_volume > self.max_volume * (1 + 1e-9):
                add(f"initial volume {self.initial_volume:g} L exceeds max_volume {self.max_volume:g} L",
                    "initial_volume")
        if self.initial_medium is not None and self.initial_medium not in self.media:
            add(f"initial medium {self.initial_medium!r} is not among the media {sorted(self.media)}",
                "initial_medium")
        for name, medium in self.media.items():
            for species, value in medium.concentrations.items():
                if lookup(species, self.declared) is None:
                    add(f"medium {name!r}: unknown species {species!r}{suggest(species, self._known_names())}",
                        "species")
                if not (math.isfinite(value) and value >= 0):
                    add(f"medium {name!r}: concentration of {species!r} must be finite and >= 0, got {value!r}",
                        "concentration")
        harvest = self.harvest_time
        for index, event in enumerate(self.events):
            label = _event_label(index, event)

            def event_problem(message: str, column: str, index: int = index) -> None:
                add(message, column, event=index)

            if not math.isfinite(event.time_h) or event.time_h < 0:
                event_problem(f"{label}: time must be finite and >= 0 h", "time_h")
            if harvest is not None and event.time_h > harvest:
                event_problem(f"{event.kind.value} at {event.time_h:g} h is after the harvest at {harvest:g} h",
                              "time_h")
            if math.isfinite(event.amount) and event.amount < 0 and event.kind is not EventKind.SETPOINT:
                event_problem(f"{label}: amount must be >= 0, got {event.amount:g}", "amount")
            needs_amount = event.kind not in (EventKind.HARVEST, EventKind.TRANSFECTION)
            if needs_amount and not math.isfinite(event.amount):
                event_problem(f"{label}: needs a finite amount", "amount")
            if event.kind in (EventKind.BOLUS, EventKind.FEED_RATE, EventKind.PERFUSION, EventKind.EXCHANGE):
                volume_in = event.kind is not EventKind.BOLUS or event.unit == "L"
                if volume_in and event.medium is None and not (event.kind in RATE_KINDS and event.amount == 0):
                    event_problem(f"{label}: names no medium", "medium")
                if event.medium is not None and event.medium not in self.media:
                    event_problem(f"{label}: unknown medium {event.medium!r} (known: {sorted(self.media)})",
                                  "medium")
            if event.kind is EventKind.SETPOINT:
                if event.target not in SETPOINT_TARGETS:
                    event_problem(f"{label}: set-point target must be one of {sorted(SETPOINT_TARGETS)}, got "
                                  f"{event.target!r}", "target")
                elif event.target != "temperature" and math.isfinite(event.amount) and event.amount < 0:
                    event_problem(f"{label}: a {event.target} set-point must be >= 0, got {event.amount:g}",
                                  "amount")
                elif event.target == "temperature" and math.isfinite(event.amount) and \
                        not (-5.0 <= event.amount <= 100.0):
                    event_problem(f"{label}: temperature set-point {event.amount:g} degC is not a culture "
                                  "temperature (expected -5..100 degC; is the unit right?)", "amount")
            if event.kind is EventKind.EXCHANGE and event.unit == "1" and math.isfinite(event.amount) \
                    and event.amount > 1:
                event_problem(f"{label}: an exchanged fraction must be within 0..1, got {event.amount:g}", "amount")
        # volume bookkeeping starts from the initial volume: without a valid one it would only report consequences
        for position, (time, before, after) in enumerate(self.volume_profile() if volume_valid else ()):
            event = position - 1 if position > 0 else None
            if event is not None:
                current = self.events[event]
                if current.kind is EventKind.EXCHANGE and current.unit == "L" and math.isfinite(current.amount) \
                        and current.amount > before * (1 + 1e-9):
                    add(f"exchange of {current.amount:g} L at {time:g} h is more than the {before:g} L in the vessel",
                        "amount", event)
            if after < -1e-12 or before < -1e-12:
                add(f"volume becomes negative ({min(before, after):g} L) at {time:g} h", "amount", event)
                break
            if self.max_volume is not None and max(before, after) > self.max_volume * (1 + 1e-9):
                add(f"volume {max(before, after):g} L exceeds max_volume {self.max_volume:g} L at {time:g} h",
                    "amount", event)
                break
        return problems

    @classmethod
    def checked(cls, *, file: str = "protocol", batch: str | None = None, event_rows: Sequence[int] | None = None,
                batch_file: str | None = None, batch_row: int | None = None,
                **fields) -> tuple[Protocol | None, list[Problem]]:
        """Builds a protocol, returning ``(protocol, [])`` or ``(None, problems)`` named for the files, rows and batch
        (`event_rows` in the order of the events after sorting, see `check`)."""
        try:
            protocol = cls.__new__(cls)
            cls._init_unchecked(protocol, **fields)
        except (TypeError, ValueError) as exc:
            return None, [Problem(file=file, message=str(exc), batch=batch)]
        problems = protocol.check(file, batch, event_rows=event_rows, batch_file=batch_file, batch_row=batch_row)
        return (None, problems) if problems else (protocol, [])

    @classmethod
    def _init_unchecked(cls, protocol: Protocol, **fields) -> None:
        object.__setattr__(protocol, "_skip_check", True)
        try:
            protocol.__init__(**fields)
        finally:
            object.__delattr__(protocol, "_skip_check")

    def with_events(self, events: Sequence[Event]) -> Protocol:
        """A copy with other events, sorted by time (e.g. a controller's plan merged into the recorded history)."""
        return dataclasses.replace(self, events=tuple(sorted(events, key=lambda e: e.sort_key)))
