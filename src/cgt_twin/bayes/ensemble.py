"""The neural residual's uncertainty as a deep ensemble (Lakshminarayanan et al. 2017, "Simple and scalable predictive
uncertainty estimation using deep ensembles", NeurIPS).

By default a hybrid twin's network is held at its fitted weights, so its bands only carry measurement noise (and, with
a `Posterior`, the mechanistic parameters' spread). An ensemble retrains the network K times — same structure, each
member initialised from its own seed and trained on its own bootstrap resample of the training batches, the mechanism
frozen at the twin's fitted values (`cgt_twin.fit.train_hybrid`, network stage) — and predicts with every member.
Where the data pin the residual down the members agree; far from the training data (a feed, temperature or state the
network never saw) they disagree, and the bands widen.

```python
from cgt_twin.bayes import train_ensemble
from cgt_twin.fit import TrainConfig
from cgt_twin.predict import predict

ensemble = train_ensemble(twin, campaign, n_members=5, config=TrainConfig(steps=300), seed=0)
bands = predict(twin, new_protocols, ensemble=ensemble)                       # members + measurement noise
bands = predict(twin, campaign, posterior=posterior, ensemble=ensemble)      # and the posterior's draws
```

Bootstrap: each member draws as many batches as there are training batches, with replacement; a batch drawn m times
weighs m in that member's loss (``train_hybrid(..., batch_weights=...)``), a batch not drawn weighs 0. Every batch is
still solved, so all members have the same shapes and share one compilation. With one training batch (or
``bootstrap=False``) the members differ by their initial weights only.

Bands (`ensemble_bands`): the mean is the mean over members; ``band="measurement"`` gives the exact quantiles of the
equal-weight mixture of the members' measurement distributions (each normal around the member's prediction with the
twin's σ² = σ_abs² + (σ_rel·ŷ)², kept within the variable's physical bounds), so an ensemble of identical members has
exactly the point twin's noise bands; ``band="parameter"`` gives the quantiles of the members' predictions only. With a
posterior the draws are paired with members round robin and the bands are `predictive_bands`' (draws + noise).

Stored beside the twin as ``ensemble.npz`` (every weight with a leading member axis, read with ``allow_pickle=False``)
and ``ensemble.json`` (structure, seeds, resamples, training settings and the SHA-256 of both), recorded in
``twin.json`` (`cgt_twin.io.save_twin`, `cgt_twin.io.load_ensemble`) — never pickle.
"""

from __future__ import annotations

import dataclasses
import io as _io
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.special import ndtr, ndtri

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..data.variables import CANONICAL_VARIABLES
from ..hybrid import HybridKinetics, NeuralResidual, hybrid
from ..models.twin import Twin
from .posterior import _jsonable, read_hashed, write_hashed

__all__ = ["ResidualEnsemble", "train_ensemble", "ensemble_draws", "ensemble_bands", "ENSEMBLE_FILES"]

ENSEMBLE_FILES = ("ensemble.json", "ensemble.npz")
_BISECTIONS = 64


