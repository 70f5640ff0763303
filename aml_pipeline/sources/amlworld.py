"""IBM AMLworld (Kaggle "IBM Transactions for Anti Money Laundering"): ``*_Trans.csv`` + ``*_Patterns.txt``.

``*_Trans.csv`` header: ``Timestamp,From Bank,Account,To Bank,Account,Amount Received,
Receiving Currency,Amount Paid,Payment Currency,Payment Format,Is Laundering``. The name
``Account`` appears twice, so the columns are renamed on read (``From Account``,
``To Account``; the raw record shows these names).

Mapping:

- accounts are ``<bank>:<account>`` (``From Bank`` + ``Account``). AMLworld account ids are
  issued per bank, so the bank is part of the identity; IBM's own preprocessing for the
  data set also joins bank and account. In the Medium Patterns files no account id occurs
  under two banks, so the prefix merges nothing there, but it rules out cross-bank
  collisions.
- ``amount`` = ``Amount Paid`` in ``Payment Currency`` (what the sender sent);
  ``amount_received``/``currency_received`` keep the receiving side (they differ for
  cross-currency payments).
- currency names become ISO 4217 codes (:data:`CURRENCY_CODES`; Bitcoin -> BTC). An unknown
  name is kept as written, so validation quarantines the row as ``unknown_currency``.
- ``event_time`` from ``%Y/%m/%d %H:%M`` in the configured ``timezone``; ``channel`` =
  ``Payment Format``; ``src_bank``/``dst_bank`` = the bank ids; ``label`` = ``Is Laundering``;
  ``event_id`` = ``<file stem>:<line>``; ``jurisdiction`` = the configured one (AMLworld
  has no countries).
- With ``patterns`` (the matching ``*_Patterns.txt``): each ``BEGIN LAUNDERING ATTEMPT -
  <TYPE>[: detail]`` ... ``END LAUNDERING ATTEMPT - <TYPE>`` block is one attempt. Its
  lines have exactly the Trans.csv row format; a transaction row whose 11 fields equal a
  block line (text fields trimmed, amounts compared as numbers) gets ``typology`` = the
  block's type normalised (``FAN-IN`` -> ``fan_in``, ``SCATTER-GATHER`` ->
  ``scatter_gather``) and ``instance_id`` = ``<patterns file stem>-<attempt number>``
  (attempts numbered from 1 in file order). A line listed in several attempts belongs to
  the first. Rows that match no attempt keep typology/instance_id null. CRLF files work.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from aml_pipeline.errors import DataSourceError
from aml_pipeline.sources.base import (
    Source,
    flag,
    header_fields,
    number,
    raw,
    read_text_table,
    require_file,
    row_event_id,
    staged,
    text,
    timestamp,
    typology_name,
)

COLUMN_NAMES = ["Timestamp", "From Bank", "From Account", "To Bank", "To Account", "Amount Received",
                "Receiving Currency", "Amount Paid", "Payment Currency", "Payment Format", "Is Laundering"]
#: The header as written in the files (``Account`` twice).
HEADER = ["Timestamp", "From Bank", "Account", "To Bank", "Account", "Amount Received", "Receiving Currency",
          "Amount Paid", "Payment Currency", "Payment Format", "Is Laundering"]
TIME_FORMAT = "%Y/%m/%d %H:%M"
AMOUNTS = ("Amount Received", "Amount Paid")

CURRENCY_CODES = {
    "US Dollar": "USD", "Euro": "EUR", "Yuan": "CNY", "Yen": "JPY", "UK Pound": "GBP", "Ruble": "RUB",
    "Rupee": "INR", "Swiss Franc": "CHF", "Canadian Dollar": "CAD", "Australian Dollar": "AUD",
    "Mexican Peso": "MXN", "Shekel": "ILS", "Brazil Real": "BRL", "Saudi Riyal": "SAR", "Bitcoin": "BTC",
}

BEGIN = "BEGIN LAUNDERING ATTEMPT"
END = "END LAUNDERING ATTEMPT"


def currency_code(expr: pl.Expr) -> pl.Expr:
    """ISO 4217 code for an AMLworld currency name; unknown names pass through unchanged."""
    t = text(expr)
    return t.replace(CURRENCY_CODES)


def _match_key(fields: dict[str, pl.Expr]) -> list[pl.Expr]:
    """The 11 fields in comparable form: trimmed text, amounts as numbers."""
    return [(number(e) if name in AMOUNTS else text(e)).alias(f"_k{i}")
            for i, (name, e) in enumerate(fields.items())]


def read_patterns(path: str | Path) -> pl.DataFrame:
    """One row per transaction line of a ``*_Patterns.txt``: its match key, typology and instance id.

    Polars expressions over the file's lines (no Python loop over rows): a running count of
    BEGIN lines numbers the attempts, a line is inside an attempt between its BEGIN and END.
    """
    p = require_file(path, "amlworld", "patterns")
    # Lines end at \n only (splitlines also cuts at U+2028, \x85...); a byte that is not UTF-8
    # becomes U+FFFD, so its line matches no transaction rather than failing the read.
    text = p.read_bytes().decode("utf-8", errors="replace").removeprefix("\ufeff")
    lines = pl.DataFrame({"line": [line.removesuffix("\r") for line in text.split("\n")]})
    line = pl.col("line").str.strip_chars()
    is_begin = line.str.starts_with(BEGIN)
    is_end = line.str.starts_with(END)
    # "BEGIN LAUNDERING ATTEMPT - FAN-IN:  Max 9-degree Fan-In" -> "FAN-IN"
    block_type = line.str.extract(r"^BEGIN LAUNDERING ATTEMPT\s*-\s*([^:]+)", 1)
    frame = lines.with_columns(
        is_begin.alias("_begin"), is_end.alias("_end"),
        is_begin.cast(pl.Int64).cum_sum().alias("_attempt"),
        pl.when(is_begin).then(typology_name(block_type)).forward_fill().alias("_type"),
        # open = BEGINs so far minus ENDs before this line: 1 inside a block, 0 between blocks
        (is_begin.cast(pl.Int64).cum_sum() - is_end.cast(pl.Int64).cum_sum().shift(1, fill_value=0)).alias("_open"),
    )
    tx = frame.filter(~pl.col("_begin") & ~pl.col("_end") & (pl.col("_open") > 0) & (line != ""))
    parts = tx["line"].str.strip_chars().str.split(",")
    bad = parts.list.len() != len(COLUMN_NAMES)
    if bad.any():
        first = tx.filter(bad)["line"][0]
        raise DataSourceError(f"amlworld: {p}: a transaction line inside an attempt does not have "
                              f"{len(COLUMN_NAMES)} fields: {first[:80]!r} (is source.patterns a *_Patterns.txt?)")
    tx = tx.with_columns(parts.list.to_struct(fields=COLUMN_NAMES).alias("_f")).unnest("_f")
    keys = _match_key({c: pl.col(c) for c in COLUMN_NAMES})
    return (tx.select(*keys, pl.col("_type").alias("_typology"),
                      (pl.lit(f"{p.stem}-") + pl.col("_attempt").cast(pl.String)).alias("_instance"))
              .unique(subset=[f"_k{i}" for i in range(len(COLUMN_NAMES))], keep="first", maintain_order=True))


class AmlWorldSource(Source):
    name = "amlworld"
    has_labels = True

    def __init__(self, path: str, patterns: str | None = None, timezone: str = "UTC", jurisdiction: str = "US") -> None:
        self.path = path
        self.patterns = patterns
        self.timezone = timezone
        self.jurisdiction = jurisdiction

    def describe(self) -> str:
        return f"amlworld {self.path}" + (f" + {self.patterns}" if self.patterns else "")

    def read(self) -> pl.DataFrame:
        frame = read_text_table(self.path, "amlworld", COLUMN_NAMES, column_names=COLUMN_NAMES)
        # The header's names are replaced on read; check they are the AMLworld ones.
        for want, got in zip(HEADER, header_fields(self.path)):
            if want.lower() != got.lower():
                raise DataSourceError(f"amlworld: {self.path}: expected column {want!r} where the header has {got!r} "
                                      f"(an AMLworld *_Trans.csv header is: {','.join(HEADER)})")
        columns = {
            "event_id": row_event_id(Path(self.path).stem),
            "event_time": timestamp(raw("Timestamp"), TIME_FORMAT, self.timezone),
            "src_account": self._account("From Bank", "From Account"),
            "dst_account": self._account("To Bank", "To Account"),
            "amount": number(raw("Amount Paid")),
            "currency": currency_code(raw("Payment Currency")),
            "channel": pl.coalesce(text(raw("Payment Format")), pl.lit("unknown")),
            "src_bank": text(raw("From Bank")),
            "dst_bank": text(raw("To Bank")),
            "jurisdiction": pl.lit(self.jurisdiction),
            "label": flag(raw("Is Laundering")),
            "amount_received": number(raw("Amount Received")),
            "currency_received": currency_code(raw("Receiving Currency")),
        }
        if self.patterns:
            attempts = read_patterns(self.patterns)
            keys = [f"_k{i}" for i in range(len(COLUMN_NAMES))]
            frame = (frame.with_columns(_match_key({c: raw(c) for c in COLUMN_NAMES}))
                     .join(attempts, on=keys, how="left", maintain_order="left"))
            columns["typology"] = pl.col("_typology")
            columns["instance_id"] = pl.col("_instance")
        return staged(frame, columns)

    @staticmethod
    def _account(bank: str, account: str) -> pl.Expr:
        b, a = text(raw(bank)), text(raw(account))
        return pl.when(b.is_not_null() & a.is_not_null()).then(b + ":" + a)
