"""The in-memory campaign: measurements on a labelled grid, one protocol per batch.

A `Campaign` is many batches of one process. Its measurements are an `xarray.Dataset` with dimensions
``(batch, time, phase, replicate)``:

- ``time``: hours from inoculation, the union of every batch's measurement times (NaN where a batch was not sampled);
- ``phase``: ``"pre"`` / ``"post"`` — a value measured at an event's time is the value *before* the event unless it
  was recorded as ``post`` (DESIGN.md, "Time ties");
- ``replicate``: repeated measurements of the same culture at the same time (0 for most data).

Per-batch metadata (cell type, volumes, covariates) are coordinates along ``batch``. Every value is in its canonical
unit (``data[v].attrs["units"]``). Values below a limit of quantification are kept with their limit as the value and a
flag in `censored` (-1 for ``<``, +1 for ``>``, 0 otherwise).

Build a campaign with `cgt_twin.data.read_campaign`, an importer, or `cgt_twin.data.campaign_from_tables`; the
constructor itself trusts its inputs (they are checked where they enter).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
import pandas as pd
import xarray as xr

from .errors import CampaignValidationError, Problem
from .protocol import Event, EventKind, Medium, Protocol
from .variables import VariableSpec, lookup

__all__ = ["Campaign", "CampaignSummary", "DIMS", "PHASES"]

DIMS: tuple[str, ...] = ("batch", "time", "phase", "replicate")
PHASES: tuple[str, ...] = ("pre", "post")
NETCDF_FORMAT_VERSION = 1
METADATA_COORDS = ("cell_type", "initial_volume", "max_volume", "initial_medium", "start_time", "feeds_known")


@dataclasses.dataclass(frozen=True)
class CampaignSummary:
    """A short description of a campaign (what `cgt-twin summary` prints)."""

    n_batches: int
    cell_types: dict[str, int]
    time_span_h: tuple[float, float]
    variables: dict[str, int]  # variable -> number of finite observations
    units: dict[str, str]
    events: dict[str, int]  # kind -> count
    censored: int
    feeds_unknown: tuple[str, ...]
    covariates: tuple[str, ...]
    notes: tuple[str, ...]
    source: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"Campaign from {self.source}",
                 f"  batches: {self.n_batches} (" + ", ".join(f"{k}: {v}" for k, v in self.cell_types.items()) + ")",
                 f"  time span: {self.time_span_h[0]:g} – {self.time_span_h[1]:g} h "
                 f"({self.time_span_h[1] / 24:.1f} d)",
                 f"  variables ({len(self.variables)}): "
                 + ", ".join(f"{k} [{self.units[k]}] ×{n}" for k, n in self.variables.items()),
                 "  events: " + (", ".join(f"{k} ×{n}" for k, n in self.events.items()) or "none")]
        if self.censored:
            lines.append(f"  censored values (below/above a limit of quantification): {self.censored}")
        if self.covariates:
            lines.append("  batch covariates: " + ", ".join(self.covariates))
        if self.feeds_unknown:
            lines.append("  feeds NOT recorded (must not be simulated as unfed): " + ", ".join(self.feeds_unknown))
        if self.notes:
            lines.append("  import notes:")
            lines += [f"    - {note}" for note in self.notes]
        return "\n".join(lines)


class Campaign:
    """Measured data and protocols of many batches of one process (see the module docstring for the layout).

    Attributes:
        data: measurements, ``xarray.Dataset`` with dims ``(batch, time, phase, replicate)``; batch metadata as
            coordinates along ``batch``.
        censored: same layout as `data`, int8 flags (-1 ``<`` limit, +1 ``>`` limit, 0 not censored).
        protocols: batch -> `Protocol`.
        media: medium name -> `Medium`.
        declared: variables declared by the campaign beyond the canonical list.
        notes: import policy notes (where the source was ambiguous and what was decided).
        source: where the campaign came from.
    """

    def __init__(self, data: xr.Dataset, censored: xr.Dataset, protocols: Mapping[str, Protocol],
                 media: Mapping[str, Medium] | None = None, declared: Mapping[str, VariableSpec] | None = None,
                 notes: Sequence[str] = (), source: str = "<memory>"):
        self.data = data
        self.censored = censored
        self.protocols = MappingProxyType(dict(protocols))
        self.media = MappingProxyType(dict(media or {}))
        self.declared = MappingProxyType(dict(declared or {}))
        self.notes = tuple(notes)
        self.source = source

    # -- basic views -----------------------------------------------------------------------------------------------
    @property
    def batches(self) -> tuple[str, ...]:
        return tuple(str(b) for b in self.data["batch"].values)

    @property
    def variables(self) -> tuple[str, ...]:
        """The measured variables (data variables of `data`)."""
        return tuple(str(v) for v in self.data.data_vars)

    @property
    def times(self) -> np.ndarray:
        return np.asarray(self.data["time"].values, dtype=np.float64)

    @property
    def covariates(self) -> tuple[str, ...]:
        """Batch metadata columns beyond the standard ones (cell_line, clone, donor, ...)."""
        return tuple(str(c) for c in self.data["batch"].coords if c not in ("batch", *METADATA_COORDS)
                     and self.data.coords[c].dims == ("batch",))

    def __len__(self) -> int:
        return len(self.batches)

    def spec(self, variable: str) -> VariableSpec:
        spec = lookup(variable, self.declared)
        if spec is None:
            raise KeyError(f"unknown variable {variable!r}")
        return spec

    def unit(self, variable: str) -> str:
        return self.spec(variable).unit

    def batch_metadata(self) -> pd.DataFrame:
        """One row per batch: cell type, volumes (L), start time, feeds_known and covariates."""
        coords = {name: self.data.coords[name].values for name in self.data.coords
                  if name != "batch" and self.data.coords[name].dims == ("batch",)}
        return pd.DataFrame(coords, index=pd.Index(self.batches, name="batch"))

    # -- selection ---------------------------------------------------------------------------------------------------
    def sel(self, batches: Iterable[str]) -> Campaign:
        """A campaign of the named batches only (times not measured in any of them are dropped)."""
        batches = [str(b) for b in batches]
        unknown = [b for b in batches if b not in self.protocols]
        if unknown:
            raise KeyError(f"unknown batches {unknown}; known: {list(self.batches)}")
        data = self.data.sel(batch=batches)
        censored = self.censored.sel(batch=batches)
        keep = _measured_times(data)
        return Campaign(data.isel(time=keep), censored.isel(time=keep), {b: self.protocols[b] for b in batches},
                        self.media, self.declared, self.notes, self.source)

    def drop(self, batches: Iterable[str]) -> Campaign:
        """A campaign without the named batches."""
        drop = {str(b) for b in batches}
        unknown = drop - set(self.batches)
        if unknown:
            raise KeyError(f"unknown batches {sorted(unknown)}; known: {list(self.batches)}")
        return self.sel([b for b in self.batches if b not in drop])

    # -- tables out ----------------------------------------------------------------------------------------------------
    def to_dataframe(self, form: str = "long") -> pd.DataFrame:
        """The measurements as a table, in canonical units.

        Args:
            form: ``"long"`` — one row per observation: ``batch, time_h, variable, value, unit, phase, replicate,
                censored`` (censored is ``"<"``, ``">"`` or ``""``); ``"wide"`` — one row per (batch, time_h, phase,
                replicate), one column per variable, only rows with at least one value.
        """
        if form == "long":
            return self._long()
        if form == "wide":
            long = self._long()
            if long.empty:
                return pd.DataFrame(columns=["batch", "time_h", "phase", "replicate"])
            wide = long.pivot_table(index=["batch", "time_h", "phase", "replicate"], columns="variable",
                                    values="value", aggfunc="first", sort=False)
            wide.columns.name = None
            return wide.reset_index()
        raise ValueError(f"form must be 'long' or 'wide', got {form!r}")

    def _long(self) -> pd.DataFrame:
        frames = []
        for variable in self.variables:
            values = self.data[variable].transpose(*DIMS).values
            flags = self.censored[variable].transpose(*DIMS).values
            index = np.nonzero(np.isfinite(values))
            if not index[0].size:
                continue
            frames.append(pd.DataFrame({
                "batch": self.data["batch"].values[index[0]].astype(str),
                "time_h": self.data["time"].values[index[1]],
                "variable": variable,
                "value": values[index],
                "unit": self.unit(variable),
                "phase": np.asarray(PHASES)[index[2]],
                "replicate": self.data["replicate"].values[index[3]].astype(int),
                "censored": np.where(flags[index] < 0, "<", np.where(flags[index] > 0, ">", "")),
            }))
        columns = ["batch", "time_h", "variable", "value", "unit", "phase", "replicate", "censored"]
        if not frames:
            return pd.DataFrame(columns=columns)
        long = pd.concat(frames, ignore_index=True)
        order = {b: i for i, b in enumerate(self.batches)}
        long["_b"] = long["batch"].map(order)
        long = long.sort_values(["_b", "time_h", "phase", "variable", "replicate"], kind="stable")
        return long.drop(columns="_b").reset_index(drop=True)[columns]

    def to_tables(self):
        """The campaign as the tables of the folder format, in canonical units (what `write_campaign` writes)."""
        from .tables import CampaignTables

        meta = self.batch_metadata().reset_index()
        batches = pd.DataFrame({"batch": meta["batch"], "cell_type": meta["cell_type"],
                                "initial_volume": meta["initial_volume"], "volume_unit": "L",
                                "max_volume": meta["max_volume"], "initial_medium": meta["initial_medium"],
                                "start_time": meta["start_time"], "feeds_known": meta["feeds_known"]})
        for name in self.covariates:
            batches[name] = meta[name]
        measurements = self.to_dataframe("long")
        events, media = protocol_tables(self.protocols, self.media, self.declared)
        variables = pd.DataFrame([{"variable": s.name, "unit": s.unit, "description": s.description}
                                  for s in self.declared.values()], columns=["variable", "unit", "description"])
        return CampaignTables(batches=batches, measurements=measurements, events=events, media=media,
                              variables=variables, notes=list(self.notes), source=self.source)

    # -- summary -----------------------------------------------------------------------------------------------------
    def summary(self) -> CampaignSummary:
        meta = self.batch_metadata()
        counts = {v: int(np.isfinite(self.data[v].values).sum()) for v in self.variables}
        finite_times = self.times[_measured_times(self.data)]
        events: dict[str, int] = {}
        for protocol in self.protocols.values():
            for event in protocol.events:
                events[event.kind.value] = events.get(event.kind.value, 0) + 1
        return CampaignSummary(
            n_batches=len(self),
            cell_types={str(k): int(v) for k, v in meta["cell_type"].value_counts().items()},
            time_span_h=(float(finite_times.min()), float(finite_times.max())) if finite_times.size else (0.0, 0.0),
            variables=counts,
            units={v: self.unit(v) for v in self.variables},
            events=dict(sorted(events.items())),
            censored=int(sum(int((self.censored[v].values != 0).sum()) for v in self.variables)),
            feeds_unknown=tuple(b for b, p in self.protocols.items() if not p.feeds_known),
            covariates=self.covariates,
            notes=self.notes,
            source=self.source,
        )

    def __repr__(self) -> str:
        s = self.summary()
        return (f"Campaign({s.n_batches} batches, {len(s.variables)} variables, "
                f"{s.time_span_h[0]:g}–{s.time_span_h[1]:g} h, source={self.source!r})")

    def _repr_html_(self) -> str:
        """An HTML summary for Jupyter (batches, variables with units, time span, events)."""
        from .._html import campaign_html

        return campaign_html(self)

    # -- netCDF ------------------------------------------------------------------------------------------------------
    def to_dataset(self) -> xr.Dataset:
        """One self-describing Dataset: measurements, ``<variable>__censored`` flags, and the protocols, media,
        declared variables and notes as JSON in the attributes (what `to_netcdf` writes)."""
        ds = self.data.copy()
        for v in self.variables:
            ds[f"{v}__censored"] = self.censored[v].astype(np.int8)
        ds.attrs = {
            "cgt_twin_format": "campaign",
            "cgt_twin_format_version": NETCDF_FORMAT_VERSION,
            "source": self.source,
            "notes": json.dumps(list(self.notes)),
            "protocols": json.dumps({b: _protocol_to_json(p) for b, p in self.protocols.items()}),
            "media": json.dumps({m.name: _medium_to_json(m) for m in self.media.values()}),
            "declared_variables": json.dumps({s.name: dataclasses.asdict(s) for s in self.declared.values()}),
        }
        for name in ("initial_medium", "start_time", "cell_type"):
            ds.coords[name] = ds.coords[name].astype(str)
        return ds

    def to_netcdf(self, path: str | os.PathLike) -> None:
        """Writes the campaign to one netCDF-4 file (atomically: a temporary file, then a rename)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            self.to_dataset().to_netcdf(tmp, engine="netcdf4")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def from_dataset(cls, ds: xr.Dataset) -> Campaign:
        """Inverse of `to_dataset`."""
        if ds.attrs.get("cgt_twin_format") != "campaign":
            raise CampaignValidationError(Problem("netCDF", "not a cgt_twin campaign (attribute cgt_twin_format)"))
        version = int(ds.attrs.get("cgt_twin_format_version", -1))
        if version > NETCDF_FORMAT_VERSION:
            raise CampaignValidationError(Problem(
                "netCDF", f"campaign format version {version} is newer than this library reads "
                          f"({NETCDF_FORMAT_VERSION}); upgrade cgt_twin"))
        declared = {k: VariableSpec(**v) for k, v in json.loads(ds.attrs["declared_variables"]).items()}
        media = {k: _medium_from_json(v) for k, v in json.loads(ds.attrs["media"]).items()}
        protocols = {b: _protocol_from_json(p, media, declared) for b, p in json.loads(ds.attrs["protocols"]).items()}
        flag_names = [v for v in ds.data_vars if str(v).endswith("__censored")]
        censored = ds[flag_names].rename({f: f[: -len("__censored")] for f in flag_names})
        data = ds.drop_vars(flag_names)
        data.attrs = {}
        censored.attrs = {}
        for name in ("initial_medium", "start_time", "cell_type"):
            data.coords[name] = data.coords[name].astype(object)
        return cls(data, censored, protocols, media, declared, json.loads(ds.attrs["notes"]), ds.attrs["source"])

    @classmethod
    def from_netcdf(cls, path: str | os.PathLike) -> Campaign:
        """Reads a campaign written by `to_netcdf`."""
        try:
            with xr.open_dataset(os.fspath(path), engine="netcdf4") as ds:
                ds = ds.load()
        except FileNotFoundError:
            raise CampaignValidationError(Problem(os.fspath(path), "file not found")) from None
        except Exception as exc:  # h5py/netCDF raise OSError or ValueError on a non-netCDF file
            raise CampaignValidationError(Problem(os.fspath(path), f"not a readable netCDF file ({exc})")) from None
        return cls.from_dataset(ds)


