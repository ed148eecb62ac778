"""The held parameters' uncertainty carried into a posterior by the linear-Gaussian (Laplace) correction.

NUTS samples the identifiable kinetic parameters s with the others h held at the fit θ̂_h, so its draws come from the
conditional posterior p(s | θ̂_h, data), whose intervals are too narrow when θ̂_h is itself uncertain. With Σ the
Laplace covariance of the log of every candidate parameter at the fit (the inverse Hessian of the negative log
posterior there, prior curvature included, partitioned into s and h) and the gain B = Σ_sh Σ_hh⁻¹, each draw gets
δ_h ~ N(0, Σ_hh): its held log-parameters become log θ̂_h + δ_h and its sampled ones are shifted by B δ_h. For a
Gaussian joint posterior this is exact — the conditional's covariance Σ_ss − B Σ_hs plus B Σ_hh Bᵀ is the marginal
Σ_ss — and the conditional's non-Gaussian shape, which NUTS found, is kept.

All quantities are natural logarithms of the parameters in their spec units. From the Hessian H (of the negative log
posterior) the same quantities are B = −H_ss⁻¹ H_sh and Σ_hh = (H_hh − H_hs H_ss⁻¹ H_sh)⁻¹, which need no inverse
of the whole matrix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from ..data.errors import CampaignValidationError, Problem

__all__ = ["HeldCorrection", "HELD_UNCERTAINTY", "laplace_correction", "apply_correction"]

HELD_UNCERTAINTY = ("none", "laplace")
"""Values of `BayesConfig.held_uncertainty`."""
_SEED_STREAM = 0x48454C44
"""Mixed into the sampler's seed so that the held draws' random stream is not the sampler's own."""


@dataclasses.dataclass(frozen=True)
class HeldCorrection:
    """The Laplace correction of a posterior sampled with some parameters held at a fit.

    Attributes:
        sampled: the sampled kinetic parameters (their population log values are shifted).
        held: the held parameters whose uncertainty is carried (each draw gets its own value).
        centre: log θ̂_h, the fit's held values (log of the spec unit), (held,).
        gain: B = Σ_sh Σ_hh⁻¹, (sampled, held): the shift of the sampled log values per unit of δ_h.
        covariance: Σ_hh, the Laplace covariance of the held log values (held, held).
        bounds: parameter -> (log lower, log upper) of its prior support; corrected draws are kept inside.
        seconds: wall time of computing the correction, s: the Hessian's too (compilation included), unless an
            already computed curvature was passed (`held_correction(model, curvature)`, as `sample` does).
    """

    sampled: tuple[str, ...]
    held: tuple[str, ...]
    centre: np.ndarray
    gain: np.ndarray
    covariance: np.ndarray
    bounds: Mapping[str, tuple[float, float]]
    seconds: float = 0.0

    @property
    def log_sd(self) -> dict[str, float]:
        """Laplace sd of each held parameter's log value (marginal over everything else)."""
        return {h: float(np.sqrt(self.covariance[i, i])) for i, h in enumerate(self.held)}

    def to_meta(self, seed: int) -> dict:
        """What the posterior records (JSON-able): method, parameters, fit values (spec units), log sds, gain, seed,
        the time the correction took (s)."""
        return {"method": "laplace", "parameters": list(self.held), "sampled": list(self.sampled),
                "fit": {h: float(np.exp(self.centre[i])) for i, h in enumerate(self.held)},
                "log_sd": self.log_sd,
                "gain": {s: {h: float(self.gain[j, i]) for i, h in enumerate(self.held)}
                         for j, s in enumerate(self.sampled)},
                "seed": int(seed), "seconds": float(self.seconds)}


def _fail(message: str):
    raise CampaignValidationError(Problem("held_uncertainty", message),
                                  header="cannot carry the held parameters' uncertainty")


def _loaded(vectors: np.ndarray, names: Sequence[str], share: float = 0.2) -> list[str]:
    """Parameters with at least `share` of the weight of the given eigenvectors (columns), largest first."""
    weight = np.sum(vectors ** 2, axis=1)
    weight = weight / max(float(weight.max()), 1e-300)
    order = np.argsort(-weight)
    return [names[i] for i in order if weight[i] >= share]


