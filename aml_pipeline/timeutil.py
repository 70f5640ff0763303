"""Time in one place: instants in UTC, microseconds since the epoch, durations from config.

Every engine keys windows and stores on integer microseconds since the Unix epoch (UTC),
and every config value that is a time or a duration is read by the functions here, so a
window, a lateness and a retention written ``7d`` mean the same span everywhere and a
wrong value fails with one line naming its key.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import polars as pl

from aml_pipeline.errors import ConfigError, UserError

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

_DURATION_UNITS = {"w": 604_800_000_000, "d": 86_400_000_000, "h": 3_600_000_000, "m": 60_000_000,
                   "s": 1_000_000, "ms": 1_000, "us": 1}
_DURATION_PART = re.compile(r"(\d+)(us|ms|w|d|h|m|s)")


# ------------------------------------------------------------------------------ instants
def to_us(ts: datetime) -> int:
    """A timezone-aware datetime as integer microseconds since the epoch (exact)."""
    delta = ts - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(t_us: int) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime (exact)."""
    t_us = int(t_us)
    return datetime.fromtimestamp(t_us // 1_000_000, tz=timezone.utc).replace(microsecond=t_us % 1_000_000)


def as_utc(t: datetime) -> datetime:
    """An aware datetime in UTC; a naive one is taken to be UTC already (how files store it)."""
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# ------------------------------------------------------------------------------ config values
def config_time(value: object, key: str) -> datetime:
    """An ISO 8601 instant from config (``2025-01-01T00:00:00Z``; naive = UTC) as aware UTC."""
    try:
        t = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not an ISO 8601 time (e.g. 2025-01-01T00:00:00Z)") from None
    return as_utc(t)


def parse_time(text: str, key: str) -> datetime:
    """An ISO 8601 time that must carry its offset (a cut between stored history and live
    events: which zone a naive one meant cannot be guessed)."""
    try:
        ts = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise UserError(f"{key}={text!r} is not an ISO-8601 time such as 2025-01-25T00:00:00Z") from None
    if ts.tzinfo is None:
        raise UserError(f"{key}={text!r} has no UTC offset; write e.g. 2025-01-25T00:00:00Z")
    return ts


def config_duration_us(value: object, key: str, allow_zero: bool = False) -> int:
    """A duration such as ``1d``, ``1h``, ``30m``, ``1d12h`` (units w d h m s ms us) in
    microseconds; longer than zero unless ``allow_zero``."""
    s = str(value).strip().lower().replace(" ", "")
    parts = _DURATION_PART.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise ConfigError(f"{key}={value!r} is not a duration; write e.g. 1d, 1h, 30m, 1d12h (units: w d h m s ms us)")
    total = sum(int(n) * _DURATION_UNITS[u] for n, u in parts)
    if total <= 0 and not allow_zero:
        raise ConfigError(f"{key}={value!r} must be longer than zero")
    return total


def config_duration(value: object, key: str, allow_zero: bool = False) -> timedelta:
    """:func:`config_duration_us` as a timedelta."""
    return timedelta(microseconds=config_duration_us(value, key, allow_zero))


@lru_cache(maxsize=1024)
def duration_us(window: str) -> int:
    """A polars duration string ("1h", "24h", "7d", also calendar "1mo") in microseconds:
    the feature steps' windows, which polars' own date arithmetic applies. Cached: a
    plan asks for the same few windows on every micro-batch, and each answer is a polars
    query (~0.3 ms)."""
    base = pl.datetime(2000, 1, 1, time_unit="us")
    return int(pl.select((base.dt.offset_by(window) - base).dt.total_microseconds()).item())
