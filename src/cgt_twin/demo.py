"""The demo behind ``make demo`` / ``cgt-twin demo``: load a real campaign, summarise it and plot it.

Data: the UMN CHO fed-batch workbook from ``../shared/datasets`` when it is there (imported with the CDPpy importer),
otherwise the synthetic CHO campaign bundled in ``datasets/cho_fedbatch_synthetic``. Later capabilities (calibration, uncertainty, feeding)
join the demo as they land.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console

from .data.campaign import Campaign
from .data.folder import read_campaign, write_campaign
from .plot import plot_campaign, save_figure

__all__ = ["run_demo", "find_shared_datasets", "bundled_datasets"]

UMN_WORKBOOK = Path("umn_cho_fedbatch") / "fedbatch_9runs_3cell_lines.xlsx"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def find_shared_datasets() -> Path | None:
    """The shared real-data folder: ``$CGT_TWIN_SHARED_DATASETS``, else ``../shared/datasets`` beside the repository
    or the working directory; None if absent."""
    candidates = [os.environ.get("CGT_TWIN_SHARED_DATASETS"), _repo_root().parent / "shared" / "datasets",
                  Path.cwd().parent / "shared" / "datasets"]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def bundled_datasets() -> Path:
    """The repository's own ``datasets/`` folder (generated example campaigns)."""
    for candidate in (_repo_root() / "datasets", Path.cwd() / "datasets"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the bundled datasets/ folder was not found (run from the repository root)")


def _load(data: Path | None, console: Console) -> Campaign:
    if data is not None:
        return read_campaign(data)
    shared = find_shared_datasets()
    if shared is not None and (shared / UMN_WORKBOOK).is_file():
        from .data.importers import import_campaign

        console.print(f"Using the real UMN CHO fed-batch runs: {shared / UMN_WORKBOOK}", markup=False)
        return import_campaign("cdppy", shared / UMN_WORKBOOK)
    folder = bundled_datasets() / "cho_fedbatch_synthetic"
    console.print(f"../shared/datasets not found; using the bundled example campaign {folder} (synthetic, made by "
                  "datasets/make_demo_campaigns.py)", markup=False)
    return read_campaign(folder)


def run_demo(out_dir: str | os.PathLike = "demo_out", data: str | os.PathLike | None = None,
             console: Console | None = None) -> dict[str, Path]:
    """Runs the demo and returns the paths it wrote (campaign folder, summary, plot)."""
    console = console or Console()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    campaign = _load(Path(data) if data is not None else None, console)
    summary = str(campaign.summary())
    console.print(summary, markup=False)
    paths = {"summary": out / "summary.txt", "plot": out / "campaign.png", "campaign": out / "campaign"}
    paths["summary"].write_text(summary + "\n", encoding="utf-8")
    write_campaign(campaign, paths["campaign"], overwrite=True)
    save_figure(plot_campaign(campaign), paths["plot"])
    console.print(f"wrote {paths['summary']}, {paths['plot']} and the campaign folder {paths['campaign']}",
                  markup=False)
    return paths
