"""Twin artifacts: a fitted twin as a folder of JSON metadata and one array file — never pickle.

Layout of an artifact folder:

- ``twin.json``: schema version; the model (registered model name, its options, parameter values with units, the
  neural residual's specification and its batch-covariate encoding — levels, centres and scales); the content hash;
  library and dependency versions; the data hash and the fit settings when it came from a fit; free metadata.
- ``arrays.npz``: the neural residual's weights (numpy format, read with ``allow_pickle=False``), if any.
- ``provenance.jsonl``: an append-only, hash-chained log of every fit, prediction and sample made with it.
- ``posterior.json`` + ``posterior.npz`` (optional, written by ``cgt-twin sample``): a `cgt_twin.bayes.Posterior` of
  the twin, with its own content hash, which ``twin.json`` records too (``posterior_hash``); `load_posterior` checks
  both and that the posterior was made for this twin.
- ``ensemble.json`` + ``ensemble.npz`` (optional, written by ``cgt-twin ensemble``): a deep ensemble of the neural
  residual (`cgt_twin.bayes.ResidualEnsemble`), with its own content hash, recorded in ``twin.json``
  (``ensemble_hash``, ``ensemble_for``) and checked by `load_ensemble` the same way.

The content hash (SHA-256 of the canonical model JSON and the array bytes) is checked on every load, so a tampered or
truncated artifact fails with a clear message; the log is not covered by it (it grows). Artifacts are written to a
temporary folder and renamed into place. Models are looked up by name in a registry (`cgt_twin.models.registry`),
never imported from a path written in the file: loading an artifact runs no code from it.
"""

from __future__ import annotations

import dataclasses
import datetime
import getpass
import hashlib
import io as _io
import json
import os
import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import jax
import numpy as np

from ._atomic import atomic_folder
from .data.errors import CampaignValidationError, Problem
from .hybrid import HybridKinetics, ResidualSpec, hybrid
from .models.covariates import CovariateEncoding
from .models.kinetics import AbstractKinetics
from .models.registry import MODELS, make_kinetics
from .models.twin import Twin

__all__ = ["SCHEMA_VERSION", "save_twin", "load_twin", "load_posterior", "load_ensemble", "load_fitted_initial_states",
           "append_provenance", "read_provenance", "verify_provenance", "campaign_hash", "ArtifactError"]

SCHEMA_VERSION = 2
"""Version of the artifact layout this library writes; it reads this and every older one. History: 1 — first layout;
2 — the residual's specification names its batch covariates (``covariates``, ``covariate_kinds``) and the residual
section holds their encoding (``covariates``: one record per covariate; absent in version 1 = none)."""
_DEPENDENCIES = ("cgt_twin", "jax", "jaxlib", "equinox", "diffrax", "optax", "optimistix", "numpyro", "numpy", "xarray",
                 "pint")


class ArtifactError(CampaignValidationError):
    """A twin artifact that cannot be loaded (missing, tampered, truncated, newer schema, unknown model)."""


def _versions() -> dict[str, str]:
    out = {}
    for name in _DEPENDENCIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    return out


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _model_name(kinetics: AbstractKinetics) -> str:
    cls = type(kinetics)
    for name, target in MODELS.items():
        module, qualname = target.split(":")
        if cls.__module__ == module and cls.__qualname__ == qualname:
            return name
    raise ValueError(f"{cls.__name__} is not a registered model; register it with "
                     "cgt_twin.models.registry.register_model(name, cls) to save it")


def _options(kinetics: AbstractKinetics) -> dict:
    out = {}
    for field in dataclasses.fields(kinetics):
        value = getattr(kinetics, field.name)
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


