"""The ``cgt-twin`` command (for calibration scripts); each verb mirrors a Python function.

Exit codes: 0 success, 2 bad input (every problem listed, no traceback), 1 internal failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .data.errors import CampaignValidationError, Problem

app = typer.Typer(name="cgt-twin", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Digital twins of cell and gene therapy and biologics manufacturing.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


def _fail_bad_input(error: CampaignValidationError) -> None:
    head = str(error).splitlines()[0]
    err.print(f"[bold red]invalid input[/]: {escape(head)}", markup=True)
    for problem in error.problems:
        err.print(f"  - {problem}", markup=False)
    raise typer.Exit(EXIT_BAD_INPUT)


def _run(action):
    """Runs a command body: bad input -> exit 2 with the problems, anything unexpected -> exit 1 with one line."""
    try:
        return action()
    except typer.Exit:
        raise
    except CampaignValidationError as error:
        _fail_bad_input(error)
    except FileExistsError as error:
        err.print(f"[bold red]refused[/]: {escape(str(error))}", markup=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as error:  # an internal failure: one line, the traceback only on request
        if os.environ.get("CGT_TWIN_DEBUG"):
            raise
        err.print(f"[bold red]internal error[/] ({type(error).__name__}): {escape(str(error))}\n"
                  "Set CGT_TWIN_DEBUG=1 for the traceback and please report it.", markup=True)
        raise typer.Exit(EXIT_INTERNAL) from None


@app.command()
def validate(folder: Annotated[Path, typer.Argument(help="campaign folder")]) -> None:
    """Check a campaign folder; print a short summary, or every problem found (exit code 2)."""
    from .data.folder import read_campaign

    def body():
        campaign = read_campaign(folder)
        s = campaign.summary()
        out.print(f"[green]valid[/]: {s.n_batches} batches, {len(s.variables)} variables, "
                  f"{s.time_span_h[0]:g}–{s.time_span_h[1]:g} h, "
                  f"{sum(s.events.values())} events ({', '.join(f'{k} ×{n}' for k, n in s.events.items()) or 'none'})",
                  markup=True)
        if s.feeds_unknown:
            out.print("feeds not recorded for: " + ", ".join(s.feeds_unknown), markup=False)

    _run(body)


@app.command()
def summary(folder: Annotated[Path, typer.Argument(help="campaign folder")],
            as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False) -> None:
    """Describe a campaign: batches, variables with units and counts, time span, events, import notes."""
    from .data.folder import read_campaign

    def body():
        s = read_campaign(folder).summary()
        if as_json:
            out.print_json(json.dumps(s.to_dict()))
        else:
            out.print(str(s), markup=False)

    _run(body)


@app.command("import")
def import_(format: Annotated[str, typer.Argument(help="source format: cdppy | hek293-zehetner | clonalyzer")],
            source: Annotated[Path, typer.Argument(help="source file or folder")],
            out_dir: Annotated[Path, typer.Option("--out", help="campaign folder to write")],
            overwrite: Annotated[bool, typer.Option(help="replace an existing output folder")] = False) -> None:
    """Import a real data format into a campaign folder (checked before anything is written)."""
    from .data.build import campaign_from_tables
    from .data.folder import write_tables
    from .data.importers import IMPORTERS, import_tables

    def body():
        if format not in IMPORTERS:
            err.print(f"[bold red]invalid input[/]: unknown format {escape(repr(format))}; known: "
                      f"{', '.join(IMPORTERS)}",
                      markup=True)
            raise typer.Exit(EXIT_BAD_INPUT)
        tables = import_tables(format, source)
        campaign = campaign_from_tables(tables)  # nothing is written unless the import is valid
        write_tables(campaign.to_tables(), out_dir, overwrite=overwrite)
        s = campaign.summary()
        out.print(f"[green]imported[/] {s.n_batches} batches, {len(s.variables)} variables -> "
                  f"{escape(str(out_dir))}", markup=True)
        for note in s.notes:
            out.print(f"  note: {note}", markup=False)

    _run(body)


def _parse_options(options: list[str]) -> dict[str, object]:
    """``key`` or ``key=value`` pairs: true/false/yes/no/on/off are booleans, numbers are numbers, the rest text."""
    parsed: dict[str, object] = {}
    for item in options:
        key, sep, value = item.partition("=")
        text = value.strip()
        if not sep:
            parsed[key.strip()] = True
        elif text.lower() in ("true", "yes", "on"):
            parsed[key.strip()] = True
        elif text.lower() in ("false", "no", "off"):
            parsed[key.strip()] = False
        else:
            try:
                parsed[key.strip()] = int(text)
            except ValueError:
                try:
                    parsed[key.strip()] = float(text)
                except ValueError:
                    parsed[key.strip()] = text
    return parsed


@app.command()
def simulate(folder: Annotated[Path, typer.Argument(help="campaign folder")],
             model: Annotated[str, typer.Option(help="cho | hek293 | hek293-lv | tcell")],
             out_file: Annotated[Path, typer.Option("--out", help="long CSV to write")],
             params: Annotated[Path | None, typer.Option(help="JSON of parameter values")] = None,
             option: Annotated[list[str], typer.Option(help="model option, e.g. lactate_consumption=true")] = [],  # noqa: B006
             grid_h: Annotated[float, typer.Option(help="regular output grid step, h (0: measurement times only)")]
             = 6.0,
             overwrite: Annotated[bool, typer.Option(help="replace an existing output file")] = False) -> None:
    """Simulate every batch's protocol from its initial state; write batch,time_h,variable,value,unit,phase."""

    def body():
        import numpy as np

        from .data.folder import read_campaign
        from .models.parameters import read_parameter_file
        from .models.registry import make_kinetics
        from .models.twin import Twin
        from .simulate import simulate as run
        from .simulate import trajectory_to_long

        if out_file.exists() and not overwrite:
            raise FileExistsError(f"{out_file} exists; pass --overwrite to replace it")
        campaign = read_campaign(folder)
        kinetics = make_kinetics(model, _parse_options(option))
        values = read_parameter_file(params, kinetics.parameters) if params is not None else None
        times = campaign.times
        if grid_h > 0:
            times = np.union1d(times, np.arange(0.0, times.max() + 1e-9, grid_h))
        with warnings.catch_warnings():  # skipped batches are reported below, once
            warnings.simplefilter("ignore", UserWarning)
            trajectory = run(Twin(kinetics, values), campaign, times)
        skipped = json.loads(trajectory.attrs.get("skipped", "{}"))
        for batch, why in skipped.items():
            err.print(f"skipped batch {batch}: {why}", markup=False)
        failed = {str(b): str(s) for b, s in zip(trajectory["batch"].values, trajectory["status"].values,
                                                 strict=True) if s != "ok"}
        for batch, why in failed.items():
            err.print(f"[yellow]solver failed[/] for batch {escape(batch)}: {why} (values NaN from the failure on)",
                      markup=True)
        table = trajectory_to_long(trajectory)
        tmp = out_file.with_name(f".{out_file.name}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, out_file)
        out.print(f"[green]simulated[/] {trajectory.sizes['batch']} batches with {type(kinetics).__name__} "
                  f"({len(table)} rows) -> {escape(str(out_file))}", markup=True)

    _run(body)


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(b.strip() for b in text.split(",") if b.strip()) if text else ()


@app.command()
def fit(folder: Annotated[Path, typer.Argument(help="campaign folder")],
        model: Annotated[str, typer.Option(help="cho | hek293 | hek293-lv | tcell")],
        out_dir: Annotated[Path, typer.Option("--out", help="twin artifact folder to write")],
        hybrid: Annotated[bool, typer.Option("--hybrid", help="add and train a neural residual")] = False,
        holdout: Annotated[str | None, typer.Option(help="batches left out of the fit, comma-separated")] = None,
        config: Annotated[Path | None, typer.Option(help="fit.toml (tables mechanistic, residual, training)")]
        = None,
        option: Annotated[list[str], typer.Option(help="model option, e.g. lactate_consumption=true")] = [],  # noqa: B006
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        overwrite: Annotated[bool, typer.Option(help="replace an existing artifact")] = False) -> None:
    """Calibrate a twin on a campaign and save it as an artifact (mechanistic fit, then the residual if --hybrid)."""

    def body():
        from .data.folder import read_campaign
        from .fit.calibrate import calibrate, read_calibration_config
        from .hybrid import DEFAULT_RESIDUALS
        from .io import append_provenance, campaign_hash, save_twin
        from .models.registry import make_kinetics
        from .models.twin import Twin

        if out_dir.exists() and not overwrite:
            raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
        campaign = read_campaign(folder)
        kinetics = make_kinetics(model, _parse_options(option))
        default = DEFAULT_RESIDUALS.get(kinetics.cell_type) if hybrid else None
        settings = read_calibration_config(config, holdout=_split(holdout), hybrid_default=default)
        if not hybrid:
            settings = dataclasses.replace(settings, residual=None)
        result = calibrate(Twin(kinetics), campaign, settings, seed=seed)
        data_hash = campaign_hash(campaign)
        fit_settings = {"model": model, "options": _parse_options(option), "hybrid": hybrid,
                        "holdout": list(_split(holdout)), "seed": seed, "config": str(config) if config else None,
                        **result.settings()}
        save_twin(result.twin, out_dir, overwrite=overwrite, data_hash=data_hash, fit_settings=fit_settings)
        append_provenance(out_dir, "fit " + " ".join(sys.argv[1:]), status=result.mechanistic.status,
                          data_hash=data_hash, seed=seed, details=result.settings())
        out.print(f"[green]fitted[/] {len(result.mechanistic.batches)} batches -> {escape(str(out_dir))} "
                  f"(mechanistic: {escape(result.mechanistic.status)}"
                  + (f"; residual: {escape(result.training.stopped)}" if result.training else "") + ")", markup=True)
        if result.mechanistic.not_identifiable:
            out.print("parameters the data do not pin down (log standard error > 1): "
                      + ", ".join(result.mechanistic.not_identifiable), markup=False)

    _run(body)


INITIAL_STATES_HELP = ("where the fitted batches of a mechanistic twin start: fit (the initial states the fit "
                       "estimated, stored in the artifact, on the campaign it was fitted on) or data (their first "
                       "samples); other batches, and every batch of a hybrid twin, start from their first samples")


def _initial_states(twin_dir: Path, campaign, which: str) -> dict[str, dict[str, float]]:
    """The initial states to start the campaign's batches from (`cgt_twin.io.load_fitted_initial_states` for
    ``which="fit"``, none for ``"data"``), and a line saying which batches start from the fit's."""
    from .io import load_fitted_initial_states

    if which not in ("fit", "data"):
        raise CampaignValidationError(Problem("--initial-states", f"must be 'fit' or 'data', got {which!r}"))
    states = load_fitted_initial_states(twin_dir, campaign) if which == "fit" else {}
    if states:
        out.print(f"initial states of {', '.join(sorted(states))} at the fit's values", markup=False)
    return states


@app.command()
def predict(twin_dir: Annotated[Path, typer.Argument(help="twin artifact folder")],
            folder: Annotated[Path, typer.Argument(help="campaign folder")],
            out_file: Annotated[Path, typer.Option("--out", help="long CSV to write")],
            batches: Annotated[str | None, typer.Option(help="only these batches, comma-separated")] = None,
            overwrite: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
            no_posterior: Annotated[bool, typer.Option("--no-posterior", help="ignore a posterior stored in the "
                                                       "artifact (bands from the noise model only)")] = False,
            band: Annotated[str, typer.Option(help="with a posterior: measurement | parameter")] = "measurement",
            seed: Annotated[int, typer.Option(help="random seed of the posterior predictive")] = 0,
            no_ensemble: Annotated[bool, typer.Option("--no-ensemble", help="ignore a residual ensemble stored in "
                                                      "the artifact (the network at its fitted weights)")] = False,
            initial_states: Annotated[str, typer.Option(help=INITIAL_STATES_HELP)] = "fit",
            ) -> None:
    """Open-loop prediction of each batch from its initial state and protocol:
    batch,time_h,variable,mean,q05,q95,unit,phase (posterior predictive when the artifact holds a posterior; the
    residual ensemble's spread when it holds one). On the campaign a mechanistic twin was fitted on, the fitted
    batches start from the fit's initial states (see --initial-states)."""

    def body():
        from .data.folder import read_campaign
        from .io import append_provenance, campaign_hash, load_ensemble, load_posterior, load_twin
        from .predict import predict as run
        from .predict import prediction_to_long

        if out_file.exists() and not overwrite:
            raise FileExistsError(f"{out_file} exists; pass --overwrite to replace it")
        twin = load_twin(twin_dir)
        posterior = None if no_posterior else load_posterior(twin_dir)
        ensemble = None if no_ensemble else load_ensemble(twin_dir)
        campaign = read_campaign(folder)
        start = _initial_states(twin_dir, campaign, initial_states)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            prediction = run(twin, campaign, batches=_split(batches) or None, posterior=posterior, band=band,
                             seed=seed, ensemble=ensemble, initial_states=start or None)
        if posterior is not None:
            out.print(f"posterior predictive ({posterior.method}, {prediction.attrs['n_draws']} draws, {band} band)",
                      markup=False)
        if ensemble is not None:
            out.print(f"neural residual: ensemble of {ensemble.n_members} members", markup=False)
        for batch, why in json.loads(prediction.attrs.get("skipped", "{}")).items():
            err.print(f"skipped batch {batch}: {why}", markup=False)
        table = prediction_to_long(prediction)
        tmp = out_file.with_name(f".{out_file.name}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, out_file)
        append_provenance(twin_dir, "predict " + " ".join(sys.argv[1:]), status="ok",
                          data_hash=campaign_hash(campaign),
                          details={"initial_states": "the fit's" if start else "the data's"})
        out.print(f"[green]predicted[/] {prediction.sizes['batch']} batches ({len(table)} rows) -> "
                  f"{escape(str(out_file))}", markup=True)

    _run(body)


@app.command()
def report(twin_dir: Annotated[Path, typer.Argument(help="twin artifact folder")],
           folder: Annotated[Path, typer.Argument(help="campaign folder")],
           out_dir: Annotated[Path, typer.Option("--out", help="folder for metrics and plots")],
           no_posterior: Annotated[bool, typer.Option("--no-posterior", help="ignore a posterior stored in the "
                                                      "artifact")] = False,
           no_ensemble: Annotated[bool, typer.Option("--no-ensemble", help="ignore a residual ensemble stored in "
                                                     "the artifact")] = False,
           initial_states: Annotated[str, typer.Option(help=INITIAL_STATES_HELP)] = "fit") -> None:
    """Metrics (NRMSE per batch and variable) and plots (data over predicted bands, parity) of a twin on a
    campaign (posterior predictive bands when the artifact holds a posterior, with the residual ensemble's spread when
    it holds one). On the campaign a mechanistic twin was fitted on, the fitted batches start from the fit's initial
    states (see --initial-states)."""

    def body():
        from .data.folder import read_campaign
        from .io import load_ensemble, load_posterior, load_twin
        from .predict import predict as run
        from .report import write_report

        twin = load_twin(twin_dir)
        posterior = None if no_posterior else load_posterior(twin_dir)
        ensemble = None if no_ensemble else load_ensemble(twin_dir)
        campaign = read_campaign(folder)
        start = _initial_states(twin_dir, campaign, initial_states)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            prediction = run(twin, campaign, posterior=posterior, ensemble=ensemble, initial_states=start or None)
        paths = write_report(campaign, prediction, out_dir, title=f"{twin_dir.name} on {folder.name}")
        out.print(f"[green]report[/] -> {escape(str(paths['report']))}", markup=True)

    _run(body)


def _inherited_fit_settings(source: dict, data_hash: str, **added) -> dict:
    """The input artifact's ``fit_settings`` for an artifact derived from it on a campaign of hash `data_hash`, with
    `added`; the fit's initial states only when that campaign is the one they were fitted on (they belong to its
    batches, and the new artifact records the new campaign's hash)."""
    settings = dict(source.get("fit_settings", {}))
    if source.get("data_hash") != data_hash:
        settings.pop("initial_states", None)
    return {**settings, **added}


@app.command()
def sample(twin_dir: Annotated[Path, typer.Argument(help="twin artifact folder (left untouched)")],
           folder: Annotated[Path, typer.Argument(help="campaign folder")],
           out_dir: Annotated[Path, typer.Option("--out", help="new twin artifact folder holding the posterior")],
           config: Annotated[Path | None, typer.Option(help="bayes.toml: method, forward_mode, model and sampler "
                                                          "tables")] = None,
           seed: Annotated[int | None, typer.Option(help="random seed (overrides the config's)")] = None,
           overwrite: Annotated[bool, typer.Option(help="replace an existing output artifact")] = False,
           initial_states: Annotated[str, typer.Option(help=INITIAL_STATES_HELP)] = "fit") -> None:
    """Sample the posterior of a twin on a campaign (NUTS or Laplace) and write a new artifact with it; print what
    was sampled, what was held fixed and the diagnostics. On the campaign a mechanistic twin was fitted on, each
    batch's initial states are held at the fit's values (stored by `cgt-twin fit`), elsewhere (and for a hybrid
    twin, whose network was trained from the measured starts) at the first samples."""

    def body():
        from .bayes import PosteriorWarning, host_devices_for_chains
        from .bayes import sample as run
        from .bayes.config import read_bayes_config
        from .data.folder import read_campaign
        from .io import append_provenance, campaign_hash, load_ensemble, load_twin, save_twin

        if out_dir.exists() and not overwrite:
            raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
        if out_dir.resolve() == twin_dir.resolve():
            raise FileExistsError(f"{out_dir} is the input artifact; sample writes a new one")
        settings = read_bayes_config(config, seed=seed)
        if settings.method == "nuts" and settings.sampler.chain_method == "parallel":
            host_devices_for_chains(settings.sampler.chains)  # before anything starts JAX's backend
        twin = load_twin(twin_dir)
        ensemble = load_ensemble(twin_dir)  # a residual ensemble of the input is carried over
        source = json.loads((twin_dir / "twin.json").read_text(encoding="utf-8"))
        campaign = read_campaign(folder)
        data_hash = campaign_hash(campaign)
        start = _initial_states(twin_dir, campaign, initial_states)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("always", PosteriorWarning)
            with warnings.catch_warnings(record=True):
                posterior = run(twin, campaign, settings.model, settings.sampler, method=settings.method,
                                forward_mode=settings.forward_mode, initial_states=start or None)
        details = {"input_artifact": str(twin_dir), "input_content_hash": source.get("content_hash"),
                   "method": posterior.method, "sampled": list(posterior.parameters),
                   "held": sorted(posterior.held), "carried": sorted(posterior.carried),
                   "initial_states": "the fit's" if start else "the data's",
                   "problems": list(posterior.problems)}
        save_twin(twin, out_dir, overwrite=overwrite, data_hash=data_hash,
                  fit_settings=_inherited_fit_settings(source, data_hash, sample=details),
                  metadata=source.get("metadata", {}), posterior=posterior, ensemble=ensemble)
        append_provenance(out_dir, "sample " + " ".join(sys.argv[1:]),
                          status="ok" if posterior.check() else "diagnostics failed", data_hash=data_hash,
                          seed=settings.sampler.seed, details=details)
        out.print(f"[green]sampled[/] -> {escape(str(out_dir))}", markup=True)
        out.print(posterior.report(), markup=False)
        if posterior.problems:
            err.print("[bold yellow]warning[/]: diagnostics failed — " + escape("; ".join(posterior.problems)),
                      markup=True)

    _run(body)


@app.command()
def ensemble(twin_dir: Annotated[Path, typer.Argument(help="hybrid twin artifact folder (left untouched)")],
             folder: Annotated[Path, typer.Argument(help="campaign folder (the training data)")],
             out_dir: Annotated[Path, typer.Option("--out", help="new twin artifact folder holding the ensemble")],
             members: Annotated[int, typer.Option(help="number of members K (at least 2)")] = 5,
             config: Annotated[Path | None, typer.Option(help="fit.toml: its [training] table (TrainConfig fields) "
                                                            "sets how each member trains")] = None,
             steps: Annotated[int | None, typer.Option(help="training steps per member (overrides the config)")]
             = None,
             holdout: Annotated[str | None, typer.Option(help="batches left out, comma-separated (default: the "
                                                              "fit's holdout recorded in the artifact)")] = None,
             no_bootstrap: Annotated[bool, typer.Option("--no-bootstrap", help="every member sees every batch "
                                                        "(members differ by their initial weights only)")] = False,
             seed: Annotated[int, typer.Option(help="random seed of the members' weights and resamples")] = 0,
             overwrite: Annotated[bool, typer.Option(help="replace an existing output artifact")] = False) -> None:
    """Train a deep ensemble of a hybrid twin's neural residual (K networks, each from its own seed on a bootstrap
    resample of the batches, the mechanism frozen) and write a new artifact with it; `predict` and `report` then
    include the residual's uncertainty (a posterior of the input is carried over)."""

    def body():
        from .bayes.ensemble import train_ensemble
        from .data.folder import read_campaign
        from .fit.calibrate import read_calibration_config
        from .io import append_provenance, campaign_hash, load_posterior, load_twin, save_twin

        if out_dir.exists() and not overwrite:
            raise FileExistsError(f"{out_dir} exists; pass --overwrite to replace it")
        if out_dir.resolve() == twin_dir.resolve():
            raise FileExistsError(f"{out_dir} is the input artifact; ensemble writes a new one")
        training = read_calibration_config(config).training
        if steps is not None:
            training = dataclasses.replace(training, steps=steps)
        twin = load_twin(twin_dir)
        posterior = load_posterior(twin_dir)
        source = json.loads((twin_dir / "twin.json").read_text(encoding="utf-8"))
        campaign = read_campaign(folder)
        left_out = _split(holdout) if holdout is not None else tuple(source.get("fit_settings", {}).get("holdout")
                                                                      or ())
        left_out = tuple(b for b in left_out if b in campaign.batches)
        training_campaign = campaign.drop(left_out) if left_out else campaign
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            result = train_ensemble(twin, training_campaign, members, training, seed=seed,
                                    bootstrap=not no_bootstrap, progress=sys.stderr.isatty())
        data_hash = campaign_hash(campaign)
        details = {"input_artifact": str(twin_dir), "input_content_hash": source.get("content_hash"),
                   "members": result.n_members, "seeds": list(result.seeds), "bootstrap": not no_bootstrap,
                   "holdout": list(left_out), "steps": training.steps}
        save_twin(twin, out_dir, overwrite=overwrite, data_hash=data_hash,
                  fit_settings=_inherited_fit_settings(source, data_hash, ensemble=details),
                  metadata=source.get("metadata", {}), posterior=posterior, ensemble=result)
        append_provenance(out_dir, "ensemble " + " ".join(sys.argv[1:]), status="ok", data_hash=data_hash,
                          seed=seed, details=details)
        out.print(f"[green]trained[/] an ensemble of {result.n_members} residuals -> {escape(str(out_dir))}",
                  markup=True)
        out.print(result.summary(), markup=False)

    _run(body)


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="folder for the demo's outputs")] = Path("demo_out"),
         data: Annotated[Path | None, typer.Option(help="campaign folder to use instead of the default")] = None,
         calibrate: Annotated[bool, typer.Option(help="calibrate a hybrid twin and report a held-out batch")] = True,
         steps: Annotated[int, typer.Option(help="training steps of the neural residual")] = 100) -> None:
    """Load a campaign (the UMN CHO runs from ../shared when present, else the bundled synthetic one), summarise and
    plot it, calibrate a hybrid CHO twin on all batches but one, predict that one and write the report."""
    from .demo import run_demo

    _run(lambda: run_demo(out_dir, data, console=out, calibrate=calibrate, training_steps=steps))


