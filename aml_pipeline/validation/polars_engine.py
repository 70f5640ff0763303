"""Compile the row-level rules to polars and split a staged frame into valid and quarantined.

The split is exact by construction: every row lands in exactly one of the two outputs, and
:class:`ValidationResult` carries the counts that prove it (rows read = valid + quarantined).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace

import polars as pl

from aml_pipeline.schema import ALL_COLUMNS, RAW_PREFIX, READ_ERROR, SOURCE_FILE, SOURCE_LINE, SOURCE_TEXT
from aml_pipeline.validation.rules import CONTROL_CHARACTERS, Rule

QUARANTINE_COLUMNS = ("source_file", "source_line", "event_id", "reasons", "record")


def violation(rule: Rule, now_us: int | None = None) -> pl.Expr:
    """A boolean expression that is True where the row breaks ``rule``.

    ``now_us``: the trusted clock (epoch µs) ``not_after`` rules are judged against."""
    if len(rule.all_columns) > 1:
        return pl.any_horizontal([violation(replace(rule, column=c, columns=()), now_us) for c in rule.all_columns])
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
    if rule.kind == "read_error":
        return (col == rule.reason).fill_null(False)
    if rule.kind == "not_after":
        bound = (now_us if now_us is not None else wall_clock_us()) + rule.limit
        return (col.dt.epoch("us") > bound).fill_null(False)
    if rule.kind == "plain_text":
        return col.cast(pl.String).str.contains(CONTROL_CHARACTERS).fill_null(False)
    if rule.kind == "max_length":
        return (col.cast(pl.String).str.len_chars() > rule.limit).fill_null(False)
    raise ValueError(f"unknown rule kind {rule.kind!r}")


def wall_clock_us() -> int:
    """The trusted clock: this machine's wall clock, epoch microseconds."""
    return time.time_ns() // 1000


def with_read_error(staged: pl.DataFrame) -> pl.DataFrame:
    """The staged frame with ``_read_error`` (null when the adapter reports none)."""
    return staged if READ_ERROR in staged.columns else staged.with_columns(pl.lit(None, pl.String).alias(READ_ERROR))


def flag_rules(staged: pl.DataFrame, rules: list[Rule], now_us: int | None = None) -> pl.DataFrame:
    """One boolean column per rule (named by its reason). A row the adapter could not read
    fails its read error only: its other fields were never read, so they prove nothing."""
    now_us = wall_clock_us() if now_us is None else now_us
    frame = with_read_error(staged)
    unread = pl.col(READ_ERROR).is_not_null()
    return frame.select([(violation(r, now_us) if r.kind == "read_error" else violation(r, now_us) & ~unread).alias(r.reason)
                         for r in rules])


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


def record_json(frame: pl.DataFrame) -> pl.Series:
    """The original record of each row as JSON: an object of the raw source fields when the
    adapter kept them (``raw:<name>``), else of the canonical columns; the line's text as a
    JSON string when the line could not be split into fields (``_source_text``)."""
    names = frame.columns
    raw = [n for n in names if n.startswith(RAW_PREFIX)]
    if raw:
        fields = [pl.col(n).alias(n[len(RAW_PREFIX):]) for n in raw]
    else:
        fields = [pl.col(n).cast(pl.String) for n in names if n in ALL_COLUMNS]
    record = frame.select(pl.struct(fields).struct.json_encode().alias("record")).to_series()
    if SOURCE_TEXT in names and frame[SOURCE_TEXT].null_count() < frame.height:
        texts = frame[SOURCE_TEXT].to_list()
        record = pl.Series("record", [r if t is None else json.dumps(t, ensure_ascii=False)
                                      for r, t in zip(record.to_list(), texts)], pl.String)
    return record


def validate(staged: pl.DataFrame, rules: list[Rule], now_us: int | None = None) -> ValidationResult:
    """Route each row of an adapter's staged frame to ``valid`` or ``quarantine``.

    ``valid`` keeps the canonical and extra columns only. ``quarantine`` has one row per
    failing record: where it was read (file, line), its event id if any, the list of
    reason codes it broke (a row can break several), and the original record as JSON.
    ``now_us``: the trusted clock of ``event_time_in_future`` (default: the wall clock now,
    read once for the whole frame).
    """
    flags = flag_rules(staged, rules, now_us)
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
        pl.lit(record_json(bad)).alias("record"),
    )
    return ValidationResult(valid=valid, quarantine=quarantine, rows_read=staged.height, by_reason=by_reason)
