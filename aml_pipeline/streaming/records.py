"""Raw stream records -> canonical events, with the batch path's row-level rules.

A stream record is text (a JSON object per transaction) plus where it came from (file and
line, or topic, partition and offset). :func:`stage` parses the records into a frame of
the canonical columns with the same types the adapters produce (a value that cannot be
parsed becomes null, so the rule on that column names it); :func:`check` then applies the
rule list of :mod:`aml_pipeline.validation` (the same :class:`~aml_pipeline.validation.Rule`
objects, compiled by the same :func:`~aml_pipeline.validation.polars_engine.violation`),
plus ``duplicate_event_id`` for an id the stream accepted before and the record-level
reasons below. Every record ends up either valid or a dead letter carrying its original
text (or bytes), its reasons and its position.

Nothing one record holds can fail the micro-batch (Spark would replay it forever): each
record is parsed on its own, and a failure is that record's reason:

- ``invalid_utf8``: the bytes are not UTF-8 (the dead letter keeps them as base64);
- ``record_too_large``: over :data:`MAX_RECORD_BYTES` (a transaction is well under 2 KB);
- ``json_too_deep``: objects or arrays nested deeper than :data:`MAX_JSON_DEPTH` (counted,
  not left to the parser, whose limit moves with the interpreter's recursion limit and stack);
- ``unparseable_record``: not a JSON object, or a value that cannot be staged;
- ``invalid_label``: a label present but not 0/1 (live events need none; a wrong one is
  refused, not dropped silently);
- ``invalid_event_time`` also covers times that overflow once converted to UTC
  (``9999-12-31T23:59:59-01:00``).

A dead letter's original is kept whole up to :data:`DEAD_RECORD_BYTES`; above that its
first bytes are kept with the SHA-256 and the size of the whole, so a dead letter always
fits a broker's message limit.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import polars as pl

from aml_pipeline.schema import ALL_COLUMNS, UTC_TIME
from aml_pipeline.validation.polars_engine import flag_rules
from aml_pipeline.validation.rules import Rule

UNPARSEABLE = "unparseable_record"
DUPLICATE = "duplicate_event_id"
INVALID_UTF8 = "invalid_utf8"
TOO_LARGE = "record_too_large"
TOO_DEEP = "json_too_deep"
INVALID_LABEL = "invalid_label"
#: The largest record parsed (bytes of UTF-8); larger ones are dead letters, unparsed.
MAX_RECORD_BYTES = 64 * 1024
#: Deepest nesting of objects and arrays a record may have (a transaction is flat).
MAX_JSON_DEPTH = 64
#: The most of a record's original a dead letter keeps whole (bytes); the rest is hashed.
DEAD_RECORD_BYTES = 16 * 1024
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
    """ISO-8601 with a UTC offset; naive, unparseable or unrepresentable times are null
    (invalid_event_time): ``9999-12-31T23:59:59-01:00`` overflows once in UTC."""
    if not isinstance(v, str):
        return None
    try:
        ts = datetime.fromisoformat(v.strip())
        if ts.tzinfo is None:
            return None
        return ts.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        return None


def _float(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, str):
            return float(v.strip())
    except (ValueError, OverflowError):  # text, or an integer too large for a float
        return None
    return None


def _int(v: Any) -> int | None:
    """A 0/1 flag from JSON (0, 1, true, false, 0.0, 1.0, "0", "1"); anything else is null."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and v in (0, 1):
        return int(v)
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
    return _load(text)[0]


def _nesting_exceeds(text: str, limit: int) -> bool:
    """Whether objects/arrays nest deeper than ``limit`` (brackets inside strings ignored).

    Only a text with more than ``limit`` opening brackets can; for those (rare) the text is
    walked once, so the answer never depends on where the parser runs."""
    if text.count("{") + text.count("[") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
            if depth > limit:
                return True
        elif ch in "}]":
            depth -= 1
    return False