def _model_section(twin: Twin) -> tuple[dict, dict[str, np.ndarray]]:
    kinetics = twin.kinetics
    arrays: dict[str, np.ndarray] = {}
    residual = None
    if isinstance(kinetics, HybridKinetics):
        spec = dataclasses.asdict(kinetics.spec)
        spec["additive_scale"] = dict(kinetics.spec.additive_scale)
        spec["covariate_kinds"] = dict(kinetics.spec.covariate_kinds)
        leaves = jax.tree_util.tree_leaves(kinetics.residual)
        arrays = {f"residual_{i:03d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
        residual = {"spec": spec, "n_arrays": len(leaves), "covariates": kinetics.encoding.to_json()}
        kinetics = kinetics.core
    units = {p.name: p.unit for p in kinetics.parameters}
    section = {"model": _model_name(kinetics), "options": _options(kinetics),
               "parameters": {k: {"value": float(np.asarray(v)), "unit": units.get(k, "")}
                              for k, v in twin.params.items()},
               "residual": residual,
               "noise": {k: {"sigma_abs": a, "sigma_rel": r} for k, (a, r) in sorted(twin.noise.items())}}
    return section, arrays


def _content_hash(section: Mapping, array_bytes: bytes) -> str:
    digest = hashlib.sha256(_canonical(section))
    digest.update(array_bytes)
    return "sha256:" + digest.hexdigest()


def campaign_hash(campaign) -> str:
    """SHA-256 of a campaign's canonical tables (measurements, protocols, media), for provenance."""
    tables = campaign.to_tables()
    digest = hashlib.sha256()
    for frame in (tables.batches, tables.measurements, tables.events, tables.media):
        digest.update(frame.to_csv(index=False, lineterminator="\n").encode())
    return "sha256:" + digest.hexdigest()


def save_twin(twin: Twin, path: str | os.PathLike, *, overwrite: bool = False, data_hash: str | None = None,
              fit_settings: Mapping | None = None, metadata: Mapping | None = None, posterior=None,
              ensemble=None) -> Path:
    """Writes a twin artifact folder atomically (see the module docstring); returns its path.

    `posterior` (a `cgt_twin.bayes.Posterior` of this twin) and `ensemble` (a `cgt_twin.bayes.ResidualEnsemble` of its
    neural residual) are written beside it, in the same atomic step.

    Raises:
        FileExistsError: if the folder exists and `overwrite` is False.
        ValueError: for a kinetics that is not registered.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    if ensemble is not None:
        try:
            ensemble.check_twin(twin)
        except CampaignValidationError as exc:
            raise ValueError(f"cannot save the ensemble with this twin: {exc.problems[0].message}") from None
    section, arrays = _model_section(twin)
    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)
    array_bytes = buffer.getvalue()
    document = {"format": "cgt_twin twin", "schema_version": SCHEMA_VERSION, "model": section,
                "content_hash": _content_hash(section, array_bytes),
                "created_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "versions": _versions(), "data_hash": data_hash, "fit_settings": dict(fit_settings or {}),
                "metadata": dict(metadata or {})}
    with atomic_folder(target, overwrite=overwrite, keep=("provenance.jsonl",)) as staging:  # the log is never lost
        if posterior is not None:
            document["posterior_hash"] = posterior.write(staging)
            document["posterior_for"] = document["content_hash"]
        if ensemble is not None:
            document["ensemble_hash"] = ensemble.write(staging)
            document["ensemble_for"] = document["content_hash"]
        (staging / "twin.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        (staging / "arrays.npz").write_bytes(array_bytes)
    return target


def _fail(path: Path, message: str):
    raise ArtifactError(Problem(str(path), message), header="cannot load twin artifact")


def load_twin(path: str | os.PathLike) -> Twin:
    """Loads a twin artifact, checking its schema and content hash.

    Raises:
        ArtifactError: for a missing, tampered, truncated or newer-schema artifact or an unknown model.
    """
    folder = Path(path)
    meta_file = folder / "twin.json"
    if not meta_file.is_file():
        _fail(folder, "not a twin artifact (no twin.json)")
    try:
        document = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _fail(meta_file, f"unreadable or truncated JSON ({exc})")
    if not isinstance(document, dict) or document.get("format") != "cgt_twin twin":
        _fail(meta_file, "not a cgt_twin twin artifact")
    schema = document.get("schema_version")
    if not isinstance(schema, int):
        _fail(meta_file, f"schema_version must be an integer, got {schema!r}")
    if schema > SCHEMA_VERSION:
        _fail(meta_file, f"schema version {schema} is newer than this library reads ({SCHEMA_VERSION}); upgrade "
                         "cgt_twin")
    try:
        array_bytes = (folder / "arrays.npz").read_bytes()
    except OSError as exc:
        _fail(folder / "arrays.npz", f"missing or unreadable ({exc})")
    section = document.get("model")
    if not isinstance(section, dict):
        _fail(meta_file, "no model section")
    expected = document.get("content_hash")
    actual = _content_hash(section, array_bytes)
    if expected != actual:
        _fail(folder, f"content hash mismatch: the artifact was modified or truncated after it was written "
                      f"(recorded {expected}, found {actual})")
    try:
        kinetics = make_kinetics(section["model"], {k: tuple(v) if isinstance(v, list) else v
                                                    for k, v in section["options"].items()})
        params = {k: v["value"] for k, v in section["parameters"].items()}
        if section.get("residual"):
            spec_dict = dict(section["residual"]["spec"])
            spec = ResidualSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec_dict.items()})
            encoding = CovariateEncoding.from_json(section["residual"].get("covariates"))  # none before schema 2
            kinetics = hybrid(kinetics, spec, encoding=encoding)
            with np.load(_io.BytesIO(array_bytes), allow_pickle=False) as stored:
                leaves = [stored[f"residual_{i:03d}"] for i in range(section["residual"]["n_arrays"])]
            like_leaves, treedef = jax.tree_util.tree_flatten(kinetics.residual)
            if [np.shape(x) for x in like_leaves] != [x.shape for x in leaves]:
                _fail(folder, "residual weights do not match its specification")
            residual = jax.tree_util.tree_unflatten(treedef, [jax.numpy.asarray(x) for x in leaves])
            kinetics = HybridKinetics(core=kinetics.core, residual=residual, spec=spec, encoding=kinetics.encoding)
        noise = {k: (v["sigma_abs"], v["sigma_rel"]) for k, v in section.get("noise", {}).items()}
        return Twin(kinetics, params, noise)
    except ArtifactError:
        raise
    except CampaignValidationError as exc:
        _fail(folder, f"invalid model section: {'; '.join(p.message for p in exc.problems)}")
    except (KeyError, TypeError, ValueError) as exc:
        _fail(folder, f"invalid model section ({type(exc).__name__}: {exc})")


def _attachment(folder: Path, kind: str, files: Sequence[str]) -> tuple[Twin, str] | None:
    """The twin and the recorded hash of the `kind` (``posterior``, ``ensemble``) stored beside it, or None when the
    artifact holds none; fails for files added afterwards or made for another twin."""
    twin = load_twin(folder)
    document = json.loads((folder / "twin.json").read_text(encoding="utf-8"))
    recorded = document.get(f"{kind}_hash")
    present = any((folder / name).exists() for name in files)
    if recorded is None and not present:
        return None
    if recorded is None:
        _fail(folder, f"{kind} files present but twin.json records no {kind}: they were added afterwards")
    if document.get(f"{kind}_for") != document.get("content_hash"):
        _fail(folder, f"the {kind} was made for another twin")
    return twin, recorded


def _check_recorded(folder: Path, kind: str, recorded: str) -> None:
    stored = json.loads((folder / f"{kind}.json").read_text(encoding="utf-8")).get("content_hash")
    if stored != recorded:
        _fail(folder, f"{kind} hash mismatch (twin.json records {recorded}, {kind}.json has {stored})")


def load_posterior(path: str | os.PathLike):
    """The posterior stored in a twin artifact, or None when it holds none. Checks the twin (as `load_twin`), the
    posterior's content hash, that ``twin.json`` records the same hash, and that it was made for this twin.

    Raises:
        ArtifactError: for a tampered, truncated or foreign posterior (or twin).
    """
    from .bayes.posterior import Posterior

    folder = Path(path)
    found = _attachment(folder, "posterior", ("posterior.json", "posterior.npz"))
    if found is None:
        return None
    twin, recorded = found
    try:
        posterior = Posterior.read(folder)
    except ValueError as exc:
        _fail(folder, str(exc))
    _check_recorded(folder, "posterior", recorded)
    missing = [p for p in posterior.parameters if p not in twin.params]
    if missing:
        _fail(folder, f"the posterior samples {missing}, which the twin does not have")
    return posterior


def load_fitted_initial_states(path: str | os.PathLike, campaign) -> dict[str, dict[str, float]]:
    """The initial states the fit estimated with the parameters (``fit_settings["initial_states"]`` of the artifact,
    canonical units, batch -> state -> value), for the batches of `campaign`, when `campaign` is the one the twin was
    fitted on (its `campaign_hash` equals the artifact's data hash); otherwise, or when the fit stored none, ``{}``.

    The fitted parameters belong with these states: a training batch predicted from its noisy first samples instead
    is not the trajectory that was fitted, and the posterior's mode lies at them. Batches the fit did not see keep
    their first samples, and so does every batch of a hybrid twin (``{}``): its network was trained from the measured
    starts (`cgt_twin.fit.calibrate`).

    Raises:
        ArtifactError: for a missing or unreadable artifact, or stored initial states that are not positive finite
            numbers by batch and state (the whole record is refused, never a part of it).
    """
    folder = Path(path)
    meta_file = folder / "twin.json"
    try:
        document = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _fail(meta_file, f"missing, unreadable or truncated ({exc})")
    if not isinstance(document, dict):
        _fail(meta_file, "not a cgt_twin twin artifact")
    settings = document.get("fit_settings") or {}
    stored = settings.get("initial_states") if isinstance(settings, dict) else None
    hybrid = isinstance(document.get("model"), dict) and document["model"].get("residual") is not None
    if not stored or hybrid or document.get("data_hash") != campaign_hash(campaign):
        return {}
    if not isinstance(stored, dict):
        _fail(meta_file, f"fit_settings.initial_states must map batch -> state -> value, got {type(stored).__name__}")
    states: dict[str, dict[str, float]] = {}
    for batch, values in stored.items():
        if not isinstance(values, dict):
            _fail(meta_file, f"fit_settings.initial_states[{batch!r}] must map state -> value")
        for state, value in values.items():
            ok = isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value) and value > 0
            if not ok:
                _fail(meta_file, f"fit_settings.initial_states[{batch!r}][{state!r}] must be a positive finite "
                                 f"number (canonical units), got {value!r}")
        if batch in campaign.batches and values:
            states[str(batch)] = {str(k): float(v) for k, v in values.items()}
    return states


def load_ensemble(path: str | os.PathLike):
    """The deep ensemble of the neural residual stored in a twin artifact (a `cgt_twin.bayes.ResidualEnsemble` of the
    loaded twin), or None when it holds none. Checks the twin (as `load_twin`), the ensemble's content hash, that
    ``twin.json`` records the same hash, and that it was made for this twin.

    Raises:
        ArtifactError: for a tampered, truncated or foreign ensemble (or twin).
    """
    from .bayes.ensemble import ENSEMBLE_FILES, ResidualEnsemble

    folder = Path(path)
    found = _attachment(folder, "ensemble", ENSEMBLE_FILES)
    if found is None:
        return None
    twin, recorded = found
    try:
        ensemble = ResidualEnsemble.read(folder, twin)
    except ValueError as exc:
        _fail(folder, str(exc))
    _check_recorded(folder, "ensemble", recorded)
    return ensemble


def append_provenance(path: str | os.PathLike, command: str, *, status: str, data_hash: str | None = None,
                      seed: int | None = None, details: Mapping | None = None) -> dict:
    """Appends one record (UTC time, user, command, versions, data hash, seed, status) to the artifact's hash-chained
    log and returns it. Each record stores the hash of the previous one, so editing or deleting a record breaks
    the chain (`verify_provenance`)."""
    log = Path(path) / "provenance.jsonl"
    records = read_provenance(path) if log.exists() else []
    previous = records[-1]["hash"] if records else "sha256:" + "0" * 64
    try:
        user = getpass.getuser()
    except Exception:  # no user database in some containers
        user = "unknown"
    record = {"utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "user": user,
              "host": platform.node(), "command": command, "versions": _versions(), "data_hash": data_hash,
              "seed": seed, "status": status, "details": dict(details or {}), "previous": previous}
    record["hash"] = "sha256:" + hashlib.sha256(_canonical(record)).hexdigest()
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return record


def read_provenance(path: str | os.PathLike) -> list[dict]:
    """The provenance records of an artifact, oldest first (empty if there is no log)."""
    log = Path(path) / "provenance.jsonl"
    if not log.exists():
        return []
    records = []
    for number, line in enumerate(log.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise ArtifactError(Problem(str(log), "not a JSON record", row=number)) from None
    return records


def verify_provenance(path: str | os.PathLike) -> None:
    """Checks the hash chain of the provenance log; raises `ArtifactError` naming the first broken record."""
    previous = "sha256:" + "0" * 64
    log = Path(path) / "provenance.jsonl"
    for number, record in enumerate(read_provenance(path), start=1):
        claimed = record.get("hash")
        body = {k: v for k, v in record.items() if k != "hash"}
        if record.get("previous") != previous or claimed != "sha256:" + hashlib.sha256(_canonical(body)).hexdigest():
            raise ArtifactError(Problem(str(log), "provenance chain broken: the record was edited, removed or "
                                                  "reordered", row=number))
        previous = claimed
