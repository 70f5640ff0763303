"""Feature steps on tiny hand-made frames whose every expected value is worked out by hand.

The frames are a few events between a few accounts around 2025-01-06 (a Monday), with the
awkward cases on purpose: two events at the same instant (they must not see each other),
an event exactly one window earlier (inside ``[t - w, t)``) and one a microsecond more
(outside), accounts with empty windows (count 0, sum 0, mean/max null).
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from aml_pipeline.errors import ConfigError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.schema import conform

# ----------------------------------------------------------------------------- helpers


def at(clock: str, day: int = 6) -> datetime:
    """2025-01-<day> at ``clock`` (HH:MM[:SS[.ffffff]]) UTC; day 6 is a Monday."""
    return datetime.fromisoformat(f"2025-01-{day:02d}T{clock}").replace(tzinfo=timezone.utc)


def events(rows: list[tuple], **extra: list) -> pl.DataFrame:
    """Canonical frame from (event_id, event_time, src, dst, amount) tuples.

    ``extra`` gives further columns (label, channel, balances, ...) as one list per column.
    """
    ids, times, src, dst, amount = (list(c) for c in zip(*rows))
    n = len(rows)
    data = {
        "event_id": ids,
        "event_time": pl.Series(times, dtype=pl.Datetime("us", "UTC")),
        "src_account": src,
        "dst_account": dst,
        "amount": pl.Series(amount, dtype=pl.Float64),
        "currency": ["USD"] * n,
        "channel": ["p2p"] * n,
        "jurisdiction": ["US"] * n,
        "label": [0] * n,
    }
    data.update(extra)
    return conform(pl.DataFrame(data))


def values(out: pl.DataFrame, column: str) -> dict[str, object]:
    return dict(zip(out["event_id"].to_list(), out[column].to_list()))


def assert_column(out: pl.DataFrame, column: str, expected: dict[str, object]) -> None:
    """Exact for ints and nulls, 1e-12 relative for floats; every listed event checked."""
    got = values(out, column)
    for eid, exp in expected.items():
        if exp is None or isinstance(exp, int):
            assert got[eid] == exp, f"{column}[{eid}]: got {got[eid]!r}, expected {exp!r}"
        else:
            assert got[eid] == pytest.approx(exp, rel=1e-12), f"{column}[{eid}]: got {got[eid]!r}, expected {exp!r}"


def plan_of(**steps) -> FeaturePlan:
    return FeaturePlan.from_config(steps)


def assert_dtypes(plan: FeaturePlan, out: pl.DataFrame) -> None:
    for col, dtype in plan.output_schema().items():
        assert out.schema[col] == dtype, col


# ------------------------------------------------------------------------------ time
TIME_ROWS = [
    ("e1", at("10:00"), "A", "B", 10.0),
    ("e2", at("10:30"), "B", "C", 10.0),
    ("e3", at("10:30"), "A", "C", 10.0),  # same instant as e2
    ("e4", at("11:00"), "C", "A", 10.0),
    ("e5", at("09:15", day=7), "D", "A", 10.0),  # Tuesday
    ("e6", at("23:59:59.500000", day=12), "A", "D", 10.0),  # Sunday
]


def test_time_signals_by_hand():
    plan = plan_of(time={})
    out = plan.transform(events(TIME_ROWS))
    assert_dtypes(plan, out)
    assert_column(out, "hour", {"e1": 10, "e2": 10, "e3": 10, "e4": 11, "e5": 9, "e6": 23})
    # 2025-01-06 is a Monday (1) ... 2025-01-12 a Sunday (7)
    assert_column(out, "weekday", {"e1": 1, "e2": 1, "e3": 1, "e4": 1, "e5": 2, "e6": 7})
    # Previous event of the account in either role, strictly earlier:
    #   e1 A: none; e2 B: e1 (B received at 10:00) -> 1800 s; e3 A: e1 -> 1800 s
    #   (not e2/e3 at the same instant); e4 C: e2/e3 at 10:30 -> 1800 s;
    #   e5 D: none; e6 A: e5 Tue 09:15 -> Sun 23:59:59.5 = 5 d + 14 h 44 min 59.5 s
    #   = 432000 + 53099.5 = 485099.5 s
    assert_column(out, "src_secs_since_prev", {"e1": None, "e2": 1800.0, "e3": 1800.0, "e4": 1800.0, "e5": None, "e6": 485099.5})
    #   e1 B: none; e2 C: none (e3 at the same instant is invisible); e3 C: same, none;
    #   e4 A: e3 at 10:30 -> 1800 s; e5 A: e4 Mon 11:00 -> Tue 09:15 = 22 h 15 min = 80100 s;
    #   e6 D: e5 -> 485099.5 s
    assert_column(out, "dst_secs_since_prev", {"e1": None, "e2": None, "e3": None, "e4": 1800.0, "e5": 80100.0, "e6": 485099.5})


def test_time_signals_same_instant_any_arrival_order():
    plan = plan_of(time={})
    expected = plan.transform(events(TIME_ROWS)).sort("event_id")
    for perm in itertools.permutations(TIME_ROWS[:4]):
        out = plan.transform(events(list(perm) + TIME_ROWS[4:])).sort("event_id")
        assert_frame_equal(out, expected)


# ---------------------------------------------------------------------------- amount
AMOUNT_ROWS = [
    ("a1", at("10:00"), "A", "B", 100.0),
    ("a2", at("10:30"), "A", "C", 300.0),
    ("a3", at("10:30"), "A", "B", 9200.0),  # same instant as a2
    ("a4", at("11:00"), "A", "D", 9600.0),  # a1 exactly 1 h earlier: inside
    ("a5", at("11:30:00.000001"), "A", "B", 4800.0),  # a2, a3 1 h + 1 us earlier: outside
    ("b1", at("10:00"), "B", "C", 9000.0),
    ("b2", at("10:05"), "B", "C", 8999.99),
    ("b3", at("10:10"), "B", "C", 9999.99),
    ("b4", at("10:15"), "B", "C", 10000.0),
    ("b5", at("10:20"), "B", "C", 250.5),
    ("b6", at("10:25"), "B", "C", 0.29),
    ("b7", at("10:26"), "B", "C", 1234.0),
    ("b8", at("10:27"), "B", "C", 2000.0),
]


def test_amount_signals_by_hand():
    plan = plan_of(amount={"trailing_window": "1h", "reporting_threshold": 10_000.0, "band": 0.1})
    out = plan.transform(events(AMOUNT_ROWS))
    assert_dtypes(plan, out)
    amounts = {r[0]: r[4] for r in AMOUNT_ROWS}
    assert_column(out, "log_amount", {k: math.log1p(v) for k, v in amounts.items()})
    #                  a1 a2 a3 a4 a5 | b1 b2 b3 b4 b5 b6 b7 b8
    ids = ["a1", "a2", "a3", "a4", "a5", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"]
    flags = {
        "round_100":      [1, 1, 1, 1, 1,  1, 0, 0, 1, 0, 0, 0, 1],
        "round_1000":     [0, 0, 0, 0, 0,  1, 0, 0, 1, 0, 0, 0, 1],
        "whole_amount":   [1, 1, 1, 1, 1,  1, 0, 0, 1, 0, 0, 1, 1],  # 0.29 -> 29 cents, not whole
        # band [10000 * 0.9, 10000) = [9000, 10000): 9000 in, 8999.99 out, 9999.99 in, 10000 out
        "near_threshold": [0, 0, 1, 1, 0,  1, 0, 1, 0, 0, 0, 0, 0],
    }  # fmt: skip
    for col, exp in flags.items():
        assert_column(out, col, dict(zip(ids, exp)))
    # Sender's mean outgoing amount over [t - 1h, t):
    #   a1: nothing -> null; a2: {a1}=100 -> 300/100 = 3; a3: {a1} (a2 same instant) -> 92;
    #   a4: {a1 (exactly 1 h), a2, a3} mean (100+300+9200)/3 = 3200 -> 9600/3200 = 3;
    #   a5: {a4} (a2, a3 are 1 h + 1 us earlier) -> 4800/9600 = 0.5
    #   b1: null; b2: 8999.99/9000; b3: 9999.99 / ((9000 + 8999.99) / 2)
    assert_column(out, "amount_vs_src_mean", {
        "a1": None, "a2": 3.0, "a3": 92.0, "a4": 3.0, "a5": 0.5,
        "b1": None, "b2": 8999.99 / 9000.0, "b3": 9999.99 / 8999.995,
    })  # fmt: skip


# --------------------------------------------------------------------------- balance
def test_balance_consistency_by_hand():
    rows = [
        ("r1", at("10:00"), "A", "B", 100.0),
        ("r2", at("10:01"), "A", "B", 300.0),
        ("r3", at("10:02"), "A", "B", 200.0),
        ("r4", at("10:03"), "A", "B", 50.0),
        ("r5", at("10:04"), "A", "B", 70.0),
    ]
    frame = events(
        rows,
        src_balance_before=[500.0, 300.0, 0.0, 1000.0, None],
        src_balance_after=[400.0, 0.0, 0.0, 900.0, None],
        dst_balance_before=[0.0, 50.0, 1000.0, 10.0, 5.0],
        dst_balance_after=[100.0, 350.0, 1000.0, 70.0, 75.0],
    )
    plan = plan_of(balance={})
    out = plan.transform(frame)
    assert_dtypes(plan, out)
    # src error = before - amount - after: 500-100-400=0; 300-300-0=0; 0-200-0=-200; 1000-50-900=50; null
    assert_column(out, "src_balance_error", {"r1": 0.0, "r2": 0.0, "r3": -200.0, "r4": 50.0, "r5": None})
    # dst error = before + amount - after: 0+100-100=0; 50+300-350=0; 1000+200-1000=200; 10+50-70=-10; 5+70-75=0
    assert_column(out, "dst_balance_error", {"r1": 0.0, "r2": 0.0, "r3": 200.0, "r4": -10.0, "r5": 0.0})
    # emptied: after == 0 and before > 0 (r2 only; r3 was already 0); unknown balance -> null
    assert_column(out, "src_emptied", {"r1": 0, "r2": 1, "r3": 0, "r4": 0, "r5": None})
    assert_column(out, "dst_was_empty", {"r1": 1, "r2": 0, "r3": 0, "r4": 0, "r5": 0})
    # amount / sender balance when > 0: 100/500; 300/300; null (0); 50/1000; null
    assert_column(out, "amount_to_src_balance", {"r1": 0.2, "r2": 1.0, "r3": None, "r4": 0.05, "r5": None})


def test_balance_step_refused_without_balance_columns():
    plan = plan_of(balance={})
    frame = events([("r1", at("10:00"), "A", "B", 1.0)])
    assert "src_balance_before" not in frame.columns
    with pytest.raises(ConfigError, match=r"features\.steps\.balance .*'src_balance_before'"):
        plan.transform(frame)
    with pytest.raises(ConfigError, match=r"features\.steps\.balance .*'src_balance_before'"):
        plan.fit_transform(frame)


# --------------------------------------------------------------------------- rolling
ROLLING_ROWS = [
    ("r1", at("10:00"), "A", "B", 100.0),
    ("r2", at("10:30"), "A", "C", 50.0),
    ("r3", at("10:30"), "B", "A", 20.0),  # same instant as r2
    ("r4", at("11:00"), "A", "B", 30.0),  # r1 exactly 1 h earlier
    ("r5", at("11:30:00.000001"), "A", "C", 10.0),  # r2, r3 1 h + 1 us earlier
    ("r6", at("10:00", day=7), "C", "A", 500.0),  # r1 exactly 24 h earlier
    ("r7", at("12:00", day=8), "A", "B", 5.0),  # everything older than 24 h
]
EMPTY = (0, 0.0, None, None)
# (count, sum, mean, max) per event and {side}_{flow}_{window}; unlisted ones are EMPTY.
ROLLING_EXPECTED = {
    "r1": {},
    "r2": {  # A sent r1; A received r3 only at the same instant; C nothing yet
        "src_out_1h": (1, 100.0, 100.0, 100.0), "src_out_24h": (1, 100.0, 100.0, 100.0),
    },
    "r3": {  # B received r1; A (receiver) sent r1 (r2 at the same instant is invisible)
        "src_in_1h": (1, 100.0, 100.0, 100.0), "src_in_24h": (1, 100.0, 100.0, 100.0),
        "dst_out_1h": (1, 100.0, 100.0, 100.0), "dst_out_24h": (1, 100.0, 100.0, 100.0),
    },
    "r4": {  # A sent r1 (10:00, edge: inside) + r2 = 150, mean 75, max 100; A got r3; B sent r3, got r1
        "src_out_1h": (2, 150.0, 75.0, 100.0), "src_out_24h": (2, 150.0, 75.0, 100.0),
        "src_in_1h": (1, 20.0, 20.0, 20.0), "src_in_24h": (1, 20.0, 20.0, 20.0),
        "dst_out_1h": (1, 20.0, 20.0, 20.0), "dst_out_24h": (1, 20.0, 20.0, 20.0),
        "dst_in_1h": (1, 100.0, 100.0, 100.0), "dst_in_24h": (1, 100.0, 100.0, 100.0),
    },
    "r5": {  # 1 h window starts 10:30:00.000001: A sent r4 only; 24 h: r1+r2+r4 = 180, mean 60
        "src_out_1h": (1, 30.0, 30.0, 30.0), "src_out_24h": (3, 180.0, 60.0, 100.0),
        "src_in_24h": (1, 20.0, 20.0, 20.0),  # r3 out of the 1 h window
        "dst_in_24h": (1, 50.0, 50.0, 50.0),  # C got r2 (10:30), out of the 1 h window
    },
    "r6": {  # Tue 10:00; 24 h window [Mon 10:00, Tue 10:00): r1 is exactly 24 h earlier (inside)
        "src_in_24h": (2, 60.0, 30.0, 50.0),  # C got r2 50 + r5 10
        "dst_out_24h": (4, 190.0, 47.5, 100.0),  # A sent r1 100 + r2 50 + r4 30 + r5 10
        "dst_in_24h": (1, 20.0, 20.0, 20.0),  # A got r3
    },
    "r7": {},  # Wed 12:00: r6 (Tue 10:00) is 26 h earlier
}  # fmt: skip


def test_rolling_aggregates_by_hand():
    plan = plan_of(rolling={"windows": ["1h", "24h"]})
    out = plan.transform(events(ROLLING_ROWS))
    assert_dtypes(plan, out)
    assert len(plan.feature_columns()) == 2 * 2 * 2 * 4
    for eid, cells in ROLLING_EXPECTED.items():
        for side, flow, w in itertools.product(("src", "dst"), ("in", "out"), ("1h", "24h")):
            key = f"{side}_{flow}_{w}"
            exp = cells.get(key, EMPTY)
            for agg, e in zip(("count", "sum", "mean", "max"), exp):
                assert_column(out, f"{side}_{flow}_{agg}_{w}", {eid: e})


def test_rolling_subset_of_aggregates_and_sides():
    plan = plan_of(rolling={"windows": ["1h"], "sides": ["dst"], "flows": ["out"], "aggs": ["max", "count"]})
    assert plan.feature_columns() == ["dst_out_max_1h", "dst_out_count_1h"]
    out = plan.transform(events(ROLLING_ROWS))
    # dst_out over 1 h: r3 (receiver A) sees r1; r4 (B) sees r3; others empty
    assert_column(out, "dst_out_count_1h", {"r1": 0, "r2": 0, "r3": 1, "r4": 1, "r5": 0, "r6": 0, "r7": 0})
    assert_column(out, "dst_out_max_1h", {"r1": None, "r2": None, "r3": 100.0, "r4": 20.0, "r5": None, "r6": None, "r7": None})


def test_window_sums_do_not_depend_on_arrival_order():
    """Same-instant events may arrive in any order: window sums must be bit-identical.

    (Float addition is not associative: 0.1 + 0.2 + 0.3 depends on the order it is added.)
    """
    base = [
        ("x1", at("10:00"), "A", "B", 0.1), ("x2", at("10:00"), "A", "C", 0.2), ("x3", at("10:00"), "A", "D", 0.3),
        ("x4", at("10:20"), "A", "B", 911.27), ("x5", at("10:20"), "A", "B", 47.83), ("x6", at("10:20"), "A", "E", 5.09),
        ("x7", at("10:40"), "A", "B", 1e9), ("x8", at("10:40"), "A", "C", 0.07), ("x9", at("10:40"), "A", "F", 123.45),
        ("q1", at("11:00"), "A", "G", 1.0), ("q2", at("11:20"), "A", "G", 1.0), ("q3", at("11:40"), "A", "G", 1.0),
    ]  # fmt: skip
    plan = plan_of(rolling={"windows": ["1h", "24h"], "sides": ["src"], "flows": ["out"], "aggs": ["sum", "mean"]})
    results = set()
    for seed in range(12):
        rows = pl.Series(range(len(base))).shuffle(seed=seed).to_list()
        out = plan.transform(events([base[i] for i in rows])).sort("event_id")
        results.add(tuple(out.select(plan.feature_columns()).rows()))
    assert len(results) == 1
    # q1 at 11:00 sees all nine (24 h) and x1..x9 minus nothing for 1 h ([10:00, 11:00)):
    out = plan.transform(events(base))
    total = 0.1 + 0.2 + 0.3 + 911.27 + 47.83 + 5.09 + 1e9 + 0.07 + 123.45
    assert_column(out, "src_out_sum_1h", {"q1": total})
    # q3 at 11:40: 1 h window [10:40, 11:40) holds x7, x8, x9, q1, q2
    assert_column(out, "src_out_sum_1h", {"q3": 1e9 + 0.07 + 123.45 + 1.0 + 1.0})


def _busy_rows(seed: int = 7) -> list[tuple]:
    """Two busy accounts paying each other and a few others: hundreds of events in a day, in
    bursts at shared instants, so 1 h / 24 h windows hold from 0 to ~400 rows (the window
    maximum's short-run and block paths, and windows ending at a view's last row)."""
    import random

    rnd = random.Random(seed)
    rows, k = [], 0
    for minute in sorted(rnd.choices(range(0, 36 * 60, 3), k=260)):
        for _ in range(rnd.choice([1, 1, 1, 2, 4])):  # same-instant bursts
            src, dst = rnd.choice([("A", "B"), ("B", "A"), ("A", "C"), ("D", "B"), ("B", "C")])
            amount = rnd.choice([0.1, 0.2, 0.3, 7.0, 1e6]) + rnd.randint(0, 999) / 7
            rows.append((f"b{k}", at(f"{minute // 60 % 24:02d}:{minute % 60:02d}", day=6 + minute // 1440), src, dst, amount))
            k += 1
    # exactly one window apart (inside), one microsecond more (outside), a lone account
    rows += [("edge1", at("10:00"), "A", "E", 5.0), ("edge2", at("11:00"), "E", "A", 6.0),
             ("edge3", at("11:00:00.000001", day=7), "E", "A", 7.0), ("lone", at("12:00"), "F", "G", 8.0)]
    return rows


def test_rolling_matches_brute_force_on_long_windows():
    """Every event's count / sum / mean / max against plain loops over its window."""
    rows = _busy_rows()
    windows = {"1h": 3600, "24h": 86400}
    plan = plan_of(rolling={"windows": list(windows)})
    out = plan.transform(events(rows))
    assert_dtypes(plan, out)
    got = {r["event_id"]: r for r in out.rows(named=True)}
    longest = 0
    for eid, t, src, dst, _ in rows:
        for side, acc in (("src", src), ("dst", dst)):
            for flow in ("in", "out"):
                for wn, secs in windows.items():
                    vals = [e[4] for e in rows if (e[2] if flow == "out" else e[3]) == acc and 0 < (t - e[1]).total_seconds() <= secs]
                    longest = max(longest, len(vals))
                    r = got[eid]
                    assert r[f"{side}_{flow}_count_{wn}"] == len(vals)
                    assert r[f"{side}_{flow}_sum_{wn}"] == pytest.approx(sum(vals), rel=1e-12)
                    assert r[f"{side}_{flow}_max_{wn}"] == (max(vals) if vals else None), (eid, side, flow, wn)
                    assert r[f"{side}_{flow}_mean_{wn}"] == (pytest.approx(sum(vals) / len(vals), rel=1e-12) if vals else None)
    assert longest > 100  # long windows were exercised
    # E got edge1 exactly 1 h before edge2 (inside); E's edge2 is 24 h + 1 us before edge3 (outside)
    assert_column(out, "src_in_count_1h", {"edge2": 1, "lone": 0})
    assert_column(out, "src_out_count_24h", {"edge3": 0, "lone": 0})


