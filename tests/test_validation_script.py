"""The validation script (benchmarks/validate.py) in its quick mode: runs end to end, writes the page, resumes."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def validate():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import validate as module
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_quick_validation_writes_page_and_resumes(validate, tmp_path, capsys):
    json_path, page = tmp_path / "validation.json", tmp_path / "validation.md"
    argv = ["--quick", "--sections", "synthetic", "--json", str(json_path), "--markdown", str(page)]
    results = validate.main(argv)
    for effect in ("on", "off"):
        fold = results[f"synthetic_effect_{effect}"]["outside-range"]
        assert fold["test"] == ["TE-060"] and fold["train"] == ["TR-020", "TR-040"]
        for label in ("mechanistic", "hybrid", "mechanistic_vs_truth", "hybrid_vs_truth"):
            scores = {k.split("|")[1]: v["nrmse"] for k, v in fold[label].items()}
            assert set(scores) == {"vcd", "glucose", "lactate", "titer"}
            assert all(math.isfinite(v) and 0 <= v < 1 for v in scores.values()), (label, scores)
    text = page.read_text(encoding="utf-8")
    assert "Effect present: against the noise-free truth" in text and "| vcd |" in text
    assert json.loads(json_path.read_text(encoding="utf-8"))["quick"] is True
    # a second run continues from the checkpointed folds instead of fitting again
    capsys.readouterr()
    validate.main(argv)
    assert capsys.readouterr().out.count("from checkpoint") == 2


def test_unknown_section_is_refused(validate, tmp_path):
    with pytest.raises(SystemExit):
        validate.main(["--sections", "nope", "--json", str(tmp_path / "v.json"),
                       "--markdown", str(tmp_path / "v.md")])