@dataclasses.dataclass(frozen=True, eq=False)
class ResidualEnsemble:
    """K trained copies of a hybrid twin's neural residual (a deep ensemble).

    Attributes:
        twin: the twin the ensemble belongs to (its mechanism, parameters and noise; its own residual is the point
            fit, not a member).
        residuals: the members' networks as one `cgt_twin.hybrid.NeuralResidual` whose every weight has a leading
            member axis (K, ...): what a `jax.vmap` over members takes (`residual(i)` is member i's network).
        seeds: seed of each member's initial weights (`cgt_twin.hybrid.hybrid`).
        batches: the training batches (each member's resample is of these).
        counts: per member, how many times each of `batches` was drawn (its weight in the member's loss).
        meta: JSON-able record of the training (settings, per-member final loss, stop reason, seconds).
    """

    twin: Twin
    residuals: NeuralResidual
    seeds: tuple[int, ...]
    batches: tuple[str, ...] = ()
    counts: tuple[tuple[int, ...], ...] = ()
    meta: dict = dataclasses.field(default_factory=dict)

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_residuals(cls, twin: Twin, residuals: Sequence[NeuralResidual], *, seeds: Sequence[int] | None = None,
                       batches: Sequence[str] = (), counts: Sequence[Sequence[int]] = (),
                       meta: Mapping | None = None) -> ResidualEnsemble:
        """An ensemble of given networks (each of the structure of ``twin.kinetics.residual``)."""
        kinetics = twin.kinetics
        if not isinstance(kinetics, HybridKinetics):
            raise CampaignValidationError(Problem("twin", "the twin has no neural residual: an ensemble is of a hybrid "
                                                          "twin's network (cgt_twin.hybrid.hybrid)"))
        if not residuals:
            raise ValueError("an ensemble needs at least one member")
        like = jax.tree_util.tree_structure(kinetics.residual)
        shapes = [np.shape(x) for x in jax.tree_util.tree_leaves(kinetics.residual)]
        for i, r in enumerate(residuals):
            if jax.tree_util.tree_structure(r) != like or [np.shape(x) for x in jax.tree_util.tree_leaves(r)] != shapes:
                raise ValueError(f"member {i} does not have the structure of the twin's residual")
        stacked = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x, dtype=jnp.float64) for x in xs]), *residuals)
        seeds = tuple(int(s) for s in seeds) if seeds is not None else tuple(-1 for _ in residuals)
        if len(seeds) != len(residuals):
            raise ValueError(f"{len(seeds)} seeds for {len(residuals)} members")
        return cls(twin, stacked, seeds, tuple(str(b) for b in batches),
                   tuple(tuple(int(c) for c in row) for row in counts), dict(meta or {}))

    # --- views ---------------------------------------------------------------------------------------------------
    @property
    def n_members(self) -> int:
        return int(jax.tree_util.tree_leaves(self.residuals)[0].shape[0])

    @property
    def spec(self):
        """The residual's `cgt_twin.hybrid.ResidualSpec` (targets, features, mode, widths)."""
        return self.twin.kinetics.spec

    def residual(self, i: int) -> NeuralResidual:
        """Member i's network."""
        if not -self.n_members <= i < self.n_members:
            raise IndexError(f"member {i} of an ensemble of {self.n_members}")
        return jax.tree.map(lambda a: a[i], self.residuals)

    def member(self, i: int) -> Twin:
        """The twin with member i's network in place of its own."""
        kinetics = eqx.tree_at(lambda k: k.residual, self.twin.kinetics, self.residual(i))
        return Twin(kinetics, self.twin.params, self.twin.noise)

    def take(self, members: Sequence[int] | np.ndarray) -> NeuralResidual:
        """The networks of the given members (repeats allowed), stacked on a leading axis: one per draw."""
        index = np.asarray(members, dtype=np.int64)
        return jax.tree.map(lambda a: a[index], self.residuals)

    def check_twin(self, twin: Twin) -> None:
        """Raises `CampaignValidationError` unless `twin` has a residual of this ensemble's structure (same
        mechanistic model and options, residual specification, covariate encoding and weight shapes)."""
        mine, theirs = self.twin.kinetics, twin.kinetics
        problem = None
        if not isinstance(theirs, HybridKinetics):
            problem = "the twin has no neural residual; the ensemble replaces a hybrid twin's network"
        elif type(theirs.core) is not type(mine.core) or not bool(eqx.tree_equal(theirs.core, mine.core)):
            problem = (f"the ensemble is of a {type(mine.core).__name__} residual with other options than the twin's "
                       f"{type(theirs.core).__name__}: it belongs to another model")
        elif theirs.spec != mine.spec:
            problem = "the twin's residual specification differs from the ensemble's: it belongs to another model"
        elif theirs.encoding.to_json() != mine.encoding.to_json():
            problem = "the twin's covariate encoding differs from the ensemble's: it belongs to another model"
        elif ([np.shape(x) for x in jax.tree_util.tree_leaves(theirs.residual)]
              != [np.shape(x)[1:] for x in jax.tree_util.tree_leaves(self.residuals)]):
            problem = "the twin's network has other weight shapes than the ensemble's"
        if problem:
            raise CampaignValidationError(Problem("ensemble", problem))

    def summary(self) -> str:
        spec = self.spec
        losses = [m.get("final_train") for m in self.meta.get("members", [])]
        finite = [x for x in losses if isinstance(x, int | float)]
        lines = [f"deep ensemble of {self.n_members} residuals: {spec.mode} correction of {', '.join(spec.targets)} "
                 f"from {', '.join((*spec.features, *spec.covariates))}, hidden {list(spec.hidden)}",
                 f"seeds {list(self.seeds)}"]
        if self.batches:
            resampled = "bootstrap resamples" if self.meta.get("bootstrap", True) else "all batches (no bootstrap)"
            lines.append(f"trained on {len(self.batches)} batches, {resampled}")
        if finite:
            lines.append(f"final training loss {min(finite):.4g} … {max(finite):.4g}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        spec = self.spec
        return (f"ResidualEnsemble({self.n_members} members, {spec.mode} {list(spec.targets)} from "
                f"{list((*spec.features, *spec.covariates))}, {len(self.batches)} training batches)")

    def _repr_html_(self) -> str:
        from .._html import _esc, table_html

        members = self.meta.get("members", [])
        rows = []
        for i in range(self.n_members):
            record = members[i] if i < len(members) else {}
            counts = self.counts[i] if i < len(self.counts) else ()
            drawn = ", ".join(f"{b}×{c}" for b, c in zip(self.batches, counts, strict=False) if c) or "—"
            loss = record.get("final_train")
            rows.append([i, self.seeds[i], drawn, f"{loss:.4g}" if isinstance(loss, int | float) else "—",
                         record.get("stopped", "—")])
        head = "<br>".join(_esc(line) for line in self.summary().splitlines())
        table = table_html(["member", "seed", "batches drawn", "final loss", "stopped"], rows)
        return f"<div><div><b>ResidualEnsemble</b></div><div>{head}</div><details><summary>members</summary>" \
               f"{table}</details></div>"

    # --- storage -------------------------------------------------------------------------------------------------
    def _array_bytes(self) -> bytes:
        buffer = _io.BytesIO()
        leaves = jax.tree_util.tree_leaves(self.residuals)
        np.savez(buffer, **{f"residual_{i:03d}": np.asarray(leaf) for i, leaf in enumerate(leaves)})
        return buffer.getvalue()

    def _body(self) -> dict:
        spec = dataclasses.asdict(self.spec)
        spec["additive_scale"] = dict(self.spec.additive_scale)
        spec["covariate_kinds"] = dict(self.spec.covariate_kinds)
        return {"format": "cgt_twin ensemble", "version": 1, "n_members": self.n_members,
                "n_arrays": len(jax.tree_util.tree_leaves(self.residuals)), "spec": _jsonable(spec),
                "seeds": list(self.seeds), "batches": list(self.batches), "counts": [list(c) for c in self.counts],
                "meta": _jsonable(self.meta)}

    def write(self, folder: str | os.PathLike) -> str:
        """Writes ``ensemble.npz`` and ``ensemble.json`` into `folder`; returns the content hash (SHA-256 of the
        canonical JSON body and the arrays)."""
        folder = Path(folder)
        array_bytes = self._array_bytes()
        body = self._body()
        return write_hashed(folder, "ensemble", body, array_bytes)

    @classmethod
    def read(cls, folder: str | os.PathLike, twin: Twin) -> ResidualEnsemble:
        """Reads an ensemble written by `write` for `twin`, checking its content hash and structure.

        Raises:
            ValueError: for a missing, unreadable, modified or foreign ensemble (the message says which).
        """
        folder = Path(folder)
        body, array_bytes = read_hashed(folder, "ensemble")
        try:
            return cls._from_body(body, array_bytes, twin)
        except (KeyError, TypeError, IndexError) as exc:
            raise ValueError(f"invalid ensemble in {folder} ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_body(cls, body: Mapping, array_bytes: bytes, twin: Twin) -> ResidualEnsemble:
        if not isinstance(twin.kinetics, HybridKinetics):
            raise ValueError("the twin has no neural residual, the ensemble is of one")
        mine = body["spec"]
        theirs = _jsonable({**dataclasses.asdict(twin.kinetics.spec),
                            "additive_scale": dict(twin.kinetics.spec.additive_scale),
                            "covariate_kinds": dict(twin.kinetics.spec.covariate_kinds)})
        if mine != theirs:
            raise ValueError("the ensemble's residual specification differs from the twin's")
        like_leaves, treedef = jax.tree_util.tree_flatten(twin.kinetics.residual)
        n = int(body["n_members"])
        try:
            with np.load(_io.BytesIO(array_bytes), allow_pickle=False) as stored:
                leaves = [stored[f"residual_{i:03d}"] for i in range(int(body["n_arrays"]))]
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"unreadable ensemble arrays ({exc})") from None
        if [(n, *np.shape(x)) for x in like_leaves] != [x.shape for x in leaves]:
            raise ValueError("the ensemble's weights do not match the twin's residual")
        residuals = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(x) for x in leaves])
        return cls(twin, residuals, tuple(int(s) for s in body["seeds"]), tuple(body.get("batches", ())),
                   tuple(tuple(int(c) for c in row) for row in body.get("counts", ())), dict(body.get("meta", {})))