def test_window_maximum_of_every_range():
    """The window maximum of every [lo, hi) of one account's timeline, lengths 0 to 100,
    against Python's max (NaN when empty), with and without null amounts."""
    from aml_pipeline.features.windows import Timeline

    plan = plan_of(rolling={"windows": ["1h"]})
    rows = [(f"e{i}", at(f"{10 + i // 60:02d}:{i % 60:02d}"), "A", f"X{i % 3}", float((i * 37) % 101) + 0.5) for i in range(100)]
    for with_nulls in (False, True):
        frame = plan._prepare(events(rows), None)
        if with_nulls:
            frame = frame.with_columns(pl.when(pl.col("_row") % 7 == 3).then(None).otherwise(pl.col("amount")).alias("amount"))
        tl = Timeline(frame)
        view = tl.view("out")
        values = [None if v is None else v for v in frame["amount"].to_list()]
        sorted_values = [values[i] for i in view.order]
        lo, hi = zip(*[(a, b) for a in range(101) for b in range(a, 101)])
        got = view.maxima(np.array(lo), np.array(hi))
        for a, b, g in zip(lo, hi, got):
            present = [v for v in sorted_values[a:b] if v is not None]
            if b == a:
                assert math.isnan(g)
            elif present:
                assert g == max(present), (a, b)
            else:
                assert g == -math.inf  # the step turns an all-null window into null (count 0)


def test_search_by_merge_equals_binary_search():
    """The merge search (sorted needles) gives numpy's binary-search positions, both sides,
    with ties between needles and rows, needles past either end, and unsorted needles."""
    from aml_pipeline.features.windows import _MERGE_MIN, search

    rng = np.random.default_rng(3)
    keys = np.sort(rng.integers(0, 5000, 3 * _MERGE_MIN))  # many repeated keys
    needles = np.sort(np.concatenate([rng.integers(-10, 5010, 2 * _MERGE_MIN), keys[:: 7]]))  # exact ties too
    for side in ("left", "right"):
        assert np.array_equal(search(keys, needles, side), np.searchsorted(keys, needles, side))
        shuffled = rng.permutation(needles)
        assert np.array_equal(search(keys, shuffled, side), np.searchsorted(keys, shuffled, side))
        assert np.array_equal(search(keys[:0], needles, side), np.zeros(needles.size, dtype=np.intp))


def test_threads_and_work_started_ahead_change_nothing(monkeypatch):
    """The thread pool and the background work started ahead of the steps (both only for
    large frames) give exactly the single-threaded values, fitting and with history."""
    import aml_pipeline.features.windows as windows
    from aml_pipeline.sources.synthetic import SyntheticSource

    df = SyntheticSource(n_accounts=200, days=10, seed=5).read().sort("event_time")
    cut = df["event_time"].min() + (df["event_time"].max() - df["event_time"].min()) * 0.6
    early, late = df.filter(pl.col("event_time") < cut), df.filter(pl.col("event_time") >= cut)
    steps = {"time": {}, "amount": {"trailing_window": "24h"}, "rolling": {"windows": ["1h", "24h"]},
             "graph": {"window": "24h", "max_intermediary_degree": 10}}

    def run() -> tuple[pl.DataFrame, pl.DataFrame]:
        plan = FeaturePlan.from_config(steps)
        return plan.fit_transform(early), plan.transform(late, history=early)

    monkeypatch.setattr(windows, "_workers", lambda: 1)
    alone = run()
    monkeypatch.setattr(windows, "_workers", lambda: 2)
    monkeypatch.setattr(windows, "_PARALLEL_EVENTS", 0)
    started = []
    submit = windows._Ahead.submit
    monkeypatch.setattr(windows._Ahead, "submit", lambda self, task: (started.append(task), submit(self, task)))
    threaded = run()
    assert len(started) >= 2 * 8  # time 2, amount 1, rolling 4, graph 3 per plan run
    for a, b in zip(alone, threaded):
        assert_frame_equal(a, b, check_exact=True)
    assert alone[1].height == late.height


