"""The control loop end to end: `cgt-twin mpc` on a running campaign folder, and the closed-loop harness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cgt_twin  # noqa: F401  (float64)
from cgt_twin import Event, Medium, Protocol
from cgt_twin.cli import app
from cgt_twin.control import PredictorSettings
from cgt_twin.control.harness import Scenario, compare_strategies, default_plant, run_closed_loop
from cgt_twin.control.mpc import MPCConfig
from cgt_twin.data.synthetic import SamplingPlan, synthetic_campaign
from cgt_twin.io import read_provenance, save_twin
from cgt_twin.models import CHOFedBatch
from cgt_twin.models.twin import Twin

runner = CliRunner()
FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
INITIAL = {"vcd": 0.8, "dead_cells": 0.02, "glucose": 25.0, "glutamine": 4.0, "lactate": 2.0, "ammonia": 0.5,
           "titer": 5.0}
NOISE = {"vcd": (0.02, 0.08), "glucose": (0.1, 0.04), "lactate": (0.1, 0.05), "titer": (1.0, 0.07)}


@pytest.fixture(scope="module")
def twin() -> Twin:
    return Twin(CHOFedBatch(), noise=NOISE)


@pytest.fixture(scope="module")
def running_folder(tmp_path_factory):
    """A batch at 48 h: its data so far (every 12 h) and its events (one bolus at 24 h, harvest planned at 120 h)."""
    protocol = Protocol(1.0, (Event(24.0, "bolus", 0.03, "L", medium="feed"), Event(120.0, "harvest")),
                        {"feed": FEED}, max_volume=1.3)
    campaign = synthetic_campaign(Twin(CHOFedBatch(lactate_consumption=True)), {"R1": protocol},
                                  sampling=SamplingPlan(every_h=12.0, variables=("vcd", "glucose", "lactate",
                                                                                "titer")),
                                  initial_states={"R1": {**INITIAL, "volume": 1.0}}, seed=3)
    folder = tmp_path_factory.mktemp("running") / "campaign"
    cgt_twin.write_campaign(campaign, folder)
    measurements = pd.read_csv(folder / "measurements.csv")
    measurements[measurements["time_h"] <= 48.0].to_csv(folder / "measurements.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def posterior(twin, running_folder):
    """A Laplace posterior of the twin's growth and yield on the running batch's first two days (what a twin fitted
    on earlier batches would carry): its draws become the particles' parameters."""
    from cgt_twin.bayes import BayesConfig, sample
    from cgt_twin.bayes.inference import NutsConfig

    campaign = cgt_twin.read_campaign(running_folder)
    return sample(twin, campaign, BayesConfig(parameters=("mu_max", "Y_x_glc")), NutsConfig(chains=1, draws=400),
                  method="laplace")


def test_particles_carry_the_posterior_and_learn_from_the_batch(twin, posterior):
    """Particles start from the posterior's draws; the growth rate's filtered mean moves towards a faster plant."""
    from cgt_twin.control import Predictor
    from cgt_twin.simulate import simulate

    predictor = Predictor(twin, posterior, PredictorSettings(n_particles=64))
    assert any("posterior draws" in note for note in predictor.notes)
    protocol = Protocol(1.0, (Event(120.0, "harvest"),), {"feed": FEED})
    predictor.start(protocol, INITIAL)
    _, params, weights = predictor.particles()
    assert np.ptp(params["mu_max"]) > 0 and np.ptp(params["Y_x_glc"]) > 0 and np.ptp(params["k_d"]) == 0
    prior_mean = float(np.sum(weights * params["mu_max"]))
    faster = twin.with_params(mu_max=prior_mean * 1.3)
    times = [12.0, 24.0, 36.0, 48.0, 60.0, 72.0]
    truth = simulate(faster, {"b": protocol}, times=times, initial_states={"b": {**INITIAL, "volume": 1.0}})
    predictor.update([(t, v, float(truth[v].sel(batch="b", phase="pre", time=t).values)) for t in times
                      for v in ("vcd", "glucose")])
    _, params, weights = predictor.particles()
    assert float(np.sum(weights * params["mu_max"])) > prior_mean * 1.04  # measured: +7 % after 6 samples


def test_cli_mpc_writes_a_plan_in_the_events_format(twin, posterior, running_folder, tmp_path):
    twin_dir = tmp_path / "twin"
    save_twin(twin, twin_dir, posterior=posterior)
    config = tmp_path / "mpc.toml"
    config.write_text("[mpc]\ndecision_times_h = [72.0, 96.0]\nbolus_max_l = 0.05\nn_draws = 8\n"
                      "max_evaluations = 10\ntime_budget_s = 30.0\nglucose_min = 2.0\n")
    plan_file = tmp_path / "plan.csv"
    args = ["mpc", str(twin_dir), str(running_folder), "--batch", "R1", "--config", str(config), "--out",
            str(plan_file), "--particles", "32"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Plan at 48 h" in result.output and "planned" in result.output
    assert "posterior draws" in result.output  # the stored posterior's draws are the particles' parameters
    plan = pd.read_csv(plan_file)
    assert {"batch", "time_h", "kind", "amount", "unit", "medium"} <= set(plan.columns)
    assert set(plan["time_h"]) <= {72.0, 96.0} and (plan["amount"] <= 0.05).all() and (plan["amount"] > 0).all()
    assert plan["amount"].sum() <= 1.3 - (1.0 + 0.03) + 1e-9  # the vessel's headroom after the 24 h bolus
    assert read_provenance(twin_dir)[-1]["command"].startswith("mpc ")
    again = runner.invoke(app, args)  # refuses to overwrite
    assert again.exit_code == 2 and "overwrite" in again.output
    missing = runner.invoke(app, [*args[:4], "R9", *args[5:], "--overwrite"])
    assert missing.exit_code == 2 and "no batch 'R9'" in missing.output


def test_closed_loop_runs_every_strategy_safely(twin):
    """A short batch against the plant with the lactate shift (a structure the twin lacks), process and measurement
    noise and a 2 h delay: the standard schedule is applied as given, MPC never breaks its bounds or falls back."""
    protocol = Protocol(1.0, (Event(120.0, "harvest"),), {"feed": FEED}, max_volume=1.3)
    scenario = Scenario(protocol, INITIAL, (24.0, 48.0, 72.0, 96.0), (0.03, 0.03, 0.03, 0.03))
    plant = default_plant(delay_h=2.0)
    standard = run_closed_loop(plant, scenario, twin, config=None, plant_seed=1)
    assert standard.boluses_l == (0.03, 0.03, 0.03, 0.03) and standard.feed_l == pytest.approx(0.12)
    assert np.isfinite(standard.final_titer) and standard.trajectory["time_h"].iloc[-1] == 120.0
    config = MPCConfig(n_draws=8, bolus_max_l=0.06, max_evaluations=8, time_budget_s=30.0)
    results = compare_strategies(plant, scenario, twin, strategies={"standard": None, "robust MPC": config},
                                 plant_seeds=(1,), predictor_settings=PredictorSettings(n_particles=32),
                                 progress=False)
    assert list(results["strategy"]) == ["standard", "robust MPC"]
    assert results.loc[0, "final_titer"] == pytest.approx(standard.final_titer)  # same plant draw, same schedule
    mpc = results.iloc[1]
    assert mpc["fallbacks"] == 0 and 0 <= mpc["feed_l"] <= 4 * 0.06 and mpc["feed_l"] <= 0.3 + 1e-9
    assert np.isfinite(mpc["final_titer"]) and mpc["call_seconds"] > 0
