"""Calibration benchmark (issue 4): the hybrid CHO twin on the six UMN CL1/CL2 runs, all stages, one start.

Measures, in one process:

1. a cold calibration (compilation included) and the same calibration again (the compiled programs are cached per
   model structure, so the second run is the optimisation alone): compile time = cold − warm;
2. the time per epoch of the network stage (one full-batch AdamW step over the six runs), from its loss history;
3. the peer in the same run: the mechanistic stage alone (cold and warm), and the ratio hybrid / mechanistic.

Data: ``../shared/datasets/umn_cho_fedbatch`` (CL2's feed compositions inferred from after-feed data, as in
``benchmarks/validate.py``); without it, the bundled synthetic CHO campaign (6 runs). ``--quick`` shrinks the budget.
Run: ``python benchmarks/bench_calibrate.py [--quick] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _campaign():
    from validate import umn_campaign

    campaign, _ = umn_campaign()
    if campaign is not None:
        return campaign.sel(["11", "12", "13", "21", "22", "23"]), "UMN CL1 + CL2 (6 runs)"
    from cgt_twin.data.folder import read_campaign

    return read_campaign(ROOT / "datasets" / "cho_fedbatch_synthetic"), "bundled synthetic CHO (6 runs)"


def run(quick: bool = False) -> list[dict]:
    """The benchmark's figures (see the module docstring)."""
    os.environ.setdefault("CGT_TWIN_NO_PROGRESS", "1")
    from cgt_twin.fit import FitConfig, TrainConfig, fit_mechanistic
    from cgt_twin.fit.calibrate import CalibrationConfig, calibrate
    from cgt_twin.hybrid import DEFAULT_RESIDUALS
    from cgt_twin.models import CHOFedBatch, Twin

    campaign, label = _campaign()
    steps = 20 if quick else 200
    config = CalibrationConfig(mechanistic=FitConfig(n_starts=1, max_steps=15 if quick else 100,
                                                     rounds=1 if quick else 3),
                               residual=DEFAULT_RESIDUALS["cho"], training=TrainConfig(steps=steps, progress=False))
    twin = Twin(CHOFedBatch(lactate_consumption=True))
    timings = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for attempt in ("cold", "warm"):
            start = time.perf_counter()
            mechanistic = fit_mechanistic(twin, campaign, config.mechanistic)
            timings[f"mechanistic_{attempt}"] = time.perf_counter() - start
            start = time.perf_counter()
            result = calibrate(twin, campaign, config, mechanistic=mechanistic)
            timings[f"network_{attempt}"] = time.perf_counter() - start
            timings[f"total_{attempt}"] = timings[f"mechanistic_{attempt}"] + timings[f"network_{attempt}"]
            history = result.training.history
            timings[f"epochs_{attempt}"] = len(history)
            timings[f"epoch_{attempt}"] = (history[-1]["seconds"] - history[0]["seconds"]) / max(len(history) - 1, 1) \
                if history and "seconds" in history[0] else timings[f"network_{attempt}"] / max(len(history), 1)
    figures = [
        {"name": f"calibration, {label}, all stages, one start, cold (compilation included)",
         "value": timings["total_cold"], "unit": "s", "peer": None, "ratio": None, "target": "≤ 180 s",
         "met": timings["total_cold"] <= 180.0},
        {"name": "same calibration again (compiled programs reused)", "value": timings["total_warm"], "unit": "s",
         "peer": None, "ratio": None, "target": None, "met": None},
        {"name": "compilation (cold − warm)", "value": timings["total_cold"] - timings["total_warm"], "unit": "s",
         "peer": None, "ratio": None, "target": None, "met": None},
        {"name": f"network stage, time per epoch (full batch of 6 runs, {timings['epochs_warm']} epochs)",
         "value": timings["epoch_warm"], "unit": "s", "peer": None, "ratio": None, "target": None, "met": None},
        {"name": "mechanistic stage alone, warm", "value": timings["mechanistic_warm"], "unit": "s",
         "peer": "network stage, warm", "ratio": timings["network_warm"] / max(timings["mechanistic_warm"], 1e-9),
         "target": None, "met": None},
        {"name": "mechanistic stage, cold", "value": timings["mechanistic_cold"], "unit": "s", "peer": None,
         "ratio": None, "target": None, "met": None},
    ]
    return figures


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    figures = run(args.quick)
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