def test_history_rows_take_part_but_are_not_returned():
    plan = plan_of(rolling={"windows": ["1h", "24h"]}, time={})
    frame = events(ROLLING_ROWS)
    full = plan.transform(frame)
    later = frame.filter(pl.col("event_id").is_in(["r4", "r5", "r6", "r7"]))
    earlier = frame.filter(pl.col("event_id").is_in(["r1", "r2", "r3"]))
    streamed = plan.transform(later, history=earlier)
    assert streamed["event_id"].to_list() == ["r4", "r5", "r6", "r7"]
    assert_frame_equal(streamed, full.filter(pl.col("event_id").is_in(["r4", "r5", "r6", "r7"])))
    # A micro-batch that cuts an instant in two: r3 is history for a batch holding r2.
    streamed = plan.transform(frame.filter(pl.col("event_id") == "r2"), history=frame.filter(pl.col("event_id").is_in(["r1", "r3"])))
    assert_frame_equal(streamed, full.filter(pl.col("event_id") == "r2"))


# ----------------------------------------------------------------------------- graph
# Window 1 h. Degrees, pass-through and 2-cycles.
GRAPH_ROWS = [
    ("g1", at("10:00"), "A", "B", 100.0),
    ("g2", at("10:10"), "A", "B", 100.0),  # B again: counted once
    ("g3", at("10:20"), "A", "C", 50.0),
    ("g4", at("10:30"), "A", "D", 25.0),
    ("g5", at("10:30"), "E", "A", 400.0),  # same instant as g4
    ("g6", at("11:10"), "A", "E", 300.0),  # g2 exactly 1 h earlier; E paid A at 10:30
    ("g7", at("11:20:00.000001"), "A", "F", 80.0),  # g3 1 h + 1 us earlier: expired
    ("g8", at("11:10"), "B", "A", 5.0),  # same instant as g6; A paid B at 10:10 (exactly 1 h)
]


