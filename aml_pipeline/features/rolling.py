"""Rolling per-account aggregates as of each event: velocity and volume, both directions.

For the sender and the receiver of each event, over each event-time window: how many
payments the account sent (out) and received (in), their sum, mean and maximum, counting
only events strictly before this one. Mules and layering accounts show up as bursts of
in-and-out flow that a single transaction cannot reveal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from aml_pipeline.features.base import ROW, FeatureStep, register
from aml_pipeline.features.windows import AGGS, FLOWS, SIDES, as_of_aggregates, attach, both_side_queries, duration_us, flow_history, split_sides


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
        out = frame
        queries = both_side_queries(frame, self.sides, ROW)
        for flow in self.flows:
            agg = as_of_aggregates(flow_history(frame, flow), queries, self.windows, self.aggs)
            for side, part in split_sides(agg, self.sides, ROW).items():
                rename = {f"{a}_{w}": f"{side}_{flow}_{a}_{w}" for w in self.windows for a in self.aggs}
                out = attach(out, part, ROW, rename)
        return out.select(*frame.columns, *self.output_columns())
