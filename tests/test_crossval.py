"""Cross-validation by batch (LOBO, LOGO, k-fold) and the inner selection of calibration settings."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cgt_twin.data import CampaignValidationError, Event, Medium, Protocol
from cgt_twin.data.folder import read_campaign
from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
from cgt_twin.fit import (
    FitConfig,
    cross_validate,
    k_fold,
    leave_one_batch_out,
    leave_one_group_out,
    make_folds,
    select_hyperparameters,
)
from cgt_twin.fit.calibrate import CalibrationConfig
from cgt_twin.models import CHOFedBatch, Twin

DATASETS = Path(__file__).resolve().parents[1] / "datasets"
FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
TRUTH = {"mu_max": 0.034, "q_p": 1.3}
VARIABLES = ("vcd", "glucose", "titer")


@pytest.fixture(scope="module")
def synthetic():
    return read_campaign(DATASETS / "cho_fedbatch_synthetic")


@pytest.fixture(scope="module")
def noise_free():
    def protocol(fraction):
        events = tuple(Event(24.0 * d + 1, "bolus", fraction, "L", medium="feed") for d in range(2, 6))
        return Protocol(1.0, (*events, Event(144.0, "harvest")), {"feed": FEED}, max_volume=2.0)

    twin = Twin(CHOFedBatch(), TRUTH)
    zero = NoiseModel({v: (0.0, 0.0) for v in VARIABLES})
    fractions = {"A": 0.02, "B": 0.03, "C": 0.05}
    return synthetic_campaign(twin, {b: protocol(f) for b, f in fractions.items()},
                              sampling=SamplingPlan(every_h=24.0, variables=VARIABLES), noise=zero, seed=0,
                              initial_states={b: {"vcd": 0.4, "glucose": 30.0, "glutamine": 4.0} for b in fractions},
                              covariates={"A": {"site": "x"}, "B": {"site": "x"}, "C": {"site": "y"}})


def test_splits_cover_every_batch_once_as_test(synthetic):
    batches = set(synthetic.batches)
    for folds in (leave_one_batch_out(synthetic), leave_one_group_out(synthetic, "clone"), k_fold(synthetic, 4, seed=3),
                  make_folds(synthetic, "kfold", k=2, seed=1)):
        tested = [b for f in folds for b in f.test]
        assert sorted(tested) == sorted(batches)  # each batch tested exactly once
        for fold in folds:
            assert not set(fold.train) & set(fold.test) and set(fold.train) | set(fold.test) == batches
    logo = leave_one_group_out(synthetic, "clone")
    assert [f.name for f in logo] == ["clone=C1", "clone=C2"]
    assert all(b.startswith("C2") for b in logo[0].train)
    # k-fold is reproducible from its seed and changes with it
    assert k_fold(synthetic, 3, seed=5) == k_fold(synthetic, 3, seed=5)
    assert k_fold(synthetic, 3, seed=5) != k_fold(synthetic, 3, seed=6)


@pytest.mark.parametrize(("call", "phrase"), [
    (lambda c: leave_one_group_out(c, "donor"), "no batch covariate 'donor'"),
    (lambda c: leave_one_group_out(c.sel(["C1-LOW", "C1-MID"]), "clone"), "has one value"),
    (lambda c: k_fold(c, 7), "needs at least 7 batches"),
    (lambda c: k_fold(c, 1), "k must be an integer ≥ 2"),
    (lambda c: make_folds(c, "loo"), "unknown scheme 'loo'"),
    (lambda c: make_folds(c, "logo"), "needs the covariate"),
    (lambda c: leave_one_batch_out(c, ["C1-LOW", "nope"]), "unknown batches ['nope']"),
])
def test_bad_splits_are_named(synthetic, call, phrase):
    with pytest.raises(CampaignValidationError) as info:
        call(synthetic)
    assert phrase in str(info.value)


def _recipe(prior_weight: float = 0.0) -> CalibrationConfig:
    return CalibrationConfig(mechanistic=FitConfig(variables=VARIABLES, parameters=("mu_max", "q_p"),
                                                   initial_states=(), prior_weight=prior_weight))


def test_cross_validation_predicts_held_out_batches(noise_free):
    folds = leave_one_batch_out(noise_free)
    result = cross_validate(Twin(CHOFedBatch()), noise_free, _recipe(), folds, progress=False)
    assert set(result.metrics["fold"]) == {"A", "B", "C"}
    for fold in folds:  # only the held-out batch is scored in its fold
        assert set(result.metrics.loc[result.metrics["fold"] == fold.name, "batch"]) == set(fold.test)
    # noise-free data of the fitted model: every held-out batch is predicted (almost) exactly
    assert result.metrics["nrmse"].max() < 1e-3, result.metrics
    assert result.score() < 1e-3
    assert len(result.twins) == 3 and all(s > 0 for s in result.seconds)
    summary = result.summary()
    assert set(summary.index) == set(VARIABLES) and (summary["n_batches"] == 3).all()


def test_inner_selection_prefers_the_recipe_that_predicts_better(noise_free):
    training = noise_free.sel(["A", "B", "C"])
    folds = leave_one_batch_out(training)
    # a prior that pins mu_max and q_p at the (wrong) defaults predicts held-out batches worse than a free fit
    candidates = {"free": _recipe(0.0), "pinned": dataclasses.replace(
        _recipe(), mechanistic=dataclasses.replace(_recipe().mechanistic, prior_weight=1e6))}
    selection = select_hyperparameters(Twin(CHOFedBatch()), training, candidates, folds)
    assert selection.best == "free", selection.scores
    assert selection.scores["free"] < 0.5 * selection.scores["pinned"]
    assert set(selection.table["candidate"]) == {"free", "pinned"}
    assert np.isfinite(list(selection.scores.values())).all()
    # listed simplest first: a clearly better later candidate still wins; among equals the first (simplest) wins
    reordered = select_hyperparameters(Twin(CHOFedBatch()), training, {"pinned": candidates["pinned"],
                                                                       "free": candidates["free"]}, folds)
    assert reordered.best == "free"
    ties = select_hyperparameters(Twin(CHOFedBatch()), training, {"simple": _recipe(), "same": _recipe()}, folds)
    assert ties.scores["simple"] == pytest.approx(ties.scores["same"]) and ties.best == "simple"


def test_selection_rejects_outer_test_batches(noise_free):
    folds = leave_one_batch_out(noise_free)
    with pytest.raises(CampaignValidationError, match="not in the campaign given to the selection"):
        select_hyperparameters(Twin(CHOFedBatch()), noise_free.sel(["A", "B"]), {"a": _recipe()}, folds)
    with pytest.raises(CampaignValidationError, match="no candidate settings"):
        select_hyperparameters(Twin(CHOFedBatch()), noise_free, {}, folds)
