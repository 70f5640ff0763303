"""The canonical transaction schema: the one shape every source adapter produces.

Everything downstream (features, training, Spark, streaming, serving) speaks only this
schema, so it is defined once here: the column names and dtypes, the pandera model that
guards the ``data/validated`` boundary, and the list of extra columns an adapter may keep.
The row-level rules that decide whether a record is valid live in
:mod:`aml_pipeline.validation.rules` so that the polars and Spark engines compile the same
definitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import pandera.polars as pa
import polars as pl

UTC_TIME = pl.Datetime("us", "UTC")


@dataclass(frozen=True)
class Field:
    """One column of the canonical schema, with the sentence the docs print for it."""

    name: str
    dtype: pl.DataType
    required: bool
    doc: str


# Order matters: validated files are written in this column order.
CANONICAL_FIELDS: tuple[Field, ...] = (
    Field("event_id", pl.String, True, "Unique id of the transaction within the data set (the source's id, or one derived from file and row)."),
    Field("event_time", UTC_TIME, True, "When the transaction happened, timezone-aware UTC, microsecond precision."),
    Field("src_account", pl.String, True, "Account that sends the money (originator)."),
    Field("dst_account", pl.String, True, "Account that receives the money (beneficiary)."),
    Field("amount", pl.Float64, True, "Amount sent, a finite number > 0, in `currency` (major units)."),
    Field("currency", pl.String, True, "ISO 4217 code of `amount` (BTC for Bitcoin); must be in `validation.currencies`."),
    Field("channel", pl.String, True, "Transaction type or payment channel (PaySim `type`, AMLworld `Payment Format`, ...); `unknown` when the source has none."),
    Field("src_bank", pl.String, False, "Bank of the sending account, when known."),
    Field("dst_bank", pl.String, False, "Bank of the receiving account, when known."),
    Field("src_country", pl.String, False, "ISO 3166 alpha-2 country of the sending account, when known."),
    Field("dst_country", pl.String, False, "ISO 3166 alpha-2 country of the receiving account, when known."),
    Field("jurisdiction", pl.String, True, "Jurisdiction whose thresholds judge the transaction: the sender's country when known, else the source's configured default."),
    Field("merchant", pl.String, False, "Merchant (receiving business) identifier, when the receiver is a merchant."),
    Field("region", pl.String, False, "Region or branch the transaction is attributed to, when known (used for alert budgets)."),
    Field("label", pl.Int8, False, "1 = laundering/fraud, 0 = legitimate, null = unknown (e.g. live traffic)."),
    Field("typology", pl.String, False, "Laundering typology of a positive transaction when known (fan_in, cycle, ...); null for negatives."),
    Field("instance_id", pl.String, False, "Id of the laundering instance/attempt a positive transaction belongs to, when known."),
)

# Extra columns an adapter may keep because features use them. They are optional: a
# feature step that needs one refuses to run on a source that lacks it.
EXTRA_FIELDS: tuple[Field, ...] = (
    Field("src_balance_before", pl.Float64, False, "Sender's balance before the transaction (PaySim `oldbalanceOrg`)."),
    Field("src_balance_after", pl.Float64, False, "Sender's balance after the transaction (PaySim `newbalanceOrig`)."),
    Field("dst_balance_before", pl.Float64, False, "Receiver's balance before the transaction (PaySim `oldbalanceDest`)."),
    Field("dst_balance_after", pl.Float64, False, "Receiver's balance after the transaction (PaySim `newbalanceDest`)."),
    Field("amount_received", pl.Float64, False, "Amount credited to the receiver in `currency_received` (AMLworld `Amount Received`)."),
    Field("currency_received", pl.String, False, "ISO 4217 code of `amount_received`."),
    Field("flagged", pl.Int8, False, "The source system's own rule flag (PaySim `isFlaggedFraud`), kept for comparison, never used as a feature."),
)

CANONICAL_COLUMNS: dict[str, pl.DataType] = {f.name: f.dtype for f in CANONICAL_FIELDS}
EXTRA_COLUMNS: dict[str, pl.DataType] = {f.name: f.dtype for f in EXTRA_FIELDS}
ALL_COLUMNS: dict[str, pl.DataType] = {**CANONICAL_COLUMNS, **EXTRA_COLUMNS}
REQUIRED_COLUMNS: tuple[str, ...] = tuple(f.name for f in CANONICAL_FIELDS if f.required)

# Bookkeeping columns an adapter adds so that a quarantined row can be traced back to the
# exact place it was read from; they never reach data/validated.
SOURCE_FILE = "_source_file"
SOURCE_LINE = "_source_line"
#: Why a line could not be split into the header's fields (null when it could), and its text.
READ_ERROR = "_read_error"
SOURCE_TEXT = "_source_text"
RAW_PREFIX = "raw:"


def raw_column(name: str) -> str:
    """Name under which an adapter keeps a source column's original text."""
    return f"{RAW_PREFIX}{name}"


def conform(frame: pl.DataFrame | pl.LazyFrame, keep_extra: bool = True):
    """Give a frame exactly the canonical columns (missing optional ones as typed nulls).

    Extra columns from :data:`EXTRA_FIELDS` are kept when present; bookkeeping and raw
    columns are kept too so validation can still see them. Anything else is dropped.
    """
    names = frame.collect_schema().names()
    exprs = []
    for name, dtype in CANONICAL_COLUMNS.items():
        exprs.append(pl.col(name).cast(dtype) if name in names else pl.lit(None, dtype=dtype).alias(name))
    if keep_extra:
        exprs += [pl.col(n).cast(d) for n, d in EXTRA_COLUMNS.items() if n in names]
    exprs += [pl.col(n) for n in names if n in (SOURCE_FILE, SOURCE_LINE, READ_ERROR, SOURCE_TEXT) or n.startswith(RAW_PREFIX)]
    return frame.select(exprs)


class ValidatedTransactions(pa.DataFrameModel):
    """The ``data/validated`` boundary: every row here passed the row-level rules.

    Checked once per write with pandera; a failure here is a bug in an adapter or in the
    rules (bad rows must already be in quarantine), so it raises rather than routes.
    """

    event_id: str = pa.Field(unique=True)
    event_time: Annotated[pl.Datetime, "us", "UTC"]
    src_account: str
    dst_account: str
    amount: float = pa.Field(gt=0)
    currency: str
    channel: str
    src_bank: str = pa.Field(nullable=True)
    dst_bank: str = pa.Field(nullable=True)
    src_country: str = pa.Field(nullable=True)
    dst_country: str = pa.Field(nullable=True)
    jurisdiction: str
    merchant: str = pa.Field(nullable=True)
    region: str = pa.Field(nullable=True)
    label: pl.Int8 = pa.Field(nullable=True, isin=[0, 1])
    typology: str = pa.Field(nullable=True)
    instance_id: str = pa.Field(nullable=True)

    class Config:
        strict = False  # extra columns (balances, ...) are allowed
        coerce = False


def schema_markdown() -> str:
    """The field reference table printed in docs/data.md (kept in sync by a test)."""
    lines = ["| column | type | required | meaning |", "|---|---|---|---|"]
    for f in CANONICAL_FIELDS + EXTRA_FIELDS:
        lines.append(f"| `{f.name}` | {f.dtype} | {'yes' if f.required else 'no'} | {f.doc} |")
    return "\n".join(lines)
