"""One reporting currency: ``features.fx`` converts every amount before any feature sees it.

A ledger in several currencies compares unlike things: a 9,500 EUR cash deposit is under a
10,000 USD reporting threshold in one currency and over it in the other, and an account's
24 h sum adds yen to pounds. ``features.fx`` names a reporting currency and a table of
rates (units of the reporting currency per one unit of the listed currency); the plan
converts ``amount`` by the event's ``currency`` once, at each engine's entry, so every
step (thresholds, windows, matching bands) sees like with like. The table is part of the
fitted plan (``plan.json``), so every scorer converts exactly as training did.

The conversion exists in the three forms the engines need, all the same multiplication of
the same doubles (so the engines stay bit-identical): a polars frame function
(:meth:`FxTable.convert_frame`, the offline engine and the stream's micro-batches), a
per-event function (:meth:`FxTable.convert_values`, the online service and the store's
warm-up) and a Spark Column (:meth:`FxTable.spark_amount`). An event in a currency with no
rate is an error, never a silent 1:1: in a batch a :class:`UserError` naming the
currencies, their counts and the key to add; per event a ``ValueError`` (the service's 422).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import polars as pl
from omegaconf import DictConfig, OmegaConf

from aml_pipeline.errors import ConfigError, UserError

#: ISO 4217-like codes: three to five capital letters or digits (BTC, USDT, X9X).
CODE = re.compile(r"^[A-Z][A-Z0-9]{2,4}$")


class FxTable:
    """The reporting currency and the rates into it (the reporting currency's own rate is 1)."""

    def __init__(self, currency: str, rates: Mapping[str, float], key: str = "features.fx"):
        if not isinstance(currency, str) or not CODE.match(currency):
            raise ConfigError(f"{key}.currency={currency!r}: a currency code of 3-5 capital letters (e.g. USD)")
        table: dict[str, float] = {}
        for code, rate in (rates or {}).items():
            if not isinstance(code, str) or not CODE.match(code):
                raise ConfigError(f"{key}.rates.{code}: not a currency code; allowed: 3-5 capital letters (e.g. EUR)")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
                raise ConfigError(f"{key}.rates.{code}={rate!r}: a rate must be a finite number > 0 "
                                  f"({currency} per one {code})")
            table[code] = float(rate)
        if table.get(currency, 1.0) != 1.0:
            raise ConfigError(f"{key}.rates.{currency}={table[currency]!r}: the reporting currency's rate is 1; "
                              f"remove it or set it to 1")
        table[currency] = 1.0
        self.currency = currency
        self.rates = dict(sorted(table.items()))

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Any, key: str = "features.fx") -> "FxTable | None":
        """``features.fx`` (``{currency, rates}``) or None when it is null (no conversion)."""
        if cfg is None:
            return None
        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
        if isinstance(cfg, FxTable):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"{key}: a mapping {{currency: USD, rates: {{EUR: 1.08}}}} or null")
        unknown = sorted(set(cfg) - {"currency", "rates"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: not a parameter of fx; allowed: currency, rates")
        if "currency" not in cfg:
            raise ConfigError(f"{key}.currency: missing; the reporting currency (e.g. USD)")
        rates = cfg.get("rates") or {}
        if not isinstance(rates, Mapping):
            raise ConfigError(f"{key}.rates: a mapping of currency code to rate (e.g. {{EUR: 1.08}})")
        return cls(cfg["currency"], rates, key)

    def to_dict(self) -> dict[str, Any]:
        return {"currency": self.currency, "rates": dict(self.rates)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FxTable":
        return cls(data["currency"], data["rates"], "bundle plan fx")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FxTable) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"FxTable({self.currency}, {self.rates})"

    # -- polars ---------------------------------------------------------------------------
    def rate_expr(self, column: str = "currency") -> pl.Expr:
        """The rate of each row's currency (null where the table has none)."""
        return pl.col(column).replace_strict(self.rates, default=None, return_dtype=pl.Float64)

    def convert_frame(self, frame: pl.DataFrame, what: str = "events") -> pl.DataFrame:
        """``amount`` in the reporting currency; a currency with no rate is a UserError."""
        if not frame.height:
            return frame
        rate = frame.select(self.rate_expr().alias("r"))["r"]
        if rate.null_count():
            missing = (frame.filter(rate.is_null()).group_by("currency").len()
                       .sort("len", "currency", descending=[True, False]))
            raise UserError(self._missing_message(dict(missing.iter_rows()), what))
        return frame.with_columns(pl.col("amount") * rate)

    def _missing_message(self, counts: Mapping[Any, int], what: str) -> str:
        listed = ", ".join(f"{'no currency' if c is None else c} ({n:,})" for c, n in counts.items())
        first = next((c for c in counts if isinstance(c, str)), None)
        fix = (f"add features.fx.rates.{first} ({self.currency} per one {first})" if first is not None
               else "map the source's currency column")
        return f"features.fx: {what} in currencies with no rate to {self.currency}: {listed}; {fix}"

    # -- one event --------------------------------------------------------------------------
    def convert_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of one event's values with ``amount`` in the reporting currency.

        A currency with no rate raises ValueError (the service answers 422 with its message)."""
        code = values.get("currency")
        rate = self.rates.get(code) if isinstance(code, str) else None
        if rate is None:
            raise ValueError(f"currency={code!r} has no rate to {self.currency} in the bundle's features.fx "
                             f"(known: {', '.join(self.rates)})")
        out = dict(values)
        out["amount"] = float(values["amount"]) * rate
        return out

    # -- Spark ----------------------------------------------------------------------------
    def spark_amount(self):
        """A Spark Column: ``amount`` times the rate of ``currency`` (null where none)."""
        F = _spark_functions()
        pairs = [x for code, rate in self.rates.items() for x in (F.lit(code), F.lit(rate))]
        return F.col("amount") * F.create_map(*pairs)[F.col("currency")]

    def check_spark(self, frame, what: str = "events") -> None:
        """Raise the batch UserError when ``frame`` holds currencies with no rate."""
        F = _spark_functions()
        missing = (frame.where(~F.col("currency").isin(list(self.rates)) | F.col("currency").isNull())
                   .groupBy("currency").count().collect())
        if missing:
            counts = {r["currency"]: r["count"] for r in sorted(missing, key=lambda r: (-r["count"], str(r["currency"])))}
            raise UserError(self._missing_message(counts, what))


def _spark_functions():
    """``pyspark.sql.functions``, imported here only: the Spark engine calls the two Spark
    forms above after it checked the spark extra; the other engines never reach them."""
    from pyspark.sql import functions

    return functions
