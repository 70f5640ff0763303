"""Amount signals: size, roundness, closeness to the reporting threshold, and novelty.

Launderers favour round sums and amounts just under a reporting threshold (structuring);
an amount far above what the sender usually moves is a classic red flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

import math

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.windows import fixed_to_float, ieee_divide, timeline
from aml_pipeline.timeutil import duration_us


@register
@dataclass
class AmountSignals(FeatureStep):
    """log amount, round-amount flags, threshold band, and amount relative to the sender's mean.

    ``amount_vs_src_mean``: amount divided by the mean of the sender's outgoing amounts in
    the ``trailing_window`` strictly before the event (null when the sender sent nothing).
    ``near_threshold``: 1 when amount is in [threshold·(1 − band), threshold).
    """

    trailing_window: str = "7d"
    reporting_threshold: float = 10_000.0
    band: float = 0.1

    kind = "amount"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        if not 0 < self.band < 1:
            raise ValueError("band must be in (0, 1)")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "amount"]

    def output_columns(self) -> dict[str, pl.DataType]:
        return {
            "log_amount": pl.Float64,
            "round_100": pl.Int8,
            "round_1000": pl.Int8,
            "whole_amount": pl.Int8,
            "near_threshold": pl.Int8,
            "amount_vs_src_mean": pl.Float64,
        }

    def history_window(self) -> str | None:
        return self.trailing_window

    def ahead(self, tl) -> list:
        return [lambda: tl.aggregate("out", "src", self.trailing_window, "mean")]

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        a = pl.col("amount")
        cents = (a * 100).round(0).cast(pl.Int64)
        lo = self.reporting_threshold * (1 - self.band)
        out = frame.with_columns(
            a.log1p().alias("log_amount"),
            ((cents % 10_000) == 0).cast(pl.Int8).alias("round_100"),
            ((cents % 100_000) == 0).cast(pl.Int8).alias("round_1000"),
            ((cents % 100) == 0).cast(pl.Int8).alias("whole_amount"),
            ((a >= lo) & (a < self.reporting_threshold)).cast(pl.Int8).alias("near_threshold"),
        )
        w = self.trailing_window
        # The sender's trailing mean is the rolling step's src_out_mean when the windows
        # agree; the shared timeline computes it once for both.
        tl = timeline(frame)
        out = out.hstack([tl.series(f"mean_{w}", tl.aggregate("out", "src", w, "mean"), pl.Float64)])
        return out.with_columns((a / pl.col(f"mean_{w}")).alias("amount_vs_src_mean")).drop(f"mean_{w}")

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event: its amount and the sender's sent rows."""
        width = duration_us(self.trailing_window)
        threshold = self.reporting_threshold
        lo = self.reporting_threshold * (1 - self.band)

        def compute(ev, h, out: dict) -> None:
            a = ev.amount
            cents = round(a * 100)
            out["log_amount"] = math.log1p(a)
            out["round_100"] = int(cents % 10_000 == 0)
            out["round_1000"] = int(cents % 100_000 == 0)
            out["whole_amount"] = int(cents % 100 == 0)
            out["near_threshold"] = int(a >= lo and a < threshold)
            n, s = h.window_sum(ev.src, "out", ev.t, width)
            out["amount_vs_src_mean"] = ieee_divide(a, fixed_to_float(s) / n) if n else None
        return compute
