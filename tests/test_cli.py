"""The cgt-twin command: exit codes, demo outputs, import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cgt_twin.cli import app
from cgt_twin.data import read_campaign

runner = CliRunner()


def test_help_lists_the_verbs():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("validate", "summary", "import", "demo"):
        assert verb in result.output


def test_demo_on_bundled_data_writes_summary_plot_and_campaign(example_folder, tmp_path):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), "--data", str(example_folder), "--no-calibrate"])
    assert result.exit_code == 0, result.output
    assert "batches: 3 (cho: 3)" in result.output
    png = (out / "campaign.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a real picture, not an empty canvas
    assert read_campaign(out / "campaign").batches == ("EX1", "EX2", "EX3")


def test_demo_falls_back_to_bundled_data_without_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("CGT_TWIN_SHARED_DATASETS", str(tmp_path / "nowhere"))
    import cgt_twin.demo as demo

    monkeypatch.setattr(demo, "find_shared_datasets", lambda: None)
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--no-calibrate"])
    assert result.exit_code == 0, result.output
    assert "bundled example" in result.output


def test_import_unknown_format_is_bad_input(tmp_path):
    result = runner.invoke(app, ["import", "excel97", str(tmp_path), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "unknown format 'excel97'" in result.output


def test_import_missing_source_is_bad_input(tmp_path):
    result = runner.invoke(app, ["import", "cdppy", str(tmp_path / "missing.xlsx"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert "missing.xlsx" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()  # nothing written for a failed import


def test_import_refuses_to_overwrite(shared_datasets, tmp_path):
    source = shared_datasets / "umn_cho_fedbatch" / "fedbatch_9runs_3cell_lines.xlsx"
    out = tmp_path / "umn"
    first = runner.invoke(app, ["import", "cdppy", str(source), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "9 batches" in first.output
    second = runner.invoke(app, ["import", "cdppy", str(source), "--out", str(out)])
    assert second.exit_code == 2 and "overwrite" in second.output
    third = runner.invoke(app, ["import", "cdppy", str(source), "--out", str(out), "--overwrite"])
    assert third.exit_code == 0
    assert runner.invoke(app, ["validate", str(out)]).exit_code == 0


def test_internal_errors_exit_1_without_traceback(monkeypatch, example_folder):
    import cgt_twin.data.folder as folder

    def broken(path):
        raise RuntimeError("boom")

    monkeypatch.setattr(folder, "read_campaign", broken)
    result = runner.invoke(app, ["validate", str(example_folder)])
    assert result.exit_code == 1
    assert "internal error" in result.output and "boom" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_console_script_runs_as_a_subprocess(example_folder):
    done = subprocess.run([sys.executable, "-m", "cgt_twin.cli", "validate", str(example_folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout
