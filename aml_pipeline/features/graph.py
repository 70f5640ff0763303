"""Counterparty and graph signals over a window: the shape of money movement.

Single-transaction features cannot see typologies; their shape can. Over each window,
strictly before the event:

- ``{side}_{flow}_degree_{w}``: distinct counterparties (fan-in / fan-out degree) of the
  sender and receiver, both directions;
- ``src_pass_through_{w}``: (money the sender sent, including this payment) / (money it
  received): ≈ 1 for a mule that forwards what it gets;
- ``reciprocal_{w}``: earlier payments from the receiver back to the sender (2-cycles);
- ``cycle3_{w}``: earlier 2-hop paths receiver → x → sender in time order, so this
  payment closes a 3-cycle;
- ``dst_2hop_in_{w}`` / ``src_2hop_in_{w}``: earlier time-ordered 2-hop paths a → x → account
  ending at the receiver / sender: high for the sink of scatter-gather and for layering.

A 2-hop path a → x → b is two payments a → x at s1 and x → b at s2 between three distinct
accounts with s1 < s2 and s2 − s1 < window; it is visible to an event at t when s2 < t
and s1 ≥ t − window (both hops inside the window). Paths through a *hub* are left out: an account that paid more than
``max_intermediary_degree`` distinct counterparties in the training window (employers,
payment processors). Hubs are legitimate, counting through them would swamp the signal
and the memory, and fixing the hub list at fit time keeps every engine identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from aml_pipeline.features.base import DST, ROW, SRC, FeatureStep, register
from aml_pipeline.features.windows import (
    CP,
    FLOWS,
    KEY,
    QID,
    SIDES,
    T,
    VALUE,
    as_of_aggregates,
    as_of_distinct,
    as_of_interval_count,
    attach,
    both_side_queries,
    split_sides,
    duration_us,
    flow_history,
    side_queries,
)

def _pair(a: str, b: str) -> pl.Expr:
    """One integer key for an ordered pair of account codes (codes are < 2**31)."""
    return pl.col(a) * (1 << 32) + pl.col(b)


@register
@dataclass
class CounterpartyGraph(FeatureStep):
    """Degrees, pass-through, 2- and 3-cycles and 2-hop in-paths over ``window``."""

    window: str = "7d"
    max_intermediary_degree: int = 50

    kind = "graph"
    uses_history = True

    def __post_init__(self) -> None:
        try:
            ok = duration_us(self.window) > 0
        except Exception:
            ok = False
        if not ok:
            raise ValueError(f"window: {self.window!r} is not a duration such as 24h or 7d")
        if self.max_intermediary_degree < 1:
            raise ValueError("max_intermediary_degree must be >= 1")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "amount"]

    def output_columns(self) -> dict[str, pl.DataType]:
        w = self.window
        cols: dict[str, pl.DataType] = {f"{s}_{f}_degree_{w}": pl.Int64 for s in SIDES for f in FLOWS}
        cols[f"src_pass_through_{w}"] = pl.Float64
        cols[f"reciprocal_{w}"] = pl.Int64
        cols[f"cycle3_{w}"] = pl.Int64
        cols[f"dst_2hop_in_{w}"] = pl.Int64
        cols[f"src_2hop_in_{w}"] = pl.Int64
        return cols

    def history_window(self) -> str | None:
        return self.window

    # -- pieces -------------------------------------------------------------------------
    def _degrees(self, frame: pl.DataFrame, out: pl.DataFrame) -> pl.DataFrame:
        w = self.window
        queries = both_side_queries(frame, list(SIDES), ROW)
        for flow in FLOWS:
            d = as_of_distinct(flow_history(frame, flow, value=None), queries, [w])
            for side, part in split_sides(d, list(SIDES), ROW).items():
                out = attach(out, part, ROW, {f"distinct_{w}": f"{side}_{flow}_degree_{w}"})
        return out

    def _pass_through(self, frame: pl.DataFrame, out: pl.DataFrame) -> pl.DataFrame:
        w = self.window
        q = side_queries(frame, "src", ROW)
        sent = as_of_aggregates(flow_history(frame, "out"), q, [w], ["sum"]).rename({f"sum_{w}": "_sent"})
        got = as_of_aggregates(flow_history(frame, "in"), q, [w], ["sum"]).rename({f"sum_{w}": "_got"})
        out = attach(attach(out, sent, QID), got, QID)
        ratio = pl.when(pl.col("_got") > 0).then((pl.col("_sent") + pl.col("amount")) / pl.col("_got"))
        return out.with_columns(ratio.alias(f"src_pass_through_{w}")).drop("_sent", "_got")

    def fit(self, frame: pl.DataFrame) -> "CounterpartyGraph":
        degree = frame.group_by("src_account").agg(pl.col("dst_account").n_unique().alias("n"))
        self.hubs_ = sorted(degree.filter(pl.col("n") > self.max_intermediary_degree)["src_account"].to_list())
        return self

    def _edges(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.select(pl.col(SRC).alias("a"), pl.col(DST).alias("b"), pl.col("event_time").alias("s"))

    def _two_hop_paths(self, frame: pl.DataFrame, edges: pl.DataFrame) -> pl.DataFrame:
        """Time-ordered 2-hop paths (a, x, b, s1, s2) within the window, hubs excluded."""
        width = pl.duration(microseconds=duration_us(self.window))
        hubs = frame.filter(pl.col("src_account").is_in(self.hubs_)).select(pl.col(SRC).alias("x")).unique()
        first = edges.select(pl.col("a"), pl.col("b").alias("x"), pl.col("s").alias("s1")).join(hubs, on="x", how="anti")
        second = edges.select(pl.col("a").alias("x"), pl.col("b"), pl.col("s").alias("s2")).join(hubs, on="x", how="anti")
        paths = first.join(second, on="x", how="inner")
        # Three distinct accounts: a == b is a 2-cycle (reciprocal_), and a self-payment
        # (x == a or x == b, e.g. a cash deposit) is not a hop.
        distinct = (pl.col("a") != pl.col("b")) & (pl.col("x") != pl.col("a")) & (pl.col("x") != pl.col("b"))
        return paths.filter((pl.col("s1") < pl.col("s2")) & (pl.col("s2") - pl.col("s1") < width) & distinct)

    def _interval_counts(self, intervals: pl.DataFrame, queries: pl.DataFrame, name: str, out: pl.DataFrame) -> pl.DataFrame:
        counts = as_of_interval_count(intervals, queries, name)
        return attach(out, counts, QID)

    # -- transform ----------------------------------------------------------------------
    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        w = self.window
        width = pl.duration(microseconds=duration_us(w))
        out = self._degrees(frame, frame)
        out = self._pass_through(frame, out)

        edges = self._edges(frame)
        # 2-cycles: an earlier payment b -> a counts for a later a -> b within the window.
        back = edges.select(_pair("b", "a").alias(KEY), pl.col("s").alias("_start"), (pl.col("s") + width).alias("_end"))
        q_pair = frame.select(_pair(SRC, DST).alias(KEY), pl.col("event_time").alias(T), pl.col(ROW).alias(QID))
        out = self._interval_counts(back, q_pair, f"reciprocal_{w}", out)

        paths = self._two_hop_paths(frame, edges)
        # A path is visible at t when s2 < t <= s1 + window.
        visible = [pl.col("s2").alias("_start"), (pl.col("s1") + width).alias("_end")]
        closing = paths.select(_pair("b", "a").alias(KEY), *visible)  # path v->x->u closes u->v
        out = self._interval_counts(closing, q_pair, f"cycle3_{w}", out)
        into = paths.select(pl.col("b").alias(KEY), *visible)
        for side in ("dst", "src"):
            out = self._interval_counts(into, side_queries(frame, side, ROW), f"{side}_2hop_in_{w}", out)
        return out.select(*frame.columns, *self.output_columns())