@app.command()
def crossval(folder: Annotated[Path, typer.Argument(help="campaign folder")],
             model: Annotated[str, typer.Option(help="cho | hek293 | hek293-lv | tcell")],
             out_dir: Annotated[Path, typer.Option("--out", help="folder for metrics.csv and summary.csv")],
             scheme: Annotated[str, typer.Option(help="lobo | logo | kfold")] = "lobo",
             by: Annotated[str | None, typer.Option(help="batch covariate for logo, e.g. cell_line")] = None,
             k: Annotated[int | None, typer.Option(help="number of folds for kfold")] = None,
             hybrid: Annotated[bool, typer.Option("--hybrid", help="add and train a neural residual")] = False,
             config: Annotated[Path | None, typer.Option(help="fit.toml (tables mechanistic, residual, training)")]
             = None,
             option: Annotated[list[str], typer.Option(help="model option, e.g. lactate_consumption=true")] = [],  # noqa: B006
             seed: Annotated[int, typer.Option(help="random seed (k-fold shuffling and fits)")] = 0) -> None:
    """Cross-validate a calibration recipe by batch: calibrate on each fold's training batches, predict the held-out
    batches open loop, and write per-batch metrics (metrics.csv) and their mean per variable (summary.csv)."""

    def body():
        from .data.folder import read_campaign
        from .fit.calibrate import read_calibration_config
        from .fit.crossval import cross_validate, make_folds
        from .hybrid import DEFAULT_RESIDUALS
        from .models.registry import make_kinetics
        from .models.twin import Twin

        campaign = read_campaign(folder)
        kinetics = make_kinetics(model, _parse_options(option))
        folds = make_folds(campaign, scheme, by=by, k=k, seed=seed)
        default = DEFAULT_RESIDUALS.get(kinetics.cell_type) if hybrid else None
        settings = read_calibration_config(config, hybrid_default=default)
        if not hybrid:
            settings = dataclasses.replace(settings, residual=None)
        settings = dataclasses.replace(settings, mechanistic=dataclasses.replace(settings.mechanistic, seed=seed))
        result = cross_validate(Twin(kinetics), campaign, settings, folds)
        out_dir.mkdir(parents=True, exist_ok=True)
        result.metrics.to_csv(out_dir / "metrics.csv", index=False)
        summary = result.summary()
        summary.to_csv(out_dir / "summary.csv")
        out.print(f"{len(folds)} folds ({scheme}); mean normalised RMSE of held-out batches:", markup=False)
        for variable, row in summary.iterrows():
            out.print(f"  {variable}: {row['nrmse']:.3f}", markup=False)
        out.print(f"wrote {out_dir / 'metrics.csv'} and {out_dir / 'summary.csv'}", markup=False)

    _run(body)


