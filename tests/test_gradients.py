"""Gradients through the segmented solver: reverse mode (`jax.grad`, `RecursiveCheckpointAdjoint`), forward mode
(`jax.jacfwd`, `diffrax.ForwardMode`) and central finite differences agree, including for outputs right before and
right after a bolus (the pre/post phases at a bolus time and times just around it).

The pure-JAX path is the one a fit uses: `prepare` (encode the protocol once, stacked with a leading batch axis of 1),
then `cgt_twin.simulate._solve_batches` with JAX parameter values and amounts. Inputs differentiated: log kinetic
parameters, initial states (vcd, glucose) and protocol amounts (two bolus volumes and a feed rate).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cgt_twin  # noqa: F401  (float64)
from cgt_twin import Event, Medium, Protocol
from cgt_twin.models import CHOFedBatch, EventCode
from cgt_twin.simulate import SolverSettings, _solve_batches, prepare

KIN = CHOFedBatch()
NAMES = KIN.layout.names
GLC, TITER, VCD, VOL = (NAMES.index(n) for n in ("glucose", "titer", "vcd", "volume"))
FEED_GLUCOSE = 300.0
PROTOCOL = Protocol(
    1.0,
    (Event(24, "sample", 0.01, "L"), Event(48, "sample", 0.01, "L"), Event(48, "bolus", 0.04, "L", medium="feed"),
     Event(72, "feed_rate", 0.001, "L/h", medium="feed"), Event(96, "sample", 0.01, "L"),
     Event(96, "bolus", 0.05, "L", medium="feed"), Event(120, "feed_rate", 0.0, "L/h", medium="feed"),
     Event(144, "harvest")),
    {"feed": Medium("feed", {"glucose": FEED_GLUCOSE, "glutamine": 20.0})},
)
GRID = np.array([12.0, 24.0, 36.0, 47.5, 48.0, 48.5, 60.0, 72.0, 84.0, 95.9, 96.0, 96.1, 108.0, 120.0, 132.0, 144.0])
Y0 = {**KIN.default_initial_state(), "vcd": 0.4, "glucose": 25.0, "glutamine": 4.0, "ammonia": 0.3}

LOG_PARAMS = ("mu_max", "K_glc", "Y_x_glc", "q_p", "k_d", "m_glc")
THETA_NAMES = (*(f"log {p}" for p in LOG_PARAMS), "vcd0", "glucose0", "bolus48", "bolus96", "feed_rate")
THETA0 = np.array([*(np.log(dict((p.name, p.default) for p in KIN.parameters)[p]) for p in LOG_PARAMS),
                   Y0["vcd"], Y0["glucose"], 0.04, 0.05, 0.001])

REVERSE = SolverSettings(rtol=1e-10, atol=1e-12, max_steps=2048, adjoint="recursive")
FORWARD = SolverSettings(rtol=1e-10, atol=1e-12, max_steps=2048, adjoint="forward")


PREPARED = prepare(KIN, PROTOCOL, GRID, initial_states=Y0)
ENC = PREPARED.encoded
assert PREPARED.names == ("batch",) and np.array_equal(PREPARED.grid, GRID)
BOLUS_ROWS = np.nonzero(np.asarray(ENC.code[0]) == EventCode.BOLUS_MEDIUM)[0]
FEED_ROW = int(np.nonzero((np.asarray(ENC.code[0]) == EventCode.FEED_RATE) & (np.asarray(ENC.amount[0]) > 0))[0][0])
assert np.allclose(np.asarray(ENC.t0[0])[BOLUS_ROWS], [48.0, 96.0])


def _states(theta, settings):
    """(pre, post) states (time, state) for the flat input vector `theta`."""
    params = {p.name: jnp.asarray(p.default) for p in KIN.parameters}
    for i, name in enumerate(LOG_PARAMS):
        params[name] = jnp.exp(theta[i])
    k = len(LOG_PARAMS)
    y0 = ENC.y0.at[0, VCD].set(theta[k]).at[0, GLC].set(theta[k + 1])
    amount = ENC.amount.at[0, BOLUS_ROWS].set(theta[k + 2:k + 4]).at[0, FEED_ROW].set(theta[k + 4])
    pre, post, status, _ = _solve_batches(KIN, settings, params, ENC._replace(y0=y0, amount=amount))
    return pre[0], post[0], status[0]


def _log_outputs(pre, post, xp=jnp):
    """The fitted quantities: log titre and log glucose at every output time, pre and post."""
    return xp.concatenate([xp.log(pre[:, TITER]), xp.log(post[:, TITER]), xp.log(pre[:, GLC]), xp.log(post[:, GLC])])


@functools.cache
def _reverse():
    """Reverse mode, one compilation for everything: f(theta, a, w) = a·Σ log-outputs² + Σ w·states, its value, the
    states (aux) and its gradient. a = 1, w = 0 is the loss; a = 0 with a one-hot w is one row of the state
    Jacobian."""
    def objective(theta, a, w):
        pre, post, status = _states(theta, REVERSE)
        states = jnp.stack([pre, post])
        return a * jnp.sum(_log_outputs(pre, post) ** 2) + jnp.sum(w * states), (states, status)

    f = jax.jit(jax.value_and_grad(objective, has_aux=True))
    zero = jnp.zeros((2, GRID.size, len(NAMES)))

    def loss(theta):
        """(loss, gradient, states, status)"""
        (value, (states, status)), grad = f(jnp.asarray(theta), 1.0, zero)
        return float(value), np.asarray(grad), np.asarray(states), int(status)

    def row(theta, phase, time_index, state):
        """d state[phase, time_index, state] / d theta."""
        return np.asarray(f(jnp.asarray(theta), 0.0, zero.at[phase, time_index, state].set(1.0))[1])

    return loss, row


@functools.cache
def _forward():
    """Forward mode (`jacfwd`, `diffrax.ForwardMode`): a function theta -> (Jacobian of all states (phase, time, state,
    theta), states, status), one compilation."""
    def states(theta):
        pre, post, status = _states(theta, FORWARD)
        stacked = jnp.stack([pre, post])
        return stacked, (stacked, status)

    jac = jax.jit(jax.jacfwd(states, has_aux=True))

    def run(theta):
        j, (s, status) = jac(jnp.asarray(theta))
        return np.asarray(j), np.asarray(s), int(status)

    return run


def _log_output_jacobian(jac_states, states):
    """d(log outputs)/d theta from the state Jacobian, in the order of `_log_outputs`."""
    return np.concatenate([jac_states[p, :, s] / states[p, :, s, None] for s in (TITER, GLC) for p in (0, 1)])


STEP = 1e-5 * np.maximum(np.abs(THETA0), 1e-3)  # relative step for central differences


def _central_differences(states_of):
    """Central differences of the states (phase, time, state, theta) and of the loss (theta), from a function
    theta -> states (simulation at rtol 1e-10 / atol 1e-12)."""
    d_states, d_loss = [], []
    for i in range(THETA0.size):
        up, down = THETA0.copy(), THETA0.copy()
        up[i] += STEP[i]
        down[i] -= STEP[i]
        s_up, s_down = states_of(up), states_of(down)
        d_states.append((s_up - s_down) / (2 * STEP[i]))
        l_up = np.sum(_log_outputs(s_up[0], s_up[1], np) ** 2)
        l_down = np.sum(_log_outputs(s_down[0], s_down[1], np) ** 2)
        d_loss.append((l_up - l_down) / (2 * STEP[i]))
    return np.stack(d_states, axis=-1), np.array(d_loss)


def _tolerance_floor(states):
    """Per (phase, time, state, theta): where a derivative is exactly 0 (the titre w.r.t. a bolus before it ...),
    central differences only see the solver's error divided by the step."""
    return 1e-11 * (np.abs(states) + KIN.state_scales())[..., None] / STEP