def test_graph_degrees_pass_through_reciprocal_by_hand():
    plan = plan_of(graph={"window": "1h"})
    out = plan.fit_transform(events(GRAPH_ROWS))
    assert_dtypes(plan, out)
    # Distinct counterparties whose latest contact is in [t - 1h, t):
    #   g2: A->{B@10:00}; B<-{A}.  g3: A->{B}.  g4: A->{B, C} (D is g4 itself).
    #   g5: A (receiver) ->{B, C} (g4 at the same instant invisible).
    #   g6 @11:10: A->{B@10:10 (edge), C, D} = 3; A<-{E}; E->{A}.
    #   g7 @11:20:00.000001: A->{D, E} (B@10:10, C@10:20 expired) = 2; A<-{E@10:30, B@11:10} = 2.
    #   g8 @11:10: B<-{A@10:10} = 1; A->{B, C, D} (g6 same instant) = 3; A<-{E} = 1.
    ids = ["g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"]
    assert_column(out, "src_out_degree_1h", dict(zip(ids, [0, 1, 1, 2, 0, 3, 2, 0])))
    assert_column(out, "src_in_degree_1h", dict(zip(ids, [0, 0, 0, 0, 0, 1, 2, 1])))
    assert_column(out, "dst_out_degree_1h", dict(zip(ids, [0, 0, 0, 0, 2, 1, 0, 3])))
    assert_column(out, "dst_in_degree_1h", dict(zip(ids, [0, 1, 0, 0, 0, 0, 0, 1])))
    # pass-through = (sent in window + this amount) / received in window; null when nothing received
    #   g6: sent g2+g3+g4 = 175, got g5 = 400 -> (175 + 300) / 400 = 1.1875
    #   g7: sent g4+g6 = 325 (g3 expired), got g5+g8 = 405 -> (325 + 80) / 405 = 1
    #   g8: B sent nothing, got g2 = 100 -> 5 / 100 = 0.05
    assert_column(out, "src_pass_through_1h", dict(zip(ids, [None, None, None, None, None, 1.1875, 1.0, 0.05])))
    # reciprocal: g6 A->E sees E->A at 10:30; g8 B->A sees A->B at 10:10 (edge; 10:00 expired)
    assert_column(out, "reciprocal_1h", dict(zip(ids, [0, 0, 0, 0, 0, 1, 0, 1])))


# Window 1 h. 3-cycles, 2-hop in-paths, 2-cycle counts, degenerate paths through a self-loop.
CYCLE_ROWS = [
    # A->B->C then C->A closes the cycle A->B->C->A
    ("c1", at("10:00"), "A", "B", 1.0),
    ("c2", at("10:10"), "B", "C", 1.0),
    ("c3", at("10:20"), "C", "A", 1.0),
    # wrong time order: E->F (10:00) before D->E (10:10), so F->D closes nothing;
    # but E->F->D is a path, closed by D->E at 10:30
    ("d1", at("10:00"), "E", "F", 1.0),
    ("d2", at("10:10"), "D", "E", 1.0),
    ("d3", at("10:20"), "F", "D", 1.0),
    ("d4", at("10:30"), "D", "E", 1.0),
    # expiry: path G->H->I with s1 = 10:00 is visible while t <= 11:00
    ("k1", at("10:00"), "G", "H", 1.0),
    ("k2", at("10:30"), "H", "I", 1.0),
    ("k3", at("11:00"), "I", "G", 1.0),
    ("k4", at("11:00:00.000001"), "I", "G", 1.0),
    # 2-cycles: earlier payments in the other direction, same instant excluded
    ("p1", at("10:00"), "P", "Q", 1.0),
    ("p2", at("10:20"), "P", "Q", 1.0),
    ("p3", at("10:20"), "Q", "P", 1.0),
    ("p4", at("11:00"), "Q", "P", 1.0),
    ("p5", at("11:20:00.000001"), "Q", "P", 1.0),
    # self-loop (cash deposit M->M) then M->N, N->M: a 2-cycle, not a 3-cycle
    ("s1", at("10:00"), "M", "M", 1.0),
    ("s2", at("10:10"), "M", "N", 1.0),
    ("s3", at("10:20"), "N", "M", 1.0),
]
CYCLE_EXPECTED = {
    #      cycle3, dst_2hop_in, src_2hop_in, reciprocal
    "c1": (0, 0, 0, 0),
    "c2": (0, 0, 0, 0),  # A->B->C has s2 = 10:10 = t: not yet visible
    "c3": (1, 0, 1, 0),  # path A->B->C ends at the sender C and starts at the receiver A
    "d1": (0, 0, 0, 0),
    "d2": (0, 0, 0, 0),  # E->F->D needs F->D (10:20), still in the future
    "d3": (0, 0, 0, 0),  # D->E->F would need D->E before E->F: wrong order
    "d4": (1, 0, 1, 0),  # E->F->D (10:00, 10:20) closed by D->E; F->D->E has s2 = t
    "k1": (0, 0, 0, 0),
    "k2": (0, 0, 0, 0),
    "k3": (1, 0, 1, 0),  # t = 11:00 = s1 + 1h: still visible
    "k4": (0, 1, 0, 0),  # 1 us later G->H->I expired; H->I->G (10:30, 11:00) ends at G
    "p1": (0, 0, 0, 0),
    "p2": (0, 0, 0, 0),  # Q->P at the same instant is invisible
    "p3": (0, 0, 0, 1),  # P->Q p1 (p2 same instant)
    "p4": (0, 0, 0, 2),  # p1 (exactly 1 h earlier) and p2
    "p5": (0, 0, 0, 0),  # p2 is 1 h + 1 us earlier
    "s1": (0, 0, 0, 0),
    "s2": (0, 0, 0, 0),
    "s3": (0, 0, 0, 1),  # M->M->N is no 2-hop path (x = a), so no 3-cycle; M->N earlier: 2-cycle
}


def test_graph_cycles_and_two_hop_paths_by_hand():
    plan = plan_of(graph={"window": "1h"})
    out = plan.fit_transform(events(CYCLE_ROWS))
    for i, col in enumerate(["cycle3_1h", "dst_2hop_in_1h", "src_2hop_in_1h", "reciprocal_1h"]):
        assert_column(out, col, {eid: exp[i] for eid, exp in CYCLE_EXPECTED.items()})


CAP_ROWS = [
    ("c1", at("10:00"), "A", "X", 1.0),
    ("c2", at("10:01"), "B", "X", 1.0),
    ("c3", at("10:05"), "C", "Y", 1.0),
    ("c4", at("10:10"), "X", "T", 1.0),  # A -> X -> T and B -> X -> T
    ("c5", at("10:20"), "Y", "T", 1.0),  # C -> Y -> T: T's latest inflow
    ("c6", at("10:30"), "T", "A", 1.0),  # closes A -> X -> T
    ("c7", at("10:30"), "T", "C", 1.0),  # closes C -> Y -> T
    ("c8", at("10:30"), "Q", "T", 1.0),
]


def test_graph_follows_only_the_latest_max_rows_inflows_by_hand():
    """With ``max_rows`` 1 only T's latest inflow (Y -> T) is a second hop: its paths count
    and its 3-cycle closes; X -> T's two paths and the cycle through X are left out."""
    frame = events(CAP_ROWS)
    every = plan_of(graph={"window": "1h"}).fit_transform(frame)
    assert_column(every, "src_2hop_in_1h", {"c6": 3, "c7": 3})
    assert_column(every, "dst_2hop_in_1h", {"c8": 3})
    assert_column(every, "cycle3_1h", {"c6": 1, "c7": 1})
    latest = plan_of(graph={"window": "1h", "max_rows": 1}).fit_transform(frame)
    assert_column(latest, "src_2hop_in_1h", {"c6": 1, "c7": 1})
    assert_column(latest, "dst_2hop_in_1h", {"c8": 1})
    assert_column(latest, "cycle3_1h", {"c6": 0, "c7": 1})


HUB_ROWS = [
    ("h1", at("10:00"), "S", "X", 1.0),
    ("h2", at("10:10"), "X", "T", 1.0),
    ("h3", at("10:11"), "X", "U", 1.0),
    ("h4", at("10:12"), "X", "V", 1.0),  # X pays 3 distinct accounts
    ("h6", at("10:00"), "S", "Y", 1.0),  # S pays 2
    ("h7", at("10:05"), "Y", "T", 1.0),
    ("h5", at("10:20"), "T", "S", 1.0),  # closes S->X->T->S and S->Y->T->S
]


def test_graph_hub_exclusion_is_fixed_at_fit_time():
    frame = events(HUB_ROWS)
    # X paid 3 > 2 distinct counterparties: a hub, paths through it are left out
    hubbed = plan_of(graph={"window": "1h", "max_intermediary_degree": 2})
    out = hubbed.fit_transform(frame)
    assert hubbed.steps[0][1].state() == {"hubs_": ["X"]}
    assert_column(out, "cycle3_1h", {"h5": 1})  # S->Y->T only
    assert_column(out, "src_2hop_in_1h", {"h5": 1})
    plain = plan_of(graph={"window": "1h", "max_intermediary_degree": 3})  # 3 is not > 3
    out = plain.fit_transform(frame)
    assert plain.steps[0][1].state() == {"hubs_": []}
    assert_column(out, "cycle3_1h", {"h5": 2})  # S->X->T and S->Y->T
    assert_column(out, "src_2hop_in_1h", {"h5": 2})
    # The hub list comes from the training window, not from the frame being scored:
    small = frame.filter(pl.col("event_id").is_in(["h1", "h2", "h5"]))  # here X pays only T
    assert_column(hubbed.transform(small), "cycle3_1h", {"h5": 0})
    assert_column(plain.transform(small), "cycle3_1h", {"h5": 1})


# --------------------------------------------------------------------------- encoding
TE_TRAIN = [
    ("t1", at("10:00"), "A", "Z", 1.0),
    ("t2", at("10:30"), "A", "Z", 1.0),
    ("t3", at("10:30"), "A", "Z", 1.0),  # same instant as t2
    ("t4", at("11:00"), "A", "Z", 1.0),
    ("t5", at("10:00"), "B", "Z", 1.0),
    ("t6", at("11:00"), "B", "Z", 1.0),  # unlabelled
    ("t7", at("12:00"), "B", "Z", 1.0),
]
TE_LABELS = [1, 0, 1, 0, 0, None, 0]