def laplace_correction(hessian: np.ndarray, names: Sequence[str], sampled: Sequence[str], held: Sequence[str],
                       log_values: Mapping[str, float], bounds: Mapping[str, tuple[float, float]], *,
                       tolerance: float = 1e-10) -> HeldCorrection:
    """The correction from the Hessian of the negative log posterior over the log of every parameter in `names`
    (sampled and held, in the Hessian's order) at the fit `log_values` (name -> log of the value in its spec unit).

    Raises:
        CampaignValidationError: when the Hessian is not finite or not positive definite (the twin's values are not a
            mode in these parameters, or a direction has no curvature at all), naming the parameters concerned.
    """
    hessian = np.asarray(hessian, dtype=np.float64)
    names = list(names)
    broken = ~np.isfinite(hessian)
    if broken.any():  # name the parameters whose rows and columns hold the most non-finite entries
        count = broken.sum(axis=0) + broken.sum(axis=1)
        bad = [names[i] for i in range(len(names)) if count[i] == count.max()]
        _fail(f"the curvature of the log posterior at the twin's values is not finite for {', '.join(bad)} (the "
              "solve fails or overflows there); refit, or sample with held_uncertainty='none'")
    h_full = 0.5 * (hessian + hessian.T)
    eigenvalues, vectors = np.linalg.eigh(h_full)
    small = eigenvalues <= tolerance * max(float(np.abs(eigenvalues).max()), 1e-300)
    if small.any():
        concerned = _loaded(vectors[:, small], names)
        _fail(f"the curvature of the log posterior at the twin's values is not positive definite (smallest "
              f"eigenvalue {eigenvalues.min():.3g}) along {', '.join(concerned)}: the twin's values are not a mode "
              "of the posterior in these parameters; refit, sample them (BayesConfig.parameters), start from the mode "
              "(cgt_twin.bayes.sample does: curvature_at_mode), or use held_uncertainty='none'")
    s_index = [names.index(p) for p in sampled]
    h_index = [names.index(p) for p in held]
    h_ss = h_full[np.ix_(s_index, s_index)]
    h_sh = h_full[np.ix_(s_index, h_index)]
    h_hh = h_full[np.ix_(h_index, h_index)]
    gain = -np.linalg.solve(h_ss, h_sh) if s_index else np.zeros((0, len(h_index)))
    schur = h_hh + h_sh.T @ gain  # H_hh − H_hs H_ss⁻¹ H_sh: the held parameters' marginal precision
    covariance = np.linalg.inv(0.5 * (schur + schur.T))
    covariance = 0.5 * (covariance + covariance.T)
    held_eigen, held_vectors = np.linalg.eigh(covariance)
    if not (np.all(np.isfinite(covariance)) and held_eigen.min() > 0):
        _fail(f"the held parameters' Laplace covariance is not positive definite along "
              f"{', '.join(_loaded(held_vectors[:, held_eigen <= 0], list(held)) or held)}; refit, sample them "
              "(BayesConfig.parameters), or use held_uncertainty='none'")
    return HeldCorrection(tuple(sampled), tuple(held), np.asarray([log_values[h] for h in held], dtype=np.float64),
                          gain, covariance, dict(bounds))


def held_offsets(correction: HeldCorrection, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """δ_h ~ N(0, Σ_hh) for every draw, (*shape, held); reproducible from `seed` (the sampler's)."""
    rng = np.random.default_rng([int(seed), _SEED_STREAM])
    factor = np.linalg.cholesky(correction.covariance)
    return rng.standard_normal((*shape, len(correction.held))) @ factor.T


def apply_correction(samples: Mapping[str, np.ndarray], correction: HeldCorrection,
                     seed: int) -> dict[str, np.ndarray]:
    """The draws with the held parameters' uncertainty carried: every sampled population log value
    ``log_<s>`` (chain, draw) shifted by B δ_h, and a new site ``log_<h>`` (chain, draw) = log θ̂_h + δ_h for every
    held parameter; each kept inside its prior support (log of the spec's bounds). Hierarchical effects (``z_batch``,
    ``z_group``) are relative to the population value and stay as they are."""
    out = dict(samples)
    shape = np.shape(samples[f"log_{correction.sampled[0]}"])[:2] if correction.sampled else \
        np.shape(next(iter(samples.values())))[:2]
    delta = held_offsets(correction, shape, seed)
    for j, s in enumerate(correction.sampled):
        value = np.asarray(samples[f"log_{s}"], dtype=np.float64)
        if value.shape != shape:
            raise ValueError(f"log_{s} has shape {value.shape}; the correction is for population values "
                             f"(chain, draw) {shape}")
        out[f"log_{s}"] = np.clip(value + delta @ correction.gain[j], *correction.bounds[s])
    for i, h in enumerate(correction.held):
        out[f"log_{h}"] = np.clip(correction.centre[i] + delta[..., i], *correction.bounds[h])
    return out
