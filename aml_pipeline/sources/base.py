"""What every source adapter shares: reading text files strictly, and parsing leniently.

An adapter turns one real format into a *staged frame*: the canonical columns (values that
failed to parse are null), the bookkeeping columns ``_source_file``/``_source_line``, and
the original text of the source columns under ``raw:<name>``. Validation then decides row
by row; the raw text is what a quarantined record shows.

Structure is checked strictly (file exists, required columns present) and raises
:class:`DataSourceError` with one line naming the file and the column. Values are parsed
leniently, so one bad number quarantines one row instead of failing the whole read.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from enum import Enum
from pathlib import Path

import polars as pl

from aml_pipeline.errors import ConfigError, DataSourceError
from aml_pipeline.progress import status
from aml_pipeline.schema import READ_ERROR, SOURCE_FILE, SOURCE_LINE, SOURCE_TEXT, conform, raw_column
from aml_pipeline.sources import delimited

TRUE_TEXT = ("1", "1.0", "true", "t", "yes", "y")
FALSE_TEXT = ("0", "0.0", "false", "f", "no", "n")


class Source(ABC):
    """A source adapter: ``read()`` returns the staged frame described in the module doc."""

    name: str = "source"
    #: True when the source carries labels, so validation requires a 0/1 label per row.
    has_labels: bool = True

    @abstractmethod
    def read(self) -> pl.DataFrame:
        """Read and map the source onto the canonical schema (staged, not yet validated)."""

    def describe(self) -> str:
        return self.name


def require_file(path: str | os.PathLike, source: str, what: str = "path") -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataSourceError(f"{source}: file not found: {p} (set source.{what})")
    return p


def read_text_table(
    path: str | os.PathLike,
    source: str,
    required: list[str],
    separator: str = ",",
    column_names: list[str] | None = None,
    what: str = "path",
) -> pl.DataFrame:
    """Read a delimited text file with every column as text, plus file and line columns.

    ``column_names`` replaces the header (for formats such as AMLworld whose header repeats
    a name). Fails with one clear line when the file is missing or a required column is
    absent, and says so when the header looks like it was split on the wrong delimiter. A
    line that cannot be split into the header's fields (too many or too few, undecodable
    bytes, stray quotes) is one row with null fields, its reason in ``_read_error`` and its
    text in ``_source_text`` (:mod:`.delimited`): validation quarantines it, the rest loads.
    """
    p = require_file(path, source, what)
    if p.stat().st_size == 0:
        raise DataSourceError(f"{source}: {p} is empty (no header line)")
    with status(f"reading {p.name} ({p.stat().st_size / 1e6:.1f} MB)"):
        data = delimited.normalise(p.read_bytes(), source, str(p))
        first = data[:data.find(b"\n")] if b"\n" in data else data
        found = delimited.header_names(first, separator)
        if not first.strip(b"\r \t"):
            raise DataSourceError(f"{source}: {p} has an empty header line")
        if column_names is not None and len(found) != len(column_names):
            # The replacement names must fit the file's header, or every column would shift.
            raise DataSourceError(
                f"{source}: {p}: the header has {len(found)} column(s), expected {len(column_names)} "
                f"({', '.join(column_names)}){_delimiter_hint(found, separator)}"
            )
        header = list(column_names) if column_names is not None else _unique(found)
        missing = [c for c in required if c not in header]
        if missing:
            raise DataSourceError(
                f"{source}: {p}: required column {missing[0]!r} is missing "
                f"(found: {', '.join(header[:12])}{'...' if len(header) > 12 else ''}){_delimiter_hint(header, separator)}"
            )
        rows = delimited.read_rows(data, separator, header)
    return rows.select(
        *[pl.col(c).alias(raw_column(c)) for c in header],
        pl.lit(str(p)).alias(SOURCE_FILE),
        pl.col("line").alias(SOURCE_LINE),
        pl.col("read_error").alias(READ_ERROR),
        pl.col("text").alias(SOURCE_TEXT),
    )


def _unique(names: list[str]) -> list[str]:
    """Header names made unique as polars makes them (``x``, ``x_duplicated_0``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            out.append(f"{n}_duplicated_{seen[n]}")
            seen[n] += 1
        else:
            seen[n] = 0
            out.append(n)
    return out


def header_fields(path: str | os.PathLike, separator: str = ",") -> list[str]:
    """The names in a text file's first line, split on ``separator`` (no quoting; BOM and CR removed)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        first = f.readline()
    return [name.strip().strip('"') for name in first.rstrip("\r\n").split(separator)]


def _delimiter_hint(header: list[str], separator: str) -> str:
    """A hint when a header with one column looks split on the wrong delimiter."""
    if len(header) == 1:
        for sep in (";", "\t", "|", ","):
            if sep != separator and sep in header[0]:
                return f"; the header has one column, is the delimiter {sep!r}? (set source.separator)"
    return ""


def raw(name: str) -> pl.Expr:
    """The original text of source column ``name``."""
    return pl.col(raw_column(name))


def text(expr: pl.Expr) -> pl.Expr:
    """Trimmed text, with empty strings as null."""
    return expr.cast(pl.String).str.strip_chars().replace("", None)


def number(expr: pl.Expr, scale: float = 1.0) -> pl.Expr:
    """Float from text (scientific notation accepted); unparseable text becomes null."""
    value = text(expr).cast(pl.Float64, strict=False)
    return value * scale if scale != 1.0 else value


def flag(expr: pl.Expr) -> pl.Expr:
    """0/1 label from text such as 1, 0.0, True, no; anything else becomes null."""
    codes = {**{t: 1 for t in TRUE_TEXT}, **{t: 0 for t in FALSE_TEXT}}
    return expr.cast(pl.String).str.strip_chars().str.to_lowercase().replace_strict(codes, default=None, return_dtype=pl.Int8)


def timestamp(expr: pl.Expr, fmt: str | None, timezone: str = "UTC") -> pl.Expr:
    """UTC timestamp from text in ``fmt`` (strptime codes; None = ISO 8601) read in ``timezone``.

    Text carrying its own offset (``Z``, ``+02:00``) keeps it; naive text is taken to be in
    ``timezone``. Unparseable text becomes null.
    """
    t = text(expr)
    if fmt is None:
        # ISO 8601, with or without an offset, 'T' or ' ' between date and time. Every
        # accepted shape is tried with an explicit format: polars' format inference looks at
        # the first value only, so a column mixing offset-carrying and naive text (or
        # seconds and no seconds) would otherwise turn every row of the other shape to null.
        iso = t.str.replace("T", " ", literal=True)
        aware = pl.coalesce(
            iso.str.to_datetime(f, time_unit="us", time_zone="UTC", strict=False)
            for f in ("%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M%#z")
        )
        naive = pl.coalesce(
            *(iso.str.to_datetime(f, time_unit="us", strict=False) for f in ("%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M")),
            iso.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")),
        )
        naive = naive.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null").dt.convert_time_zone("UTC")
        return pl.coalesce(aware, naive)
    parsed = t.str.to_datetime(fmt, time_unit="us", strict=False)
    if "%z" in fmt or "%#z" in fmt:
        return parsed.dt.convert_time_zone("UTC")
    return parsed.dt.replace_time_zone(timezone, ambiguous="earliest", non_existent="null").dt.convert_time_zone("UTC")


#: The farthest offset from a source's start an event time may have (7,000 years, in
#: µs): beyond it the time leaves what Python can hold, then the timestamp type wraps round.
MAX_OFFSET_US = 7_000 * 365 * 86_400_000_000


def offset_time(start, offset_us: pl.Expr) -> pl.Expr:
    """``start`` + ``offset_us`` (a float or integer expression of µs) as a UTC timestamp;
    null when the offset is null, not finite or too far (:data:`MAX_OFFSET_US`) to be a time."""
    off = offset_us.cast(pl.Float64)
    fits = off.is_finite() & (off.abs() <= MAX_OFFSET_US)
    return pl.lit(start) + pl.when(fits).then(off).cast(pl.Int64, strict=False).cast(pl.Duration("us"))


def staged(frame: pl.DataFrame, columns: dict[str, pl.Expr]) -> pl.DataFrame:
    """Apply an adapter's column mapping and conform to the canonical schema, keeping raw text."""
    keep = [c for c in frame.columns if c.startswith("raw:") or c in (SOURCE_FILE, SOURCE_LINE, READ_ERROR, SOURCE_TEXT)]
    return conform(frame.select(*[e.alias(n) for n, e in columns.items()], *keep))


def row_event_id(frame_stem: str) -> pl.Expr:
    """A stable event id for sources without one: ``<file stem>:<line>``."""
    return pl.lit(f"{frame_stem}:") + pl.col(SOURCE_LINE).cast(pl.String)


# ----------------------------------------------------------------------------- config values
# Small parsers for adapter parameters. They run in ``__init__`` (no I/O) so a bad value
# fails before any file is read, with a ConfigError naming the full key.



def option(value: object, allowed: tuple[str, ...], key: str) -> str:
    """A choice given as an Enum or a plain string, checked against ``allowed``."""
    v = value.value if isinstance(value, Enum) else value
    v = str(v).strip().lower() if v is not None else ""
    if v not in allowed:
        raise ConfigError(f"{key}={value.value if isinstance(value, Enum) else value!r} is not allowed; use one of: {', '.join(allowed)}")
    return v


def typology_name(expr: pl.Expr) -> pl.Expr:
    """Typology text normalised to the schema's spelling: ``FAN-IN`` -> ``fan_in``."""
    t = text(expr).str.to_lowercase().str.replace_all(r"[\s\-]+", "_")
    return pl.when(t == "").then(None).otherwise(t)
