"""The benchmark runner: runs a benchmark in quick mode, prints its figures with peer ratios, and rewrites only the
generated section of a README (a temporary copy here; the real one is rewritten by ``make bench``)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "benchmarks" / "run.py"


def _runner():
    spec = importlib.util.spec_from_file_location("bench_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(**overrides):
    record = {"name": "x", "value": 1.0, "unit": "ms", "peer": None, "ratio": None, "target": None, "met": None}
    return {**record, **overrides}


def test_rewrite_keeps_hand_written_text(tmp_path):
    runner = _runner()
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\nhand-written intro\n\n<!-- benchmarks:begin -->\nold\n<!-- benchmarks:end -->\n"
                      "\nhand-written notes\n", encoding="utf-8")
    runner.rewrite_readme(readme, f"{runner.BEGIN}\nnew\n{runner.END}")
    assert readme.read_text(encoding="utf-8") == ("# Benchmarks\n\nhand-written intro\n\n<!-- benchmarks:begin -->\nnew\n"
                                                  "<!-- benchmarks:end -->\n\nhand-written notes\n")
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# B\n\ntext\n", encoding="utf-8")
    runner.rewrite_readme(plain, f"{runner.BEGIN}\nnew\n{runner.END}")
    runner.rewrite_readme(plain, f"{runner.BEGIN}\nnewer\n{runner.END}")  # appended once, then replaced
    assert plain.read_text(encoding="utf-8") == "# B\n\ntext\n\n<!-- benchmarks:begin -->\nnewer\n<!-- benchmarks:end -->\n"


def test_records_are_checked_and_formatted():
    runner = _runner()
    with pytest.raises(ValueError, match="keys"):
        runner.check_records([{"name": "x", "value": 1.0}], "bench_x.py")
    with pytest.raises(ValueError, match="list"):
        runner.check_records({"name": "x"}, "bench_x.py")
    results = [{"script": "bench_x.py", "seconds": 1.0, "error": None, "records": [
        _record(name="solve", value=0.5, unit="ms", target="<= 1 ms", met=True),
        _record(name="ratio vs scipy", value=33.0, unit="x", peer="scipy 16 ms", ratio=33.0, target=">= 30x",
                met=True)]}]
    console = runner.format_console(results)
    assert "solve: 0.5 ms  target <= 1 ms ✓" in console and "ratio 33× vs scipy 16 ms" in console
    markdown = runner.format_markdown(results, runner.machine(), quick=False)
    assert markdown.startswith(runner.BEGIN) and markdown.endswith(runner.END)
    assert "| ratio vs scipy | 33 x | scipy 16 ms | 33× | >= 30x | ✓ |" in markdown
    assert "— " not in runner.format_markdown(results, runner.machine(), quick=False).split("| solve")[1][:30]
    assert "Quick mode" in runner.format_markdown(results, runner.machine(), quick=True)


def test_runner_quick_on_bench_simulate(tmp_path):
    readme = tmp_path / "README.md"
    original = (REPO / "benchmarks" / "README.md").read_text(encoding="utf-8")
    readme.write_text(original, encoding="utf-8")
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(RUNNER), "--quick", "--only", "simulate", "--readme", str(readme),
                           "--json", str(out), "--timeout", "900"], capture_output=True, text=True, timeout=1000,
                          cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bench_simulate.py" in done.stdout and "ratio" in done.stdout and "scipy LSODA" in done.stdout
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["quick"] is True and figures["machine"]["cpu_cores"] >= 1
    (result,) = figures["results"]
    assert result["error"] is None
    names = {r["name"]: r for r in result["records"]}
    lsoda = names["scipy solve_ivp LSODA / ours (time per solve)"]
    assert lsoda["ratio"] > 1 and "LSODA" in lsoda["peer"]  # the peer is measured in the same run
    assert names["error vs Dopri8 reference (scaled)"]["value"] < 1e-5
    text = readme.read_text(encoding="utf-8")
    head = original.split("<!-- benchmarks:begin -->")[0].rstrip("\n")
    assert text.startswith(head)  # the hand-written text is kept
    assert text.count("<!-- benchmarks:begin -->") == 1 and "Quick mode" in text
    assert "| scipy solve_ivp LSODA / ours (time per solve) |" in text
    assert "Not in this run (`--only`): " in text and "`bench_bayes.py`" in text  # a partial run says so
