"""Raw stream records -> canonical events, with the batch path's row-level rules.

A stream record is text (a JSON object per transaction) plus where it came from (file and
line, or topic, partition and offset). :func:`stage` parses the records into a frame of
the canonical columns with the same types the adapters produce (a value that cannot be
parsed becomes null, so the rule on that column names it); :func:`check` then applies the
rule list of :mod:`aml_pipeline.validation` (the same :class:`~aml_pipeline.validation.Rule`
objects, compiled by the same :func:`~aml_pipeline.validation.polars_engine.violation`),
plus ``unparseable_record`` for text that is not a JSON object and ``duplicate_event_id``
for an id the stream accepted before. Every record ends up either valid or a dead letter
carrying its original text, its reasons and its position.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import polars as pl

from aml_pipeline.schema import ALL_COLUMNS, UTC_TIME
from aml_pipeline.validation.polars_engine import violation
from aml_pipeline.validation.rules import Rule

UNPARSEABLE = "unparseable_record"
DUPLICATE = "duplicate_event_id"
#: Columns of a staged batch: every canonical and extra column, typed.
STAGED_SCHEMA: dict[str, pl.DataType] = dict(ALL_COLUMNS)
_FLOATS = {c for c, d in ALL_COLUMNS.items() if d == pl.Float64}
_INTS = {c for c, d in ALL_COLUMNS.items() if d in (pl.Int8, pl.Int64)}


@dataclass
class RawRecord:
    """One record as read: its text (None when the bytes are not UTF-8), the raw bytes for
    that case, and its position (``{"file", "line"}`` or ``{"topic", "partition", "offset"}``)."""

    text: str | None
    position: dict[str, Any]
    raw: bytes | None = None


@dataclass
class Checked:
    """A batch after validation: the valid events (canonical frame, arrival order) and the
    dead letters (dicts ready to write)."""

    valid: pl.DataFrame
    valid_positions: list[dict[str, Any]]
    valid_texts: list[str]
    dead: list[dict[str, Any]] = field(default_factory=list)


def _time(v: Any) -> datetime | None:
    """ISO-8601 with a UTC offset; naive or unparseable times are null (invalid_event_time)."""
    if not isinstance(v, str):
        return None
    try:
        ts = datetime.fromisoformat(v.strip())
    except ValueError:
        return None
    if ts.tzinfo is None:
        return None
    return ts.astimezone(timezone.utc)


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v.strip())
        except ValueError:
            return None
    return None


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip() in ("0", "1"):
        return int(v.strip())
    return None


def _str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _loads(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _column(name: str, values: list[Any]) -> pl.Series:
    """One staged column, typed like the adapters' output; unparseable values become null."""
    if name == "event_time":
        return pl.Series(name, [_time(v) for v in values], UTC_TIME)
    dtype = STAGED_SCHEMA[name]
    if name in _FLOATS:
        if all(v is None or (type(v) is float or type(v) is int) for v in values):  # the usual case: JSON numbers
            return pl.Series(name, values, pl.Float64, strict=False)
        return pl.Series(name, [_float(v) for v in values], pl.Float64)
    if name in _INTS:
        return pl.Series(name, [_int(v) for v in values], dtype)
    if all(v is None or type(v) is str for v in values):
        return pl.Series(name, values, pl.String)
    return pl.Series(name, [_str(v) for v in values], pl.String)


def stage(objects: list[dict[str, Any]]) -> pl.DataFrame:
    """Parsed JSON objects -> the staged frame (every canonical and extra column, typed)."""
    return pl.DataFrame([_column(c, [o.get(c) for o in objects]) for c in STAGED_SCHEMA])


def parse(text: str | None) -> dict[str, Any] | None:
    """The canonical values of one JSON record, or None when it is not a JSON object."""
    obj = _loads(text)
    return None if obj is None else stage([obj]).row(0, named=True)


def _dead(rec: RawRecord, reasons: list[str], event_id: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {"event_id": event_id, "reasons": reasons, **rec.position}
    if rec.text is not None:
        d["record"] = rec.text
    else:
        import base64

        d["record"] = None
        d["record_base64"] = base64.b64encode(rec.raw or b"").decode("ascii")
    return d


def check(records: list[RawRecord], rules: list[Rule], known_ids: set[str] | None = None,
          is_known=None) -> Checked:
    """Split records (in source order) into valid events and dead letters.

    ``duplicate_event_id`` covers, as in the batch path, later records of an id seen earlier
    in the batch, and also ids the stream accepted in earlier batches (``known_ids``, or the
    callable ``is_known(ids) -> set`` asked once for the batch).
    """
    parsed = [_loads(r.text) for r in records]
    ok = [i for i, p in enumerate(parsed) if p is not None]
    dead = [(i, [UNPARSEABLE], None) for i, p in enumerate(parsed) if p is None]
    staged = stage([parsed[i] for i in ok])
    flags = staged.select([violation(r).alias(r.reason) for r in rules]) if rules else pl.DataFrame()
    reasons_per_row: list[list[str]] = [[] for _ in ok]
    for r in rules:
        for j in flags[r.reason].arg_true().to_list():
            reasons_per_row[j].append(r.reason)
    # ids accepted before this batch
    ids = staged["event_id"].to_list()
    candidates = {e for e, rs in zip(ids, reasons_per_row) if e is not None and not rs}
    known = set(known_ids or ()) & candidates
    if is_known is not None and candidates:
        known |= is_known(candidates - known)
    for j, e in enumerate(ids):
        if e in known and DUPLICATE not in reasons_per_row[j]:
            reasons_per_row[j].append(DUPLICATE)
    keep = [j for j, rs in enumerate(reasons_per_row) if not rs]
    dead += [(ok[j], rs, ids[j]) for j, rs in enumerate(reasons_per_row) if rs]
    dead.sort(key=lambda x: x[0])
    valid = staged[keep] if keep else staged.clear()
    return Checked(valid=valid, valid_positions=[records[ok[j]].position for j in keep],
                   valid_texts=[records[ok[j]].text for j in keep],
                   dead=[_dead(records[i], rs, e) for i, rs, e in dead])


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=STAGED_SCHEMA)


__all__ = ["RawRecord", "Checked", "check", "parse", "UNPARSEABLE", "DUPLICATE", "STAGED_SCHEMA", "UTC_TIME"]
