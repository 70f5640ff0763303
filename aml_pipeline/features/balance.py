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
    engines = ("polars", "online", "spark")

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

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event, from its own balances."""

        def compute(ev, h, out: dict) -> None:
            v = ev.values
            a = ev.amount
            sb, sa, db, da = (v.get(c) for c in BALANCES)
            out["src_balance_error"] = None if sb is None or sa is None else sb - a - sa
            out["dst_balance_error"] = None if db is None or da is None else db + a - da
            emptied = _and(None if sa is None else sa == 0, None if sb is None else sb > 0)
            out["src_emptied"] = None if emptied is None else int(emptied)
            out["dst_was_empty"] = None if db is None else int(db == 0)
            out["amount_to_src_balance"] = a / sb if sb is not None and sb > 0 else None
        return compute


def _and(x: bool | None, y: bool | None) -> bool | None:
    """Kleene AND, as polars combines booleans with nulls."""
    if x is False or y is False:
        return False
    if x is None or y is None:
        return None
    return True
