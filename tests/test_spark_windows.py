"""The Spark window max (:meth:`aml_pipeline.spark.windows.Pass.max`, and the Arrow
evaluator's range maximum, :func:`aml_pipeline.spark.windows.run_pass_arrow`) against brute force.

The max is computed from time blocks of the window's width and running frames, not a
sliding frame; this checks it on the awkward cases by hand-verifiable brute force: events
exactly on block boundaries, exactly ``w`` before another (inside) and ``w + 1 µs`` (outside),
several events at one instant, empty blocks between events, null values (rows of another
flow), history-only rows, one very busy key, and keys with a single event.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java 17")]

W = 3_600_000_000  # 1 h in µs


def _events(seed: int = 5) -> list[tuple[str, int, float | None, bool]]:
    """(key, time µs, value or None, is a query row)."""
    rng = np.random.default_rng(seed)
    base = 1_735_689_600_000_000  # 2025-01-01, a multiple of W: block boundaries at whole hours
    rows = []
    # a busy key: 3,000 events over 30 hours, many at shared instants and on the hour
    times = base + rng.integers(0, 30 * W, 3000)
    times[:200] = base + rng.integers(0, 30, 200) * W  # exactly on block boundaries
    times[200:400] = times[400:600]  # same instants
    for t in times:
        rows.append(("busy", int(t), None if rng.random() < 0.1 else float(rng.integers(1, 10_000)), bool(rng.random() < 0.8)))
    # hand cases: exactly w before (inside), w + 1 µs before (outside), empty blocks, a lone event
    hand = [(base + 10, 5.0), (base + 10 + W, 1.0), (base + 11 + 2 * W, 2.0), (base + 7 * W, 9.0), (base + 7 * W, 3.0),
            (base + 8 * W - 1, 4.0), (base + 8 * W, 1.0), (base + 9 * W - 1, 1.0)]
    rows += [("hand", t, v, True) for t, v in hand]
    rows.append(("lone", base + 5, 7.0, True))
    # many small keys
    for k in range(50):
        for t in base + rng.integers(0, 6 * W, rng.integers(1, 12)):
            rows.append((f"k{k}", int(t), float(rng.integers(1, 100)), bool(rng.random() < 0.7)))
    return rows


def _brute(rows, width: int) -> dict[tuple[str, int, int], float | None]:
    out = {}
    for i, (key, t, _, query) in enumerate(rows):
        if not query:
            continue
        values = [v for (k, u, v, _) in rows if k == key and t - width <= u < t and v is not None]
        out[i] = max(values) if values else None
    return out


@pytest.mark.parametrize("evaluator", ["window", "arrow"])
@pytest.mark.parametrize("width", [W, 24 * W, 7])
def test_window_max_equals_brute_force(spark, width, evaluator):
    from pyspark.sql import functions as F

    from aml_pipeline.spark.windows import T, run_pass, run_pass_arrow

    rows = _events()
    frame = spark.createDataFrame([(i, k, t, v) for i, (k, t, v, q) in enumerate(rows) if q], "i long, key string, _t long, v double")
    history = spark.createDataFrame([(k, t, v) for (k, t, v, q) in rows if not q], "_k0 string, _t long, v double")
    run = run_pass if evaluator == "window" else run_pass_arrow
    out = run(frame, [F.col("key")], own={"v": F.col("v")}, others=[history], types={"v": "double"},
              build=lambda p: {"mx": p.max("v", width)})
    got = {r["i"]: r["mx"] for r in out.select("i", "mx").collect()}
    expected = _brute(rows, width)
    assert set(got) == set(expected)
    wrong = [(i, rows[i], got[i], expected[i]) for i in expected if got[i] != expected[i]]
    assert not wrong, wrong[:5]
    assert T == "_t" and sum(v is not None for v in expected.values()) > (1000 if width >= W else 0)