def train_ensemble(twin: Twin, campaign: Campaign, n_members: int = 5, config=None, *, seed: int = 0,
                   bootstrap: bool = True, progress: bool = True,
                   noise: Mapping[str, tuple[float, float]] | None = None) -> ResidualEnsemble:
    """Trains a deep ensemble of the hybrid `twin`'s neural residual (see the module docstring).

    Args:
        twin: a fitted hybrid twin; its mechanistic parameters are held at their values (network stage only).
        campaign: the training data (batches whose feeds are unknown and ``config.validation`` batches are not
            resampled; validation batches steer each member's early stopping as in `cgt_twin.fit.train_hybrid`).
        n_members: K, at least 2.
        config: `cgt_twin.fit.TrainConfig` of every member (``joint`` is ignored: the mechanism stays frozen; a
            ``checkpoint_dir`` gets one sub-folder per member, so an interrupted ensemble resumes member by member).
        seed: seeds the members' initial weights and resamples (reproducible).
        bootstrap: resample the training batches with replacement (False: every member sees every batch once).
        progress: a progress bar over members.
        noise: variable -> (σ_abs, σ_rel) of the loss (default: the twin's noise model).

    Raises:
        CampaignValidationError: for bad input (before anything is compiled).
    """
    from tqdm.auto import tqdm

    from ..fit.training import TrainConfig, train_hybrid

    config = config or TrainConfig()
    problems = []
    if not isinstance(twin.kinetics, HybridKinetics):
        problems.append(Problem("twin", "the twin has no neural residual; an ensemble retrains a hybrid twin's network "
                                        "(cgt_twin.hybrid.hybrid, cgt-twin fit --hybrid)"))
    if not isinstance(n_members, int | np.integer) or n_members < 2:
        problems.append(Problem("n_members", f"an ensemble needs at least 2 members, got {n_members!r}"))
    noise = dict(twin.noise if noise is None else noise)
    train_batches = [b for b in campaign.batches if b not in config.validation and campaign.protocols[b].feeds_known]
    if not train_batches:
        problems.append(Problem("campaign", "no training batches (feeds recorded, not validation)"))
    if problems:
        raise CampaignValidationError(problems, header="cannot train an ensemble")
    start = time.perf_counter()
    children = np.random.SeedSequence(int(seed)).spawn(int(n_members))
    seeds = [int(child.generate_state(1)[0] & 0x7FFFFFFF) for child in children]
    counts = []
    for child in children:
        rng = np.random.default_rng(child)
        n = len(train_batches)
        counts.append(rng.multinomial(n, np.full(n, 1.0 / n)) if bootstrap else np.ones(n, dtype=np.int64))
    base = twin.kinetics
    settings = dataclasses.replace(config, joint=False, progress=False)
    residuals, records = [], []
    bar = tqdm(total=int(n_members), desc="training ensemble", unit="member",
               disable=not progress or bool(os.environ.get("CGT_TWIN_NO_PROGRESS")))
    try:
        for k, (member_seed, member_counts) in enumerate(zip(seeds, counts, strict=True)):
            kinetics = hybrid(base.core, base.spec, seed=member_seed, encoding=base.encoding)
            member = Twin(kinetics, twin.params, twin.noise)
            member_config = settings if not config.checkpoint_dir else dataclasses.replace(
                settings, checkpoint_dir=str(Path(config.checkpoint_dir) / f"member_{k:03d}"))
            weights = {b: int(c) for b, c in zip(train_batches, member_counts, strict=True)}
            result = train_hybrid(member, campaign, noise, member_config, batch_weights=weights)
            residuals.append(result.twin.kinetics.residual)
            last = result.history[-1] if result.history else {}
            records.append({"seed": member_seed, "final_train": last.get("train"),
                            "final_validation": last.get("validation"), "best_step": result.best_step,
                            "stopped": result.stopped, "seconds": result.seconds})
            bar.update(1)
    finally:
        bar.close()
    meta = {"n_members": int(n_members), "seed": int(seed), "bootstrap": bool(bootstrap),
            "training": {k: v for k, v in dataclasses.asdict(settings).items()
                         if k not in ("progress", "checkpoint_dir", "checkpoint_every", "joint", "parameters")},
            "validation": list(config.validation), "noise": {k: list(v) for k, v in sorted(noise.items())},
            "members": records, "seconds": time.perf_counter() - start}
    return ResidualEnsemble.from_residuals(twin, residuals, seeds=seeds, batches=train_batches,
                                           counts=[c.tolist() for c in counts], meta=_jsonable(meta))


