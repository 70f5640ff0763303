"""Rolling per-account aggregates as of each event: velocity and volume, both directions.

For the sender and the receiver of each event, over each event-time window: how many
payments the account sent (out) and received (in), their sum, mean and maximum, counting
only events strictly before this one. Mules and layering accounts show up as bursts of
in-and-out flow that a single transaction cannot reveal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.windows import AGGS, FLOWS, SIDES, duration_us, timeline


@register
@dataclass
class RollingAggregates(FeatureStep):
    """Columns ``{side}_{flow}_{agg}_{window}``, e.g. ``src_out_count_24h``."""

    windows: list[str] = field(default_factory=lambda: ["1h", "24h", "7d"])
    sides: list[str] = field(default_factory=lambda: list(SIDES))
    flows: list[str] = field(default_factory=lambda: list(FLOWS))
    aggs: list[str] = field(default_factory=lambda: ["count", "sum", "mean", "max"])

    kind = "rolling"
    uses_history = True

    def __post_init__(self) -> None:
        for name, values, allowed in (("sides", self.sides, SIDES), ("flows", self.flows, FLOWS), ("aggs", self.aggs, AGGS)):
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"{name}: {bad[0]!r} is not allowed; allowed: {', '.join(allowed)}")
        for w in self.windows:
            try:
                if duration_us(w) <= 0:
                    raise ValueError
            except Exception:
                raise ValueError(f"windows: {w!r} is not a duration such as 1h, 24h, 7d") from None

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "amount"]

    def output_columns(self) -> dict[str, pl.DataType]:
        cols: dict[str, pl.DataType] = {}
        for side in self.sides:
            for flow in self.flows:
                for w in self.windows:
                    for agg in self.aggs:
                        cols[f"{side}_{flow}_{agg}_{w}"] = pl.Int64 if agg == "count" else pl.Float64
        return cols

    def history_window(self) -> str | None:
        return max(self.windows, key=duration_us)

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        # One sorted view per flow serves every side, window and aggregate (see windows.py).
        tl = timeline(frame)
        outputs = self.output_columns()
        # The mean is sum / count, computed after the results are in row order: one
        # division instead of one more random-access permutation per column.
        base = [a for a in ("count", "sum", "max") if a in self.aggs or (a != "max" and "mean" in self.aggs)]
        combos = [(side, flow) for side in self.sides for flow in self.flows]
        # Each (side, flow) is independent: compute them on all cores, then read the memo.
        tl.prefetch([lambda s=s, f=f: [tl.aggregate(f, s, w, a) for w in self.windows for a in base] for s, f in combos])

        def name(side: str, flow: str, agg: str, w: str) -> str:
            col = f"{side}_{flow}_{agg}_{w}"
            return col if col in outputs else f"_{col}"  # a count or sum only the mean needs

        cols = []
        for side in self.sides:
            cols += tl.columns(side, {
                name(side, flow, agg, w): (tl.aggregate(flow, side, w, agg), pl.Int64 if agg == "count" else pl.Float64)
                for flow in self.flows
                for w in self.windows
                for agg in base
            })
        out = frame.hstack(cols)
        if "mean" in self.aggs:
            means = []
            for side, flow in combos:
                for w in self.windows:
                    n, s = pl.col(name(side, flow, "count", w)), pl.col(name(side, flow, "sum", w))
                    means.append(pl.when(n > 0).then(s / n).alias(f"{side}_{flow}_mean_{w}"))
            out = out.with_columns(means)
        return out.select(*frame.columns, *outputs)
