"""As-of window primitives every history-based feature is built from (polars engine).

Each primitive answers, for a set of *queries* (key, time), a question about *history*
rows (key, time, value) with the same key and a time in ``[t - window, t)``: strictly
before the query's instant, so events at the same instant never see each other.
History and queries are separate frames so that an account's incoming payments can be
asked about at the moment it sends one, and so that a streaming micro-batch can bring
history it will not score. Other engines implement the same three primitives.
"""

from __future__ import annotations

import polars as pl

from aml_pipeline.features.base import DST, SRC

KEY, T, VALUE, CP, QID = "_key", "_t", "_value", "_cp", "_qid"

AGGS = ("count", "sum", "mean", "max")

#: Window sums are exact sums of the values rounded to multiples of 2**-60 (see
#: :func:`as_of_aggregates`); values and window sums below 2**127 / 2**60 = 2**67 (~1.5e20)
#: fit in 128 bits, and the rounding (< 1e-18 absolute) is far below a float's resolution
#: for any amount above ~0.01.
FIXED_POINT = 2.0**60


def duration_us(window: str) -> int:
    """A polars duration string ("1h", "24h", "7d") in microseconds."""
    base = pl.datetime(2000, 1, 1, time_unit="us")
    return int(pl.select((base.dt.offset_by(window) - base).dt.total_microseconds()).item())


def _stack(history: pl.DataFrame, queries: pl.DataFrame, value_cols: list[str]) -> pl.DataFrame:
    """History rows (no query id) and query rows (no values) in one frame sorted by key, time.

    Query rows sort before history rows at the same instant; with left-closed windows the
    order within an instant does not change any result, but it keeps sorting deterministic.
    """
    h = history.select(
        pl.col(KEY), pl.col(T), *[pl.col(c) for c in value_cols], pl.lit(None, pl.Int64).alias(QID), pl.lit(1, pl.Int8).alias("_h")
    )
    q = queries.select(
        pl.col(KEY), pl.col(T), *[pl.lit(None, history.schema[c]).alias(c) for c in value_cols], pl.col(QID).cast(pl.Int64), pl.lit(0, pl.Int8).alias("_h")
    )
    return pl.concat([h, q]).sort([KEY, T, "_h"])


def as_of_aggregates(history: pl.DataFrame, queries: pl.DataFrame, windows: list[str], aggs: list[str]) -> pl.DataFrame:
    """count/sum/mean/max of history ``_value`` per query over each window.

    history: ``_key, _t, _value``; queries: ``_key, _t, _qid``. Returns ``_qid`` plus one
    column ``{agg}_{window}`` per pair. An empty window has count 0, sum 0, mean and max null.
    One sort serves every window; mean is derived from count and sum.

    Sums are exact: values are added as 128-bit fixed-point integers (units of 2**-60),
    so a window's sum depends only on the values in it. A float running sum would depend
    on the order in which same-instant events were added and on which older events had
    already left the window (last-bit drift), so arrival order and the length of the
    history a streaming batch brings would change the features.
    """
    bad = [a for a in aggs if a not in AGGS]
    if bad:
        raise ValueError(f"unknown aggregate {bad[0]!r}; allowed: {', '.join(AGGS)}")
    stacked = _stack(history, queries, [VALUE])
    present = pl.col(VALUE).is_not_null().cast(pl.Int64)
    value = (pl.col(VALUE).fill_null(0.0) * FIXED_POINT).round(0).cast(pl.Int128)
    need_count = any(a in aggs for a in ("count", "mean"))
    need_sum = any(a in aggs for a in ("sum", "mean"))
    exprs = []
    for w in windows:
        if need_count:
            exprs.append(present.rolling_sum_by(T, window_size=w, closed="left").over(KEY).alias(f"_n_{w}"))
        if need_sum:
            exprs.append(value.rolling_sum_by(T, window_size=w, closed="left").over(KEY).alias(f"_s_{w}"))
        if "max" in aggs:
            exprs.append(pl.col(VALUE).rolling_max_by(T, window_size=w, closed="left").over(KEY).alias(f"max_{w}"))
    out = stacked.with_columns(exprs).filter(pl.col(QID).is_not_null())
    final = []
    for w in windows:
        n, s = pl.col(f"_n_{w}").fill_null(0), pl.col(f"_s_{w}").fill_null(0).cast(pl.Float64) / FIXED_POINT
        for agg in aggs:
            if agg == "count":
                final.append(n.cast(pl.Int64).alias(f"count_{w}"))
            elif agg == "sum":
                final.append(s.alias(f"sum_{w}"))
            elif agg == "mean":
                final.append(pl.when(n > 0).then(s / n).alias(f"mean_{w}"))
            else:
                final.append(pl.col(f"max_{w}"))
    return out.select(QID, *final)


