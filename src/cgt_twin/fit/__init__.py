"""Fitting twins to campaigns: observation alignment, likelihood (censored values included), optimisation."""

from .crossval import (
    CrossValidation,
    Fold,
    Selection,
    cross_validate,
    k_fold,
    leave_one_batch_out,
    leave_one_group_out,
    make_folds,
    select_hyperparameters,
)
from .likelihood import negative_log_likelihood, noise_sd
from .mechanistic import FitConfig, FitResult, fit_mechanistic
from .observations import ObservationData, align, observable_variables
from .training import NonFiniteLossError, TrainConfig, TrainResult, train_hybrid

__all__ = ["CrossValidation", "Fold", "Selection", "cross_validate", "k_fold", "leave_one_batch_out",
           "leave_one_group_out", "make_folds", "select_hyperparameters", "FitConfig", "FitResult", "NonFiniteLossError", "ObservationData", "TrainConfig", "TrainResult",
           "train_hybrid", "align", "fit_mechanistic", "negative_log_likelihood",
           "noise_sd", "observable_variables"]
