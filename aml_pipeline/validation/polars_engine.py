"""Compile the row-level rules to polars and split a staged frame into valid and quarantined.

The split is exact by construction: every row lands in exactly one of the two outputs, and
:class:`ValidationResult` carries the counts that prove it (rows read = valid + quarantined).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from aml_pipeline.schema import ALL_COLUMNS, RAW_PREFIX, SOURCE_FILE, SOURCE_LINE
from aml_pipeline.validation.rules import Rule

QUARANTINE_COLUMNS = ("source_file", "source_line", "event_id", "reasons", "record")


def violation(rule: Rule) -> pl.Expr:
    """A boolean expression that is True where the row breaks ``rule``."""
    col = pl.col(rule.column)
    if rule.kind == "not_blank":
        return col.is_null() | (col.cast(pl.String).str.strip_chars() == "")
    if rule.kind == "not_null":
        return col.is_null()
    if rule.kind == "positive_finite":
        return col.is_null() | col.is_nan() | col.is_infinite() | (col <= 0)
    if rule.kind == "in_set":
        return col.is_null() | ~col.is_in(list(rule.values))
    if rule.kind == "first_occurrence":
        # Nulls are another rule's business; among non-null ids keep the first in source order.
        return col.is_not_null() & ~col.is_first_distinct()
    raise ValueError(f"unknown rule kind {rule.kind!r}")


@dataclass
class ValidationResult:
    valid: pl.DataFrame
    quarantine: pl.DataFrame
    rows_read: int
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def rows_valid(self) -> int:
        return self.valid.height

    @property
    def rows_quarantined(self) -> int:
        return self.quarantine.height

    def reconciles(self) -> bool:
        return self.rows_read == self.rows_valid + self.rows_quarantined


def _record_json(frame: pl.DataFrame) -> pl.Expr:
    """The original record as a JSON object: the raw source text when the adapter kept it."""
    names = frame.columns
    raw = [n for n in names if n.startswith(RAW_PREFIX)]
    if raw:
        fields = [pl.col(n).alias(n[len(RAW_PREFIX):]) for n in raw]
    else:
        fields = [pl.col(n).cast(pl.String) for n in names if n in ALL_COLUMNS]
    return pl.struct(fields).struct.json_encode()


def validate(staged: pl.DataFrame, rules: list[Rule]) -> ValidationResult:
    """Route each row of an adapter's staged frame to ``valid`` or ``quarantine``.

    ``valid`` keeps the canonical and extra columns only. ``quarantine`` has one row per
    failing record: where it was read (file, line), its event id if any, the list of
    reason codes it broke (a row can break several), and the original record as JSON.
    """
    flags = staged.select([violation(r).alias(r.reason) for r in rules])
    failing = pl.any_horizontal(pl.all()) if rules else pl.lit(False)
    bad_mask = flags.select(failing.alias("bad")).to_series()

    by_reason = {r.reason: int(flags[r.reason].sum()) for r in rules}
    by_reason = {k: v for k, v in by_reason.items() if v}

    keep = [c for c in staged.columns if c in ALL_COLUMNS]
    valid = staged.filter(~bad_mask).select(keep)

    bad = staged.filter(bad_mask)
    bad_flags = flags.filter(bad_mask)
    reasons = pl.concat_list([pl.when(pl.col(r.reason)).then(pl.lit(r.reason)) for r in rules]).list.drop_nulls()
    reasons_series = bad_flags.select(reasons.alias("reasons")).to_series() if rules else pl.Series("reasons", [], pl.List(pl.String))
    quarantine = bad.select(
        (pl.col(SOURCE_FILE) if SOURCE_FILE in bad.columns else pl.lit(None, pl.String)).alias("source_file"),
        (pl.col(SOURCE_LINE) if SOURCE_LINE in bad.columns else pl.lit(None, pl.Int64)).cast(pl.Int64).alias("source_line"),
        pl.col("event_id").cast(pl.String),
        pl.lit(reasons_series),
        _record_json(bad).alias("record"),
    )
    return ValidationResult(valid=valid, quarantine=quarantine, rows_read=staged.height, by_reason=by_reason)
