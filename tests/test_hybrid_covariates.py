"""Batch covariates (clone, donor, a dose …) as inputs of the neural residual: encoded from configuration, carried per
batch into the vector field as array data (no recompilation), saved with the twin, unseen levels reported, missing ones
rejected, and a covariate effect learnt."""

from __future__ import annotations

import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_twin.data import CampaignValidationError, Event, Medium, Protocol
from cgt_twin.data.synthetic import NoiseModel, SamplingPlan, synthetic_campaign
from cgt_twin.hybrid import DEFAULT_RESIDUALS, HybridKinetics, ResidualSpec, hybrid
from cgt_twin.io import load_twin, save_twin
from cgt_twin.models import CHOFedBatch, Twin
from cgt_twin.models.covariates import CovariateEncoding, UnseenCovariateWarning
from cgt_twin.models.kinetics import Inputs
from cgt_twin.simulate import prepare, simulate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "artifacts"
FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
PROTOCOL = Protocol(1.0, tuple(Event(24.0 * d + 1, "bolus", 0.03, "L", medium="feed") for d in range(2, 5))
                    + (Event(144.0, "harvest"),), {"feed": FEED})
STATE = {"vcd": 0.4, "glucose": 30.0, "glutamine": 4.0}
TIMES = np.arange(0.0, 145.0, 24.0)
SPEC = ResidualSpec(targets=("growth", "titer"), features=("vcd", "time"), covariates=("clone",), hidden=(4,))
# three batches with the same protocol and initial state: x and y differ only in the clone
COVARIATES = {"x": {"clone": "A", "dose": 1.0}, "y": {"clone": "B", "dose": 2.0}, "z": {"clone": "A", "dose": 4.0}}
SAME_START = {b: STATE for b in COVARIATES}


@pytest.fixture(scope="module")
def campaign():
    return synthetic_campaign(Twin(CHOFedBatch()), {b: PROTOCOL for b in COVARIATES},
                              sampling=SamplingPlan(variables=("vcd", "glucose")), seed=0,
                              initial_states={b: STATE for b in COVARIATES}, covariates=COVARIATES)


def _perturbed(kinetics: HybridKinetics, scale: float = 0.5, seed: int = 1) -> HybridKinetics:
    """The same hybrid with random (non-zero) last-layer weights."""
    last = kinetics.residual.layers[-1]
    weight = scale * jax.random.normal(jax.random.PRNGKey(seed), last.weight.shape, dtype=jnp.float64)
    return eqx.tree_at(lambda k: k.residual.layers[-1].weight, kinetics, weight)


# -- configuration and encoding (no solves) --------------------------------------------------------------------------
def test_encoding_one_hot_over_training_levels_and_scaled_numbers(campaign):
    h = hybrid(CHOFedBatch(), ResidualSpec(targets=("growth",), features=("vcd",), covariates=("clone", "dose")),
               campaign=campaign)
    encoding = h.covariate_encoding
    assert encoding.kinds == ("categorical", "numeric") and encoding.levels == (("A", "B"), ())
    assert encoding.columns == ("clone=A", "clone=B", "dose") and encoding.size == 3
    doses = np.asarray([1.0, 2.0, 4.0])
    assert float(encoding.centre[1]) == pytest.approx(doses.mean())
    assert float(encoding.scale[1]) == pytest.approx(doses.std())
    assert h.residual.layers[0].weight.shape[1] == 1 + 3  # one state feature, three covariate inputs
    vectors, notes = encoding.encode({"b": {"clone": "B", "dose": 2.0}})
    np.testing.assert_allclose(vectors["b"], [0.0, 1.0, (2.0 - doses.mean()) / doses.std()])
    assert notes == []
    np.testing.assert_array_equal(encoding.vector({"clone": "B", "dose": 2.0}), vectors["b"])
    with pytest.warns(UnseenCovariateWarning, match="level 'C'"):
        np.testing.assert_array_equal(encoding.vector({"clone": "C", "dose": 2.0})[:2], [0.0, 0.0])
    with pytest.warns(UnseenCovariateWarning, match="extrapolates"):
        encoding.vector({"clone": "A", "dose": 40.0})


def test_numbers_can_be_categorical_and_levels_match_across_types():
    encoding = CovariateEncoding.fit({"a": {"clone": 1.0}, "b": {"clone": 2.0}}, ("clone",), {"clone": "categorical"})
    assert encoding.levels == (("1", "2"),)
    vectors, notes = encoding.encode({"c": {"clone": 2}, "d": {"clone": "2"}})
    np.testing.assert_array_equal(vectors["c"], [0.0, 1.0])
    np.testing.assert_array_equal(vectors["d"], [0.0, 1.0])
    inferred = CovariateEncoding.fit({"a": {"clone": 1.0}, "b": {"clone": 2.0}}, ("clone",))
    assert inferred.kinds == ("numeric",)


