"""Fitting twins to campaigns: observation alignment, likelihood (censored values included), optimisation."""

from .likelihood import negative_log_likelihood, noise_sd
from .mechanistic import FitConfig, FitResult, fit_mechanistic
from .observations import ObservationData, align, observable_variables

__all__ = ["FitConfig", "FitResult", "ObservationData", "align", "fit_mechanistic", "negative_log_likelihood",
           "noise_sd", "observable_variables"]
