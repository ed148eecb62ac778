"""Fitting twins to campaigns: observation alignment, likelihood (censored values included), optimisation."""

from .likelihood import negative_log_likelihood, noise_sd
from .mechanistic import FitConfig, FitResult, fit_mechanistic
from .observations import ObservationData, align, observable_variables
from .training import NonFiniteLossError, TrainConfig, TrainResult, train_hybrid

__all__ = ["FitConfig", "FitResult", "NonFiniteLossError", "ObservationData", "TrainConfig", "TrainResult",
           "train_hybrid", "align", "fit_mechanistic", "negative_log_likelihood",
           "noise_sd", "observable_variables"]
