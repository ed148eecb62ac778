"""Simulation benchmark (issue: simulation core). Prints compile and run times separately; peers in the same run.

Measures, for a 14-day CHO fed-batch with 14 bolus feeds and daily samples (CHOFedBatch, Xing 2010):
1. one batch: compile time, median time per solve, time per accepted step (rtol 1e-6, atol 1e-8 on scaled states),
   and the error against a tight reference (Dopri8, rtol 1e-12);
2. 10 000 posterior-like parameter draws (log-normal, 10 % spread) vmapped: time and peak RSS (in a subprocess);
3. scipy.integrate.solve_ivp (LSODA and RK45) on the same model and protocol, numpy right-hand side written for speed,
   same tolerances, restarted at every event: time per solve, error against the same reference, and the ratio;
4. value and gradient of a 9-batch least-squares loss, reverse mode and forward mode.

Run: ``python benchmarks/bench_simulate.py [--json out.json]`` (all figures as JSON), or through the runner
``python benchmarks/run.py`` which calls `run` and rewrites benchmarks/README.md. Timings are the machine's (2-core CPU
for the figures in benchmarks/README.md); compare only ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def protocol_and_state():
    from cgt_twin.data import Event, Medium, Protocol

    feed = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
    events = [Event(24.0 * d, "sample", 0.004, "L") for d in range(14)]
    events += [Event(12.0 + 22.0 * i + 2.0, "bolus", 0.025, "L", medium="feed") for i in range(14)]
    events += [Event(336.0, "harvest")]
    protocol = Protocol(1.0, tuple(events), {"feed": feed}, max_volume=2.0)
    state = {"vcd": 0.4, "dead_cells": 0.01, "glucose": 35.0, "glutamine": 4.0, "lactate": 1.0, "ammonia": 0.5,
             "titer": 0.0, "volume": 1.0}
    return protocol, state


def median_time(fn, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return float(np.median(samples))


def scaled_error(values, reference, scales) -> float:
    values, reference = np.asarray(values), np.asarray(reference)
    return float(np.nanmax(np.abs(values - reference) / (np.abs(reference) + scales)))


# -- scipy peer ---------------------------------------------------------------------------------------------------
def scipy_solve(method: str, params: dict, protocol, state, times, rtol, atol, scales):
    """The CHO model with a numpy/math right-hand side and per-event restarts (the usual scipy set-up)."""
    from scipy.integrate import solve_ivp

    p = params
    mu_max, k_d, K_glc, K_gln = p["mu_max"], p["k_d"], p["K_glc"], p["K_gln"]
    KI_lac, KI_amm, KD_lac, KD_amm = p["KI_lac"], p["KI_amm"], p["KD_lac"], p["KD_amm"]
    Yxg, Yxq, Ylg, Yaq = p["Y_x_glc"], p["Y_x_gln"], p["Y_lac_glc"], p["Y_amm_gln"]
    r_amm, m_glc, a1, a2, k_dgln, q_p, eps = (p["r_amm"], p["m_glc"], p["a1"], p["a2"], p["k_dgln"], p["q_p"],
                                              p["eps_switch"])

    def rhs(t, y):
        xv, xd, glc, gln, lac, amm, _titer, _v = y
        mu = mu_max * glc / (K_glc + glc) * gln / (K_gln + gln) * KI_lac / (KI_lac + lac) * KI_amm / (KI_amm + amm)
        death = k_d * lac / (KD_lac + lac) * amm / (KD_amm + amm)
        q_glc = mu / Yxg + m_glc * glc / (eps + glc)
        q_gln = mu / Yxq + a1 * gln / (a2 + gln) * gln / (eps + gln)
        q_amm = Yaq * mu / Yxq - r_amm * amm / (eps + amm)
        decay = k_dgln * gln
        return [(mu - death) * xv, death * xv, -q_glc * xv, -q_gln * xv - decay, Ylg * q_glc * xv,
                q_amm * xv + decay, q_p * xv, 0.0]

    names = ["vcd", "dead_cells", "glucose", "glutamine", "lactate", "ammonia", "titer", "volume"]
    y = np.array([state[n] for n in names], dtype=float)
    feed = protocol.media["feed"].concentrations
    feed_vec = np.array([0, 0, feed.get("glucose", 0), feed.get("glutamine", 0), 0, 0, 0, 0], dtype=float)
    out = np.full((len(times), len(names)), np.nan)
    boundaries = sorted({0.0, *[e.time_h for e in protocol.events]})
    atol_vec = atol * scales
    t_prev = 0.0
    events_by_time = {}
    for e in protocol.events:
        events_by_time.setdefault(e.time_h, []).append(e)
    steps = 0
    for t_next in boundaries[1:] + [None]:
        for e in events_by_time.get(t_prev, []):  # apply events at t_prev (sample, then bolus)
            if e.kind.value == "sample":
                y[7] -= e.amount
            elif e.kind.value == "bolus":
                f = e.amount / (y[7] + e.amount)
                y[2:7] = (1 - f) * y[2:7] + f * feed_vec[2:7]
                y[0:2] *= (1 - f)
                y[7] += e.amount
        if t_next is None:
            break
        inside = [i for i, t in enumerate(times) if t_prev < t <= t_next]
        sol = solve_ivp(rhs, (t_prev, t_next), y, method=method, rtol=rtol, atol=atol_vec,
                        t_eval=[times[i] for i in inside] or None)
        steps += sol.t.size if not inside else len(sol.t)
        for j, i in enumerate(inside):
            out[i] = sol.y[:, j]
        y = sol.y[:, -1] if not inside or sol.t[-1] != t_next else sol.y[:, -1]
        if inside and times[inside[-1]] != t_next:
            y = solve_ivp(rhs, (times[inside[-1]], t_next), sol.y[:, -1], method=method, rtol=rtol,
                          atol=atol_vec).y[:, -1]
        t_prev = t_next
    return out


def draws_subprocess(n_draws: int) -> dict:
    """Runs the vmapped-draws measurement in a fresh process so that its peak RSS is its own."""
    code = f"""
