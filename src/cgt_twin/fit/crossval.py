"""Cross-validation by batch, and the inner cross-validation that sizes and regularises the neural residual.

A twin is judged by how well it predicts *batches it has not seen*, open loop from their initial state and protocol.
The splits are by batch, never by time point (time points of one batch are not independent):

- `leave_one_batch_out`: each batch in turn is the test set;
- `leave_one_group_out`: each value of a batch covariate (cell line, clone, donor, condition) in turn;
- `k_fold`: batches shuffled by a seed into k folds.

`cross_validate` calibrates on each fold's training batches (`cgt_twin.fit.calibrate`) and scores the held-out batches
with `cgt_twin.report.metrics` (normalised RMSE per batch and variable — RMSE over the range of the variable in the
whole campaign — and the relative error of the last measured value). `select_hyperparameters` runs an *inner*
cross-validation on the training batches only to choose among candidate calibration settings (network width,
weight decay, training steps …), so the outer test batches never steer a choice.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data.campaign import Campaign
from ..data.errors import CampaignValidationError, Problem
from ..models.twin import Twin
from .calibrate import Calibration, CalibrationConfig, calibrate
from .mechanistic import FitResult, fit_mechanistic

__all__ = ["Fold", "leave_one_batch_out", "leave_one_group_out", "k_fold", "make_folds", "CrossValidation",
           "cross_validate", "Selection", "select_hyperparameters", "SCHEMES"]

SCHEMES = ("lobo", "logo", "kfold")


@dataclasses.dataclass(frozen=True)
class Fold:
    """One split: calibrate on `train`, predict `test` open loop."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


def _usable(campaign: Campaign, batches: Sequence[str] | None) -> list[str]:
    chosen = list(campaign.batches) if batches is None else [str(b) for b in batches]
    unknown = [b for b in chosen if b not in campaign.batches]
    if unknown:
        raise CampaignValidationError(Problem("batches", f"unknown batches {unknown}; known: "
                                                         f"{list(campaign.batches)}"), header="cannot split")
    return [b for b in chosen if campaign.protocols[b].feeds_known]


def _enough(batches: Sequence[str], needed: int, what: str) -> None:
    if len(batches) < needed:
        raise CampaignValidationError(Problem("batches", f"{what} needs at least {needed} batches whose feeds are "
                                                         f"known, got {len(batches)}: {list(batches)}"),
                                      header="cannot split")


def leave_one_batch_out(campaign: Campaign, batches: Sequence[str] | None = None) -> list[Fold]:
    """One fold per batch (batches whose feeds are not recorded are neither trained on nor tested)."""
    usable = _usable(campaign, batches)
    _enough(usable, 2, "leave-one-batch-out")
    return [Fold(b, tuple(x for x in usable if x != b), (b,)) for b in usable]


def leave_one_group_out(campaign: Campaign, by: str, batches: Sequence[str] | None = None) -> list[Fold]:
    """One fold per value of the batch covariate `by` (e.g. ``"cell_line"``, ``"clone"``, ``"donor"``)."""
    usable = _usable(campaign, batches)
    meta = campaign.batch_metadata()
    if by not in meta.columns:
        raise CampaignValidationError(Problem("batches", f"no batch covariate {by!r}; covariates: "
                                                         f"{', '.join(meta.columns)}", column=by),
                                      header="cannot split")
    groups = meta.loc[usable, by]
    missing = [b for b in usable if groups[b] is None or (isinstance(groups[b], float) and math.isnan(groups[b]))
               or str(groups[b]) == ""]
    if missing:
        raise CampaignValidationError(Problem("batches", f"covariate {by!r} is missing for batches {missing}",
                                              column=by), header="cannot split")
    values = list(dict.fromkeys(str(v) for v in groups))
    if len(values) < 2:
        raise CampaignValidationError(Problem("batches", f"covariate {by!r} has one value ({values}); "
                                                         "leave-one-group-out needs two or more", column=by),
                                      header="cannot split")
    return [Fold(f"{by}={v}", tuple(b for b in usable if str(groups[b]) != v),
                 tuple(b for b in usable if str(groups[b]) == v)) for v in values]


