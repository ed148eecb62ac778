"""The ``cgt-twin`` command (for calibration scripts); each verb mirrors a Python function.

Exit codes: 0 success, 2 bad input (every problem listed, no traceback), 1 internal failure.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .data.errors import CampaignValidationError

app = typer.Typer(name="cgt-twin", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Digital twins of cell and gene therapy and biologics manufacturing.")
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


def _fail_bad_input(error: CampaignValidationError) -> None:
    head = str(error).splitlines()[0]
    err.print(f"[bold red]invalid input[/]: {head}", markup=True)
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
        err.print(f"[bold red]refused[/]: {error}", markup=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except Exception as error:  # an internal failure: one line, the traceback only on request
        if os.environ.get("CGT_TWIN_DEBUG"):
            raise
        err.print(f"[bold red]internal error[/] ({type(error).__name__}): {error}\n"
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
            err.print(f"[bold red]invalid input[/]: unknown format {format!r}; known: {', '.join(IMPORTERS)}",
                      markup=True)
            raise typer.Exit(EXIT_BAD_INPUT)
        tables = import_tables(format, source)
        campaign = campaign_from_tables(tables)  # nothing is written unless the import is valid
        write_tables(campaign.to_tables(), out_dir, overwrite=overwrite)
        s = campaign.summary()
        out.print(f"[green]imported[/] {s.n_batches} batches, {len(s.variables)} variables -> {out_dir}", markup=True)
        for note in s.notes:
            out.print(f"  note: {note}", markup=False)

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