def test_target_encoding_by_hand():
    # label_delay 0s: labels known as soon as the event happens
    plan = plan_of(target_encoding={"columns": ["src_account"], "smoothing": 2.0, "label_delay": "0s"})
    train = events(TE_TRAIN, label=pl.Series(TE_LABELS, dtype=pl.Int8))
    out = plan.fit_transform(train)
    assert_dtypes(plan, out)
    step = plan.steps[0][1]
    # Frozen table: prior = 2 positives / 6 labelled = 1/3; rate = (pos + 2 * prior) / (n + 2)
    #   A: (2 + 2/3) / (4 + 2) = 4/9;  B: (0 + 2/3) / (2 + 2) = 1/6
    assert step.prior_ == pytest.approx(1 / 3)
    assert step.tables_["src_account"] == pytest.approx({"A": 4 / 9, "B": 1 / 6})
    # Training rows: labels of the id's strictly earlier instants only, and the prior of
    # the labels known strictly before the row's instant (0 when none):
    #   t1 @10:00 A: n=0, nothing known yet -> prior 0 -> 0
    #   t5 @10:00 B: same -> 0
    #   t2, t3 @10:30 A: A had t1 (n=1, p=1); labels so far t1, t5 -> prior 1/2
    #                    -> (1 + 2 * 1/2) / (1 + 2) = 2/3
    #   t4 @11:00 A: A had t1, t2, t3 (n=3, p=2); labels so far t1, t2, t3, t5 -> prior 2/4
    #                    -> (2 + 1) / (3 + 2) = 3/5
    #   t6 @11:00 B: B had t5 (n=1, p=0); prior 1/2 -> (0 + 1) / 3 = 1/3
    #   t7 @12:00 B: B had t5 (t6 unlabelled) (n=1, p=0); labels so far t1..t5 -> prior 2/5
    #                    -> (0 + 4/5) / 3 = 4/15
    assert_column(out, "te_src_account", {"t1": 0.0, "t2": 2 / 3, "t3": 2 / 3, "t4": 3 / 5, "t5": 0.0, "t6": 1 / 3, "t7": 4 / 15})
    # Scoring rows: the frozen table; an id never seen in training gets the prior.
    test = events([("u1", at("09:00", day=9), "A", "Z", 1.0), ("u2", at("09:00", day=9), "B", "Z", 1.0), ("u3", at("09:01", day=9), "C", "Z", 1.0)])
    assert_column(plan.transform(test), "te_src_account", {"u1": 4 / 9, "u2": 1 / 6, "u3": 1 / 3})


def test_target_encoding_label_delay_by_hand():
    """A label arrives label_delay after its event: rows see only labels arrived strictly before them."""
    plan = plan_of(target_encoding={"columns": ["src_account"], "smoothing": 2.0, "label_delay": "30m"})
    out = plan.fit_transform(events(TE_TRAIN, label=pl.Series(TE_LABELS, dtype=pl.Int8)))
    step = plan.steps[0][1]
    # Frozen table: the training window closes at its last event (t7 @12:00); labels known
    # then are those of events at or before 11:30: t1..t6, not t7 (labelled 0).
    #   prior = 2 positives / 5 labelled = 2/5
    #   A (t1..t4): (2 + 2 * 2/5) / (4 + 2) = 7/15;  B (t5; t6 unlabelled): (0 + 4/5) / (1 + 2) = 4/15
    assert step.prior_ == pytest.approx(2 / 5)
    assert step.tables_["src_account"] == pytest.approx({"A": 7 / 15, "B": 4 / 15})
    # Training rows at t see the labels of events strictly before t - 30m:
    #   t1, t5 @10:00: nothing -> 0
    #   t2, t3 @10:30: t1 @10:00 is exactly 30m old, its label not yet known -> prior 0 -> 0
    #                  (with 0s they saw it: 2/3)
    #   t4 @11:00 A: t1 (A, 1), t5 (B, 0) known -> prior 1/2; A n=1, p=1 -> (1 + 1) / 3 = 2/3
    #   t6 @11:00 B: prior 1/2; B n=1 (t5), p=0 -> (0 + 1) / 3 = 1/3
    #   t7 @12:00 B: t1..t6 known (t6 unlabelled) -> prior 2/5; B n=1, p=0 -> (4/5) / 3 = 4/15
    assert_column(out, "te_src_account", {"t1": 0.0, "t2": 0.0, "t3": 0.0, "t4": 2 / 3, "t5": 0.0, "t6": 1 / 3, "t7": 4 / 15})
    test = events([("u1", at("09:00", day=9), "A", "Z", 1.0), ("u3", at("09:01", day=9), "C", "Z", 1.0)])
    assert_column(plan.transform(test), "te_src_account", {"u1": 7 / 15, "u3": 2 / 5})


def test_target_encoding_label_delay_default_and_checks():
    assert plan_of(target_encoding={}).steps[0][1].label_delay == "30d"
    for bad in ("1mo", "soon", "-1d"):
        with pytest.raises(ConfigError, match="features.steps.target_encoding: label_delay"):
            plan_of(target_encoding={"label_delay": bad})


def test_target_encoding_train_rows_arrival_order_and_same_instant():
    te = {"columns": ["src_account", "dst_account"], "smoothing": 2.0, "label_delay": "0s"}
    expected = plan_of(target_encoding=te).fit_transform(events(TE_TRAIN, label=pl.Series(TE_LABELS, dtype=pl.Int8))).sort("event_id")
    order = [3, 2, 6, 0, 5, 1, 4]
    shuffled = events([TE_TRAIN[i] for i in order], label=pl.Series([TE_LABELS[i] for i in order], dtype=pl.Int8))
    out = plan_of(target_encoding=te).fit_transform(shuffled)
    assert out["event_id"].to_list() == [TE_TRAIN[i][0] for i in order]
    assert_frame_equal(out.sort("event_id"), expected)
    # t2 and t3 share an instant: neither sees the other's label
    assert values(expected, "te_src_account")["t2"] == values(expected, "te_src_account")["t3"]


def test_category_codes_by_hand():
    plan = plan_of(category_codes={"columns": ["channel", "currency"]})
    rows = [(f"c{i}", at(f"10:0{i}"), "A", "B", 1.0) for i in range(4)]
    train = events(rows, channel=["wire", "card", "p2p", "card"], currency=["USD", "EUR", "USD", "USD"])
    out = plan.fit_transform(train)
    assert_dtypes(plan, out)
    # sorted vocabularies: card 0, p2p 1, wire 2; EUR 0, USD 1
    assert plan.steps[0][1].state() == {"vocab_": {"channel": ["card", "p2p", "wire"], "currency": ["EUR", "USD"]}}
    assert out["code_channel"].to_list() == [2, 0, 1, 0]
    assert out["code_currency"].to_list() == [1, 0, 1, 1]
    test = events(rows[:3], channel=["card", "cash_deposit", "wire"], currency=["EUR", "GBP", "USD"])
    out = plan.transform(test)
    assert out["code_channel"].to_list() == [0, -1, 2]  # unseen -> -1
    assert out["code_currency"].to_list() == [0, -1, 1]


