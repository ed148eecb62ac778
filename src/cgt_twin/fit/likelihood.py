"""The observation noise model and the negative log-likelihood, censored values included.

Each observed variable has a combined error model: a measured value y of a prediction ŷ is normal with
σ² = σ_abs² + (σ_rel·ŷ)² (an additive floor plus a proportional part, as analysers behave). A value reported below a
limit of quantification L (``<``) contributes P(y < L) = Φ((L − ŷ)/σ); above (``>``) contributes 1 − Φ((L − ŷ)/σ);
missing values contribute nothing.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import log_ndtr

__all__ = ["noise_sd", "negative_log_likelihood"]

_LOG_2PI = math.log(2.0 * math.pi)  # a Python float: importing the library starts no XLA backend


def noise_sd(prediction, sigma_abs, sigma_rel):
    """σ of a measurement of `prediction` (same unit), combined additive and proportional error."""
    return jnp.sqrt(sigma_abs ** 2 + (sigma_rel * prediction) ** 2)


def negative_log_likelihood(prediction, values, mask, censored, sigma_abs, sigma_rel, weights=1.0):
    """Sum of −log p(data | prediction) over measured values.

    Args:
        prediction: predicted values, broadcastable to `values` (NaN allowed where `mask` is False).
        values: measured values (the limit for censored ones).
        mask: True where measured.
        censored: −1 (``<``), +1 (``>``) or 0.
        sigma_abs, sigma_rel: noise parameters, broadcastable.
        weights: per-value weights (e.g. per variable).

    Returns:
        The total, a scalar (finite whenever the measured predictions are).
    """
    safe_prediction = jnp.where(mask, prediction, 0.0)
    sd = noise_sd(safe_prediction, sigma_abs, sigma_rel)
    z = (values - safe_prediction) / sd
    exact = 0.5 * (_LOG_2PI + z ** 2) + jnp.log(sd)
    below = -log_ndtr(z)  # P(y < L), z = (L − ŷ)/σ
    above = -log_ndtr(-z)
    term = jnp.where(censored < 0, below, jnp.where(censored > 0, above, exact))
    return jnp.sum(jnp.where(mask, weights * term, 0.0))
