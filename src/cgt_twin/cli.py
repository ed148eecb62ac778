"""The ``cgt-twin`` command (for calibration scripts); each verb mirrors a Python function.

Exit codes: 0 success, 2 bad input (every problem listed, no traceback), 1 internal failure.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from .data.errors import CampaignValidationError

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
    from .data.folder import write_tables
    from .data.importers import IMPORTERS, import_tables
    from .data.build import campaign_from_tables

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
        from .simulate import simulate as run, trajectory_to_long

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


@app.command()
def demo(out_dir: Annotated[Path, typer.Option("--out", help="folder for the demo's outputs")] = Path("demo_out"),
         data: Annotated[Path | None, typer.Option(help="campaign folder to use instead of the default")] = None
         ) -> None:
    """Load a campaign (the UMN CHO runs from ../shared when present, else the bundled example), print its summary
    and plot its trajectories."""
    from .demo import run_demo

    _run(lambda: run_demo(out_dir, data, console=out))


def main() -> None:
    """Entry point of the ``cgt-twin`` script."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