def as_of_interval_count(intervals: pl.DataFrame, queries: pl.DataFrame, name: str) -> pl.DataFrame:
    """How many intervals ``(_key, _start, _end)`` hold each query: ``_start < t <= _end``.

    Each interval is a +1 at its start and a -1 at its end; the count at t is the running
    sum of the changes strictly before t (queries sort first at a shared instant), which
    one sort and one cumulative sum give for all queries at once.
    """
    changes = pl.concat([
        intervals.select(KEY, pl.col("_start").alias(T), pl.lit(1, pl.Int64).alias("_d")),
        intervals.select(KEY, pl.col("_end").alias(T), pl.lit(-1, pl.Int64).alias("_d")),
    ]).with_columns(pl.lit(1, pl.Int8).alias("_o"), pl.lit(None, pl.Int64).alias(QID))
    qs = queries.select(KEY, T, pl.lit(0, pl.Int64).alias("_d"), pl.lit(0, pl.Int8).alias("_o"), pl.col(QID).cast(pl.Int64))
    ev = pl.concat([changes, qs]).sort([KEY, T, "_o"])
    # Every interval's +1 and -1 share a key, so each key's changes sum to 0 and a global
    # running sum equals the per-key one: no group-wise pass needed.
    ev = ev.with_columns(pl.col("_d").cum_sum().alias(name))
    return ev.filter(pl.col(QID).is_not_null()).select(QID, name).sort(QID)


def as_of_distinct(history: pl.DataFrame, queries: pl.DataFrame, windows: list[str]) -> pl.DataFrame:
    """Number of distinct counterparties ``_cp`` in history per query over each window.

    Exact without keeping a set per window: a history row (key, cp, s) is the latest
    contact with cp before t iff the next contact with the same cp is at or after t, so it
    counts for every query time t in (s, min(next, s + window)]: an interval, counted by
    :func:`as_of_interval_count`.
    """
    h = history.select(KEY, CP, T).unique([KEY, CP, T]).sort([KEY, CP, T])
    same = (pl.col(KEY) == pl.col(KEY).shift(-1)) & (pl.col(CP) == pl.col(CP).shift(-1))
    h = h.with_columns(pl.when(same).then(pl.col(T).shift(-1)).alias("_next"))
    result = None
    for w in windows:
        width = pl.duration(microseconds=duration_us(w))
        iv = h.select(KEY, pl.col(T).alias("_start"), pl.min_horizontal(pl.col("_next"), pl.col(T) + width).alias("_end"))
        counts = as_of_interval_count(iv, queries, f"distinct_{w}").sort(QID)
        result = counts if result is None else result.hstack([counts[f"distinct_{w}"]])
    return result


def as_of_previous_time(history: pl.DataFrame, queries: pl.DataFrame) -> pl.DataFrame:
    """The latest history time strictly before each query's time (same key), or null."""
    h = history.select(KEY, T).unique().sort([KEY, T]).with_columns(pl.col(T).alias("_prev"))
    q = queries.select(KEY, T, QID).sort([KEY, T])
    out = q.join_asof(h, on=T, by=KEY, strategy="backward", allow_exact_matches=False, check_sortedness=False)
    return out.select(QID, "_prev")


def attach(frame: pl.DataFrame, result: pl.DataFrame, key: str, rename: dict[str, str] | None = None) -> pl.DataFrame:
    """Add ``result``'s columns to ``frame`` by position.

    ``result`` has exactly one row per frame row, ``key`` being the row's position; frames
    inside a plan are always in position order, so a sort replaces a hash join.
    """
    r = result.sort(key)
    if r.height != frame.height:
        raise AssertionError(f"feature result has {r.height} rows for {frame.height} events")
    return frame.hstack(r.drop(key).rename(rename or {}).get_columns())


# ---------------------------------------------------------------- account views of events
SIDES = ("src", "dst")
FLOWS = ("in", "out")


def flow_history(frame: pl.DataFrame, flow: str, value: str | None = "amount") -> pl.DataFrame:
    """Each event seen from one account: ``out`` = the sender's view, ``in`` = the receiver's.

    Columns: ``_key`` (the account), ``_cp`` (the counterparty), ``_t`` and ``_value``.
    """
    key, cp = (SRC, DST) if flow == "out" else (DST, SRC)
    cols = [pl.col(key).alias(KEY), pl.col(cp).alias(CP), pl.col("event_time").alias(T)]
    if value is not None:
        cols.append(pl.col(value).alias(VALUE))
    return frame.select(cols)


def any_history(frame: pl.DataFrame) -> pl.DataFrame:
    """Every event once for each of its two accounts (activity in either direction)."""
    return pl.concat([flow_history(frame, "out"), flow_history(frame, "in")])


def side_queries(frame: pl.DataFrame, side: str, row: str) -> pl.DataFrame:
    """One query per event for the account on ``side`` (src or dst) at the event's time."""
    return frame.select(pl.col(SRC if side == "src" else DST).alias(KEY), pl.col("event_time").alias(T), pl.col(row).alias(QID))


def both_side_queries(frame: pl.DataFrame, sides: list[str], row: str) -> pl.DataFrame:
    """Queries for several sides at once, so one sort serves them all.

    The query id is ``row * len(sides) + side index``; :func:`split_sides` undoes it.
    """
    k = len(sides)
    return pl.concat([
        side_queries(frame, side, row).with_columns((pl.col(QID) * k + i).alias(QID)) for i, side in enumerate(sides)
    ])


def split_sides(result: pl.DataFrame, sides: list[str], row: str) -> dict[str, pl.DataFrame]:
    """Per side, the rows of a :func:`both_side_queries` result keyed back by ``row``."""
    k = len(sides)
    return {
        side: result.filter(pl.col(QID) % k == i).with_columns((pl.col(QID) // k).alias(row)).drop(QID)
        for i, side in enumerate(sides)
    }
