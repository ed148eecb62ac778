"""Training the neural residual: the loss falls, checkpoints resume exactly after SIGKILL, non-finite losses stop
with a message, bad input is rejected before compiling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cgt_twin.data import CampaignValidationError

SCRIPT = r'''
import json, sys
import numpy as np
from cgt_twin.data import Event, Medium, Protocol
from cgt_twin.data.synthetic import SamplingPlan, synthetic_campaign
from cgt_twin.fit.training import TrainConfig, train_hybrid
from cgt_twin.hybrid import ResidualSpec, hybrid
from cgt_twin.models import CHOFedBatch, Twin

feed = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
def protocol(fraction):
    events = tuple(Event(24.0 * d + 1, "bolus", fraction, "L", medium="feed") for d in range(2, 6))
    return Protocol(1.0, events + (Event(144.0, "harvest"),), {"feed": feed}, max_volume=2.0)
plant = Twin(CHOFedBatch(lactate_consumption=True), {"q_lac_max": 0.05, "K_glc_shift": 20.0})
states = {b: {"vcd": 0.4, "glucose": 30.0, "glutamine": 4.0} for b in ("A", "B")}
campaign = synthetic_campaign(plant, {"A": protocol(0.02), "B": protocol(0.04)},
                              sampling=SamplingPlan(variables=("vcd", "glucose", "lactate")), seed=1,
                              initial_states=states)
twin = Twin(hybrid(CHOFedBatch(), ResidualSpec(targets=("lactate",), features=("glucose", "lactate"), hidden=(4,)),
                   seed=2))
noise = {"vcd": (0.02, 0.08), "glucose": (0.1, 0.04), "lactate": (0.1, 0.05)}
checkpoint = sys.argv[1] if sys.argv[1] != "-" else None
config = TrainConfig(steps=int(sys.argv[3]), learning_rate=1e-2, checkpoint_dir=checkpoint, checkpoint_every=5,
                     progress=False)
result = train_hybrid(twin, campaign, noise, config)
leaves = [np.asarray(x).ravel().tolist() for x in __import__("jax").tree_util.tree_leaves(result.twin.kinetics.residual)]
json.dump({"leaves": leaves, "history": result.history, "resumed_from": result.resumed_from}, open(sys.argv[2], "w"))
'''


def _run(tmp_path: Path, checkpoint: str, out: str, steps: int, wait: bool = True):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, CGT_TWIN_NO_PROGRESS="1")
    process = subprocess.Popen([sys.executable, str(script), checkpoint, out, str(steps)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    return process


@pytest.mark.slow
def test_a_killed_fit_resumes_and_ends_where_an_uninterrupted_fit_ends(tmp_path):
    steps = 40
    reference = tmp_path / "reference.json"
    _run(tmp_path, "-", str(reference), steps)
    checkpoint = tmp_path / "checkpoint"
    interrupted = tmp_path / "interrupted.json"
    process = _run(tmp_path, str(checkpoint), str(interrupted), steps, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline:
        meta = checkpoint / "checkpoint.json"
        if meta.exists() and json.loads(meta.read_text())["step"] >= 10:
            break
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "the fit finished before it could be killed"
    assert not interrupted.exists()
    killed_at = json.loads((checkpoint / "checkpoint.json").read_text())["step"]
    assert 10 <= killed_at < steps
    resumed = tmp_path / "resumed.json"
    _run(tmp_path, str(checkpoint), str(resumed), steps)
    a, b = json.loads(reference.read_text()), json.loads(resumed.read_text())
    assert b["resumed_from"] == killed_at
    for x, y in zip(a["leaves"], b["leaves"], strict=True):
        np.testing.assert_allclose(y, x, rtol=1e-10, atol=1e-12)
    assert [h["train"] for h in a["history"]] == pytest.approx([h["train"] for h in b["history"]], rel=1e-10)
    assert a["history"][-1]["train"] < a["history"][0]["train"]  # it learned something


def test_bad_input_is_rejected_before_compiling():
    from cgt_twin.data import read_campaign
    from cgt_twin.fit.training import TrainConfig, train_hybrid
    from cgt_twin.models import CHOFedBatch, Twin

    campaign = read_campaign(Path(__file__).resolve().parents[1] / "datasets" / "cho_fedbatch_synthetic")
    with pytest.raises(CampaignValidationError, match="has no neural residual"):
        train_hybrid(Twin(CHOFedBatch()), campaign, {})
    from cgt_twin.hybrid import ResidualSpec, hybrid

    twin = Twin(hybrid(CHOFedBatch(), ResidualSpec(targets=("growth",), features=("vcd",))))
    with pytest.raises(CampaignValidationError) as info:
        train_hybrid(twin, campaign, {"vcd": (0.1, 0.1)}, TrainConfig(variables=("vcd", "il2"),
                                                                       validation=("nope",)))
    text = str(info.value)
    assert "cannot predict 'il2'" in text and "unknown batches ['nope']" in text


def test_non_finite_loss_stops_with_the_step_and_batches(tmp_path):
    from cgt_twin.data import read_campaign
    from cgt_twin.fit.training import NonFiniteLossError, TrainConfig, train_hybrid
    from cgt_twin.hybrid import ResidualSpec, hybrid
    from cgt_twin.models import CHOFedBatch, Twin
    from cgt_twin.simulate import SolverSettings

    campaign = read_campaign(Path(__file__).resolve().parents[1] / "datasets" / "cho_fedbatch_synthetic")
    campaign = campaign.sel(["C1-LOW", "C2-LOW"])
    twin = Twin(hybrid(CHOFedBatch(), ResidualSpec(targets=("growth",), features=("vcd",), hidden=(2,))))
    noise = {v: (0.1, 0.05) for v in ("vcd", "glucose")}
    config = TrainConfig(variables=("vcd", "glucose"), steps=3, progress=False, checkpoint_dir=str(tmp_path / "ck"),
                         solver=SolverSettings(max_steps=2))  # every solve fails: the loss is not a number
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 1 \(batches \['C1-LOW', 'C2-LOW'\]\)"):
        train_hybrid(twin, campaign, noise, config)
    assert not (tmp_path / "ck" / "checkpoint.json").exists()  # nothing written from a broken step


def test_gradient_of_the_full_training_loss_matches_finite_differences():
    """The loss `train_hybrid` minimises (censored NLL over all batches): reverse-mode gradient w.r.t. a network
    weight and a jointly trained log-parameter against central finite differences."""
    import equinox as eqx
    import jax.numpy as jnp

    from cgt_twin.data import Event, Medium, Protocol
    from cgt_twin.data.synthetic import SamplingPlan, synthetic_campaign
    from cgt_twin.fit.observations import align
    from cgt_twin.fit.training import _batch_losses, _trainable
    from cgt_twin.hybrid import ResidualSpec, hybrid
    from cgt_twin.models import CHOFedBatch, Twin
    from cgt_twin.simulate import SolverSettings, prepare

    feed = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
    protocols = {b: Protocol(1.0, (*(Event(24.0 * d + 1, "bolus", f, "L", medium="feed") for d in range(2, 5)),
                                   Event(120.0, "harvest")), {"feed": feed}, max_volume=2.0)
                 for b, f in (("A", 0.02), ("B", 0.04))}
    campaign = synthetic_campaign(Twin(CHOFedBatch()), protocols, seed=3,
                                  sampling=SamplingPlan(variables=("vcd", "glucose", "lactate"),
                                                        loq={"lactate": 1.5}))
    assert (campaign.censored["lactate"].values < 0).any()  # the censored branch is in the loss
    kinetics = hybrid(CHOFedBatch(), ResidualSpec(targets=("growth", "lactate"), features=("glucose", "lactate"),
                                                  hidden=(3,)), seed=1)
    # non-zero last layer so that the network's gradient is not trivially structured
    last = kinetics.residual.layers[-1]
    kinetics = eqx.tree_at(lambda k: k.residual.layers[-1].weight, kinetics, 0.05 * jnp.ones_like(last.weight))
    twin = Twin(kinetics)
    variables = ("vcd", "glucose", "lactate")
    prepared = prepare(twin, campaign)
    data = align(campaign, prepared, variables)
    problem = {"encoded": prepared.encoded, "values": data.values, "mask": data.mask, "censored": data.censored}
    fixed = {"params": dict(twin.params), "sigma_abs": jnp.asarray([0.02, 0.1, 0.1])[:, None, None, None],
             "sigma_rel": jnp.asarray([0.08, 0.04, 0.05])[:, None, None, None]}
    static = (SolverSettings(rtol=1e-10, atol=1e-12), variables)
    trainable = _trainable(twin, ("mu_max",))

    def loss(t):
        return jnp.sum(_batch_losses(kinetics, t, fixed, problem, static))

    grads = eqx.filter_grad(loss)(trainable)
    for path, analytic in ((lambda t: t["residual"].layers[-1].weight, grads["residual"].layers[-1].weight[1, 2]),
                           (lambda t: t["log_params"]["mu_max"], grads["log_params"]["mu_max"])):
        h = 1e-5

        def shifted(delta, path=path):
            leaf = path(trainable)
            bump = jnp.zeros_like(leaf).at[(1, 2) if leaf.ndim == 2 else ()].set(delta)
            return float(loss(eqx.tree_at(path, trainable, leaf + bump)))

        numeric = (shifted(h) - shifted(-h)) / (2 * h)
        assert float(analytic) == pytest.approx(numeric, rel=1e-5, abs=1e-6)
    assert np.isfinite(float(loss(trainable)))


def test_training_starts_from_the_given_initial_states():
    """`train_hybrid(initial_states=...)` (what `calibrate` passes: the mechanistic fit's) replaces the first samples
    in every training solve: the data's own first samples give the same loss as none; another start another one."""
    from cgt_twin.data import read_campaign
    from cgt_twin.fit.training import TrainConfig, train_hybrid
    from cgt_twin.hybrid import ResidualSpec, hybrid
    from cgt_twin.models import CHOFedBatch, Twin
    from cgt_twin.simulate import initial_state

    campaign = read_campaign(Path(__file__).resolve().parents[1] / "datasets" / "cho_fedbatch_synthetic")
    campaign = campaign.sel(["C1-LOW", "C2-LOW"])
    twin = Twin(hybrid(CHOFedBatch(), ResidualSpec(targets=("growth",), features=("vcd",), hidden=(2,)), seed=0))
    noise = {v: (0.1, 0.05) for v in ("vcd", "glucose")}
    config = TrainConfig(variables=("vcd", "glucose"), steps=1, progress=False)
    first = {b: {"vcd": initial_state(twin.kinetics, campaign, b)[0]["vcd"]} for b in campaign.batches}

    def loss(states):
        return train_hybrid(twin, campaign, noise, config, initial_states=states).history[0]["train"]

    assert loss(first) == pytest.approx(loss(None), rel=1e-12)
    assert loss({"C1-LOW": {"vcd": 3 * first["C1-LOW"]["vcd"]}}) > 1.5 * loss(None)
    with pytest.raises(CampaignValidationError, match="'C9' is not a batch of the campaign"):
        loss({"C9": {"vcd": 1.0}})