def test_bucketing_by_hand():
    plan = plan_of(bucketing={"columns": ["amount"], "n_buckets": 4})
    rows = [(f"b{i}", at(f"10:0{i}"), "A", "B", a) for i, a in enumerate([50.0, 10.0, 40.0, 20.0, 30.0])]
    out = plan.fit_transform(events(rows))
    assert_dtypes(plan, out)
    # linear quantiles of [10, 20, 30, 40, 50] at 0.25, 0.5, 0.75: positions 1, 2, 3 -> 20, 30, 40
    assert plan.steps[0][1].state() == {"edges_": {"amount": [20.0, 30.0, 40.0]}}
    assert out["bucket_amount"].to_list() == [3, 0, 3, 1, 2]
    # bucket i holds [edge[i-1], edge[i]): edges belong to the bucket above
    amounts = [5.0, 19.99, 20.0, 29.99, 30.0, 39.99, 40.0, 1e9, None]
    test = events([(f"x{i}", at("11:00"), "A", "B", a) for i, a in enumerate(amounts)])
    assert plan.transform(test)["bucket_amount"].to_list() == [0, 0, 1, 1, 2, 2, 3, 3, None]


def test_bucketing_repeated_quantiles_merge_edges():
    plan = plan_of(bucketing={"columns": ["amount"], "n_buckets": 4})
    rows = [(f"b{i}", at(f"10:0{i}"), "A", "B", a) for i, a in enumerate([1.0, 1.0, 1.0, 1.0, 5.0])]
    out = plan.fit_transform(events(rows))
    assert plan.steps[0][1].state() == {"edges_": {"amount": [1.0]}}  # 1, 1, 1 -> one edge
    assert out["bucket_amount"].to_list() == [1, 1, 1, 1, 1]


# ------------------------------------------------------------------------------ plan
ALL_STEPS = {  # target encoding first: later steps rely on it keeping the row order
    "te": {"kind": "target_encoding", "columns": ["src_account", "dst_account"], "smoothing": 2.0, "label_delay": "10m"},
    "time": {},
    "amount": {"trailing_window": "24h"},
    "balance": {},
    "rolling": {"windows": ["1h", "24h"]},
    "graph": {"window": "1h", "max_intermediary_degree": 2},
    "category_codes": {"columns": ["channel"]},
    "bucketing": {"columns": ["amount"], "n_buckets": 3},
}


def full_frame(rows=GRAPH_ROWS + HUB_ROWS) -> pl.DataFrame:
    n = len(rows)
    return events(
        rows,
        label=pl.Series([int(i % 3 == 0) for i in range(n)], dtype=pl.Int8),
        channel=[["card", "wire", "p2p"][i % 3] for i in range(n)],
        src_balance_before=[100.0 * i for i in range(n)],
        src_balance_after=[50.0 * i for i in range(n)],
        dst_balance_before=[0.0] * n,
        dst_balance_after=[r[4] for r in rows],
    )


def test_plan_keeps_row_order_and_input_columns():
    frame = full_frame()
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=5)
    plan = FeaturePlan.from_config(ALL_STEPS)
    out = plan.fit_transform(shuffled)
    assert out.columns == shuffled.columns + plan.feature_columns()
    assert_frame_equal(out.select(shuffled.columns), shuffled)
    assert_dtypes(plan, out)
    out = plan.transform(shuffled)
    assert out.columns == shuffled.columns + plan.feature_columns()
    assert_frame_equal(out.select(shuffled.columns), shuffled)
    # ... and the features of an event do not depend on where it sits in the frame
    assert_frame_equal(out.sort("event_id"), plan.transform(frame).sort("event_id"))


def test_plan_round_trips_through_json():
    frame = full_frame()
    plan = FeaturePlan.from_config(ALL_STEPS)
    plan.fit_transform(frame)
    text = json.dumps(plan.to_dict())
    again = FeaturePlan.from_dict(json.loads(text))
    assert again.feature_columns() == plan.feature_columns()
    assert json.dumps(again.to_dict()) == text
    test = full_frame(CYCLE_ROWS)  # new ids, so target encoding falls back to the prior
    assert_frame_equal(again.transform(test), plan.transform(test))
    assert_frame_equal(again.transform(frame), plan.transform(frame))


def test_unknown_step_kind_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"features\.steps\.velocity: unknown feature step 'velocity'; allowed: .*rolling"):
        FeaturePlan.from_config({"velocity": {"windows": ["1h"]}})
    with pytest.raises(ConfigError) as err:
        FeaturePlan.from_config({"mine": {"kind": "nope"}})
    msg = str(err.value)
    assert "features.steps.mine" in msg
    for kind in ["amount", "balance", "bucketing", "category_codes", "graph", "rolling", "target_encoding", "time"]:
        assert kind in msg


def test_unknown_or_bad_param_names_key_and_allowed_values():
    with pytest.raises(ConfigError, match=r"features\.steps\.rolling\.window: not a parameter of rolling; allowed: windows, sides, flows, aggs"):
        FeaturePlan.from_config({"rolling": {"window": "1h"}})
    with pytest.raises(ConfigError, match=r"features\.steps\.rolling: aggs: 'median' is not allowed; allowed: count, sum, mean, max"):
        FeaturePlan.from_config({"rolling": {"aggs": ["median"]}})
    with pytest.raises(ConfigError, match=r"features\.steps\.g: window: '1 hour' is not a duration"):
        FeaturePlan.from_config({"g": {"kind": "graph", "window": "1 hour"}})
    with pytest.raises(ConfigError, match=r"features\.steps\.amount: band must be in \(0, 1\)"):
        FeaturePlan.from_config({"amount": {"band": 1.5}})
    with pytest.raises(ConfigError, match=r"features\.steps: the plan has no steps"):
        FeaturePlan.from_config({})


def test_duplicate_output_columns_are_refused():
    with pytest.raises(ConfigError, match=r"features\.steps\.fast: column 'src_in_count_1h' is also produced by step 'rolling'"):
        FeaturePlan.from_config({"rolling": {"windows": ["1h", "24h"]}, "fast": {"kind": "rolling", "windows": ["1h"]}})
    # different windows do not collide
    FeaturePlan.from_config({"rolling": {"windows": ["24h"]}, "fast": {"kind": "rolling", "windows": ["1h"]}})
