"""The row-level rules compiled to Spark: the same list, the same split, the same reasons.

:mod:`aml_pipeline.validation.rules` declares the rules once; :func:`violation` is the
Spark compilation of each rule kind, mirroring :func:`aml_pipeline.validation.polars_engine.violation`
predicate for predicate. :func:`validate` routes every staged row to ``valid`` or
``quarantine`` (with the list of reason codes it broke, in rule order) and counts rows
read, valid, quarantined and per reason in one aggregation, so the reconciliation is exact.

Source order (for ``first_occurrence``) is the staged frame's row order, carried as the
column ``_staged_row`` (written by :mod:`.data` when it hands an adapter's frame to Spark);
a staged table without it is ordered by ``_source_line``, then ``_source_file`` (adapters
read one file each, so that is the file's line order).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import reduce

import polars as pl
import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from aml_pipeline.schema import ALL_COLUMNS, RAW_PREFIX, READ_ERROR, SOURCE_FILE, SOURCE_LINE, SOURCE_TEXT
from aml_pipeline.validation.polars_engine import record_json, wall_clock_us
from aml_pipeline.validation.rules import Rule

ORDER = "_staged_row"
QUARANTINE_COLUMNS = ("source_file", "source_line", "event_id", "reasons", "record")
_FLAG = "_violates_"
_BAD = "_bad"

# Blank = only (Unicode) whitespace, as polars' str.strip_chars() sees it: Java's (?U)\s is
# the Unicode White_Space property, the same set as Rust's char::is_whitespace.
_BLANK = r"(?U)\A\s*\z"
# The control characters of :data:`aml_pipeline.validation.rules.CONTROL_CHARACTERS`, in Java's syntax.
_CONTROL = r"[\x{0}-\x{1f}\x{7f}-\x{9f}\x{2028}\x{2029}]"


def _col(name: str) -> Column:
    return F.col(f"`{name}`")


def violation(rule: Rule, now_us: int | None = None) -> Column:
    """A boolean column that is true where the row breaks ``rule`` (never null).

    ``first_occurrence`` ranks rows by the source-order column ``_staged_row``; ``not_after``
    is judged against ``now_us`` (epoch µs; the wall clock when None).
    """
    if len(rule.all_columns) > 1:
        hits = [violation(replace(rule, column=c, columns=()), now_us) for c in rule.all_columns]
        return reduce(lambda a, b: a | b, hits)
    col = _col(rule.column)
    if rule.kind == "not_blank":
        hit = col.isNull() | col.cast("string").rlike(_BLANK)
    elif rule.kind == "not_null":
        hit = col.isNull()
    elif rule.kind == "positive_finite":
        hit = col.isNull() | F.isnan(col) | (col == float("inf")) | (col == float("-inf")) | (col <= 0)
    elif rule.kind == "in_set":
        hit = col.isNull() | ~col.isin(list(rule.values))
    elif rule.kind == "first_occurrence":
        # Nulls are another rule's business; among non-null values keep the first in source order.
        first = F.row_number().over(Window.partitionBy(col).orderBy(F.col(ORDER)))
        hit = col.isNotNull() & (first > 1)
    elif rule.kind == "read_error":
        hit = col == F.lit(rule.reason)
    elif rule.kind == "not_after":
        bound = (now_us if now_us is not None else wall_clock_us()) + rule.limit
        hit = F.unix_micros(col) > F.lit(bound)
    elif rule.kind == "plain_text":
        hit = col.cast("string").rlike(_CONTROL)
    elif rule.kind == "max_length":
        hit = F.length(col.cast("string")) > rule.limit
    else:
        raise ValueError(f"unknown rule kind {rule.kind!r}")
    return F.coalesce(hit, F.lit(False))


def _with_order(staged: DataFrame) -> DataFrame:
    """Make sure the staged frame has the ``_staged_row`` order column."""
    if ORDER in staged.columns:
        return staged
    keys = [c for c in (SOURCE_LINE, SOURCE_FILE) if c in staged.columns]
    if not keys:
        raise ValueError(f"a staged table needs {ORDER!r} (or {SOURCE_FILE!r}/{SOURCE_LINE!r}) to know its source order")
    return staged.withColumn(ORDER, F.row_number().over(Window.orderBy(*keys)) - 1)


@F.arrow_udf(StringType())
def _json_records(rows: pa.Array) -> pa.Array:
    """The original record of each row, encoded exactly as polars does (the same function,
    :func:`aml_pipeline.validation.polars_engine.record_json`, on the same fields).

    Runs only on quarantined rows (Spark evaluates it after the filter).
    """
    frame = pl.from_arrow(pa.RecordBatch.from_struct_array(rows))
    if isinstance(frame, pl.Series):
        frame = frame.to_frame()
    return record_json(frame).to_arrow()


def _record(staged: DataFrame) -> Column:
    names = staged.columns
    raw = [n for n in names if n.startswith(RAW_PREFIX)]
    fields = [_col(n) for n in raw] if raw else [_col(n) for n in names if n in ALL_COLUMNS]
    if SOURCE_TEXT in names:
        fields.append(_col(SOURCE_TEXT))
    return _json_records(F.struct(*fields))


@dataclass
class SparkValidationResult:
    """The split as lazy DataFrames (ordered by ``_staged_row``) plus the exact counts."""

    valid: DataFrame
    quarantine: DataFrame
    rows_read: int
    rows_valid: int
    rows_quarantined: int
    by_reason: dict[str, int] = field(default_factory=dict)
    _flagged: DataFrame | None = None

    def reconciles(self) -> bool:
        return self.rows_read == self.rows_valid + self.rows_quarantined

    def release(self) -> None:
        """Drop the cached flagged table (call after the outputs are written)."""
        if self._flagged is not None:
            self._flagged.unpersist()


def validate(staged: DataFrame, rules: list[Rule], now_us: int | None = None) -> SparkValidationResult:
    """Route each staged row to ``valid`` or ``quarantine``, like the polars engine.

    ``valid`` keeps the canonical and extra columns (in the staged order of columns);
    ``quarantine`` has ``source_file, source_line, event_id, reasons, record``. Both keep
    ``_staged_row`` so a writer can restore source order (:func:`aml_pipeline.spark.io.publish`).
    One aggregation gives rows read, valid, quarantined and the count per reason.
    """
    staged = _with_order(staged)
    if READ_ERROR not in staged.columns:
        staged = staged.withColumn(READ_ERROR, F.lit(None).cast("string"))
    now_us = wall_clock_us() if now_us is None else now_us
    unread = _col(READ_ERROR).isNotNull()  # a row the adapter could not read fails its read error only
    flags = {r.reason: violation(r, now_us) if r.kind == "read_error" else violation(r, now_us) & ~unread for r in rules}
    flagged = staged.withColumns({_FLAG + reason: hit for reason, hit in flags.items()})
    bad = F.lit(False)
    for reason in flags:
        bad = bad | F.col(_FLAG + reason)
    flagged = flagged.withColumn(_BAD, bad).persist()

    counts = flagged.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.col(_BAD).cast("long")).alias("bad"),
        *[F.sum(F.col(_FLAG + r).cast("long")).alias(r) for r in flags],
    ).first()
    rows_read = int(counts["rows"])
    rows_bad = int(counts["bad"] or 0)
    by_reason = {r: int(counts[r] or 0) for r in flags}
    by_reason = {k: v for k, v in by_reason.items() if v}

    keep = [c for c in staged.columns if c in ALL_COLUMNS]
    valid = flagged.filter(~F.col(_BAD)).select(*[_col(c) for c in keep], F.col(ORDER))

    reasons = F.filter(F.array(*[F.when(F.col(_FLAG + r), F.lit(r)) for r in flags]), lambda x: x.isNotNull()) if flags \
        else F.array().cast("array<string>")
    cols = staged.columns
    quarantine = flagged.filter(F.col(_BAD)).select(
        (_col(SOURCE_FILE) if SOURCE_FILE in cols else F.lit(None)).cast("string").alias("source_file"),
        (_col(SOURCE_LINE) if SOURCE_LINE in cols else F.lit(None)).cast("long").alias("source_line"),
        _col("event_id").cast("string").alias("event_id"),
        reasons.alias("reasons"),
        _record(staged).alias("record"),
        F.col(ORDER),
    )
    return SparkValidationResult(valid=valid, quarantine=quarantine, rows_read=rows_read,
                                 rows_valid=rows_read - rows_bad, rows_quarantined=rows_bad,
                                 by_reason=by_reason, _flagged=flagged)
