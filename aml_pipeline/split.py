"""Temporal train / validation / test windows: never shuffled, so no event is trained on its future.

``fraction``: the windows are shares of the data's time range (train first, then
validation, then test). ``events``: the windows hold those shares of the *events*, still
cut by time (for data whose volume is uneven over time, such as PaySim). ``dates``:
explicit first instants of validation and test. Events at one instant never straddle a cut. A
window that ends up empty is a user error: it names the window and the cut times.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.errors import ConfigError, UserError

SPLITS = ("train", "valid", "test")


def _parse(value: str, key: str) -> datetime:
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not an ISO 8601 time such as 2025-03-01T00:00:00Z") from None
    if t.tzinfo is None:
        raise ConfigError(f"{key}={value!r} needs a timezone (e.g. a trailing Z for UTC)")
    return t


def cut_times(times: pl.Series, cfg: DictConfig) -> tuple[datetime, datetime]:
    """The first instants of the validation and test windows."""
    if cfg.method in ("fraction", "events"):
        if not (0 < cfg.train and 0 < cfg.valid and cfg.train + cfg.valid < 1):
            raise ConfigError(f"split.train={cfg.train}, split.valid={cfg.valid}: both must be > 0 and sum to < 1 (the rest tests)")
        if cfg.method == "events":
            ordered = times.sort()
            at = lambda share: ordered[min(int(share * len(ordered)), len(ordered) - 1)]  # noqa: E731
            return at(cfg.train), at(cfg.train + cfg.valid)
        lo, hi = times.min(), times.max()
        span: timedelta = hi - lo
        return lo + span * cfg.train, lo + span * (cfg.train + cfg.valid)
    if cfg.method == "dates":
        if not cfg.valid_start or not cfg.test_start:
            raise ConfigError("split.method=dates needs split.valid_start and split.test_start")
        v, t = _parse(cfg.valid_start, "split.valid_start"), _parse(cfg.test_start, "split.test_start")
        if not v < t:
            raise ConfigError(f"split.valid_start ({v}) must be before split.test_start ({t})")
        return v, t
    raise ConfigError(f"split.method={cfg.method!r}; allowed: fraction, events, dates")


def assign(events: pl.DataFrame, cfg: DictConfig) -> tuple[pl.DataFrame, dict]:
    """Add a ``split`` column (train/valid/test) by event time; return the window bounds."""
    valid_start, test_start = cut_times(events["event_time"], cfg)
    t = pl.col("event_time")
    out = events.with_columns(
        pl.when(t < valid_start).then(pl.lit("train")).when(t < test_start).then(pl.lit("valid")).otherwise(pl.lit("test")).alias("split")
    )
    counts = dict(out.group_by("split").len().iter_rows())
    for name in SPLITS:
        if not counts.get(name):
            raise UserError(f"the {name} window is empty (validation starts {valid_start}, test starts {test_start}); "
                            f"adjust split.* to the data's time range {events['event_time'].min()} .. {events['event_time'].max()}")
    bounds = {"valid_start": valid_start.isoformat(), "test_start": test_start.isoformat(),
              "rows": {name: int(counts[name]) for name in SPLITS}}
    return out, bounds