import json, resource, time, numpy as np, jax
import cgt_twin
from cgt_twin.models import CHOFedBatch, Twin
from cgt_twin.simulate import simulate_draws, prepare, SolverSettings
import bench_simulate as b
protocol, state = b.protocol_and_state()
twin = Twin(CHOFedBatch())
prepared = prepare(twin, {{"A": protocol}}, np.arange(0, 337, 24.0), initial_states={{"A": state}})
rng = np.random.default_rng(0)
names = ["mu_max", "k_d", "K_glc", "Y_x_glc", "Y_x_gln", "Y_lac_glc", "m_glc", "q_p"]
draws = {{k: float(twin.params[k]) * np.exp(rng.normal(0, 0.1, {n_draws})) for k in names}}
t0 = time.perf_counter(); out = simulate_draws(twin, prepared, draws); first = time.perf_counter() - t0
t0 = time.perf_counter(); out = simulate_draws(twin, prepared, draws); second = time.perf_counter() - t0
ok = int((out["status"].values == "ok").sum())
steps = out["num_steps"].values
print(json.dumps({{"first_s": first, "run_s": second, "ok": ok, "n": {n_draws},
                  "mean_steps": float(steps.mean()), "max_steps": int(steps.max()),
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def loss_benchmark(repeats: int = 20, reverse_mode: bool = True) -> dict:
    """Value and gradient of a least-squares loss over 9 batches (log-parameters), reverse (unless not
    `reverse_mode`: its compilation is the slowest part of a quick run) and forward mode."""
    import jax
    import jax.numpy as jnp

    from cgt_twin.data import Event, Medium, Protocol
    from cgt_twin.models import CHOFedBatch, Twin
    from cgt_twin.simulate import SolverSettings, _solve_batches, prepare

    kinetics = CHOFedBatch()
    twin = Twin(kinetics)
    feed = Medium("feed", {"glucose": 400.0, "glutamine": 40.0})
    protocols, states = {}, {}
    for i in range(9):
        fraction = 0.02 + 0.005 * i
        events = [Event(24.0 * d, "sample", 0.004, "L") for d in range(14)]
        events += [Event(24.0 * d + 1, "bolus", fraction, "L", medium="feed") for d in range(2, 14)]
        events += [Event(336.0, "harvest")]
        protocols[f"B{i}"] = Protocol(1.0, tuple(events), {"feed": feed}, max_volume=2.0)
        states[f"B{i}"] = {"vcd": 0.3 + 0.02 * i, "glucose": 35.0, "glutamine": 4.0}
    prepared = prepare(twin, protocols, np.arange(0, 337, 24.0), initial_states=states)
    fitted = ["mu_max", "k_d", "K_glc", "Y_x_glc", "Y_x_gln", "Y_lac_glc", "m_glc", "q_p"]
    base = {k: v for k, v in twin.params.items()}
    observed = [kinetics.layout.index(n) for n in ("vcd", "glucose", "lactate", "titer")]
    scales = jnp.asarray(kinetics.state_scales())[jnp.asarray(observed)]
    truth, _, _, _ = _solve_batches(kinetics, SolverSettings(), base, prepared.encoded)
    data = truth[..., jnp.asarray(observed)] * 1.05

    def make_loss(settings):
        def loss(log_theta):
            params = {**base, **{k: jnp.exp(v) for k, v in log_theta.items()}}
            pre, _, _, _ = _solve_batches(kinetics, settings, params, prepared.encoded)
            residual = (pre[..., jnp.asarray(observed)] - data) / scales
            return jnp.nansum(residual ** 2)
        return loss

    theta = {k: jnp.log(base[k]) for k in fitted}
    results = {}
    if reverse_mode:
        reverse = jax.jit(jax.value_and_grad(make_loss(SolverSettings())))
        start = time.perf_counter()
        jax.block_until_ready(reverse(theta))
        results["reverse_compile_s"] = time.perf_counter() - start
        results["reverse_ms"] = 1e3 * median_time(lambda: jax.block_until_ready(reverse(theta)), repeats)
    forward_loss = make_loss(SolverSettings(adjoint="forward"))

    def value_and_jacfwd(t):
        return forward_loss(t), jax.jacfwd(forward_loss)(t)

    forward = jax.jit(value_and_jacfwd)
    start = time.perf_counter()
    jax.block_until_ready(forward(theta))
    results["forward_compile_s"] = time.perf_counter() - start
    results["forward_ms"] = 1e3 * median_time(lambda: jax.block_until_ready(forward(theta)), repeats)
    if reverse_mode:
        g_rev = reverse(theta)[1]
        g_fwd = forward(theta)[1]
        results["grad_rel_diff"] = float(max(abs(g_rev[k] - g_fwd[k]) / (abs(g_rev[k]) + 1e-12) for k in fitted))
    return results


def measure(n_draws: int = 10_000, quick: bool = False) -> dict:
    """Every figure of this benchmark as a nested dict (what ``main`` prints). `quick` repeats each timing fewer
    times (a smoke test of the benchmark, not figures to report); `n_draws` is the size of the draws measurement."""
    solve_repeats, core_repeats, scipy_repeats, loss_repeats = (5, 20, 1, 2) if quick else (50, 200, 5, 20)
    import jax

    from cgt_twin.models import CHOFedBatch, Twin
    from cgt_twin.simulate import SolverSettings, prepare, simulate

    protocol, state = protocol_and_state()
    kinetics = CHOFedBatch()
    twin = Twin(kinetics)
    times = np.arange(0.0, 337.0, 24.0)
    prepared = prepare(twin, {"A": protocol}, times, initial_states={"A": state})
    settings = SolverSettings(rtol=1e-6, atol=1e-8)
    figures: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
                     "jax": jax.__version__}

    start = time.perf_counter()
    first = simulate(twin, prepared, settings=settings)
    figures["compile_and_first_solve_s"] = time.perf_counter() - start
    figures["solve_ms"] = 1e3 * median_time(lambda: simulate(twin, prepared, settings=settings), solve_repeats)
    from cgt_twin.simulate import _solve_batches

    params = dict(twin.params)
    core = lambda: jax.block_until_ready(_solve_batches(kinetics, settings, params, prepared.encoded))  # noqa: E731
    figures["core_solve_ms"] = 1e3 * median_time(core, core_repeats)
    steps = int(first["num_steps"].values[0])
    figures["accepted_steps"] = steps
    figures["us_per_step"] = 1e3 * figures["core_solve_ms"] / steps

    reference = simulate(twin, prepared, settings=SolverSettings(solver="dopri8", rtol=1e-12, atol=1e-14,
                                                                 max_steps=100_000))
    names = list(kinetics.layout.names)
    scales = kinetics.state_scales()
    ours = np.stack([first[n].sel(phase="pre").values[0] for n in names], axis=-1)
    ref = np.stack([reference[n].sel(phase="pre").values[0] for n in names], axis=-1)
    figures["error_vs_reference"] = scaled_error(ours, ref, scales)

    for method in ("LSODA", "RK45"):
        result = scipy_solve(method, {k: float(v) for k, v in params.items()}, protocol, state, times, 1e-6, 1e-8,
                             scales)
        figures[f"scipy_{method}_ms"] = 1e3 * median_time(
            lambda m=method: scipy_solve(m, {k: float(v) for k, v in params.items()}, protocol, state, times, 1e-6,
                                         1e-8, scales), scipy_repeats)
        figures[f"scipy_{method}_error_vs_reference"] = scaled_error(result, ref, scales)
        figures[f"ratio_{method}_over_ours"] = figures[f"scipy_{method}_ms"] / figures["core_solve_ms"]

    figures["draws"] = draws_subprocess(n_draws)
    figures["loss_9_batches"] = loss_benchmark(loss_repeats, reverse_mode=not quick)
    return figures


def _record(name: str, value: float, unit: str, *, peer: str | None = None, ratio: float | None = None,
            target: str | None = None, met: bool | None = None) -> dict:
    return {"name": name, "value": float(value), "unit": unit, "peer": peer,
            "ratio": None if ratio is None else float(ratio), "target": target, "met": met}


def records(figures: dict) -> list[dict]:
    """The figures of `measure` as the runner's records (targets of the simulation-core issue)."""
    draws, loss = figures["draws"], figures["loss_9_batches"]
    out = [
        _record("compile + first solve, one batch", figures["compile_and_first_solve_s"], "s", target="<= 3 s",
                met=figures["compile_and_first_solve_s"] <= 3.0),
        _record("one solve after compilation (core, median)", figures["core_solve_ms"], "ms", target="<= 0.5 ms",
                met=figures["core_solve_ms"] <= 0.5),
        _record("time per accepted step", figures["us_per_step"], "us", target="<= 2 us",
                met=figures["us_per_step"] <= 2.0),
        _record("accepted steps", figures["accepted_steps"], "1"),
        _record("error vs Dopri8 reference (scaled)", figures["error_vs_reference"], "1"),
        _record("simulate() incl. xarray result", figures["solve_ms"], "ms"),
    ]
    for method in ("LSODA", "RK45"):
        ratio = figures[f"ratio_{method}_over_ours"]
        out.append(_record(f"scipy solve_ivp {method} / ours (time per solve)", ratio, "x",
                           peer=f"scipy {method} {figures[f'scipy_{method}_ms']:.3g} ms (error "
                                f"{figures[f'scipy_{method}_error_vs_reference']:.2g})",
                           ratio=ratio, target=">= 30x", met=ratio >= 30.0))
    per_10k = draws["run_s"] * 10_000 / draws["n"]
    out += [
        _record(f"{draws['n']} parameter draws, vmapped (run, after compile)", draws["run_s"], "s",
                target="<= 2 s per 10 000 draws", met=per_10k <= 2.0),
        _record("draws: compile + first run", draws["first_s"], "s"),
        _record("draws: peak RSS of the process", draws["peak_rss_gib"], "GiB", target="<= 2 GiB",
                met=draws["peak_rss_gib"] <= 2.0),
        _record("draws: mean steps per draw", draws["mean_steps"], "1"),
    ]
    if "reverse_ms" not in loss:  # quick mode: forward mode only
        return out + [_record("9-batch loss value + gradient, forward mode", loss["forward_ms"], "ms",
                              target="<= 30 ms", met=loss["forward_ms"] <= 30.0)]
    out += [
        _record("9-batch loss value + gradient, reverse mode", loss["reverse_ms"], "ms", target="<= 30 ms",
                met=loss["reverse_ms"] <= 30.0),
        _record("9-batch loss value + gradient, forward mode", loss["forward_ms"], "ms",
                peer=f"reverse mode {loss['reverse_ms']:.3g} ms", ratio=loss["reverse_ms"] / loss["forward_ms"],
                target="<= 30 ms", met=loss["forward_ms"] <= 30.0),
        _record("loss gradient compile, reverse", loss["reverse_compile_s"], "s",
                peer=f"forward mode {loss['forward_compile_s']:.3g} s",
                ratio=loss["forward_compile_s"] / loss["reverse_compile_s"]),
        _record("reverse vs forward gradient, max relative difference", loss["grad_rel_diff"], "1",
                target="<= 1e-6", met=loss["grad_rel_diff"] <= 1e-6),
    ]
    return out


def run(quick: bool = False) -> list[dict]:
    """The runner's interface (benchmarks/run.py): measures and returns the figure records. `quick` is a smoke test:
    200 draws instead of 10 000, few repeats per timing, the loss gradient in forward mode only."""
    return records(measure(200 if quick else 10_000, quick=quick))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures to this JSON file")
    parser.add_argument("--draws", type=int, default=10_000)
    parser.add_argument("--quick", action="store_true", help="few repeats per timing (a smoke test)")
    args = parser.parse_args(argv)
    figures = measure(args.draws, quick=args.quick)
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)
    return figures


if __name__ == "__main__":
    main()