def k_fold(campaign: Campaign, k: int, *, seed: int = 0, batches: Sequence[str] | None = None) -> list[Fold]:
    """Batches shuffled with `seed` and dealt into `k` folds of nearly equal size."""
    usable = _usable(campaign, batches)
    if not isinstance(k, int) or k < 2:
        raise CampaignValidationError(Problem("k", f"k must be an integer ≥ 2, got {k!r}"), header="cannot split")
    _enough(usable, k, f"{k}-fold cross-validation")
    order = np.random.default_rng(seed).permutation(len(usable))
    folds = []
    for i in range(k):
        test = tuple(usable[j] for j in sorted(order[i::k]))
        folds.append(Fold(f"fold{i + 1}", tuple(b for b in usable if b not in test), test))
    return folds


def make_folds(campaign: Campaign, scheme: str, *, by: str | None = None, k: int | None = None, seed: int = 0,
               batches: Sequence[str] | None = None) -> list[Fold]:
    """Folds by name: ``"lobo"``, ``"logo"`` (needs `by`) or ``"kfold"`` (needs `k`)."""
    if scheme == "lobo":
        return leave_one_batch_out(campaign, batches)
    if scheme == "logo":
        if not by:
            raise CampaignValidationError(Problem("scheme", "leave-one-group-out needs the covariate to group by"),
                                          header="cannot split")
        return leave_one_group_out(campaign, by, batches)
    if scheme == "kfold":
        if k is None:
            raise CampaignValidationError(Problem("scheme", "k-fold needs k"), header="cannot split")
        return k_fold(campaign, k, seed=seed, batches=batches)
    raise CampaignValidationError(Problem("scheme", f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}"),
                                  header="cannot split")


@dataclasses.dataclass
class CrossValidation:
    """Out-of-sample scores of a calibration recipe.

    Attributes:
        folds: the splits.
        metrics: one row per fold, held-out batch and variable: ``fold, batch, variable, nrmse, bias, n,
            final_error`` (see `cgt_twin.report.metrics`).
        twins: the twin calibrated on each fold's training batches.
        seconds: wall time per fold.
    """

    folds: list[Fold]
    metrics: pd.DataFrame
    twins: list[Twin]
    seconds: list[float]

    def summary(self) -> pd.DataFrame:
        """Mean over held-out batches, per variable: ``nrmse``, ``abs_final_error``, ``n_batches``."""
        table = self.metrics.assign(abs_final_error=self.metrics["final_error"].abs())
        return table.groupby("variable").agg(nrmse=("nrmse", "mean"), abs_final_error=("abs_final_error", "mean"),
                                             n_batches=("batch", "nunique"))

    def score(self, variables: Sequence[str] | None = None) -> float:
        """One number to compare recipes: the mean normalised RMSE over variables (and held-out batches)."""
        summary = self.summary()
        if variables is not None:
            summary = summary.loc[[v for v in variables if v in summary.index]]
        return float(summary["nrmse"].mean()) if len(summary) else math.inf


def held_out_metrics(twin: Twin, campaign: Campaign, test: Sequence[str],
                     variables: Sequence[str] | None = None) -> pd.DataFrame:
    """`cgt_twin.report.metrics` of `twin`'s open-loop prediction of the `test` batches (ranges from `campaign`)."""
    from ..predict import predict
    from ..report import metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prediction = predict(twin, campaign, batches=list(test))
    table = metrics(campaign, prediction, variables)
    table = table[table["batch"] != "ALL"]
    failed = [str(b) for b, s in zip(prediction["batch"].values, prediction["status"].values, strict=True)
              if str(s) != "ok"]
    if failed:  # a failed open-loop solve scores as missing values, never as a good fit: say so
        table = table.assign(note=np.where(table["batch"].isin(failed), "simulation failed", ""))
    return table.reset_index(drop=True)


