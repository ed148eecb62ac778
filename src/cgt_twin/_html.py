"""HTML summaries for Jupyter (``_repr_html_``) of campaigns, twins, fit results and posteriors.

Each function returns a small, self-contained ``<div>`` of tables: no scripts, no external styles, every piece of
text escaped with `html.escape`, so a summary renders the same in Jupyter, VS Code and a static HTML export.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["campaign_html", "twin_html", "fit_result_html", "posterior_html", "table_html"]

_CELL = "padding:1px 8px;text-align:left"


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any, digits: int = 4) -> str:
    """A number for a table: ``g`` format, arrays as mean ± sd over their draws, NaN as an em dash."""
    array = np.asarray(value, dtype=np.float64)
    if array.size == 0:
        return "—"
    if array.size > 1:
        return f"{np.nanmean(array):.{digits}g} ± {np.nanstd(array):.2g} ({array.size} draws)"
    number = float(array)
    return "—" if math.isnan(number) else f"{number:.{digits}g}"


def table_html(header: Sequence[str], rows: Iterable[Sequence[Any]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless `raw` (for cells that are already HTML)."""
    head = "".join(f'<th style="{_CELL}">{_esc(h)}</th>' for h in header)
    body = "".join("<tr>" + "".join(f'<td style="{_CELL}">{c if raw else _esc(c)}</td>' for c in row) + "</tr>"
                   for row in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _details(summary: str, content: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{_esc(summary)}</summary>{content}</details>"


def campaign_html(campaign) -> str:
    """Summary of a `cgt_twin.data.Campaign`: batches (cell type, volumes, covariates), variables (unit, number of
    observations), time span, events and import notes."""
    s = campaign.summary()
    cell_types = ", ".join(f"{k}: {v}" for k, v in s.cell_types.items())
    head = (f"<b>Campaign</b> <code>{_esc(campaign.source)}</code><br>{s.n_batches} batches ({_esc(cell_types)}), "
            f"{s.time_span_h[0]:g}–{s.time_span_h[1]:g} h ({s.time_span_h[1] / 24:.1f} d), "
            f"{len(s.variables)} variables; events: "
            + _esc(", ".join(f"{k} ×{n}" for k, n in s.events.items()) or "none"))
    if s.censored:
        head += f"; {s.censored} censored values"
    meta = campaign.batch_metadata()
    columns = [c for c in ("cell_type", "initial_volume", "max_volume", "feeds_known", *s.covariates)
               if c in meta.columns]
    batch_rows = [[b, *[_cell(meta.loc[b, c]) for c in columns]] for b in meta.index]
    batches = table_html(["batch", *[c.replace("_", " ") + (" [L]" if c.endswith("volume") else "")
                                     for c in columns]], batch_rows)
    variables = table_html(["variable", "unit", "observations"],
                           [[v, s.units[v], n] for v, n in s.variables.items()])
    parts = [head, _details(f"batches ({s.n_batches})", batches, open_=s.n_batches <= 12),
             _details(f"variables ({len(s.variables)})", variables, open_=len(s.variables) <= 12)]
    if s.feeds_unknown:
        parts.append("<b>feeds not recorded</b> (not simulated as unfed): " + _esc(", ".join(s.feeds_unknown)))
    if s.notes:
        parts.append(_details(f"import notes ({len(s.notes)})",
                              "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in s.notes) + "</ul>"))
    return "<div>" + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return _number(value)
    return str(value)


def twin_html(twin) -> str:
    """Summary of a `cgt_twin.models.Twin`: model, cell type, neural residual, parameter table (value, unit, default,
    bounds, meaning) and the noise model."""
    kinetics = twin.kinetics
    name = type(kinetics).__name__
    core = getattr(kinetics, "core", None)
    residual = ""
    if core is not None:
        n_weights = _count_weights(kinetics.residual)
        covariates = kinetics.covariate_encoding.columns
        seen = f"; batch covariates {_esc(', '.join(covariates))}" if covariates else ""
        residual = f"; neural residual on {_esc(type(core).__name__)} ({n_weights} weights{seen})"
    head = (f"<b>Twin</b> {_esc(name)} — cell type {_esc(twin.cell_type)}, {len(twin.params)} parameters, "
            f"solver {_esc(getattr(kinetics, 'solver', '?'))}{residual}")
    specs = {p.name: p for p in kinetics.parameters}
    rows = []
    for key, value in twin.params.items():
        spec = specs.get(key)
        if spec is None:
            rows.append([key, _number(value), "", "", "", ""])
            continue
        changed = np.asarray(value).size == 1 and not np.isclose(float(np.asarray(value)), spec.default)
        rows.append([key, _number(value) + (" *" if changed else ""), spec.unit, f"{spec.default:g}",
                     f"[{spec.lower:g}, {spec.upper:g}]", spec.description])
    parameters = table_html(["parameter", "value", "unit", "default", "bounds", "meaning"], rows)
    parts = [head, _details(f"parameters ({len(rows)}; * differs from the default)", parameters,
                            open_=len(rows) <= 12)]
    if twin.noise:
        noise = table_html(["variable", "σ_abs (canonical unit)", "σ_rel"],
                           [[v, _number(a), _number(r)] for v, (a, r) in twin.noise.items()])
        parts.append(_details(f"noise model ({len(twin.noise)} variables)", noise))
    else:
        parts.append("noise model: none (unfitted twin)")
    return "<div>" + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


def _count_weights(kinetics) -> int:
    import equinox as eqx
    import jax

    leaves = jax.tree.leaves(eqx.filter(kinetics, eqx.is_inexact_array))
    return int(sum(np.size(x) for x in leaves))


def fit_result_html(result) -> str:
    """Summary of a `cgt_twin.fit.FitResult`: status, objective of every start, wall time, fitted parameters with
    their Laplace standard errors (log scale, and as a factor) and non-identifiable flags, the noise model and the
    normalised RMSE per batch and variable."""
    twin = result.twin
    status_colour = "green" if str(result.status).startswith("ok") else "darkorange"
    starts = ", ".join(f"{v:.5g}" for v in result.starts)
    head = (f"<b>FitResult</b> {_esc(type(twin.kinetics).__name__)} — status "
            f'<span style="color:{status_colour}">{_esc(result.status)}</span>, objective {result.objective:.6g} '
            f"(starts: {_esc(starts)}), {len(result.batches)} batches, {result.seconds:.1f} s")
    specs = {p.name: p for p in twin.kinetics.parameters}
    weak = set(result.not_identifiable)
    rows = []
    for name, se in result.standard_errors.items():
        spec = specs.get(name)
        factor = math.exp(se) if math.isfinite(se) and se < 700 else math.inf
        flag = '<b style="color:darkorange">not identifiable</b>' if name in weak else "ok"
        rows.append([_esc(name), _esc(_number(twin.params.get(name, math.nan))), _esc(spec.unit if spec else ""),
                     _esc(f"{se:.3g}"), _esc(f"×/÷ {factor:.3g}" if math.isfinite(factor) else "∞"), flag])
    parameters = table_html(["parameter", "estimate", "unit", "SE (log)", "1-σ factor", "identifiable"], rows,
                            raw=True)
    stages = getattr(result, "stages", ())
    if stages:
        head += "<br>stages: " + _esc("; ".join(stages))
    parts = [head, _details(f"fitted parameters ({len(rows)}; {len(weak)} not identifiable)", parameters,
                            open_=True)]
    if result.noise:
        parts.append(_details("noise model", table_html(
            ["variable", "σ_abs", "σ_rel"], [[v, _number(a), _number(r)] for v, (a, r) in result.noise.items()])))
    variables = sorted({v for per_batch in result.metrics.values() for v in per_batch})
    if variables:
        metric_rows = [[batch, *[_number(result.metrics[batch][v][0], 3) if v in result.metrics[batch] else "—"
                                 for v in variables]] for batch in result.metrics]
        parts.append(_details("normalised RMSE (RMSE / data range) per batch",
                              table_html(["batch", *variables], metric_rows)))
    return "<div>" + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


_FAILED = "color:#b00020;font-weight:bold"


def _flag(text: str, failed: bool) -> str:
    """Escaped `text`, in bold red when `failed`."""
    return f'<span style="{_FAILED}">{_esc(text)}</span>' if failed else _esc(text)


def _diagnostic_rows(posterior) -> list[list[str]]:
    """(diagnostic, value, threshold, status) rows, already HTML: a missed threshold in bold red."""
    from .bayes.posterior import THRESHOLDS

    d, t = posterior.diagnostics, THRESHOLDS
    rows: list[list[str]] = []

    def row(name: str, value: Any, threshold: str, ok: bool | None) -> None:
        status = "—" if ok is None else ("ok" if ok else "failed")
        rows.append([_esc(name), _flag(_number(value, 4) if value is not None else "—", ok is False),
                     _esc(threshold), _flag(status, ok is False)])

    if "solver_failures" in d:
        row("draws with a failed solve", d["solver_failures"], "0", d["solver_failures"] == 0)
    if posterior.method != "nuts":
        return rows
    n_min = t["ess_per_chain_min"] * posterior.n_chains
    r_hat = d.get("r_hat_max")
    row("split R-hat (max)", r_hat, f"≤ {t['r_hat_max']}",
        None if posterior.n_chains < 2 or r_hat is None else r_hat <= t["r_hat_max"])
    for kind in ("bulk", "tail"):
        value = d.get(f"ess_{kind}_min")
        row(f"{kind} ESS (min)", value, f"≥ {n_min:.0f} ({t['ess_per_chain_min']:.0f} per chain)",
            None if value is None else value >= n_min)
    row("divergent transitions", d.get("divergences"), f"≤ {t['divergences_max']}",
        d.get("divergences", 0) <= t["divergences_max"])
    e_bfmi = d.get("e_bfmi") or []
    e_min = min((v for v in e_bfmi if v is not None), default=None)
    row("E-BFMI (min over chains)", e_min, f"≥ {t['e_bfmi_min']}", None if e_min is None else e_min >= t["e_bfmi_min"])
    saturation = d.get("tree_depth_saturation")
    row("iterations at the maximum tree depth [%]", None if saturation is None else 100 * saturation,
        f"≤ {100 * t['tree_depth_saturation_max']:g}",
        None if saturation is None else saturation <= t["tree_depth_saturation_max"])
    return rows


def _summary_rows(posterior) -> tuple[list[str], list[list[str]]]:
    """Header and rows (HTML) of `Posterior.summary`: mean, sd, HDI, R-hat, bulk / tail ESS (— where not computed,
    e.g. Laplace); R-hat and ESS past their thresholds in bold red."""
    from .bayes.posterior import THRESHOLDS

    table = posterior.summary()
    hdi = [c for c in table.columns if str(c).startswith("hdi_")]
    columns = ["mean", "sd", *hdi, "r_hat", "ess_bulk", "ess_tail"]
    n_min = THRESHOLDS["ess_per_chain_min"] * posterior.n_chains
    rows = []
    for name, values in table.iterrows():
        cells = [_esc(name)]
        for column in columns:
            value = values.get(column)
            if value is None or not np.isfinite(value):
                cells.append("—")
                continue
            failed = ((column == "r_hat" and posterior.n_chains > 1 and value > THRESHOLDS["r_hat_max"])
                      or (column.startswith("ess_") and value < n_min))
            cells.append(_flag(_number(value, 4), failed))
        rows.append(cells)
    return ["quantity", *[c.replace("_", " ") for c in columns]], rows


def posterior_html(posterior) -> str:
    """Summary of a `cgt_twin.bayes.Posterior`: method, chains × draws, what was sampled (with units), what was held
    fixed and what the Laplace correction carried, the `Posterior.summary` table (mean, sd, HDI, R-hat, bulk / tail
    ESS; spec units) and the diagnostics against `cgt_twin.bayes.THRESHOLDS`, every failed check in bold red."""
    meta = posterior.meta
    ok = posterior.check()
    status = "all diagnostics met their thresholds" if ok else f"{len(posterior.problems)} diagnostic(s) failed"
    seconds = meta.get("seconds")
    timing = f", {seconds:.1f} s" if isinstance(seconds, int | float) and math.isfinite(seconds) else ""
    head = (f"<b>Posterior</b> by {_esc(posterior.method)} — {posterior.n_chains} chain(s) × {posterior.n_draws} "
            f"draws{_esc(timing)}, " + _flag(status, not ok))
    units = meta.get("units", {})
    sampled = ", ".join(f"{p} [{units.get(p, '')}]" for p in posterior.parameters)
    lines = [f"sampled: {sampled or 'none'}"]
    if meta.get("hierarchical"):
        group = f", group effects by {meta['group']}" if meta.get("group") else ""
        lines.append(f"batch effects on {', '.join(meta['hierarchical'])}{group}")
    if "noise_scale" in posterior.samples:
        lines.append(f"noise scale of {', '.join(meta.get('variables', []))}")
    if meta.get("initial_states") and "log_initial" in posterior.samples:
        lines.append(f"initial states {', '.join(meta['initial_states'])} per batch")
    held = posterior.held
    lines.append("held fixed: " + (", ".join(f"{k} = {_number(v)} {units.get(k, '')}".rstrip()
                                              for k, v in held.items()) or "nothing"))
    lines += posterior.correction_lines()
    lines.append(f"{len(meta.get('batches', []))} batches")
    parts = [head, "<br>".join(_esc(line) for line in lines)]
    if meta.get("description"):
        parts.append(f"<small>{_esc(meta['description'])}</small>")
    header, rows = _summary_rows(posterior)
    parts.append(_details(f"summary ({len(rows)} quantities, spec units)", table_html(header, rows, raw=True),
                          open_=True))
    diagnostics = _diagnostic_rows(posterior)
    if diagnostics:
        parts.append(_details("diagnostics and thresholds", table_html(
            ["diagnostic", "value", "threshold", "status"], diagnostics, raw=True), open_=True))
    note = posterior.diagnostics.get("note")
    if note:
        parts.append(_esc(note))
    if posterior.problems:
        parts.append(f'<b style="{_FAILED}">problems</b><ul>'
                     + "".join(f'<li style="{_FAILED}">{_esc(p)}</li>' for p in posterior.problems) + "</ul>")
    return "<div>" + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


# -- the control loop: `cgt_twin.control.mpc.Plan` and `cgt_twin.control.Predictor` ---------------------------------

__all__ += ["plan_html", "predictor_html"]

_STATUS_COLOUR = {"converged": "green", "improving": "darkorange"}


def plan_html(plan) -> str:
    """Summary of a `cgt_twin.control.mpc.Plan`: when it was made, its status (a fallback in bold red, with its
    reason), the objective, the optimiser's evaluations and wall time, the planned boluses (time, volume in mL) and
    the fraction of draws meeting each constraint at every check time, with the widening of the draws' spread and
    their shift for the twin's drift (`MPCConfig.spread_inflation`, `MPCConfig.drift_correction`)."""
    status = str(plan.status)
    if plan.is_fallback:
        shown = f'<span style="{_FAILED}">{_esc(status)}</span>'
    else:
        shown = f'<span style="color:{_STATUS_COLOUR.get(status, "black")}">{_esc(status)}</span>'
    volumes = [float(v) for v in plan.volumes_l]
    total_ml = 1000.0 * sum(volumes)
    head = (f"<b>Plan</b> at {float(plan.time_h):g} h ({float(plan.time_h) / 24:.1f} d) — status {shown}, objective "
            f"{_esc(_number(plan.objective))}, {int(plan.evaluations)} evaluations in "
            f"{1000 * float(plan.seconds):.0f} ms<br>{sum(v > 0 for v in volumes)} boluses of "
            f"<code>{_esc(plan.medium)}</code>, {total_ml:.1f} mL in all; next: "
            + (_esc(f"{1000 * volumes[0]:.1f} mL at {float(plan.decision_times_h[0]):g} h") if volumes
               else "no decision left before the end of the batch"))
    rows = [[f"{float(t):g}", f"{float(t) / 24:.2f}", f"{1000 * v:.1f}"]
            for t, v in zip(plan.decision_times_h, volumes, strict=True)]
    parts = [head]
    if rows:
        parts.append(_details(f"boluses ({len(rows)} decisions)",
                              table_html(["time [h]", "time [d]", "volume [mL]"], rows), open_=len(rows) <= 12))
    inflation = plan.spread_inflation  # constraint names start with their variable ("glucose >= 2")
    drift = plan.drift
    chances = [[name, f"{100 * float(p):.0f} %", f"×{float(inflation[name.split()[0]]) ** 0.5:.2g}"
                if name.split()[0] in inflation else "—",
                f"{24 * float(drift[name.split()[0]]):+.3g} per day" if drift.get(name.split()[0], 0) else "—"]
               for name, p in plan.constraint_probability.items()]
    if chances:
        parts.append(_details("constraints: fraction of draws meeting each at every check time (draws widened and "
                              "shifted by the model error seen in the innovations)",
                              table_html(["constraint", "met in", "draws' spread", "draws' drift"], chances),
                              open_=True))
    else:
        parts.append("no constraints")
    return "<div>" + "".join(f"<div>{p}</div>" for p in parts) + "</div>"


def _state_unit(name: str) -> str:
    from .data.variables import CANONICAL_VARIABLES

    if name == "volume":
        return "L"
    spec = CANONICAL_VARIABLES.get(name)
    return spec.unit if spec is not None else ""


def predictor_html(predictor) -> str:
    """Summary of a `cgt_twin.control.Predictor`: the twin (and artifact folder), particles and where their
    parameters come from, the observed variables, and — once a batch is running — the filter time, the effective
    sample size, the current state estimate (weighted mean ± sd of the particles, canonical units), the parameters
    the particles vary, and the notes the user should know about the belief."""
    settings = predictor.settings
    kinetics = predictor.twin.kinetics
    source = getattr(predictor, "twin_dir", None)
    posterior = predictor.posterior
    belief = (f"posterior by {_esc(posterior.method)} ({posterior.n_chains} × {posterior.n_draws} draws)"
              if posterior is not None else "no posterior (the twin's parameter values)")
    group = f", group {_esc(predictor.group)}" if predictor.group else ""
    head = (f"<b>Predictor</b> {_esc(type(kinetics).__name__)}"
            + (f" from <code>{_esc(source)}</code>" if source else "")
            + f" — {settings.n_particles} particles, {belief}{group}<br>observes "
            + _esc(", ".join(predictor.variables)))
    try:
        time_h = float(predictor.time_h)
    except RuntimeError:
        time_h = None
    parts = [head]
    if time_h is None:
        parts.append("no running batch yet: call <code>start</code> or <code>start_from_campaign</code>")
    else:
        ess = float(predictor.ess)
        low = ess < settings.resample_below * settings.n_particles
        groups = getattr(predictor, "_groups", None)
        assimilated = f"; {len(groups)} measurement times assimilated" if groups is not None else ""
        parts.append(f"filter at {time_h:g} h ({time_h / 24:.2f} d); ESS "
                     + _flag(f"{ess:.0f} of {settings.n_particles}", low) + _esc(assimilated))
        y, params, weights = predictor.particles()
        names = kinetics.layout.names
        mean = weights @ y
        sd = np.sqrt(np.maximum(weights @ (y - mean) ** 2, 0.0))
        rows = [[name, _number(m), _number(s, 2), _state_unit(name)]
                for name, m, s in zip(names, mean, sd, strict=True)]
        parts.append(_details(f"state estimate at {time_h:g} h (weighted over the particles)",
                              table_html(["state", "mean", "sd", "unit"], rows), open_=True))
        varying = sorted(k for k, v in params.items() if np.ptp(np.asarray(v)) > 0)
        if varying:
            specs = {p.name: p for p in kinetics.parameters}
            prow = []
            for name in varying:
                values = np.asarray(params[name], dtype=np.float64)
                m = float(weights @ values)
                s = float(np.sqrt(max(weights @ (values - m) ** 2, 0.0)))
                prow.append([name, _number(m), _number(s, 2), specs[name].unit if name in specs else ""])
            parts.append(_details(f"parameters the particles vary ({len(varying)})",
                                  table_html(["parameter", "mean", "sd", "unit"], prow)))
    q_low, q_high = settings.quantiles
    parts.append(_details("settings", table_html(["setting", "value"], [
        ["forecast horizon, step [h]", f"{settings.horizon_h:g}, {settings.step_h:g}"],
        ["band quantiles", f"{q_low:g}, {q_high:g}"],
        ["resample below ESS fraction", f"{settings.resample_below:g}"],
        ["state jitter, initial spread (log-sd)", f"{settings.state_jitter:g}, {settings.initial_spread:g}"],
        ["parameter shrinkage (Liu–West a)", f"{settings.shrinkage:g}"],
        ["compile time [s]", f"{float(getattr(predictor, 'compile_seconds', 0.0)):.1f}"],
    ])))
    if predictor.notes:
        parts.append(_details(f"notes ({len(predictor.notes)})",
                              "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in predictor.notes) + "</ul>",
                              open_=True))
    return "<div>" + "".join(f"<div>{p}</div>" for p in parts) + "</div>"