def _load(text: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object, None) or (None, the reason it is not one)."""
    if text is None:
        return None, INVALID_UTF8
    if len(text) > MAX_RECORD_BYTES or (len(text) * 4 > MAX_RECORD_BYTES and len(text.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES):
        return None, TOO_LARGE
    if _nesting_exceeds(text, MAX_JSON_DEPTH):
        return None, TOO_DEEP
    try:
        obj = json.loads(text)
    except RecursionError:
        return None, TOO_DEEP
    except (ValueError, TypeError):
        return None, UNPARSEABLE
    return (obj, None) if isinstance(obj, dict) else (None, UNPARSEABLE)


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


def _stage_each(objects: list[dict[str, Any]]) -> tuple[pl.DataFrame, list[int]]:
    """The staged frame of the objects that stage, and the indexes of those that do not.

    The batch is staged column by column (fast); only if that fails is each object staged
    on its own, so one value no column can hold costs its own record, never the batch."""
    try:
        return stage(objects), []
    except Exception:
        frames, failed = [], []
        for i, o in enumerate(objects):
            try:
                frames.append(stage([o]))
            except Exception:
                failed.append(i)
        return (pl.concat(frames, how="vertical") if frames else stage([])), failed


def parse(text: str | None) -> dict[str, Any] | None:
    """The canonical values of one JSON record, or None when it is not a JSON object."""
    obj = _loads(text)
    if obj is None:
        return None
    staged, failed = _stage_each([obj])
    return None if failed else staged.row(0, named=True)


def original(rec: RawRecord) -> dict[str, Any]:
    """The dead letter's copy of a record as read: ``record`` (text) or ``record_base64``
    (bytes that are not UTF-8); over :data:`DEAD_RECORD_BYTES`, its first bytes plus
    ``record_truncated``, ``record_bytes`` and ``record_sha256`` of the whole."""
    raw = rec.raw if rec.text is None else rec.text.encode("utf-8", "surrogatepass")
    raw = raw or b""
    d: dict[str, Any] = {}
    kept = raw[:DEAD_RECORD_BYTES]
    if rec.text is not None:
        d["record"] = kept.decode("utf-8", "ignore") if len(raw) > DEAD_RECORD_BYTES else rec.text
    else:
        d["record"] = None
        d["record_base64"] = base64.b64encode(kept).decode("ascii")
    if len(raw) > DEAD_RECORD_BYTES:
        d.update(record_truncated=True, record_bytes=len(raw), record_sha256=hashlib.sha256(raw).hexdigest())
    return d


def dead_letter(rec: RawRecord, reasons: list[str], event_id: str | None) -> dict[str, Any]:
    """The dead letter of ``rec``: its id (when short enough), the reasons, its position and the record."""
    if event_id is not None and len(event_id) > DEAD_RECORD_BYTES:
        event_id = None  # the record (truncated, hashed) still holds it
    return {"event_id": event_id, "reasons": reasons, **rec.position, **original(rec)}


def check(records: list[RawRecord], rules: list[Rule], known_ids: set[str] | None = None,
          is_known=None, now_us: int | None = None) -> Checked:
    """Split records (in source order) into valid events and dead letters.

    ``duplicate_event_id`` covers, as in the batch path, later records of an id seen earlier
    in the batch, and also ids the stream accepted in earlier batches (``known_ids``, or the
    callable ``is_known(ids) -> set`` asked once for the batch). ``now_us``: the trusted
    clock of ``event_time_in_future`` (default: the wall clock, read once per batch).
    """
    loaded = [_load(r.text) for r in records]
    ok = [i for i, (p, _) in enumerate(loaded) if p is not None]
    dead = [(i, [why], None) for i, (p, why) in enumerate(loaded) if p is None]
    staged, failed = _stage_each([loaded[i][0] for i in ok])
    if failed:
        dead += [(ok[j], [UNPARSEABLE], None) for j in failed]
        unstaged = set(failed)
        ok = [i for j, i in enumerate(ok) if j not in unstaged]
    flags = flag_rules(staged, rules, now_us) if rules else pl.DataFrame()
    reasons_per_row: list[list[str]] = [[] for _ in ok]
    for r in rules:
        for j in flags[r.reason].arg_true().to_list():
            reasons_per_row[j].append(r.reason)
    label_rule = any(r.reason == INVALID_LABEL for r in rules)
    for j, i in enumerate(ok):  # a label given must be 0/1 even where none is required
        given = loaded[i][0].get("label")
        if given is not None and _int(given) is None and not label_rule:
            reasons_per_row[j].append(INVALID_LABEL)
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
                   dead=[dead_letter(records[i], rs, e) for i, rs, e in dead])


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=STAGED_SCHEMA)


__all__ = ["RawRecord", "Checked", "check", "parse", "original", "UNPARSEABLE", "DUPLICATE", "INVALID_UTF8", "TOO_LARGE",
           "TOO_DEEP", "MAX_RECORD_BYTES", "DEAD_RECORD_BYTES", "STAGED_SCHEMA", "UTC_TIME"]
