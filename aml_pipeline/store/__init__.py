"""The online feature store: per-account recent events for online scorers.

``open_store(cfg.deploy.store, layout)`` gives the configured backend: ``memory`` (embedded
in the process, the default) or ``redis``. :mod:`.engine` turns what a store returns into
the plan's feature values for one event; :func:`warm_from_parquet` fills a store from
validated history. See docs/serving.md.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

import polars as pl

from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError
from aml_pipeline.features.fx import FxTable

from aml_pipeline.store.base import OnlineStore, Reading, StoreLayout
from aml_pipeline.store.memory import MemoryStore
from aml_pipeline.timeutil import config_duration_us

__all__ = ["OnlineStore", "Reading", "StoreLayout", "MemoryStore", "open_store", "retention_us", "warm_from_parquet"]


def _ttl_seconds(text: str) -> float:
    return config_duration_us(text, "deploy.store.dedup_ttl") / 1e6


def _short(us: int) -> str:
    """A duration as the largest whole units (14d10m), for messages."""
    out, rest = "", int(us)
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out + (f"{rest}us" if rest else "") or "0s"


def retention_us(store_cfg, layout: StoreLayout, lateness_us: int = 0) -> int:
    """``deploy.store.retention`` in µs (0 = null: never forget), checked against what the
    plan reads: it must exceed the longest feature window plus the allowed lateness, so an
    account forgotten for being idle has no row inside any window of an event still accepted."""
    text = store_cfg.get("retention") if hasattr(store_cfg, "get") else getattr(store_cfg, "retention", None)
    if text is None or str(text).lower() in ("null", "none", ""):
        return 0
    us = config_duration_us(text, "deploy.store.retention")
    minimum = layout.window_us + int(lateness_us)
    if us <= minimum and lateness_us:
        raise UserError(f"deploy.store.retention={text} must be longer than the longest feature window plus the allowed "
                        f"lateness: more than {_short(minimum)} ({_short(layout.window_us)} + {_short(lateness_us)})")
    if us <= minimum:
        raise UserError(f"deploy.store.retention={text} must be longer than the longest feature window: more than "
                        f"{_short(minimum)}")
    return us


def open_store(store_cfg, layout: StoreLayout, lateness_us: int = 0) -> OnlineStore:
    """The backend ``store_cfg.backend`` names (``memory`` or ``redis``), bounded by
    ``deploy.store.retention`` (checked against the window and ``lateness_us``)."""
    backend = str(option_value(store_cfg.backend))
    ttl = _ttl_seconds(store_cfg.dedup_ttl)
    layout = replace(layout, retention_us=retention_us(store_cfg, layout, lateness_us))
    if backend == "memory":
        return MemoryStore(layout, dedup_ttl_s=ttl)
    if backend == "redis":
        from aml_pipeline.store.redis_store import RedisStore

        return RedisStore(layout, store_cfg.redis_url, prefix=store_cfg.prefix, dedup_ttl_s=ttl)
    raise UserError(f"deploy.store.backend={backend!r}; allowed: memory, redis")


def warm_from_parquet(store: OnlineStore, path: str | Path, until: datetime | None, fx: FxTable | None = None) -> int:
    """Append the events of a validated parquet file strictly before ``until`` (time order).

    Returns how many events were new to the store. The file is the ``data/validated``
    layer: it passed validation once, so it is not validated again here. With the plan's
    ``fx`` the amounts are converted to its reporting currency first: the store holds
    reporting-currency amounts, as the scorers append them.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"deploy.warm_from={p}: no such file (validated parquet, e.g. data/validated/transactions.parquet)")
    columns = list(store.layout.columns)
    lf = pl.scan_parquet(p)
    missing = [c for c in columns if c not in lf.collect_schema().names()]
    if missing:
        raise UserError(f"deploy.warm_from={p}: column {missing[0]!r} is missing (the store keeps {', '.join(columns)})")
    if until is not None:
        lf = lf.filter(pl.col("event_time") < until)
    if fx is not None:
        frame = fx.convert_frame(lf.select(*columns, "currency").collect(), f"deploy.warm_from={p}: events").select(columns)
        lf = frame.lazy()
    frame = (lf.select(columns).sort("event_time", maintain_order=True)
             .with_columns(pl.col("event_time").dt.epoch("us")).collect())
    return store.warm(frame.iter_rows())