def protocol_tables(protocols: Mapping[str, Protocol], media: Mapping[str, Medium],
                    declared: Mapping[str, VariableSpec] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``events`` and ``media`` tables of the folder format for some protocols (canonical units)."""
    from .tables import EVENT_COLUMNS

    event_rows = []
    for batch, protocol in protocols.items():
        for event in protocol.events:
            event_rows.append({"batch": batch, "time_h": event.time_h, "kind": event.kind.value,
                               "target": event.target or "", "amount": event.amount, "unit": event.unit,
                               "medium": event.medium or "", "note": event.note})
    events = pd.DataFrame(event_rows, columns=[*EVENT_COLUMNS, "note"])
    media_rows = []
    for medium in media.values():
        if not medium.concentrations:
            media_rows.append({"medium": medium.name, "species": "", "concentration": np.nan, "unit": "",
                               "inferred": False, "note": medium.note})
        for species, value in medium.concentrations.items():
            spec = lookup(species, declared)
            media_rows.append({"medium": medium.name, "species": species, "concentration": value,
                               "unit": spec.unit if spec else "", "inferred": species in medium.inferred,
                               "note": medium.note})
    return events, pd.DataFrame(media_rows, columns=["medium", "species", "concentration", "unit", "inferred",
                                                      "note"])


def _measured_times(data: xr.Dataset) -> np.ndarray:
    """Boolean mask over ``time``: times with at least one finite value."""
    mask = np.zeros(data.sizes["time"], dtype=bool)
    for v in data.data_vars:
        mask |= np.isfinite(data[v].values).any(axis=tuple(i for i, d in enumerate(data[v].dims) if d != "time"))
    return mask


def _medium_to_json(m: Medium) -> dict:
    return {"name": m.name, "concentrations": dict(m.concentrations), "inferred": sorted(m.inferred), "note": m.note}


def _medium_from_json(d: Mapping) -> Medium:
    return Medium(d["name"], d["concentrations"], frozenset(d["inferred"]), d["note"])


def _protocol_to_json(p: Protocol) -> dict:
    return {"initial_volume": p.initial_volume, "max_volume": p.max_volume, "initial_medium": p.initial_medium,
            "feeds_known": p.feeds_known,
            "events": [{"time_h": e.time_h, "kind": e.kind.value, "amount": None if np.isnan(e.amount) else e.amount,
                        "unit": e.unit, "target": e.target, "medium": e.medium, "note": e.note} for e in p.events]}


def _protocol_from_json(d: Mapping, media: Mapping[str, Medium], declared: Mapping[str, VariableSpec]) -> Protocol:
    events = [Event(e["time_h"], EventKind(e["kind"]), np.nan if e["amount"] is None else e["amount"], e["unit"],
                    e["target"], e["medium"], e["note"]) for e in d["events"]]
    return Protocol(d["initial_volume"], tuple(events), media, d["max_volume"], d["initial_medium"], d["feeds_known"],
                    declared)
