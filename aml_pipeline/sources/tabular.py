"""Any CSV or parquet export, mapped onto the canonical schema by config alone.

``columns`` maps canonical names to columns of the file, ``constants`` gives a fixed value
for a canonical column the file lacks (``currency: EUR``). Keys must be canonical or extra
column names (docs/data.md); a key may be mapped or constant, not both.

- Required: ``event_time``, ``src_account``, ``dst_account`` and ``amount`` mapped;
  ``currency`` mapped or constant. ``channel`` defaults to ``unknown``; ``event_id`` to
  ``<file stem>:<line>`` when not mapped.
- ``event_time``: ``time_format`` strptime codes (null = ISO 8601), naive times are in
  ``timezone``. A parquet datetime column is used as is (naive ones read in ``timezone``).
- Money columns (``amount``, ``amount_received`` and the four balances) are multiplied by
  ``amount_scale`` (0.01 for cents).
- ``label``: with ``positive_labels``, a value in the list is 1 and any other non-blank value
  0; without, the usual spellings (1/true/yes/y/t -> 1, 0/false/no/n/f -> 0, also 1.0/0.0)
  and anything else is null (quarantined as invalid_label). ``has_labels`` is False when no
  label is mapped, so validation does not ask for one.
- ``flagged`` reads like a default label. ``jurisdiction``: a mapped column, else the
  sender's country, else a constant, else the source's ``jurisdiction``.
- Parquet: read with polars; every column is also kept as text under ``raw:<name>`` so a
  quarantined record shows its values; ``_source_line`` is the 1-based row number there
  (for CSV it is the file line, header = line 1).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from aml_pipeline.errors import ConfigError, DataSourceError
from aml_pipeline.schema import ALL_COLUMNS, SOURCE_FILE, SOURCE_LINE, raw_column
from aml_pipeline.sources.base import (
    Source,
    flag,
    number,
    option,
    raw,
    read_text_table,
    require_file,
    row_event_id,
    staged,
    text,
    timestamp,
)

FORMATS = ("csv", "parquet")
REQUIRED_MAPPED = ("event_time", "src_account", "dst_account", "amount")
MONEY = ("amount", "amount_received", "src_balance_before", "src_balance_after",
         "dst_balance_before", "dst_balance_after")
TYPED = "typed:"  # parquet columns in their own dtype, next to the raw text (dropped by staged())


class TabularSource(Source):
    name = "tabular"

    def __init__(self, path: str, format: str = "csv", separator: str = ",", columns: dict | None = None,
                 constants: dict | None = None, time_format: str | None = None, timezone: str = "UTC",
                 amount_scale: float = 1.0, positive_labels: list | None = None, jurisdiction: str = "US") -> None:
        self.path = path
        self.format = option(format, FORMATS, "source.format")
        self.separator = separator
        self.columns = {str(k): str(v) for k, v in dict(columns or {}).items()}
        self.constants = {str(k): v for k, v in dict(constants or {}).items()}
        self.time_format = time_format
        self.timezone = timezone
        self.amount_scale = float(amount_scale)
        self.positive_labels = [str(v).strip() for v in (positive_labels or [])]
        self.jurisdiction = jurisdiction
        allowed = ", ".join(ALL_COLUMNS)
        for group, mapping in (("columns", self.columns), ("constants", self.constants)):
            for key in mapping:
                if key not in ALL_COLUMNS:
                    raise ConfigError(f"source.{group}.{key}: {key!r} is not a canonical column; use one of: {allowed}")
        for key in self.constants:
            if key in self.columns:
                raise ConfigError(f"source.constants.{key}: {key!r} is also mapped in source.columns.{key}; give one of the two")
        self.has_labels = "label" in self.columns or "label" in self.constants

    def describe(self) -> str:
        return f"tabular {self.format} {self.path}"

    def check_mapping(self) -> None:
        """The mapping names every required column (checked on read: the defaults are empty)."""
        for key in REQUIRED_MAPPED:
            if key not in self.columns:
                raise ConfigError(f"source.columns.{key} is required: name the column of {self.path} that holds {key} "
                                  f"(required: {', '.join(REQUIRED_MAPPED)})")
        if "currency" not in self.columns and "currency" not in self.constants:
            raise ConfigError("source.columns.currency or source.constants.currency is required "
                              "(the ISO 4217 code of the amounts, e.g. +source.constants={currency:EUR})")
        if self.amount_scale <= 0:
            raise ConfigError(f"source.amount_scale={self.amount_scale} must be > 0")

    # ------------------------------------------------------------------ reading
    def _read_frame(self) -> tuple[pl.DataFrame, dict[str, pl.DataType]]:
        """The file with raw text columns (and, for parquet, typed copies) plus file/line."""
        needed = list(dict.fromkeys(self.columns.values()))
        if self.format == "csv":
            return read_text_table(self.path, "tabular", needed, separator=self.separator), {}
        p = require_file(self.path, "tabular")
        try:
            data = pl.read_parquet(p)
        except (pl.exceptions.PolarsError, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataSourceError(f"tabular: cannot read {p} as parquet: {first} (is source.format right?)") from None
        missing = [c for c in needed if c not in data.columns]
        if missing:
            raise DataSourceError(f"tabular: {p}: required column {missing[0]!r} is missing "
                                  f"(found: {', '.join(data.columns[:12])}{'...' if len(data.columns) > 12 else ''})")
        frame = data.select(
            *[(pl.struct(c).struct.json_encode() if data.schema[c].is_nested() else pl.col(c).cast(pl.String))
              .alias(raw_column(c)) for c in data.columns],
            *[pl.col(c).alias(TYPED + c) for c in needed],
            pl.lit(str(p)).alias(SOURCE_FILE),
            (pl.int_range(pl.len(), dtype=pl.Int64) + 1).alias(SOURCE_LINE),
        )
        return frame, {c: data.schema[c] for c in needed}

    def _value(self, key: str) -> pl.Expr:
        """The source text for canonical column ``key``: the mapped column or the constant."""
        if key in self.columns:
            return raw(self.columns[key])
        return pl.lit(None if self.constants[key] is None else str(self.constants[key]), pl.String)

    def _given(self, key: str) -> bool:
        return key in self.columns or key in self.constants

    def _event_time(self, dtypes: dict[str, pl.DataType]) -> pl.Expr:
        col = self.columns["event_time"]
        dtype = dtypes.get(col)
        if isinstance(dtype, pl.Datetime):
            typed = pl.col(TYPED + col).cast(pl.Datetime("us", dtype.time_zone))
            if dtype.time_zone is None:
                typed = typed.dt.replace_time_zone(self.timezone, ambiguous="earliest", non_existent="null")
            return typed.dt.convert_time_zone("UTC")
        if isinstance(dtype, pl.Date):
            return (pl.col(TYPED + col).cast(pl.Datetime("us"))
                    .dt.replace_time_zone(self.timezone, ambiguous="earliest", non_existent="null")
                    .dt.convert_time_zone("UTC"))
        return timestamp(self._value("event_time"), self.time_format, self.timezone)

    def _label(self) -> pl.Expr:
        value = self._value("label")
        if not self.positive_labels:
            return flag(value)
        t = text(value)
        positives = [p.lower() for p in self.positive_labels]
        return (pl.when(t.is_null()).then(None)
                .when(t.str.to_lowercase().is_in(positives)).then(pl.lit(1, pl.Int8))
                .otherwise(pl.lit(0, pl.Int8)))

    def read(self) -> pl.DataFrame:
        self.check_mapping()
        frame, dtypes = self._read_frame()
        out: dict[str, pl.Expr] = {}
        for key, dtype in ALL_COLUMNS.items():
            if not self._given(key) or key in ("event_time", "label"):
                continue
            value = self._value(key)
            if key in MONEY:
                out[key] = number(value, self.amount_scale)
            elif dtype == pl.Float64:
                out[key] = number(value)
            elif dtype == pl.Int8:
                out[key] = flag(value)
            else:
                out[key] = text(value)
        out["event_time"] = self._event_time(dtypes)
        if self._given("label"):
            out["label"] = self._label()
        if "event_id" not in out:
            out["event_id"] = row_event_id(Path(self.path).stem)
        for key in ("currency", "src_country", "dst_country", "jurisdiction"):  # ISO codes are upper case
            if key in out:
                out[key] = out[key].str.to_uppercase()
        out["channel"] = pl.coalesce(out["channel"], pl.lit("unknown")) if "channel" in out else pl.lit("unknown")
        fallback = pl.lit(str(self.constants.get("jurisdiction") or self.jurisdiction))
        known = [out[k] for k in ("jurisdiction", "src_country") if k in self.columns]
        out["jurisdiction"] = pl.coalesce(*known, fallback)
        return staged(frame, out)

