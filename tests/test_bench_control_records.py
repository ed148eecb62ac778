"""The control benchmark's closed-loop records (benchmarks/bench_control.py): the comparison with do-mpc at equal
safety picks the best 9-scenario run that broke the glucose limit for no more hours than ours."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_control.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_control_records", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(strategy, titer, hours):
    return {"strategy": strategy, "final_titer": titer, "product_mg": titer * 1.3, "feed_l": 0.3,
            "violation_hours": hours, "min_glucose": 2.5, "objective": titer}


def _loop(*rows):
    return {"plant_draws": 5, "summary": list(rows)}


def _named(records, start):
    return [r for r in records if r["name"].startswith(start)]


def test_equal_safety_compares_with_the_best_do_mpc_run_as_safe_as_ours():
    bench = _bench()
    records = bench._loop_records(_loop(
        _row("(a) standard", 1279.0, 0), _row("(b) nominal MPC", 1520.0, 9),
        _row("(c) MPC over posterior draws", 1501.0, 0),
        _row("do-mpc 9 scenarios", 1513.0, 26), _row("do-mpc 9 scenarios, planning at 3 mM", 1509.0, 4),
        _row("do-mpc 9 scenarios, planning at 4 mM", 1490.0, 0)))
    literal = _named(records, "(c) closed-loop objective vs do-mpc 9 scenarios")
    assert [r["met"] for r in literal] == [False, True]  # the literal target (at 2 mM), then equal safety
    equal = literal[1]
    assert "no more violation hours" in equal["name"]
    assert "planning at 4 mM" in equal["peer"] and "1490" in equal["peer"]
    assert math.isclose(equal["ratio"], 1501.0 / 1490.0)


def test_equal_safety_without_a_do_mpc_run_as_safe_is_not_judged():
    bench = _bench()
    records = bench._loop_records(_loop(
        _row("(c) MPC over posterior draws", 1501.0, 0), _row("do-mpc 9 scenarios", 1513.0, 26),
        _row("do-mpc 9 scenarios, planning at 3 mM", 1509.0, 4)))
    (equal,) = _named(records, "(c) closed-loop objective vs do-mpc 9 scenarios at no more")
    assert equal["met"] is None and equal["ratio"] is None
    assert "no do-mpc run as safe as 0 h (26 h, 4 h)" in equal["peer"]


def test_no_equal_safety_record_without_back_off_runs():
    bench = _bench()
    records = bench._loop_records(_loop(_row("(c) MPC over posterior draws", 1501.0, 0),
                                        _row("do-mpc 9 scenarios", 1513.0, 26)))
    assert not _named(records, "(c) closed-loop objective vs do-mpc 9 scenarios at no more")
    assert len(_named(records, "(c) closed-loop objective vs do-mpc 9 scenarios")) == 1
