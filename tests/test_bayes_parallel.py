"""NUTS chains split over several JAX devices (``NutsConfig(chain_method="parallel")``).

XLA runs one vectorised kernel on one CPU core; with one host device per core the chains' groups run at once. The
number of host devices is fixed when JAX starts, so the run with two devices is a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=2``; this process has one device, where the method is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_bayes_toy import FAST_SOLVER, NOISE, GrowthDeath, growth_campaign

from cgt_twin.bayes import BayesConfig, NutsConfig, build_model, sample_nuts
from cgt_twin.bayes.config import read_bayes_config
from cgt_twin.data.errors import CampaignValidationError
from cgt_twin.models import Twin

HERE = Path(__file__).parent
CONFIG = BayesConfig(parameters=("mu_max", "k_d"), noise="fixed", solver=FAST_SOLVER)


def test_parallel_chains_are_refused_before_any_work_with_one_device(monkeypatch):
    import jax

    if len(jax.local_devices()) > 1:
        pytest.skip("this process has several JAX devices")
    model = build_model(Twin(GrowthDeath(), {}, NOISE), growth_campaign({"A": {}}, seed=3), CONFIG)

    def no_work(*args, **kwargs):
        raise AssertionError("the sampler's set-up ran before the refusal")

    from cgt_twin.bayes import inference

    monkeypatch.setattr(inference, "held_correction", no_work)
    monkeypatch.setattr(inference, "potential", no_work)
    with pytest.raises(CampaignValidationError) as exc:
        sample_nuts(model, NutsConfig(chain_method="parallel"))
    text = str(exc.value)
    assert "chain_method='parallel' needs at least two chains and two JAX devices" in text
    assert "got 4 chain(s) and 1 cpu device(s)" in text and "--xla_force_host_platform_device_count" in text
    with pytest.raises(CampaignValidationError, match="got 1 chain"):
        sample_nuts(model, NutsConfig(chains=1, chain_method="parallel"))


def test_parallel_is_a_chain_method_of_the_bayes_toml(tmp_path):
    path = tmp_path / "bayes.toml"
    path.write_text('[sampler]\nchain_method = "parallel"\n')
    assert read_bayes_config(path).sampler.chain_method == "parallel"
    path.write_text('[sampler]\nchain_method = "pmap"\n')
    with pytest.raises(CampaignValidationError, match="chain_method must be one of 'vectorized', 'sequential', "
                                                      "'parallel', got 'pmap'"):
        read_bayes_config(path)
    with pytest.raises(CampaignValidationError, match="cannot be combined with independent_batches"):
        NutsConfig(chain_method="parallel", independent_batches=True)


PARALLEL_RUN = textwrap.dedent("""
    import json, sys, warnings
    warnings.simplefilter("ignore")
    sys.path.insert(0, sys.argv[1])
    import jax
    import numpy as np
    from test_bayes_parallel import CONFIG
    from test_bayes_toy import NOISE, GrowthDeath, growth_campaign
    from cgt_twin.bayes import NutsConfig, build_model, laplace, sample_nuts
    from cgt_twin.bayes import inference
    from cgt_twin.models import Twin

    used = []
    run_chains = inference._run_chains

    def recording(kernel, postprocess, unravel, starts, config, method, key, progress):
        used.append((str(jax.config.jax_default_device), [str(d) for d in key.devices()], len(starts), method))
        return run_chains(kernel, postprocess, unravel, starts, config, method, key, progress)

    inference._run_chains = recording
    campaign = growth_campaign({"A": {"mu_max": 0.03}, "B": {"mu_max": 0.032}}, seed=1)
    model = build_model(Twin(GrowthDeath(), {}, NOISE), campaign, CONFIG)
    post = sample_nuts(model, NutsConfig(chains=3, warmup=150, draws=150, chain_method="parallel", progress=False))
    normal = laplace(model, draws=4000)
    out = {"devices": [str(d) for d in jax.local_devices()], "used": used,
           "shape": list(post.samples["log_mu_max"].shape), "method": post.meta["settings"]["chain_method"],
           "diagnostics": {k: float(post.diagnostics[k]) for k in ("r_hat_max", "divergences")}}
    for name in ("log_mu_max", "log_k_d"):
        out[name] = [float(np.mean(post.flat(name))), float(np.std(post.flat(name))),
                     float(np.mean(normal.flat(name))), float(np.std(normal.flat(name)))]
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_parallel_chains_run_on_two_host_devices_and_agree_with_laplace():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "CGT_TWIN_NO_PROGRESS": "1"}
    done = subprocess.run([sys.executable, "-c", PARALLEL_RUN, str(HERE)], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))[6:])
    assert len(out["devices"]) == 2
    # three chains over two devices: a group of two vectorised chains on the first, one chain on the second
    assert sorted((u[1][0], u[2], u[3]) for u in out["used"]) == [
        (out["devices"][0], 2, "vectorized"), (out["devices"][1], 1, "sequential")]
    assert all(u[0] == u[1][0] for u in out["used"])  # each group ran with its device as the default
    assert out["shape"][:2] == [3, 150] and out["method"] == "parallel"
    assert out["diagnostics"]["divergences"] == 0 and out["diagnostics"]["r_hat_max"] < 1.05
    for name in ("log_mu_max", "log_k_d"):  # a near-normal posterior: NUTS and Laplace agree
        mean, sd, normal_mean, normal_sd = out[name]
        assert abs(mean - normal_mean) < 0.25 * normal_sd, (name, out[name])
        assert 0.75 < sd / normal_sd < 1.3, (name, out[name])


def test_host_devices_are_asked_for_before_jax_starts():
    """`host_devices_for_chains` (used by `cgt-twin sample` for ``chain_method = "parallel"``) works after importing
    cgt_twin and its CLI, which run no JAX computation, and keeps a count already set."""
    code = textwrap.dedent("""
        import os, sys
        import cgt_twin.cli
        from cgt_twin.bayes import host_devices_for_chains
        count = host_devices_for_chains(int(sys.argv[1]))
        again = host_devices_for_chains(8)  # a count already set is kept
        import jax
        print(count, again, len(jax.local_devices()), os.environ["XLA_FLAGS"])
    """)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", code, "2"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    count, again, devices, flags = done.stdout.split()
    assert (count, again, devices) == (str(min(2, os.cpu_count())), "None", count)
    assert flags == f"--xla_force_host_platform_device_count={count}"