def test_spec_is_hashable_and_checked():
    spec = ResidualSpec(targets=("growth",), features=("vcd",), covariates="clone",
                        covariate_kinds={"clone": "categorical"})
    assert spec.covariates == ("clone",)  # a bare string is one name
    same = ResidualSpec(targets=("growth",), features=("vcd",), covariates=("clone",),
                        covariate_kinds={"clone": "categorical"})
    assert hash(spec) == hash(same) and spec == same
    assert hash(spec) != hash(ResidualSpec(targets=("growth",), features=("vcd",)))
    with pytest.raises(ValueError, match="both a feature and a covariate"):
        ResidualSpec(targets=("growth",), features=("vcd",), covariates=("vcd",)).check(CHOFedBatch())
    with pytest.raises(ValueError, match="kind must be one of"):
        ResidualSpec(targets=("growth",), features=("vcd",), covariates=("clone",),
                     covariate_kinds={"clone": "ordinal"}).check(CHOFedBatch())
    with pytest.raises(ValueError, match="not one of the covariates"):
        ResidualSpec(targets=("growth",), features=("vcd",), covariate_kinds={"donor": "categorical"}).check(
            CHOFedBatch())
    # covariates alone are enough for the network to see something
    ResidualSpec(targets=("growth",), features=(), covariates=("clone",)).check(CHOFedBatch())
    with pytest.raises(ValueError, match="give the training campaign"):
        hybrid(CHOFedBatch(), spec)


def test_missing_covariates_are_rejected_naming_batch_and_covariate(campaign):
    spec = ResidualSpec(targets=("growth",), features=("vcd",), covariates=("donor",))
    with pytest.raises(CampaignValidationError, match="no batch covariate 'donor'") as info:
        hybrid(CHOFedBatch(), spec, campaign=campaign)
    assert info.value.problems[0].column == "donor"
    with pytest.raises(CampaignValidationError) as info:
        CovariateEncoding.fit({"a": {"clone": "A"}, "b": {"clone": ""}, "c": {}}, ("clone",))
    assert [(p.batch, p.column) for p in info.value.problems] == [("b", "clone"), ("c", "clone")]
    h = hybrid(CHOFedBatch(), SPEC, campaign=campaign)
    with pytest.raises(CampaignValidationError, match="batch covariate 'clone' is missing") as info:
        prepare(Twin(h), {"p": PROTOCOL, "q": PROTOCOL}, TIMES, initial_states={"p": STATE, "q": STATE},
                covariates={"p": {"clone": "A"}})
    assert [(p.batch, p.column) for p in info.value.problems] == [("q", "clone")]
    with pytest.raises(CampaignValidationError, match="must be a finite number") as info:
        CovariateEncoding.fit({"a": {"dose": 1.0}}, ("dose",)).encode({"b": {"dose": "high"}})
    assert info.value.problems[0].batch == "b"


def test_calibration_config_adds_covariates_to_the_default_residual(tmp_path):
    from cgt_twin.fit.calibrate import read_calibration_config

    path = tmp_path / "fit.toml"
    path.write_text('[residual]\ncovariates = ["clone"]\ncovariate_kinds = {clone = "categorical"}\n')
    default = DEFAULT_RESIDUALS["cho"]
    spec = read_calibration_config(path, hybrid_default=default).residual
    assert spec.covariates == ("clone",) and dict(spec.covariate_kinds) == {"clone": "categorical"}
    assert spec.targets == default.targets and spec.features == default.features
    path.write_text('[residual]\ntargets = ["growth"]\nfeatures = ["vcd"]\ncovariates = ["donor"]\n')
    spec = read_calibration_config(path).residual
    assert spec == ResidualSpec(targets=("growth",), features=("vcd",), covariates=("donor",))


def test_inputs_initial_keeps_its_signature_and_missing_covariates_mean_population(campaign):
    inputs = Inputs.initial(5)
    assert inputs.covariates.shape == (0,)
    assert Inputs.initial(5, covariates=np.ones(2)).covariates.shape == (2,)
    h = _perturbed(hybrid(CHOFedBatch(), SPEC, campaign=campaign))
    state = {n: jnp.asarray(1.0) for n in h.layout.names}
    with pytest.warns(UserWarning, match="population input"):
        x = h.features(jnp.asarray(10.0), state, inputs)
    np.testing.assert_array_equal(np.asarray(x[-2:]), [0.0, 0.0])
    with pytest.raises(ValueError, match="has 2 inputs"):
        h.features(jnp.asarray(10.0), state, Inputs.initial(5, covariates=np.ones(3)))


