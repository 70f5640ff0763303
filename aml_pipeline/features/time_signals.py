"""Time signals: when an event happens and how long its accounts had been quiet.

Laundering often runs at odd hours and in bursts after dormancy; both are cheap to see.
Hours and weekdays are in UTC (the canonical event time) so every engine agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.windows import timeline, to_microseconds


@register
@dataclass
class TimeSignals(FeatureStep):
    """hour (0-23), weekday (1 = Monday) and seconds since each account's previous event.

    ``{src,dst}_secs_since_prev``: seconds since the account last took part in an event (as
    sender or receiver) strictly before this one; null when it has none in the data seen.
    """

    kind = "time"
    engines = ("polars", "online", "spark")
    uses_history = True

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account"]

    def output_columns(self) -> dict[str, pl.DataType]:
        return {"hour": pl.Int8, "weekday": pl.Int8, "src_secs_since_prev": pl.Float64, "dst_secs_since_prev": pl.Float64}

    def history_window(self) -> str | None:
        return None  # unbounded: the previous event may be arbitrarily old

    def ahead(self, tl) -> list:
        return [lambda: tl.previous_time("src"), lambda: tl.previous_time("dst")]

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        # Both views (the first step of a plan sorts them), then both sides, on all cores.
        tl.prefetch([lambda: tl.view("out"), lambda: tl.view("in")])
        tl.prefetch(self.ahead(tl))
        out = frame.with_columns(
            pl.col("event_time").dt.hour().cast(pl.Int8).alias("hour"),
            pl.col("event_time").dt.weekday().cast(pl.Int8).alias("weekday"),
        )
        cols = []
        for side in ("src", "dst"):
            prev, found = tl.previous_time(side)
            # (event_time - previous).dt.total_microseconds() / 1e6, as floats
            secs = to_microseconds(tl.queries(side).t - prev, tl.unit) / 1e6
            cols += tl.columns(side, {f"{side}_secs_since_prev": (np.where(found, secs, np.nan), pl.Float64)})
        return out.hstack(cols)

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event: its own time and each account's latest event
        before it (the store keeps it beyond the window)."""

        def compute(ev, h, out: dict) -> None:
            out["hour"] = ev.time.hour
            out["weekday"] = ev.time.isoweekday()
            for side, acc in (("src", ev.src), ("dst", ev.dst)):
                prev = h.latest.get(acc)
                out[f"{side}_secs_since_prev"] = None if prev is None else (ev.t - prev) / 1e6
        return compute
