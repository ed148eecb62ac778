"""Twin artifacts: lossless, safe (no pickle), hashed, versioned, atomic; the provenance log is hash-chained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cgt_twin.data import Event, Medium, Protocol
from cgt_twin.hybrid import ResidualSpec, hybrid
from cgt_twin.io import (
    SCHEMA_VERSION,
    ArtifactError,
    append_provenance,
    campaign_hash,
    load_fitted_initial_states,
    load_twin,
    read_provenance,
    save_twin,
    verify_provenance,
)
from cgt_twin.models import CHOFedBatch, TCellExpansion, Twin
from cgt_twin.simulate import simulate

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "artifacts"
PROTOCOL = Protocol(1.0, (Event(48.0, "bolus", 0.05, "L", medium="feed"), Event(120.0, "harvest")),
                    {"feed": Medium("feed", {"glucose": 300.0})})
STATE = {"vcd": 0.5, "glucose": 25.0, "glutamine": 4.0}


def _hybrid_twin() -> Twin:
    h = hybrid(CHOFedBatch(), ResidualSpec(targets=("growth", "titer"), features=("vcd", "glucose", "time"),
                                           hidden=(4,)), seed=5)
    weight = 0.2 * jax.random.normal(jax.random.PRNGKey(9), h.residual.layers[-1].weight.shape, dtype=jnp.float64)
    return Twin(eqx.tree_at(lambda k: k.residual.layers[-1].weight, h, weight), {"mu_max": 0.031})


@pytest.mark.parametrize("make", [lambda: Twin(CHOFedBatch(lactate_consumption=True), {"q_p": 1.7}),
                                  lambda: Twin(TCellExpansion(n_lag=2, vessel="static")), _hybrid_twin])
def test_round_trip_is_exact(tmp_path, make):
    twin = make()
    loaded = load_twin(save_twin(twin, tmp_path / "twin"))
    assert type(loaded.kinetics) is type(twin.kinetics)
    assert {k: float(v) for k, v in loaded.params.items()} == {k: float(v) for k, v in twin.params.items()}
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(twin.kinetics, eqx.is_array)),
                    jax.tree_util.tree_leaves(eqx.filter(loaded.kinetics, eqx.is_array)), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_hybrid_artifact_predicts_the_same(tmp_path):
    twin = _hybrid_twin()
    loaded = load_twin(save_twin(twin, tmp_path / "twin"))
    times = np.arange(0, 121, 24.0)
    a = simulate(twin, PROTOCOL, times, initial_states=STATE)
    b = simulate(loaded, PROTOCOL, times, initial_states=STATE)
    np.testing.assert_array_equal(a["titer"].values, b["titer"].values)


def test_no_pickle_and_human_readable(tmp_path):
    folder = save_twin(_hybrid_twin(), tmp_path / "twin", data_hash="sha256:abc", fit_settings={"seed": 1})
    document = json.loads((folder / "twin.json").read_text())
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["model"]["parameters"]["mu_max"] == {"value": 0.031, "unit": "1/h"}
    assert document["data_hash"] == "sha256:abc" and document["fit_settings"] == {"seed": 1}
    assert "jax" in document["versions"]
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:  # would raise on pickled objects
        assert len(arrays.files) == document["model"]["residual"]["n_arrays"]


@pytest.mark.parametrize("damage", ["edit_parameter", "edit_array", "truncate_array", "truncate_json",
                                    "newer_schema", "unknown_model", "missing_arrays"])
def test_damaged_artifacts_fail_with_a_clear_message(tmp_path, damage):
    folder = save_twin(_hybrid_twin(), tmp_path / "twin")
    meta = folder / "twin.json"
    document = json.loads(meta.read_text())
    phrase = "content hash mismatch"
    if damage == "edit_parameter":
        document["model"]["parameters"]["mu_max"]["value"] = 0.05
        meta.write_text(json.dumps(document))
    elif damage == "edit_array":
        raw = bytearray((folder / "arrays.npz").read_bytes())
        raw[-40] ^= 0xFF
        (folder / "arrays.npz").write_bytes(bytes(raw))
    elif damage == "truncate_array":
        raw = (folder / "arrays.npz").read_bytes()
        (folder / "arrays.npz").write_bytes(raw[: len(raw) // 2])
    elif damage == "truncate_json":
        meta.write_text(meta.read_text()[:100])
        phrase = "unreadable or truncated JSON"
    elif damage == "newer_schema":
        document["schema_version"] = SCHEMA_VERSION + 1
        meta.write_text(json.dumps(document))
        phrase = "newer than this library reads"
    elif damage == "unknown_model":
        document["model"]["model"] = "yeast"
        from cgt_twin.io import _content_hash

        document["content_hash"] = _content_hash(document["model"], (folder / "arrays.npz").read_bytes())
        meta.write_text(json.dumps(document))
        phrase = "unknown model 'yeast'"
    elif damage == "missing_arrays":
        (folder / "arrays.npz").unlink()
        phrase = "missing or unreadable"
    with pytest.raises(ArtifactError) as info:
        load_twin(folder)
    assert phrase in str(info.value)


@pytest.mark.parametrize("name", ["schema1_cho", "schema1_hybrid"])
def test_stored_artifacts_of_every_released_schema_still_load(name):
    twin = load_twin(FIXTURES / name)
    assert twin.kinetics.cell_type == "cho"
    if name == "schema1_cho":
        assert float(twin.params["mu_max"]) == 0.031 and twin.kinetics.lactate_consumption
    else:
        assert float(jnp.max(jnp.abs(twin.kinetics.residual.layers[-1].weight))) > 0
        verify_provenance(FIXTURES / name)


def test_writes_are_atomic_refuse_overwrite_and_keep_the_log(tmp_path):
    folder = save_twin(Twin(CHOFedBatch()), tmp_path / "twin")
    append_provenance(folder, "fit", status="ok", seed=1)
    with pytest.raises(FileExistsError):
        save_twin(Twin(CHOFedBatch()), folder)
    save_twin(Twin(CHOFedBatch(), {"mu_max": 0.03}), folder, overwrite=True)
    assert float(load_twin(folder).params["mu_max"]) == 0.03
    assert [r["command"] for r in read_provenance(folder)] == ["fit"]  # the log survives a re-save
    assert sorted(p.name for p in tmp_path.iterdir()) == ["twin"]


def test_fitted_initial_states_belong_to_the_fitted_campaign(tmp_path):
    """The fit's initial states come back for the campaign fitted on (its batches only), nothing for another
    campaign, an artifact without them or a hybrid twin; a damaged record is refused whole, naming the batch and
    state."""
    from test_bayes_toy import growth_campaign

    campaign = growth_campaign({"A": {}, "B": {}}, seed=1)
    stored = {"A": {"vcd": 0.21, "glucose": 30.5}, "B": {"vcd": 0.19}, "gone": {"vcd": 0.3}}
    folder = save_twin(Twin(CHOFedBatch()), tmp_path / "twin", data_hash=campaign_hash(campaign),
                       fit_settings={"initial_states": stored})
    assert load_fitted_initial_states(folder, campaign) == {"A": stored["A"], "B": stored["B"]}
    assert load_fitted_initial_states(folder, campaign.sel(["A"])) == {}  # another campaign: another hash
    bare = save_twin(Twin(CHOFedBatch()), tmp_path / "bare", data_hash=campaign_hash(campaign))
    assert load_fitted_initial_states(bare, campaign) == {}
    # a hybrid's network was trained from the measured starts: its batches start there
    hybrid = save_twin(_hybrid_twin(), tmp_path / "hybrid", data_hash=campaign_hash(campaign),
                       fit_settings={"initial_states": stored})
    assert load_fitted_initial_states(hybrid, campaign) == {}
    for bad in (-0.2, float("nan"), "0.2", True):
        document = json.loads((folder / "twin.json").read_text())
        document["fit_settings"]["initial_states"]["B"]["vcd"] = bad
        (folder / "twin.json").write_text(json.dumps(document))
        with pytest.raises(ArtifactError, match=r"initial_states\['B'\]\['vcd'\] must be a positive finite"):
            load_fitted_initial_states(folder, campaign)
    with pytest.raises(ArtifactError, match="missing, unreadable"):
        load_fitted_initial_states(tmp_path / "nowhere", campaign)


def test_provenance_chain_detects_tampering(tmp_path):
    folder = save_twin(Twin(CHOFedBatch()), tmp_path / "twin")
    for command in ("fit", "predict", "sample"):
        append_provenance(folder, command, status="ok", data_hash="sha256:d", seed=3)
    verify_provenance(folder)
    records = read_provenance(folder)
    assert [r["command"] for r in records] == ["fit", "predict", "sample"]
    assert records[1]["previous"] == records[0]["hash"] and records[0]["utc"].endswith("+00:00")
    log = folder / "provenance.jsonl"
    lines = log.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["status"] = "failed"
    log.write_text("\n".join([lines[0], json.dumps(edited), lines[2]]) + "\n")
    with pytest.raises(ArtifactError, match="provenance chain broken"):
        verify_provenance(folder)
    log.write_text("\n".join([lines[0], lines[2]]) + "\n")  # a record removed
    with pytest.raises(ArtifactError, match="row 2"):
        verify_provenance(folder)


class _Unregistered(CHOFedBatch):
    pass


def test_unregistered_kinetics_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(ValueError, match="register_model"):
        save_twin(Twin(_Unregistered()), tmp_path / "x")
    from cgt_twin.models.registry import MODELS, register_model

    register_model("test-unregistered", _Unregistered)
    try:
        loaded = load_twin(save_twin(Twin(_Unregistered()), tmp_path / "y"))
        assert type(loaded.kinetics) is _Unregistered
    finally:
        MODELS.pop("test-unregistered")
    shutil.rmtree(tmp_path / "y")
