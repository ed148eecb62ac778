"""Runs every benchmark (``benchmarks/bench_*.py``), prints each figure with its peer ratio, and rewrites the generated
section of ``benchmarks/README.md``.

Each benchmark module exposes ``run(quick: bool = False) -> list[dict]``, one record per figure::

    {"name": str, "value": float, "unit": str,
     "peer": str | None,     # the peer measured in the same run, with its value ("scipy LSODA 12.4 ms")
     "ratio": float | None,  # peer / ours for times (above 1: we are faster), as the record's name says
     "target": str | None,   # the issue's target ("<= 3 s", ">= 30x")
     "met": bool | None}     # whether this run met it

Every benchmark runs in a fresh Python process (its own compilations, memory and failures); the runner records the
machine (platform, CPU cores, load, JAX and Python versions, date). The README keeps its hand-written text: only the
part between ``<!-- benchmarks:begin -->`` and ``<!-- benchmarks:end -->`` is replaced (appended if absent).

Usage::

    python benchmarks/run.py                      # everything; rewrites benchmarks/README.md
    python benchmarks/run.py --quick --no-readme  # smoke test: shrunken sizes, nothing written
    python benchmarks/run.py --only simulate --readme /tmp/README.md --json figures.json

Timings are the machine's; compare only ratios measured in one run. ``--quick`` figures are not results.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"
KEYS = ("name", "value", "unit", "peer", "ratio", "target", "met")
_MARK = "@@CGT_TWIN_BENCH_RECORDS@@"


def discover(only: list[str] | None = None) -> list[Path]:
    """The benchmark scripts, sorted; `only` selects by name (``simulate`` or ``bench_simulate``)."""
    scripts = sorted(HERE.glob("bench_*.py"))
    if only:
        wanted = {name.removeprefix("bench_").removesuffix(".py") for name in only}
        unknown = wanted - {p.stem.removeprefix("bench_") for p in scripts}
        if unknown:
            raise SystemExit(f"unknown benchmarks {sorted(unknown)}; known: {[p.stem for p in scripts]}")
        scripts = [p for p in scripts if p.stem.removeprefix("bench_") in wanted]
    return scripts


def machine() -> dict:
    """Where the figures were measured."""
    try:
        from importlib.metadata import version

        jax_version = version("jax")
    except Exception:  # noqa: BLE001 (reported, not fatal)
        jax_version = "not installed"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "machine": platform.machine(), "cpu_cores": os.cpu_count(),
            "load_average_1min": round(load, 2), "python": platform.python_version(), "jax": jax_version}


def check_records(records, script: str) -> list[dict]:
    """Raises ValueError unless `records` is a list of dicts with exactly the record keys."""
    if not isinstance(records, list):
        raise ValueError(f"{script}: run() must return a list of records, got {type(records).__name__}")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or set(record) != set(KEYS):
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{script}: record {index} must have the keys {list(KEYS)}, got {keys}")
    return records


def run_one(script: Path, quick: bool, timeout_s: float) -> dict:
    """Runs ``script``'s ``run(quick)`` in a fresh interpreter; returns its records, wall time and any error."""
    code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import {script.stem} as b; "
            f"records = b.run(quick={quick!r}); print({_MARK!r} + json.dumps(records))")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                              cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"script": script.name, "records": [], "seconds": time.perf_counter() - start,
                "error": f"timed out after {timeout_s:g} s"}
    seconds = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARK)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout)[-2000:]
        return {"script": script.name, "records": [], "seconds": seconds,
                "error": f"exit status {done.returncode}: {tail.strip()}"}
    try:
        records = check_records(json.loads(lines[-1][len(_MARK):]), script.name)
    except ValueError as exc:
        return {"script": script.name, "records": [], "seconds": seconds, "error": str(exc)}
    return {"script": script.name, "records": records, "seconds": seconds, "error": None}


def _value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return f"{text} {unit}".strip() if unit not in ("", "1") else text


def _met(met: bool | None) -> str:
    return {True: "✓", False: "✗", None: ""}[met]