# -- simulation (one compilation of the hybrid serves these tests) --------------------------------------------------
def test_untrained_hybrid_with_covariates_equals_its_mechanistic_core(campaign):
    core = simulate(Twin(CHOFedBatch()), campaign)
    h = simulate(Twin(hybrid(CHOFedBatch(), SPEC, seed=3, campaign=campaign)), campaign)
    for name in ("vcd", "glucose", "titer"):
        np.testing.assert_allclose(h[name].values, core[name].values, rtol=1e-12, atol=1e-12)


def test_batches_differing_only_in_a_covariate_differ_once_the_network_is_trained(campaign):
    twin = Twin(_perturbed(hybrid(CHOFedBatch(), SPEC, campaign=campaign)))
    out = simulate(twin, campaign, initial_states=SAME_START)  # (the measured starts differ by noise)
    vcd = out["vcd"].sel(phase="pre")
    assert set(out["status"].values) == {"ok"}
    assert np.nanmax(np.abs(vcd.sel(batch="x").values - vcd.sel(batch="y").values)) > 1e-3  # clone A vs B
    np.testing.assert_allclose(vcd.sel(batch="x").values, vcd.sel(batch="z").values, rtol=1e-12)  # both clone A
    # overriding a campaign's covariate: y as clone A is x
    again = simulate(twin, campaign, initial_states=SAME_START, covariates={"y": {"clone": "A"}})
    np.testing.assert_allclose(again["vcd"].sel(batch="y", phase="pre").values, vcd.sel(batch="x").values,
                               rtol=1e-12)


