"""The `Posterior`: draws of a twin's uncertain quantities, what was held fixed, and the sampler's diagnostics.

Diagnostics (Vehtari et al. 2021; Stan's warnings) are computed when the posterior is made and checked against
`THRESHOLDS`; a missed threshold is a `PosteriorWarning` naming the number and the fix, never silent, and stays in
``posterior.problems`` (saved with it). Stored as ``posterior.npz`` (arrays, read with ``allow_pickle=False``) and
``posterior.json`` (what was sampled, units, diagnostics, the SHA-256 of the arrays) — never pickle.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io as _io
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .held import HeldCorrection, apply_correction

__all__ = ["Posterior", "PosteriorWarning", "THRESHOLDS", "POSTERIOR_FILES"]

THRESHOLDS: Mapping[str, float] = {
    "r_hat_max": 1.01,  # rank-normalised split R-hat, every sampled quantity
    "ess_per_chain_min": 100.0,  # bulk and tail ESS per chain (≥ 400 in total for 4 chains)
    "divergences_max": 0,  # divergent transitions after warm-up
    "e_bfmi_min": 0.3,  # energy Bayesian fraction of missing information, every chain
    "tree_depth_saturation_max": 0.0,  # fraction of iterations at the maximum tree depth
}
POSTERIOR_FILES = ("posterior.json", "posterior.npz")


class PosteriorWarning(UserWarning):
    """A sampler diagnostic missed its threshold: the posterior may be wrong; read `Posterior.problems`."""


def _e_bfmi(energy: np.ndarray) -> np.ndarray:
    """E-BFMI per chain from the Hamiltonian energy, (chain, draw, ...) -> (chain, ...) (batches sampled
    independently have their own chains)."""
    diff = np.diff(energy, axis=1)
    var = np.var(energy, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.mean(diff ** 2, axis=1) / var


@dataclasses.dataclass(frozen=True)
class Posterior:
    """Draws of a twin's posterior.

    Attributes:
        samples: sample site -> array (chain, draw, ...). Kinetic parameters are ``log_<name>`` (natural log of the
            value in the spec's unit); ``tau_batch`` / ``tau_group`` between-batch / between-group sds (log scale)
            of `hierarchical` parameters, ``z_batch`` / ``z_group`` their standardised effects; ``noise_scale`` the
            log multiplier of each variable's noise; ``log_initial`` per-batch log initial states. With the Laplace
            correction of held parameters (``BayesConfig(held_uncertainty="laplace")``) the sampled ``log_<name>``
            are the corrected draws and every carried held parameter has its own ``log_<name>`` (chain, draw).
        stats: sampler statistics per iteration (chain, draw): ``diverging``, ``num_steps``, ``energy``,
            ``accept_prob`` (NUTS); ``potential_energy`` (Laplace). (chain, draw, batch) when the batches were
            sampled independently (`NutsConfig.independent_batches`; the ``solver_failed`` draws too).
        meta: what was sampled and held (JSON-able): method, parameters, units, held values, hierarchical
            parameters, group covariate and levels, batches and their groups, variables and the base noise,
            settings, run time; ``held_uncertainty`` (with the correction): the carried parameters, their fit
            values and log sds, the gain and the seed of their draws, and (``mode``, from `sample`) where the
            mode search moved the twin's values before sampling (`cgt_twin.bayes.Curvature.search`).
        diagnostics: computed diagnostics (see `THRESHOLDS`).
        problems: the diagnostics that missed their thresholds, in words.
    """

    samples: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]
    meta: dict
    diagnostics: dict = dataclasses.field(default_factory=dict)
    problems: tuple[str, ...] = ()

    # --- construction --------------------------------------------------------------------------------------------
    @classmethod
    def from_samples(cls, twin_model, samples: Mapping[str, np.ndarray], stats: Mapping[str, np.ndarray], *,
                     method: str, settings: Mapping, seconds: float, warn: bool = True,
                     correction: HeldCorrection | None = None, correction_seed: int = 0) -> Posterior:
        """Builds the posterior of a `TwinModel`'s draws and checks its diagnostics (warns when one fails).

        With a `correction` (`cgt_twin.bayes.held`), the diagnostics are those of the sampler's own (conditional)
        draws; the draws kept are the corrected ones, with a ``log_<name>`` site for every carried parameter, drawn
        from `correction_seed`."""
        specs = {p.name: p for p in twin_model.twin.kinetics.parameters}
        config = twin_model.config
        carried = set(correction.held) if correction is not None else set()
        meta = {"method": method, "parameters": list(twin_model.parameters),
                "units": {p.name: p.unit for p in twin_model.twin.kinetics.parameters},
                "held": {k: v for k, v in twin_model.held.items() if k not in carried},
                "hierarchical": list(config.hierarchical), "group": config.group,
                "group_levels": list(twin_model.group_levels), "batches": list(twin_model.batches),
                "groups": list(twin_model.groups), "variables": list(twin_model.variables),
                "base_noise": {k: list(v) for k, v in twin_model.base_noise.items()},
                "initial_states": list(config.initial_states),
                "prior": {p: {"log_median": float(twin_model.prior_loc[i]), "log_sd": float(twin_model.prior_scale[i]),
                              "unit": specs[p].unit} for i, p in enumerate(twin_model.parameters)},
                "tau_sigma": config.tau_sigma, "settings": _jsonable(settings), "seconds": float(seconds),
                "fixed_sites": ["tau_group"] if config.group and config.group_tau is not None else [],
                "description": twin_model.describe()}
        posterior = cls(dict(samples), dict(stats), meta)
        diagnostics, problems = posterior._diagnose()
        if correction is not None:
            meta["held_uncertainty"] = correction.to_meta(correction_seed)
            samples = apply_correction(samples, correction, correction_seed)
        posterior = dataclasses.replace(posterior, samples=dict(samples), diagnostics=diagnostics,
                                        problems=tuple(problems))
        if warn and problems:
            warnings.warn(PosteriorWarning("posterior diagnostics failed: " + "; ".join(problems)), stacklevel=3)
        return posterior

    # --- shape -----------------------------------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def parameters(self) -> tuple[str, ...]:
        """The sampled kinetic parameters."""
        return tuple(self.meta["parameters"])

    @property
    def held(self) -> dict[str, float]:
        """Kinetic parameters held fixed at the twin's values (spec units): the same value in every draw. Parameters
        whose uncertainty the Laplace correction carried are not among them (see `carried`)."""
        return dict(self.meta["held"])

    @property
    def carried(self) -> dict[str, float]:
        """Parameters held at the twin's values while sampling whose uncertainty the Laplace correction carried into
        the draws (``BayesConfig(held_uncertainty="laplace")``): name -> the fit's value (spec units); each draw has
        its own value, site ``log_<name>``. Empty without the correction."""
        return dict(self.meta.get("held_uncertainty", {}).get("fit", {}))

    @property
    def n_chains(self) -> int:
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def n_draws(self) -> int:
        """Draws per chain."""
        return int(next(iter(self.samples.values())).shape[1])

    def flat(self, name: str) -> np.ndarray:
        """A site's draws with chains merged: (chain·draw, ...)."""
        value = self.samples[name]
        return value.reshape(-1, *value.shape[2:])

    def parameter_values(self) -> dict[str, np.ndarray]:
        """Population values of the sampled parameters (spec units), chains merged: name -> (n,)."""
        return {p: np.exp(self.flat(f"log_{p}")) for p in self.parameters}  # (n,) or (n, batch) unpooled

    def carried_values(self) -> dict[str, np.ndarray]:
        """Each draw's value of the parameters the Laplace correction carried (spec units), chains merged:
        name -> (n,); empty without the correction."""
        return {p: np.exp(self.flat(f"log_{p}")) for p in self.carried}

    # --- diagnostics -------------------------------------------------------------------------------------------
    @property
    def sampled_sites(self) -> list[str]:
        """Sites the sampler drew (not the solver-failure flag, not a spread fixed by the configuration, not the
        carried parameters' draws of the Laplace correction)."""
        fixed = {"solver_failed", *self.meta.get("fixed_sites", ()), *(f"log_{p}" for p in self.carried)}
        return [k for k in self.samples if k not in fixed]

    def _diagnose(self) -> tuple[dict, list[str]]:
        out: dict = {"method": self.method, "chains": self.n_chains, "draws_per_chain": self.n_draws}
        problems: list[str] = []
        failed = self.samples.get("solver_failed")
        if failed is not None:
            out["solver_failures"] = int(np.sum(failed))
            if out["solver_failures"]:
                problems.append(f"{out['solver_failures']} draws have a failed solve")
        if self.method != "nuts":
            out["note"] = "Laplace approximation: no sampler diagnostics"
            return out, problems
        import arviz as az

        idata = az.from_dict(posterior={k: self.samples[k] for k in self.sampled_sites})
        rhat = az.rhat(idata, method="rank")
        bulk = az.ess(idata, method="bulk")
        tail = az.ess(idata, method="tail")
        out["r_hat_max"] = _max(rhat)
        out["ess_bulk_min"] = _min(bulk)
        out["ess_tail_min"] = _min(tail)
        diverging = np.asarray(self.stats.get("diverging", np.zeros(1)))
        out["divergences"] = int(np.sum(diverging))
        energy = self.stats.get("energy")
        out["e_bfmi"] = [float(v) for v in np.ravel(_e_bfmi(np.asarray(energy)))] if energy is not None else []
        steps = np.asarray(self.stats.get("num_steps", np.zeros(1)))
        depth = int(self.meta["settings"].get("max_tree_depth", 10))
        out["tree_depth_saturation"] = float(np.mean(steps >= 2 ** depth - 1))
        out["mean_tree_steps"] = float(np.mean(steps))
        seconds = self.meta.get("seconds") or math.nan
        out["ess_bulk_per_second"] = out["ess_bulk_min"] / seconds if seconds and seconds > 0 else math.nan
        t = THRESHOLDS
        n_min = t["ess_per_chain_min"] * self.n_chains
        if self.n_chains > 1 and not out["r_hat_max"] <= t["r_hat_max"]:
            problems.append(f"split R-hat {out['r_hat_max']:.3f} > {t['r_hat_max']} (chains disagree: run longer or "
                            "reparameterise)")
        for kind in ("bulk", "tail"):
            if not out[f"ess_{kind}_min"] >= n_min:
                problems.append(f"{kind} ESS {out[f'ess_{kind}_min']:.0f} < {n_min:.0f} "
                                f"({t['ess_per_chain_min']:.0f} per chain): draw more")
        if out["divergences"] > t["divergences_max"]:
            problems.append(f"{out['divergences']} divergent transitions (raise target_accept or reparameterise)")
        if out["e_bfmi"] and min(out["e_bfmi"]) < t["e_bfmi_min"]:
            problems.append(f"E-BFMI {min(out['e_bfmi']):.2f} < {t['e_bfmi_min']} (heavy tails / poor momentum "
                            "resampling)")
        if out["tree_depth_saturation"] > t["tree_depth_saturation_max"]:
            problems.append(f"{100 * out['tree_depth_saturation']:.1f} % of iterations hit the maximum tree depth "
                            f"{depth} (sloppy directions: sample fewer parameters)")
        return out, problems

    def check(self) -> bool:
        """True when every diagnostic met its threshold."""
        return not self.problems

    # --- ArviZ -------------------------------------------------------------------------------------------------
    def to_arviz(self):
        """An `arviz.InferenceData`: the posterior group holds every site plus the population values of the sampled
        parameters under their own names (spec units); sample_stats holds ``diverging``, ``energy``, ``n_steps``,
        ``tree_depth``, ``acceptance_rate`` (NUTS) — ready for `arviz.plot_trace` / `plot_pair` / `summary`."""
        import arviz as az

        posterior = {k: v for k, v in self.samples.items() if k != "solver_failed"}
        dims, coords = {}, {"batch": self.meta["batches"]}
        for p in (*self.parameters, *self.carried):
            posterior[p] = np.exp(self.samples[f"log_{p}"])
            if posterior[p].ndim == 3:
                dims[p] = dims[f"log_{p}"] = ["batch"]
        n_h = len(self.meta["hierarchical"])
        if n_h:
            coords["effect"] = self.meta["hierarchical"]
            dims.update({"tau_batch": ["effect"], "z_batch": ["batch", "effect"]})
            if "z_group" in posterior:
                coords["group"] = self.meta["group_levels"]
                dims.update({"tau_group": ["effect"], "z_group": ["group", "effect"]})
        if "noise_scale" in posterior:
            coords["variable"] = self.meta["variables"]
            dims["noise_scale"] = ["variable"]
        if "log_initial" in posterior:
            coords["initial_state"] = self.meta["initial_states"]
            dims["log_initial"] = ["batch", "initial_state"]
        stats = {}
        if "diverging" in self.stats:
            stats["diverging"] = self.stats["diverging"].astype(bool)
        if "energy" in self.stats:
            stats["energy"] = self.stats["energy"]
        if "num_steps" in self.stats:
            stats["n_steps"] = self.stats["num_steps"]
            stats["tree_depth"] = np.ceil(np.log2(self.stats["num_steps"] + 1.0)).astype(int)
        if "accept_prob" in self.stats:
            stats["acceptance_rate"] = self.stats["accept_prob"]
        dims.update({k: ["batch"] for k, v in stats.items() if v.ndim == 3})  # batches sampled independently
        idata = az.from_dict(posterior=posterior, sample_stats=stats or None, coords=coords, dims=dims,
                             attrs={"method": self.method, "description": self.meta.get("description", ""),
                                    "held": json.dumps(self.meta["held"]),
                                    "held_uncertainty": json.dumps(self.meta.get("held_uncertainty", {}))})
        return idata

    def summary(self, var_names: list[str] | None = None):
        """`arviz.summary` (mean, sd, HDI, R-hat, bulk/tail ESS) of the sampled parameters (spec units), the carried
        held parameters (Laplace correction), the spreads and the noise scales by default."""
        import arviz as az

        names = var_names or [*self.parameters, *self.carried, *[k for k in ("tau_batch", "tau_group", "noise_scale")
                                                  if k in self.sampled_sites]]
        return az.summary(self.to_arviz(), var_names=names, kind="all" if self.method == "nuts" else "stats")

    def correction_lines(self) -> list[str]:
        """What the Laplace correction of the held parameters did, in words (none without it): the carried
        parameters with their log sds, and where `sample` moved the twin's values to the mode first."""
        if not self.carried:
            return []
        held = self.meta["held_uncertainty"]
        seconds = held.get("seconds")
        lines = ["held parameters' uncertainty carried by the Laplace correction (log sd at the fit): "
                 + ", ".join(f"{p} {held['log_sd'][p]:.3g}" for p in self.carried)
                 + (f" (computed in {seconds:.1f} s)" if isinstance(seconds, int | float) else "")
                 + "; diagnostics are those of the sampler's draws before the correction"]
        mode = held.get("mode")
        if mode:
            moved = sorted(((n, v["change"]) for n, v in mode["values"].items() if abs(v["change"]) >= 1e-4),
                           key=lambda item: -abs(item[1]))
            before, after = mode["potential"]
            lines.append("centred at the posterior mode found from the twin's values (negative log posterior "
                         f"{before:.6g} -> {after:.6g}): "
                         + (", ".join(f"{n} {100 * c:+.2g} %" for n, c in moved[:6])
                            + (f" and {len(moved) - 6} more" if len(moved) > 6 else "")
                            if moved else "no parameter moved by 0.01 % or more"))
        return lines

    def report(self) -> str:
        """A few lines: what was sampled and held, and the diagnostics against their thresholds."""
        d = self.diagnostics
        lines = [f"posterior by {self.method}: {self.n_chains} chain(s) × {self.n_draws} draws",
                 self.meta.get("description", "")]
        lines += self.correction_lines()
        if self.method == "nuts":
            lines.append(f"R-hat max {d['r_hat_max']:.3f}; ESS bulk min {d['ess_bulk_min']:.0f}, tail min "
                         f"{d['ess_tail_min']:.0f}; divergences {d['divergences']}; E-BFMI min "
                         f"{min(d['e_bfmi']) if d['e_bfmi'] else float('nan'):.2f}; tree-depth saturation "
                         f"{100 * d['tree_depth_saturation']:.1f} %")
        lines.append("diagnostics: " + ("all thresholds met" if not self.problems else "; ".join(self.problems)))
        return "\n".join(lines)

    def __repr__(self) -> str:
        carried = f", carried by the Laplace correction {list(self.carried)}" if self.carried else ""
        return (f"Posterior({self.method}, {self.n_chains}×{self.n_draws} draws, sampled {list(self.parameters)}"
                f"{carried}, {'ok' if not self.problems else 'diagnostics failed'})")

    def _repr_html_(self) -> str:
        from .._html import posterior_html

        return posterior_html(self)

    # --- storage -----------------------------------------------------------------------------------------------
    def _array_bytes(self) -> bytes:
        buffer = _io.BytesIO()
        arrays = {f"sample__{k}": np.asarray(v) for k, v in self.samples.items()}
        arrays.update({f"stat__{k}": np.asarray(v) for k, v in self.stats.items()})
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    def write(self, folder: str | os.PathLike) -> str:
        """Writes ``posterior.npz`` and ``posterior.json`` into `folder`; returns the content hash (SHA-256 of the
        arrays and the canonical JSON body)."""
        folder = Path(folder)
        array_bytes = self._array_bytes()
        body = {"format": "cgt_twin posterior", "version": 1, "meta": self.meta,
                "diagnostics": _jsonable(self.diagnostics), "problems": list(self.problems)}
        return write_hashed(folder, "posterior", body, array_bytes)

    @classmethod
    def read(cls, folder: str | os.PathLike) -> Posterior:
        """Reads a posterior written by `write`, checking its content hash.

        Raises:
            ValueError: for a missing, unreadable or modified posterior (the message says which).
        """
        folder = Path(folder)
        body, array_bytes = read_hashed(folder, "posterior")
        with np.load(_io.BytesIO(array_bytes), allow_pickle=False) as stored:
            samples = {k[len("sample__"):]: stored[k] for k in stored.files if k.startswith("sample__")}
            stats = {k[len("stat__"):]: stored[k] for k in stored.files if k.startswith("stat__")}
        return cls(samples, stats, body["meta"], body.get("diagnostics", {}), tuple(body.get("problems", ())))


def write_hashed(folder: Path, kind: str, body: Mapping, array_bytes: bytes) -> str:
    """Writes ``<kind>.npz`` and ``<kind>.json`` (the body with its content hash) into `folder`; returns the hash."""
    digest = _hash(body, array_bytes)
    (folder / f"{kind}.npz").write_bytes(array_bytes)
    (folder / f"{kind}.json").write_text(json.dumps({**body, "content_hash": digest}, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
    return digest


def read_hashed(folder: Path, kind: str) -> tuple[dict, bytes]:
    """The JSON body and array bytes of ``<kind>.json`` + ``<kind>.npz`` in `folder` (a posterior, an ensemble), after
    checking the format and the content hash.

    Raises:
        ValueError: for missing, unreadable, foreign or modified files (the message says which).
    """
    try:
        document = json.loads((folder / f"{kind}.json").read_text(encoding="utf-8"))
        array_bytes = (folder / f"{kind}.npz").read_bytes()
    except (OSError, ValueError) as exc:
        raise ValueError(f"unreadable {kind} in {folder} ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != f"cgt_twin {kind}":
        raise ValueError(f"{folder / f'{kind}.json'} is not a cgt_twin {kind}")
    body = {k: v for k, v in document.items() if k != "content_hash"}
    if _hash(body, array_bytes) != document.get("content_hash"):
        raise ValueError(f"{kind} content hash mismatch in {folder}: modified or truncated after it was written")
    return body, array_bytes


def _hash(body: Mapping, array_bytes: bytes) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    digest.update(array_bytes)
    return "sha256:" + digest.hexdigest()


def _jsonable(obj):
    """A JSON-able copy (numbers as floats, NaN as None, tuples as lists, dataclasses as dicts)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool | str) or obj is None:
        return obj
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return str(obj)


def _max(ds) -> float:
    values = [float(np.nanmax(v.values)) for v in ds.data_vars.values() if v.size]
    return max(values) if values else math.nan


def _min(ds) -> float:
    values = [float(np.nanmin(v.values)) for v in ds.data_vars.values() if v.size]
    return min(values) if values else math.nan
