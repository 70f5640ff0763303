"""Delimited text -> rows of text fields, one bad line costing one row, never the file.

Why not ``polars.read_csv`` alone: with ``truncate_ragged_lines=True`` it silently drops the
extra fields of a row (a PaySim row with an unquoted ``1,234.50`` became amount ``1`` and a
wrong sending account, and passed as valid); without it, one ragged row, one Latin-1 byte or
one stray quote fails the whole file. Here:

- the **fast path** (the usual, well-formed file): when the bytes are UTF-8, hold no quote
  character and every line has exactly the header's number of fields, polars reads them;
- otherwise the **line path** reads line by line: a line that is not UTF-8, has too many or
  too few fields, or whose quoting cannot be closed becomes a row whose fields are all null,
  with a reason in :data:`~aml_pipeline.schema.READ_ERROR` and the line's text in
  :data:`~aml_pipeline.schema.SOURCE_TEXT` (undecodable bytes written ``\\xNN``); validation
  quarantines it with that reason and text. A quoted field may span lines (up to
  :data:`MAX_CONTINUATION` of them) when closing it gives the right number of fields.

Every line after the header is one row (a blank line too: it has too few fields), so rows
read = lines read, and a row's line number is its first physical line. A UTF-8 byte-order
mark is dropped; a UTF-16 one decodes the file as UTF-16.
"""

from __future__ import annotations

import csv
import io

import polars as pl

from aml_pipeline.errors import DataSourceError

TOO_MANY_FIELDS = "too_many_fields"
TOO_FEW_FIELDS = "too_few_fields"
INVALID_UTF8 = "invalid_utf8"
MALFORMED_QUOTING = "malformed_quoting"
READ_ERRORS = (TOO_MANY_FIELDS, TOO_FEW_FIELDS, INVALID_UTF8, MALFORMED_QUOTING)
#: Physical lines one quoted field may span before the opening quote is judged stray.
MAX_CONTINUATION = 100

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def normalise(data: bytes, source: str, path: str) -> bytes:
    """The file's bytes as UTF-8 without a byte-order mark (UTF-16 with a BOM is decoded)."""
    if data.startswith(_UTF8_BOM):
        return data[len(_UTF8_BOM):]
    if data[:2] in _UTF16_BOMS:
        try:
            return data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            raise DataSourceError(f"{source}: {path}: starts with a UTF-16 byte-order mark but is not UTF-16") from None
    return data


def header_names(line: bytes, separator: str) -> list[str]:
    """The header line's names (quoting honoured; undecodable bytes replaced)."""
    text = line.rstrip(b"\r").decode("utf-8", errors="replace")
    try:
        return next(csv.reader([text], delimiter=separator, strict=False), [])
    except csv.Error:
        return text.split(separator)


def read_rows(data: bytes, separator: str, names: list[str]) -> pl.DataFrame:
    """Rows of ``data`` (header line included, already :func:`normalise` d) as text columns
    named ``names``, plus ``line`` (Int64, 1-based physical line), ``read_error`` and
    ``text`` (both null for a row read cleanly)."""
    newline = data.find(b"\n")
    body_start = newline + 1 if newline >= 0 else len(data)
    frame = _fast(data, body_start, separator, names)
    return frame if frame is not None else _by_line(data[body_start:], separator, names)


def _fast(data: bytes, body_start: int, separator: str, names: list[str]) -> pl.DataFrame | None:
    """polars' reader, when it reads every line as one row of exactly the header's fields.

    Without a quote character a line's fields are its separators plus one. polars refuses a
    line with too many fields and pads one with too few, so: no line has too many (polars
    did not refuse) and the separators add up to lines x (fields - 1), hence none has too few."""
    body = data[body_start:]
    if not body or b'"' in data or body.startswith(_UTF8_BOM):  # polars would drop a first field's BOM
        return None
    if body.count(b"\r") != body.count(b"\r\n"):  # a lone CR: polars may take it for a line end
        return None
    sep = separator.encode("utf-8")
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    if len(sep) != 1 or body.count(sep) != lines * (len(names) - 1):
        return None
    try:  # strict: invalid UTF-8 or a ragged line raises, and the line path takes the file
        frame = pl.read_csv(io.BytesIO(body), separator=separator, infer_schema=False, has_header=False,
                            new_columns=list(names), empty_string_is_null=False, raise_if_empty=False,
                            quote_char=None)
    except pl.exceptions.PolarsError:
        return None
    if frame.height != lines or frame.width != len(names):
        return None
    return frame.with_columns(
        (pl.int_range(pl.len(), dtype=pl.Int64) + 2).alias("line"),
        pl.lit(None, pl.String).alias("read_error"),
        pl.lit(None, pl.String).alias("text"),
    )


def _split(text: str, separator: str) -> list[str] | None:
    """The fields of one record's text, or None when its quoting is malformed or unclosed."""
    if '"' not in text:
        return text.split(separator)
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=separator, strict=True))
    except csv.Error:
        return None
    return rows[0] if len(rows) == 1 else ([""] if not rows else None)


def _by_line(body: bytes, separator: str, names: list[str]) -> pl.DataFrame:
    raw_lines = body.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    width = len(names)
    columns: list[list[str | None]] = [[] for _ in names]
    line_no: list[int] = []
    errors: list[str | None] = []
    texts: list[str | None] = []

    def bad(n: int, reason: str, text: str) -> None:
        for c in columns:
            c.append(None)
        line_no.append(n)
        errors.append(reason)
        texts.append(text)

    i = 0
    while i < len(raw_lines):
        n = i + 2  # the header is line 1
        raw_line = raw_lines[i].removesuffix(b"\r")
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError:
            bad(n, INVALID_UTF8, raw_line.decode("utf-8", errors="backslashreplace"))
            i += 1
            continue
        fields, used = _split(text, separator), 1
        if fields is None and text.count('"') % 2:  # an open quote: perhaps a field spanning lines
            joined = text
            for extra in range(1, min(MAX_CONTINUATION, len(raw_lines) - i)):
                try:
                    joined += "\n" + raw_lines[i + extra].removesuffix(b"\r").decode("utf-8")
                except UnicodeDecodeError:
                    break
                candidate = _split(joined, separator)
                if candidate is not None:
                    if len(candidate) == width:
                        fields, used = candidate, extra + 1
                    break
        if fields is None:
            bad(n, MALFORMED_QUOTING, text)
        elif len(fields) != width:
            bad(n, TOO_MANY_FIELDS if len(fields) > width else TOO_FEW_FIELDS, text)
        else:
            for c, v in zip(columns, fields):
                c.append(v)
            line_no.append(n)
            errors.append(None)
            texts.append(None)
        i += used
    frame = pl.DataFrame({name: pl.Series(name, col, pl.String) for name, col in zip(names, columns)})
    return frame.with_columns(pl.Series("line", line_no, pl.Int64), pl.Series("read_error", errors, pl.String),
                              pl.Series("text", texts, pl.String))
