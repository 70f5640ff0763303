"""Balance consistency: does the money add up on both accounts?

Sources with balances (PaySim) reveal fraud through accounts emptied in one go and
balances that do not move by the amount paid. A source without balances cannot feed
this step, and the plan refuses it at start-up instead of producing empty features.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from aml_pipeline.features.base import FeatureStep, register

BALANCES = ["src_balance_before", "src_balance_after", "dst_balance_before", "dst_balance_after"]


@register
@dataclass
class BalanceConsistency(FeatureStep):
    """Errors in the balance arithmetic and tell-tale balance states (row-level, no history).

    src_balance_error = before − amount − after (0 when consistent);
    dst_balance_error = before + amount − after; src_emptied = sender left with 0 from > 0;
    dst_was_empty = receiver had 0 before; amount_to_src_balance = amount / sender's balance.
    """

    kind = "balance"

    def required_columns(self) -> list[str]:
        return ["amount", *BALANCES]

    def output_columns(self) -> dict[str, pl.DataType]:
        return {
            "src_balance_error": pl.Float64,
            "dst_balance_error": pl.Float64,
            "src_emptied": pl.Int8,
            "dst_was_empty": pl.Int8,
            "amount_to_src_balance": pl.Float64,
        }

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        a, sb, sa, db, da = (pl.col(c) for c in ["amount", *BALANCES])
        return frame.with_columns(
            (sb - a - sa).alias("src_balance_error"),
            (db + a - da).alias("dst_balance_error"),
            ((sa == 0) & (sb > 0)).cast(pl.Int8).alias("src_emptied"),
            (db == 0).cast(pl.Int8).alias("dst_was_empty"),
            pl.when(sb > 0).then(a / sb).alias("amount_to_src_balance"),
        )