def ensemble_draws(ensemble: ResidualEnsemble, twin: Twin, prepared, *,
                   settings=None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every member's (noise-free) observed variables on the batches of `prepared`, with `twin`'s parameters: one
    vmapped solve over members (`cgt_twin.bayes.predictive.draw_observations`).

    Returns:
        ``(observed, status)``: name -> (member, batch, time, phase) on ``prepared.grid`` (NaN where a batch has no
        output or a member's solve failed) and status codes (member, batch).
    """
    from .predictive import draw_observations

    ensemble.check_twin(twin)
    k = ensemble.n_members
    batches = len(prepared.names)
    values = {name: np.full((k, batches), float(np.asarray(v))) for name, v in twin.params.items()}
    y0 = np.broadcast_to(np.asarray(prepared.encoded.y0), (k, *np.shape(prepared.encoded.y0))).copy()
    return draw_observations(twin, prepared, values, y0, settings=settings, residuals=ensemble.residuals)


def ensemble_bands(twin: Twin, observed: Mapping[str, np.ndarray], *, band: str = "measurement",
                   quantiles: tuple[float, float] = (0.05, 0.95)) -> dict[str, np.ndarray]:
    """Mean and the two quantiles, name -> (3, batch, time, phase), of the members' predictions (see the module
    docstring). Members whose solve failed (NaN) are left out; variables without a noise level in ``twin.noise`` get
    the members' spread only."""
    from .predictive import BANDS

    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    out = {}
    for name, draws in observed.items():
        draws = np.asarray(draws, dtype=np.float64)
        finite = np.isfinite(draws)
        count = finite.sum(axis=0)
        with np.errstate(all="ignore"):
            mean = np.where(count > 0, np.where(finite, draws, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
        sigma_abs, sigma_rel = twin.noise.get(name, (0.0, 0.0))
        if band == "parameter" or (sigma_abs == 0 and sigma_rel == 0):
            low, high = _member_quantiles(draws, quantiles)
        else:
            sd = np.sqrt(sigma_abs ** 2 + (sigma_rel * draws) ** 2)
            low, high = (_mixture_quantile(draws, sd, q) for q in quantiles)
            spec = CANONICAL_VARIABLES.get(name)
            lower = spec.lower if spec is not None and spec.lower is not None else -np.inf
            upper = spec.upper if spec is not None and spec.upper is not None else np.inf
            low, high = np.clip(low, lower, upper), np.clip(high, lower, upper)  # quantiles of the bounded value
        out[name] = np.stack([mean, low, high])
    return out


def _member_quantiles(draws: np.ndarray, quantiles) -> tuple[np.ndarray, np.ndarray]:
    if not np.isfinite(draws).any(axis=0).any():
        shape = draws.shape[1:]
        return np.full(shape, np.nan), np.full(shape, np.nan)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        low, high = np.nanquantile(draws, quantiles, axis=0)
    return low, high


def _mixture_quantile(mu: np.ndarray, sd: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of the equal-weight mixture of normals N(mu_k, sd_k²) over the leading axis (NaN members left
    out), by bisection: it lies between the smallest and the largest of the members' own q-quantiles (exactly that
    value when they coincide)."""
    ok = np.isfinite(mu) & np.isfinite(sd)
    count = ok.sum(axis=0)
    mu0, sd0 = np.where(ok, mu, 0.0), np.where(ok, sd, 0.0)
    own = mu0 + ndtri(q) * sd0
    lo = np.where(ok, own, np.inf).min(axis=0)
    hi = np.where(ok, own, -np.inf).max(axis=0)
    empty = count == 0
    lo, hi = np.where(empty, 0.0, lo), np.where(empty, 0.0, hi)
    positive = sd0 > 0
    safe = np.where(positive, sd0, 1.0)
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        cdf = np.where(positive, ndtr((mid - mu0) / safe), (mid >= mu0).astype(np.float64))
        below = np.where(ok, cdf, 0.0).sum(axis=0) < q * count
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(empty, np.nan, np.where(lo == hi, lo, 0.5 * (lo + hi)))


def _predict_ensemble(twin: Twin, data, times, batches, quantiles, ensemble: ResidualEnsemble, band: str,
                      simulate_kwargs) -> xr.Dataset:
    """`cgt_twin.predict.predict` with an ensemble and no posterior (same dims and statistics)."""
    from ..predict import predict
    from ..simulate import STATUS_MESSAGES, Prepared, prepare
    from .predictive import BANDS

    if band not in BANDS:
        raise CampaignValidationError(Problem("band", f"must be one of {BANDS}, got {band!r}"))
    ensemble.check_twin(twin)
    settings = simulate_kwargs.get("settings")
    prepared = data if isinstance(data, Prepared) else prepare(
        twin, data, times, batches=batches, initial_states=simulate_kwargs.get("initial_states"),
        covariates=simulate_kwargs.get("covariates"))
    point = predict(twin, prepared, quantiles=quantiles, settings=settings)
    if not prepared.names:
        return point
    observed, status = ensemble_draws(ensemble, twin, prepared, settings=settings)
    bands = ensemble_bands(twin, observed, band=band, quantiles=quantiles)
    ds = point.copy()
    for name in ds.data_vars:
        if name in bands and "statistic" in ds[name].dims:
            ds[name] = (("statistic", "batch", "time", "phase"), bands[name], dict(ds[name].attrs))
    failed = (status != 0).sum(axis=0)
    first = [STATUS_MESSAGES.get(int(s[s != 0][0]), "failed") if f else "" for s, f in zip(status.T, failed,
                                                                                             strict=True)]
    ds["status"] = ("batch", np.asarray(["ok" if f == 0 else f"{f} of {status.shape[0]} members failed ({why})"
                                         for f, why in zip(failed, first, strict=True)], dtype=object))
    ds.attrs = {**point.attrs, "ensemble": int(ensemble.n_members), "band": band}
    return ds
