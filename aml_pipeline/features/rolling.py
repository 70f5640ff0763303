"""Rolling per-account aggregates as of each event: velocity and volume, both directions.

For the sender and the receiver of each event, over each event-time window: how many
payments the account sent (out) and received (in), their sum, mean and maximum, counting
only events strictly before this one. Mules and layering accounts show up as bursts of
in-and-out flow that a single transaction cannot reveal.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field
from operator import itemgetter

import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.carried import totals_folds
from aml_pipeline.features.windows import AGGS, FLOWS, SIDES, fixed_to_float, timeline
from aml_pipeline.timeutil import duration_us


@register
@dataclass
class RollingAggregates(FeatureStep):
    """Columns ``{side}_{flow}_{agg}_{window}``, e.g. ``src_out_count_24h``."""

    windows: list[str] = field(default_factory=lambda: ["1h", "24h", "7d"])
    sides: list[str] = field(default_factory=lambda: list(SIDES))
    flows: list[str] = field(default_factory=lambda: list(FLOWS))
    aggs: list[str] = field(default_factory=lambda: ["count", "sum", "mean", "max"])

    kind = "rolling"
    engines = ("polars", "online", "spark")
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

    def ahead(self, tl) -> list:
        # each (side, flow) is independent
        combos = [(side, flow) for side in self.sides for flow in self.flows]
        return [lambda s=s, f=f: [tl.aggregate(f, s, w, a) for w in self.windows for a in self.aggs] for s, f in combos]

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        # One sorted view per flow serves every side, window and aggregate (see windows.py);
        # compute the (side, flow) pieces on all cores (if not done ahead), then read the memo.
        tl = timeline(frame)
        tl.prefetch(self.ahead(tl))
        return frame.hstack([
            tl.series(f"{side}_{flow}_{agg}_{w}", tl.aggregate(flow, side, w, agg), dtype)
            for (side, flow, agg, w), dtype in zip(self._combos(), self.output_columns().values())
        ])

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from its accounts' sent and received rows: the
        rows' running sums and maxima are folded once per row and carried from request to
        request (:func:`~aml_pipeline.features.carried.totals_folds`), so a window costs
        two bisections however many payments a merchant had in it."""
        T, A = col["event_time"], col["amount"]
        windows = [(w, duration_us(w)) for w in self.windows]
        widest = max(width for _, width in windows)
        folds = {flow: totals_folds(A) for flow in self.flows}
        time_of = itemgetter(T)

        def compute(ev, h, out: dict) -> None:
            t = ev.t
            for side in self.sides:
                acc = ev.src if side == "src" else ev.dst
                for flow in self.flows:
                    rows = (h.sent if flow == "out" else h.received).get(acc, ())
                    totals = folds[flow].through(acc, rows, t, head_until=t - widest)
                    totals.forget(len(rows))
                    for w, width in windows:
                        n, s, mx = totals.latest(len(rows) - bisect_left(rows, t - width, key=time_of))
                        h.keep_sum(acc, flow, width, n, s)
                        total = fixed_to_float(s)
                        for agg in self.aggs:
                            key = f"{side}_{flow}_{agg}_{w}"
                            if agg == "count":
                                out[key] = n
                            elif agg == "sum":
                                out[key] = total
                            elif agg == "mean":
                                out[key] = total / n if n > 0 else None
                            else:
                                out[key] = mx
        return compute

    def _combos(self) -> list[tuple[str, str, str, str]]:
        """(side, flow, agg, window) in the order of :meth:`output_columns`."""
        return [(s, f, a, w) for s in self.sides for f in self.flows for w in self.windows for a in self.aggs]