def format_console(results: list[dict], quick: bool = False) -> str:
    lines = []
    for result in results:
        lines.append(f"== {result['script']} ({result['seconds']:.1f} s)")
        if result["error"]:
            lines.append(f"   FAILED: {result['error']}")
        for r in result["records"]:
            ratio = f"  ratio {r['ratio']:.3g}× vs {r['peer']}" if r["ratio"] is not None else (
                f"  peer: {r['peer']}" if r["peer"] else "")
            target = f"  target {r['target']} {_met(r['met'])}" if r["target"] else ""
            if quick and r["target"]:
                target = f"  target {r['target']} (not assessed in quick mode)"
            lines.append(f"   {r['name']}: {_value(r['value'], r['unit'])}{ratio}{target}")
    return "\n".join(lines)


def format_markdown(results: list[dict], info: dict, quick: bool, left_out: Sequence[str] = ()) -> str:
    """The generated README section (between the markers); `left_out` names the benchmarks this run did not run
    (``--only``), so the section never reads as a complete run when it is not."""
    lines = [BEGIN, "## Latest run (generated by `benchmarks/run.py`; do not edit by hand)", ""]
    if quick:
        lines += ["> **Quick mode** (`--quick`): shrunken sizes and few repeats — a smoke test, not figures to quote.",
                  ""]
    lines += [f"Measured {info['date']} on {info['machine']}, {info['cpu_cores']} CPU cores, {info['platform']}, "
              f"Python {info['python']}, JAX {info['jax']} (1-min load average at the start "
              f"{info['load_average_1min']}).", ""]
    if left_out:
        lines += ["Not in this run (`--only`): " + ", ".join(f"`{name}`" for name in left_out)
                  + "; their latest figures are in the hand-written sections above.", ""]
    for result in results:
        lines += [f"### `{result['script']}` ({result['seconds']:.0f} s)", ""]
        if result["error"]:
            lines += [f"Failed: `{result['error'].splitlines()[-1][:300]}`", ""]
            continue
        lines += ["| figure | measured | peer (same run) | ratio | target | met |", "|---|---|---|---|---|---|"]
        for r in result["records"]:
            ratio = f"{r['ratio']:.3g}×" if r["ratio"] is not None else ""
            met = "—" if quick and r["target"] else _met(r["met"])
            lines.append(f"| {r['name']} | {_value(r['value'], r['unit'])} | {r['peer'] or ''} | {ratio} | "
                         f"{r['target'] or ''} | {met} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def rewrite_readme(path: Path, section: str) -> None:
    """Replaces the marked section of `path` with `section` (appends it when the markers are absent); the text
    outside the markers is kept byte for byte."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shrunken sizes: a smoke test of every benchmark")
    parser.add_argument("--only", action="append", help="run only this benchmark (repeatable): simulate, bayes, ...")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md", help="the README to rewrite")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite any README")
    parser.add_argument("--json", type=Path, help="also write the machine and all records to this JSON file")
    # bench_bayes.py (subset, repeated datasets, all parameters) needs about an hour on a fast 2-core machine
    parser.add_argument("--timeout", type=float, default=3 * 3600.0, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)

    info = machine()
    print(f"machine: {info['machine']}, {info['cpu_cores']} cores, {info['platform']}, JAX {info['jax']}, "
          f"load {info['load_average_1min']}, {info['date']}" + (" [quick mode]" if args.quick else ""))
    results = []
    chosen = discover(args.only)
    left_out = [p.name for p in discover() if p not in chosen]
    for script in chosen:
        print(f"running {script.name} ...", flush=True)
        result = run_one(script, args.quick, args.timeout)
        results.append(result)
        print(format_console([result], args.quick), flush=True)
    if not args.no_readme:
        rewrite_readme(args.readme, format_markdown(results, info, args.quick, left_out))
        print(f"rewrote the generated section of {args.readme}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick, "results": results}, indent=2),
                             encoding="utf-8")
    return 1 if any(r["error"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