def cross_validate(twin: Twin, campaign: Campaign, config: CalibrationConfig | None, folds: Sequence[Fold], *,
                   variables: Sequence[str] | None = None,
                   calibrate_fold: Callable[[Twin, Campaign, Fold], Calibration] | None = None,
                   progress: bool = True) -> CrossValidation:
    """Calibrates on each fold's training batches and scores its held-out batches.

    Args:
        twin: the starting twin (its kinetics decide the model; a mechanistic twin with ``config.residual`` set
            becomes a hybrid in each fold).
        campaign: the data (the held-out batches are scored against it).
        config: the calibration recipe (its ``mechanistic.holdout`` is replaced by each fold's test batches).
        folds: from `leave_one_batch_out`, `leave_one_group_out`, `k_fold` or `make_folds`.
        variables: variables to score (default: all that are predicted and measured).
        calibrate_fold: replaces the calibration of a fold (e.g. to add an inner selection); gets the twin, the
            training campaign and the fold.
        progress: a progress bar over folds.
    """
    import time

    from tqdm.auto import tqdm

    config = config or CalibrationConfig()
    rows, twins, seconds = [], [], []
    bar = tqdm(folds, desc="cross-validation", unit="fold",
               disable=not progress or bool(os.environ.get("CGT_TWIN_NO_PROGRESS")))
    for fold in bar:
        start = time.perf_counter()
        training = campaign.sel(fold.train)
        if calibrate_fold is not None:
            calibration = calibrate_fold(twin, training, fold)
        else:
            fold_config = dataclasses.replace(config, mechanistic=dataclasses.replace(config.mechanistic, holdout=()))
            calibration = calibrate(twin, training, fold_config)
        table = held_out_metrics(calibration.twin, campaign, fold.test, variables)
        rows.append(table.assign(fold=fold.name))
        twins.append(calibration.twin)
        seconds.append(time.perf_counter() - start)
    columns = ["fold", "batch", "variable", "nrmse", "bias", "n", "final_error"]
    metrics = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=columns)
    metrics = metrics[[*columns, *[c for c in metrics.columns if c not in columns]]]
    return CrossValidation(list(folds), metrics, twins, seconds)


@dataclasses.dataclass
class Selection:
    """The outcome of an inner cross-validation.

    Attributes:
        best: name of the chosen candidate (the simplest within the tolerance of the lowest score).
        config: its calibration settings.
        scores: candidate -> inner-CV score (mean normalised RMSE of the inner held-out batches; lower is better).
        table: the inner metrics of every candidate (column ``candidate``).
    """

    best: str
    config: CalibrationConfig
    scores: dict[str, float]
    table: pd.DataFrame


def select_hyperparameters(twin: Twin, campaign: Campaign, candidates: Mapping[str, CalibrationConfig],
                           folds: Sequence[Fold], *, variables: Sequence[str] | None = None,
                           tolerance: float = 0.05, progress: bool = False) -> Selection:
    """Chooses among calibration recipes by cross-validation on `campaign` (pass the *training* batches only).

    Candidates are listed from the simplest to the most flexible (e.g. no residual, a small network with strong
    weight decay, a larger one). The choice is the *first* candidate whose score is within `tolerance` (relative) of
    the best — the spirit of the one-standard-error rule: with a handful of batches, differences of a few percent
    are noise, and the simpler recipe extrapolates more safely.

    The mechanistic stage does not depend on the residual's settings, so candidates that share the mechanistic
    settings share one mechanistic fit per fold (fitted once, reused).

    Raises:
        CampaignValidationError: no candidates, or folds that name batches outside `campaign`.
    """
    if not candidates:
        raise CampaignValidationError(Problem("candidates", "no candidate settings to choose from"),
                                      header="cannot select")
    outside = sorted({b for f in folds for b in (*f.train, *f.test) if b not in campaign.batches})
    if outside:
        raise CampaignValidationError(Problem("folds", f"batches {outside} are not in the campaign given to the "
                                                       "selection (pass the training batches only)"),
                                      header="cannot select")
    mechanistic_cache: dict[tuple, FitResult] = {}

    def fold_calibrator(config: CalibrationConfig):
        def run(start: Twin, training: Campaign, fold: Fold) -> Calibration:
            mechanistic_config = dataclasses.replace(config.mechanistic, holdout=())
            key = (fold.name, repr(mechanistic_config))
            if key not in mechanistic_cache:
                mechanistic_cache[key] = fit_mechanistic(start, training, mechanistic_config)
            return calibrate(start, training, dataclasses.replace(config, mechanistic=mechanistic_config),
                             mechanistic=mechanistic_cache[key])
        return run

    scores, tables = {}, []
    for name, config in candidates.items():
        result = cross_validate(twin, campaign, config, folds, variables=variables,
                                calibrate_fold=fold_calibrator(config), progress=progress)
        scores[name] = result.score(variables)
        tables.append(result.metrics.assign(candidate=name))
    finite = [n for n in scores if math.isfinite(scores[n])]
    if finite:
        lowest = min(scores[n] for n in finite)
        best = next(n for n in candidates if n in finite and scores[n] <= (1.0 + tolerance) * lowest)
    else:
        best = next(iter(candidates))
    return Selection(best, candidates[best], scores, pd.concat(tables, ignore_index=True))
