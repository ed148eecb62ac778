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
             console: Console | None = None, calibrate: bool = True, training_steps: int = 100) -> dict[str, Path]:
    """Runs the demo and returns the paths it wrote (campaign folder, summary, plot; with `calibrate`, the twin
    artifact and the validation report of a held-out batch)."""
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
    if calibrate and set(campaign.batch_metadata()["cell_type"]) == {"cho"}:
        paths.update(_calibrate(campaign, out, console, training_steps))
    return paths


def _calibrate(campaign: Campaign, out: Path, console: Console, training_steps: int) -> dict[str, Path]:
    """Calibrates a hybrid CHO twin on all but one batch, predicts that batch open-loop and writes the report."""
    import warnings

    from .fit.calibrate import CalibrationConfig, calibrate
    from .fit.mechanistic import FitConfig
    from .fit.training import TrainConfig
    from .hybrid import DEFAULT_RESIDUALS
    from .io import append_provenance, campaign_hash, save_twin
    from .models.cho import CHOFedBatch
    from .models.twin import Twin
    from .predict import predict
    from .report import metrics, write_report
    from .simulate import prepare

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        usable = list(prepare(CHOFedBatch(), campaign).names)  # batches whose feeds and media are known
    if len(usable) < 2:
        console.print("not enough simulatable batches to calibrate and hold one out", markup=False)
        return {}
    held_out = usable[-1]
    campaign = campaign.sel(usable)
    console.print(f"Calibrating a hybrid CHO twin on {', '.join(usable[:-1])}; holding out {held_out} ...",
                  markup=False)
    config = CalibrationConfig(mechanistic=FitConfig(holdout=(held_out,)), residual=DEFAULT_RESIDUALS["cho"],
                               training=TrainConfig(steps=training_steps, progress=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = calibrate(Twin(CHOFedBatch(lactate_consumption=True)), campaign, config)
        prediction = predict(result.twin, campaign)
    paths = {"twin": out / "twin", "report_dir": out / "report"}
    data_hash = campaign_hash(campaign)
    save_twin(result.twin, paths["twin"], overwrite=True, data_hash=data_hash,
              fit_settings={"demo": True, "held_out": held_out, **result.settings()})
    append_provenance(paths["twin"], "demo calibrate", status=result.mechanistic.status, data_hash=data_hash)
    written = write_report(campaign, prediction, paths["report_dir"], title=f"Demo: hybrid CHO twin, {held_out} held "
                                                                            "out")
    table = metrics(campaign, prediction)
    held = table[table["batch"] == held_out]
    console.print(f"held-out batch {held_out}, normalised RMSE: "
                  + ", ".join(f"{r.variable} {r.nrmse:.3f}" for r in held.itertuples()), markup=False)
    console.print(f"wrote the twin {paths['twin']} and the report {written['report']}", markup=False)
    return {**paths, **{f"report_{k}": v for k, v in written.items()}}