@app.command()
def mpc(twin_dir: Annotated[Path, typer.Argument(help="twin artifact folder")],
        folder: Annotated[Path, typer.Argument(help="running campaign folder: the batch's data and events so far")],
        batch: Annotated[str, typer.Option(help="the running batch")],
        out_file: Annotated[Path, typer.Option("--out", help="plan CSV to write (events.csv format)")],
        config: Annotated[Path | None, typer.Option(help="TOML file with an [mpc] table (MPCConfig fields)")] = None,
        particles: Annotated[int, typer.Option(help="particles of the state estimate")] = 256,
        calls: Annotated[int, typer.Option(help="controller iterations at most (stops when converged)")] = 30,
        no_posterior: Annotated[bool, typer.Option("--no-posterior", help="ignore a stored posterior")] = False,
        overwrite: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
        seed: Annotated[int, typer.Option(help="random seed of the filter and the draw selection")] = 0) -> None:
    """Plan the next bolus feeds of a running batch by MPC: filter its measurements so far, optimise the boluses
    against posterior draws with chance constraints, write the planned events (events.csv format)."""

    def body():
        from .control import Predictor
        from .control.mpc import FeedingController, MPCConfig
        from .data.folder import read_campaign
        from .io import append_provenance, campaign_hash

        if out_file.exists() and not overwrite:
            raise FileExistsError(f"{out_file} exists; pass --overwrite to replace it")
        settings = MPCConfig.from_toml(config) if config is not None else MPCConfig()
        settings = dataclasses.replace(settings, seed=seed)
        campaign = read_campaign(folder)
        predictor = Predictor.load(twin_dir, use_posterior=not no_posterior, n_particles=particles, seed=seed)
        report = predictor.start_from_campaign(campaign, batch)
        for rejection in report.rejected:
            err.print(f"measurement not used: {rejection.variable} at {rejection.time_h:g} h: {rejection.reason}",
                      markup=False)
        controller = FeedingController(predictor.twin, settings)
        controller.warm_up(predictor)  # compile first: the calls' budgets are for optimising
        plan = None
        for _ in range(max(calls, 1)):
            plan = controller.step(predictor)
            if plan.status == "converged" or plan.is_fallback:
                break
        tmp = out_file.with_name(f".{out_file.name}.tmp")
        plan.write_csv(tmp, batch=batch)
        os.replace(tmp, out_file)
        append_provenance(twin_dir, "mpc " + " ".join(sys.argv[1:]), status=plan.status,
                          data_hash=campaign_hash(campaign), seed=seed)
        out.print(str(plan), markup=False)
        for note in predictor.notes:
            out.print(f"note: {note}", markup=False)
        out.print(f"[green]planned[/] {len(plan.events)} boluses -> {escape(str(out_file))}", markup=True)

    _run(body)


def _use_compilation_cache() -> None:
    """Keeps compiled programs between runs of the script (JAX's persistent cache, in ``~/.cache/cgt_twin/xla``
    unless ``JAX_COMPILATION_CACHE_DIR`` says otherwise): a calibration script then compiles each model once."""
    import jax

    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cgt_twin" / "xla"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return  # a read-only home: compile every run
        jax.config.update("jax_compilation_cache_dir", str(folder))


def main() -> None:
    """Entry point of the ``cgt-twin`` script."""
    _use_compilation_cache()
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