def _assert_close(actual, expected, rtol, atol, what):
    actual, expected = np.broadcast_arrays(np.asarray(actual), np.asarray(expected))
    bad = ~(np.abs(actual - expected) <= rtol * np.abs(expected) + atol)
    if bad.any():
        idx = np.argwhere(bad)[:5]
        details = "; ".join(f"{tuple(int(x) for x in i)}: {actual[tuple(i)]:.10g} vs {expected[tuple(i)]:.10g}"
                            for i in idx)
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} differ (index: actual vs expected): {details}")


AROUND_BOLUSES = [list(GRID).index(t) for t in (47.5, 48.0, 48.5, 95.9, 96.0, 96.1)]


# --------------------------------------------------------------------------------------------------------------------
# Each test compiles what it needs once (cached per process); the forward-mode test does not need reverse mode, so
# under pytest-xdist the two can run on different workers without compiling twice.
# --------------------------------------------------------------------------------------------------------------------
def test_forward_mode_matches_finite_differences_and_mixing():
    run = _forward()
    jac, states, status = run(THETA0)
    assert status == 0
    assert states[1, :, GLC].min() > 1.0  # log glucose stays well defined
    fd_states, fd_loss = _central_differences(lambda th: run(th)[1])
    floor = _tolerance_floor(states)
    col = np.abs(fd_states).max(axis=(0, 1), keepdims=True)  # per state and input, over time and phase

    # every state at every output time (incl. 47.5/48/48.5 h and 95.9/96/96.1 h), pre and post, w.r.t. every input
    _assert_close(jac, fd_states, 1e-4, np.maximum(1e-7 * col, floor), "d state / d theta, forward vs differences")
    # the fitted log outputs and the scalar loss
    d_out = _log_output_jacobian(jac, states)
    fd_out = _log_output_jacobian(fd_states, states)
    _assert_close(d_out, fd_out, 1e-4, 1e-7 * np.abs(fd_out).max(axis=0), "d log-output / d theta")
    grad_fwd = 2 * _log_outputs(states[0], states[1], np) @ d_out
    for name, f, d in zip(THETA_NAMES, grad_fwd, fd_loss, strict=True):
        assert f == pytest.approx(d, rel=1e-4), f"{name}: forward {f} vs finite differences {d}"
    assert np.all(np.abs(grad_fwd) > 1e-6 * np.abs(grad_fwd).max()), dict(zip(THETA_NAMES, grad_fwd, strict=True))

    # across the 48 h bolus: nothing before it, and not its pre value, depends on its volume
    k48, kf = THETA_NAMES.index("bolus48"), THETA_NAMES.index("feed_rate")
    i48 = list(GRID).index(48.0)
    before = [list(GRID).index(t) for t in (12.0, 24.0, 36.0, 47.5)]
    assert np.all(jac[:, before, :, k48] == 0.0)
    assert np.all(jac[0, i48, :, k48] == 0.0)
    # post at 48 h: d/dΔV of (cV + c_f ΔV)/(V + ΔV) = (c_f − c_post)/V_post; cells −X_post/V_post; volume 1
    glc, vcd, vol = states[1, i48, GLC], states[1, i48, VCD], states[1, i48, VOL]
    assert jac[1, i48, GLC, k48] == pytest.approx((FEED_GLUCOSE - glc) / vol, rel=1e-10)
    assert jac[1, i48, VCD, k48] == pytest.approx(-vcd / vol, rel=1e-10)
    assert jac[1, i48, VOL, k48] == pytest.approx(1.0, rel=1e-12)
    # the feed rate acts 72..120 h: dV/dF = t − 72 there
    for t in (60.0, 84.0, 95.9, 96.1, 108.0, 120.0, 144.0):
        assert jac[1, list(GRID).index(t), VOL, kf] == pytest.approx(min(max(t - 72.0, 0.0), 48.0), abs=1e-9)