def test_an_unseen_level_is_the_population_input_and_is_reported(campaign):
    twin = Twin(_perturbed(hybrid(CHOFedBatch(), SPEC, campaign=campaign)))
    with pytest.warns(UnseenCovariateWarning, match=r"batch y: covariate 'clone' level 'C' was not seen"):
        out = simulate(twin, campaign, initial_states=SAME_START, covariates={"y": {"clone": "C"}})
    notes = json.loads(out.attrs["notes"])
    assert any("batch y" in n and "'C'" in n and "population" in n for n in notes)
    with pytest.warns(UnseenCovariateWarning):
        encoded = prepare(twin, campaign, covariates={"y": {"clone": "C"}}).encoded.covariates
    np.testing.assert_array_equal(np.asarray(encoded), [[1.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    vcd = out["vcd"].sel(phase="pre")
    assert np.nanmax(np.abs(vcd.sel(batch="y").values - vcd.sel(batch="x").values)) > 1e-3


def test_covariate_encoding_round_trips_through_an_artifact(campaign, tmp_path):
    twin = Twin(_perturbed(hybrid(CHOFedBatch(), SPEC, campaign=campaign)), {"mu_max": 0.031})
    folder = save_twin(twin, tmp_path / "twin")
    document = json.loads((folder / "twin.json").read_text())
    assert document["model"]["residual"]["covariates"] == [{"name": "clone", "kind": "categorical",
                                                            "levels": ["A", "B"]}]
    loaded = load_twin(folder)
    assert loaded.kinetics.spec == twin.kinetics.spec
    assert loaded.kinetics.encoding.to_json() == twin.kinetics.encoding.to_json()
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(twin.kinetics, eqx.is_array)),
                    jax.tree_util.tree_leaves(eqx.filter(loaded.kinetics, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    a = simulate(twin, campaign)
    b = simulate(loaded, campaign)
    np.testing.assert_array_equal(a["titer"].values, b["titer"].values)
    # numeric covariates keep their centre and scale exactly (JSON records, no solve needed)
    spec = ResidualSpec(targets=("growth",), features=("vcd",), covariates=("clone", "dose"), hidden=(4,))
    numeric = Twin(hybrid(CHOFedBatch(), spec, campaign=campaign))
    again = load_twin(save_twin(numeric, tmp_path / "numeric")).kinetics.encoding
    record = again.to_json()[1]
    assert record["name"] == "dose" and record["centre"] == pytest.approx(7.0 / 3.0)
    assert again.to_json() == numeric.kinetics.encoding.to_json()
    new = {"n": {"clone": "B", "dose": 3.0}}
    np.testing.assert_array_equal(again.encode(new)[0]["n"], numeric.kinetics.encoding.encode(new)[0]["n"])


def test_stored_artifact_with_covariates_still_loads():
    twin = load_twin(FIXTURES / "schema2_hybrid_covariates")
    encoding = twin.kinetics.covariate_encoding
    assert encoding.names == ("clone", "dose") and encoding.levels == (("A", "B"), ())
    assert float(encoding.centre[1]) == 2.0 and float(encoding.scale[1]) == 1.0
    assert float(jnp.max(jnp.abs(twin.kinetics.residual.layers[-1].weight))) > 0


def test_new_covariate_values_and_a_refitted_encoding_do_not_recompile(monkeypatch):
    """Covariates are array data: other values, and an encoding refitted on other batches (other centre and scale),
    reuse the compiled solve (Python runs only when JAX traces)."""
    traces = []
    original = HybridKinetics.features

    def counting(self, t, state, inputs):
        traces.append(1)
        return original(self, t, state, inputs)

    monkeypatch.setattr(HybridKinetics, "features", counting)
    spec = ResidualSpec(targets=("growth",), features=("vcd",), covariates=("dose",), hidden=(3,))
    protocols = {"p": PROTOCOL, "q": PROTOCOL}
    states = {"p": STATE, "q": STATE}
    first = _perturbed(hybrid(CHOFedBatch(), spec, encoding=CovariateEncoding.fit(
        {"a": {"dose": 1.0}, "b": {"dose": 3.0}}, ("dose",))))
    a = simulate(first, protocols, TIMES, initial_states=states, covariates={"p": {"dose": 1.0}, "q": {"dose": 3.0}})
    assert traces, "the residual was never traced"
    count = len(traces)
    second = eqx.tree_at(lambda k: k.encoding, first, CovariateEncoding.fit({"a": {"dose": 10.0}, "b": {"dose": 30.0}},
                                                                           ("dose",)))
    b = simulate(second, protocols, TIMES, initial_states=states, covariates={"p": {"dose": 20.0}, "q": {"dose": 10.0}})
    assert len(traces) == count, "a new encoding or new covariate values recompiled the solve"
    assert not np.allclose(a["vcd"].values, b["vcd"].values, equal_nan=True)


# -- learning a covariate effect ------------------------------------------------------------------------------------
def _blind(campaign, column: str):
    """The same campaign with `column` set to a level no encoding has seen: a network that sees it gets the population
    input (zeros) for every batch, i.e. it is the same network without the covariate (and compiles nothing new)."""
    from cgt_twin.data.campaign import Campaign

    level = ("batch", np.full(len(campaign.batches), "unknown", dtype=object))
    return Campaign(campaign.data.assign_coords({column: level}), campaign.censored.assign_coords({column: level}),
                    campaign.protocols, campaign.media, campaign.declared, campaign.notes, campaign.source)


@pytest.mark.slow
def test_the_covariate_lets_the_network_learn_a_clone_effect():
    """Clone B grows 30 % faster than clone A. A network that sees the clone predicts held-out batches of both clones
    well; the same network blind to it (population input for every batch) can only learn the average. About 30 s on
    2 cores, mostly one compilation of the training step."""
    from cgt_twin.fit.training import TrainConfig, train_hybrid

    os.environ.setdefault("CGT_TWIN_NO_PROGRESS", "1")
    clones = {"A1": "A", "A2": "A", "B1": "B", "B2": "B"}
    protocols = {b: Protocol(1.0, (Event(96.0, "harvest"),), {}) for b in clones}
    states = {b: {"vcd": v, "glucose": 40.0, "glutamine": 6.0} for b, v in zip(clones, (0.3, 0.4, 0.5, 0.4),
                                                                                strict=True)}
    faster = {b: {"mu_max": 1.3 * 0.029} for b in clones if clones[b] == "B"}
    data = synthetic_campaign(Twin(CHOFedBatch()), protocols, sampling=SamplingPlan(variables=("vcd",)),
                              noise=NoiseModel({"vcd": (0.01, 0.0)}), seed=3, initial_states=states,
                              batch_params=faster, covariates={b: {"clone": c} for b, c in clones.items()})
    truth = simulate(Twin(CHOFedBatch()), protocols, data.times, initial_states=states, batch_params=faster)
    spec = ResidualSpec(targets=("growth",), features=("time",), covariates=("clone",), hidden=(4,))
    start = Twin(hybrid(CHOFedBatch(), spec, campaign=data.sel(["A1", "B1"])))  # levels A and B
    config = TrainConfig(steps=60, learning_rate=0.05, variables=("vcd",), progress=False)

    def held_out_error(campaign) -> np.ndarray:
        trained = train_hybrid(start, campaign.sel(["A1", "B1"]), {"vcd": (0.01, 0.02)}, config).twin
        predicted = simulate(trained, campaign, batches=["A2", "B2"])["vcd"].sel(phase="pre")
        errors = []
        for batch in ("A2", "B2"):
            p, t = predicted.sel(batch=batch).values, truth["vcd"].sel(batch=batch, phase="pre").values
            ok = np.isfinite(p) & np.isfinite(t)
            errors.append(np.sqrt(np.mean(np.log(p[ok] / t[ok]) ** 2)))
        return np.asarray(errors)

    with_clone = held_out_error(data)
    with pytest.warns(UnseenCovariateWarning):
        without = held_out_error(_blind(data, "clone"))
    assert np.all(with_clone < 0.6 * without), (with_clone, without)
    assert with_clone.max() < 0.08, with_clone
