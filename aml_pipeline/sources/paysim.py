"""PaySim: the mobile-money simulator CSV (Kaggle "Synthetic Financial Datasets For Fraud Detection").

Columns: ``step,type,amount,nameOrig,oldbalanceOrg,newbalanceOrig,nameDest,oldbalanceDest,
newbalanceDest,isFraud,isFlaggedFraud``, one row per transaction, no transaction id.

Mapping:

- ``event_time`` = ``start`` + (``step`` - 1) hours. PaySim's ``step`` counts hours of
  simulated time starting at 1, so step 1 is the first hour and maps to ``start`` itself.
  A step that is blank, not a whole number or below 1 leaves ``event_time`` null (the row is
  quarantined as ``invalid_event_time``). PaySim only knows the hour, so every transaction of
  a step gets the same time.
- ``event_id`` = ``<file stem>:<line>`` (the header is line 1).
- ``channel`` = ``type`` (PAYMENT, TRANSFER, CASH_OUT, DEBIT, CASH_IN); ``unknown`` if blank.
- ``merchant`` = ``nameDest`` when it starts with ``M`` (PaySim's merchant accounts).
- ``label`` = ``isFraud``; ``flagged`` = ``isFlaggedFraud`` (both accept ``1``/``0`` and the
  ``1.0``/``0.0`` that pandas re-saves produce). ``typology`` is null: PaySim does not say.
- Balances go to ``src_balance_before/after`` and ``dst_balance_before/after``; numbers in
  scientific notation (``1.916920493E7``) parse.
- ``currency`` and ``jurisdiction`` come from config (PaySim has neither).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from aml_pipeline.sources.base import (
    Source,
    flag,
    number,
    offset_time,
    raw,
    read_text_table,
    row_event_id,
    staged,
    text,
)
from aml_pipeline.timeutil import config_time

COLUMNS = ["step", "type", "amount", "nameOrig", "oldbalanceOrg", "newbalanceOrig", "nameDest",
           "oldbalanceDest", "newbalanceDest", "isFraud", "isFlaggedFraud"]

HOUR_US = 3_600_000_000


class PaySimSource(Source):
    name = "paysim"
    has_labels = True

    def __init__(self, path: str, start: str = "2025-01-01T00:00:00Z", currency: str = "USD",
                 separator: str = ",", jurisdiction: str = "US") -> None:
        self.path = path
        self.start = config_time(start, "source.start")
        self.currency = str(currency).strip().upper()
        self.separator = separator
        self.jurisdiction = jurisdiction

    def describe(self) -> str:
        return f"paysim {self.path}"

    def read(self) -> pl.DataFrame:
        frame = read_text_table(self.path, "paysim", COLUMNS, separator=self.separator)
        frame = frame.with_columns(number(raw("step")).alias("_step"))
        step = pl.col("_step")
        whole_step = pl.when(step.is_finite() & (step >= 1) & (step == step.floor())).then(step)
        event_time = offset_time(self.start, (whole_step - 1) * HOUR_US)
        dest = text(raw("nameDest"))
        return staged(frame, {
            "event_id": row_event_id(Path(self.path).stem),
            "event_time": event_time,
            "src_account": text(raw("nameOrig")),
            "dst_account": dest,
            "amount": number(raw("amount")),
            "currency": pl.lit(self.currency),
            "channel": pl.coalesce(text(raw("type")), pl.lit("unknown")),
            "jurisdiction": pl.lit(self.jurisdiction),
            "merchant": pl.when(dest.str.starts_with("M")).then(dest),
            "label": flag(raw("isFraud")),
            "typology": pl.lit(None, pl.String),
            "src_balance_before": number(raw("oldbalanceOrg")),
            "src_balance_after": number(raw("newbalanceOrig")),
            "dst_balance_before": number(raw("oldbalanceDest")),
            "dst_balance_after": number(raw("newbalanceDest")),
            "flagged": flag(raw("isFlaggedFraud")),
        })