def test_reverse_mode_matches_forward_mode_and_finite_differences():
    loss, row = _reverse()
    value, grad, states, status = loss(THETA0)
    assert status == 0 and np.isfinite(value) and np.all(np.isfinite(grad))
    fd_states, fd_loss = _central_differences(lambda th: loss(th)[2])
    jac, fwd_states, _ = _forward()(THETA0)
    np.testing.assert_allclose(states, fwd_states, rtol=1e-13)  # same discrete solution
    grad_fwd = 2 * _log_outputs(states[0], states[1], np) @ _log_output_jacobian(jac, states)
    for name, r, f, d in zip(THETA_NAMES, grad, grad_fwd, fd_loss, strict=True):
        assert r == pytest.approx(f, rel=1e-7), f"{name}: reverse {r} vs forward {f}"
        assert r == pytest.approx(d, rel=1e-4), f"{name}: reverse {r} vs finite differences {d}"

    # rows of the state Jacobian by reverse mode, at and around both bolus times, pre and post
    floor = _tolerance_floor(states)
    col = np.abs(fd_states).max(axis=(0, 1))  # (state, theta)
    for i in AROUND_BOLUSES:
        for phase in (0, 1):
            for state in (VCD, GLC, TITER, VOL):
                where = f"{NAMES[state]} {('pre', 'post')[phase]} at {GRID[i]} h"
                atol = np.maximum(1e-7 * col[state], floor[phase, i, state])
                rev = row(THETA0, phase, i, state)
                _assert_close(rev, jac[phase, i, state], 1e-7, 1e-5 * atol, f"reverse vs forward, {where}")
                _assert_close(rev, fd_states[phase, i, state], 1e-4, atol, f"reverse vs differences, {where}")
