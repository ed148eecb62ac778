"""`simulate_draws`: many parameter draws of the same batches in one vectorised solve, chunked."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from cgt_twin import Event, Medium, Protocol
from cgt_twin import simulate as simulate_module
from cgt_twin.models import CHOFedBatch, Twin
from cgt_twin.simulate import ACCELERATOR_DRAW_CHUNK, DRAW_CHUNK, simulate, simulate_draws

FEED = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
PROTOCOL = Protocol(1.0, (Event(24.0, "sample", 0.004, "L"), Event(50.0, "bolus", 0.03, "L", medium="feed"),
                          Event(72.0, "sample", 0.004, "L"), Event(96.0, "harvest")), {"feed": FEED}, max_volume=2.0)
STATE = {"vcd": 0.4, "dead_cells": 0.01, "glucose": 30.0, "glutamine": 4.0, "lactate": 1.0, "ammonia": 0.5,
         "titer": 0.0}
TIMES = np.arange(0.0, 97.0, 12.0)


@pytest.fixture(scope="module")
def draws_and_result():
    twin = Twin(CHOFedBatch())
    rng = np.random.default_rng(4)
    draws = {k: float(twin.params[k]) * np.exp(rng.normal(0, 0.1, 5)) for k in ("mu_max", "q_p", "Y_x_glc")}
    result = simulate_draws(twin, {"A": PROTOCOL}, draws, TIMES, chunk_size=2, initial_states={"A": STATE})
    return twin, draws, result


def test_each_draw_is_the_twin_with_that_draws_values(draws_and_result):
    twin, draws, result = draws_and_result
    assert result["vcd"].dims == ("draw", "batch", "time", "phase") and result.sizes["draw"] == 5
    assert list(result["status"].values.ravel()) == ["ok"] * 5
    for d in (0, 3, 4):  # 5 draws in chunks of 2: the last chunk is padded, and its real draw must be kept
        values = {k: float(v[d]) for k, v in draws.items()}
        alone = simulate(twin, PROTOCOL, TIMES, initial_states=STATE, params={**twin.params, **values})
        for variable in ("vcd", "glucose", "titer"):
            np.testing.assert_allclose(result[variable].isel(draw=d).values, alone[variable].values,
                                       rtol=1e-9, atol=1e-12, err_msg=f"{variable}, draw {d}")
        assert float(result["param_mu_max"][d]) == values["mu_max"]
    assert result["vcd"].isel(draw=0).sel(phase="post", time=96.0).item() != pytest.approx(
        result["vcd"].isel(draw=1).sel(phase="post", time=96.0).item(), rel=1e-6)  # the draws differ


def test_chunks_do_not_change_the_result(draws_and_result):
    twin, draws, result = draws_and_result
    whole = simulate_draws(twin, {"A": PROTOCOL}, draws, TIMES, chunk_size=5, initial_states={"A": STATE})
    np.testing.assert_allclose(whole["titer"].values, result["titer"].values, rtol=1e-12)


def test_bad_draws_are_refused():
    twin = Twin(CHOFedBatch())
    with pytest.raises(ValueError, match="same number of draws"):
        simulate_draws(twin, {"A": PROTOCOL}, {"mu_max": np.full(3, 0.03), "q_p": np.full(2, 1.0)}, TIMES,
                       initial_states={"A": STATE})
    with pytest.raises(ValueError, match="mu_max"):
        simulate_draws(twin, {"A": PROTOCOL}, {"mu_max": np.array([0.03, -1.0])}, TIMES, initial_states={"A": STATE})


def test_the_default_chunk_follows_the_platform(monkeypatch):
    assert simulate_module._default_draw_chunk() == (DRAW_CHUNK if jax.default_backend() == "cpu"
                                                     else ACCELERATOR_DRAW_CHUNK)
    monkeypatch.setattr(simulate_module.jax, "default_backend", lambda: "gpu")
    assert simulate_module._default_draw_chunk() == ACCELERATOR_DRAW_CHUNK
    monkeypatch.setattr(simulate_module.jax, "default_backend", lambda: "cpu")
    assert simulate_module._default_draw_chunk() == DRAW_CHUNK
