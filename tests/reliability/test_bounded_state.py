"""Bounded state (issue 17, part 6): with ``deploy.store.retention`` the online store forgets
idle accounts and old event ids, so its size plateaus however many accounts pass through,
and no windowed feature changes: a batch recomputation over all events gives the same values.

The stores are the real ones (the embedded store and a real ``redis-server`` started by
``tests/conftest.py``); the features are the online engine's against ``plan.transform``.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from aml_pipeline.errors import UserError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.store import StoreLayout, open_store
from aml_pipeline.store.engine import Event, OnlineFeatures, gather, plan_needs
from aml_pipeline.store.memory import MemoryStore
from aml_pipeline.store.redis_store import RedisStore

US = 1_000_000
MINUTE, HOUR, DAY = 60 * US, 3600 * US, 86400 * US


# ----------------------------------------------------------------------------- start-up check
def _cfg(retention, backend="memory"):
    from omegaconf import OmegaConf

    return OmegaConf.create({"backend": backend, "redis_url": "redis://127.0.0.1:1/0", "prefix": "aml:",
                             "dedup_ttl": "30d", "retention": retention})


def test_retention_must_exceed_the_longest_window_plus_lateness():
    layout = StoreLayout(14 * DAY)
    with pytest.raises(UserError) as err:
        open_store(_cfg("14d"), layout, lateness_us=10 * MINUTE)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("deploy.store.retention=14d ") and "more than 14d10m" in msg
    with pytest.raises(UserError, match=r"^deploy.store.retention=7d must be longer than the longest feature window: "
                                        r"more than 14d$"):
        open_store(_cfg("7d"), layout)  # the service: no lateness
    with pytest.raises(UserError, match=r"deploy.store.retention='soon' is not a duration"):
        open_store(_cfg("soon"), layout)
    assert open_store(_cfg("15d"), layout, lateness_us=10 * MINUTE).layout.retention_us == 15 * DAY
    assert open_store(_cfg(None), layout).layout.retention_us == 0  # null: never forget


# ----------------------------------------------------------------------------- size over a long stream
def stream_sizes(store, n: int, every: int, size) -> list[int]:
    """Commit ``n`` events, each from a new account to one of 50 merchants, a minute apart;
    the store's size every ``every`` events."""
    sizes = []
    for i in range(n):
        store.commit((f"e{i}", i * MINUTE, f"acct{i}", f"m{i % 50}", 10.0), None)
        if (i + 1) % every == 0:
            sizes.append(size(store))
    return sizes


def memory_size(store: MemoryStore) -> int:
    s = store.stats()
    return s["accounts"] + s["event_ids"]


def redis_size(store: RedisStore) -> int:
    return store.stats()["keys"]


def assert_plateau(bounded: list[int], unbounded: list[int]) -> None:
    half = len(bounded) // 2
    # with retention: the second half of the stream adds nothing (within 5 %)
    assert max(bounded[half:]) <= 1.05 * bounded[half - 1], bounded
    # without: it keeps growing with the accounts
    assert unbounded[-1] >= 1.8 * unbounded[half - 1], unbounded
    assert bounded[-1] * 10 < unbounded[-1]


def test_memory_store_size_plateaus_with_retention():
    layout = StoreLayout(HOUR)
    bounded = stream_sizes(MemoryStore(StoreLayout(HOUR, retention_us=2 * HOUR)), 40_000, 4_000, memory_size)
    unbounded = stream_sizes(MemoryStore(layout), 40_000, 4_000, memory_size)
    assert_plateau(bounded, unbounded)
    # 2 h of events at one a minute: ~120 senders + 50 merchants + ~120 ids
    assert bounded[-1] < 400


def test_redis_store_size_plateaus_with_retention(redis_server):
    bounded = stream_sizes(RedisStore(StoreLayout(HOUR, retention_us=2 * HOUR), redis_server.url, prefix="bnd:"),
                           12_000, 1_200, lambda s: len(s._r.keys(b"bnd:*")))
    unbounded = stream_sizes(RedisStore(StoreLayout(HOUR), redis_server.url, prefix="unb:"),
                             12_000, 1_200, lambda s: len(s._r.keys(b"unb:*")))
    assert_plateau(bounded, unbounded)
    assert bounded[-1] < 1_000


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_store_size_stays_bounded_over_a_long_stream(backend, redis_server):
    """500,000 distinct senders (memory) / 100,000 (Redis) through the store."""
    if backend == "memory":
        store, n, size = MemoryStore(StoreLayout(HOUR, retention_us=2 * HOUR)), 500_000, memory_size
    else:
        store, n, size = (RedisStore(StoreLayout(HOUR, retention_us=2 * HOUR), redis_server.url, prefix="long:"),
                          100_000, lambda s: len(s._r.keys(b"long:*")))
    sizes = stream_sizes(store, n, n // 10, size)
    assert max(sizes[1:]) <= 1.05 * sizes[0], sizes


# ----------------------------------------------------------------------------- features with expiry
PLAN = {"time": {}, "rolling": {"windows": ["1h", "24h"], "sides": ["src", "dst"], "flows": ["in", "out"],
                                "aggs": ["count", "sum", "max"]}}
RETENTION = 3 * DAY


@pytest.fixture(scope="module")
def bursty():
    """8,000 payments over 120 days among 300 accounts, each active in short bursts with idle
    gaps of up to 30 days: many accounts go idle for longer than the 3-day retention."""
    rng = random.Random(17)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    active: dict[str, list[float]] = {}
    for a in range(300):
        t, spans = rng.uniform(0, 10), []
        while t < 120:
            length = rng.uniform(0.2, 3)
            spans.append((t, t + length))
            t += length + rng.choice([0.5, 2, 5, 12, 30])
        active[f"a{a}"] = spans
    rows = []
    for i in range(8000):
        day = rng.uniform(0, 120)
        live = [a for a, spans in active.items() if any(s <= day < e for s, e in spans)]
        if len(live) < 2:
            continue
        src, dst = rng.sample(live, 2)
        rows.append({"event_id": f"e{i}", "event_time": start + timedelta(days=day), "src_account": src,
                     "dst_account": dst, "amount": round(rng.uniform(1, 5000), 2)})
    frame = pl.DataFrame(rows).with_columns(pl.col("event_time").dt.cast_time_unit("us")).sort("event_time")
    plan = FeaturePlan.from_config(PLAN)
    plan.fit_transform(frame.head(1000))
    return plan, frame


def _online(plan, frame, store, warm: int = 0, other=None) -> dict:
    """Warm the store with the first ``warm`` events, then score the rest one by one (taking
    turns with ``other``, a second scorer on the same store, when given)."""
    needs = plan_needs(plan)
    engine = OnlineFeatures(plan)
    if warm:
        store.warm(frame.head(warm).select(needs.layout().columns)
                   .with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
    out = {}
    scorers = (store,) if other is None else (store, other)
    for n, row in enumerate(frame.slice(warm).iter_rows(named=True)):
        store = scorers[n % len(scorers)]
        ev = Event(row)
        decision, history = gather(store, needs, ev)
        assert decision is None
        out[ev.event_id] = engine.compute(ev, history)
        assert store.commit(ev.row(needs.extra_columns), None)
    return out


@pytest.mark.parametrize("backend,warm", [("memory", 0), ("redis", 0), ("memory", 3000), ("redis", 3000),
                                          ("redis2", 0), ("redis2", 3000)])
def test_features_equal_a_batch_recomputation_with_expiry_active(bursty, backend, warm, redis_server):
    """``redis2``: two scorers share the store and the requests (deploy.workers=2): each
    follows the other's appends and evictions from the change feed."""
    plan, frame = bursty
    needs = plan_needs(plan)
    assert needs.window_us == DAY
    layout = StoreLayout(needs.window_us, needs.extra_columns, retention_us=RETENTION)
    store = MemoryStore(layout) if backend == "memory" else RedisStore(layout, redis_server.url,
                                                                          prefix=f"{backend}parity{warm}:")
    other = RedisStore(layout, redis_server.url, prefix=f"{backend}parity{warm}:") if backend == "redis2" else None
    got = _online(plan, frame, store, warm, other)
    ref = plan.transform(frame).slice(warm)
    gaps = {"src": "src_secs_since_prev", "dst": "dst_secs_since_prev"}
    windowed = [c for c in plan.feature_columns() if c not in gaps.values()]
    forgotten = 0
    for row in ref.iter_rows(named=True):
        mine = got[row["event_id"]]
        for c in windowed:  # every windowed value, bit for bit
            assert mine[c] == row[c] or (mine[c] is None and row[c] is None), (row["event_id"], c, mine[c], row[c])
        for c in gaps.values():  # time since the previous event: the batch value, or a first event once forgotten
            e, g = row[c], mine[c]
            if e is None or math.isnan(e) or e * US <= RETENTION:
                assert (g is None or math.isnan(g)) if (e is None or math.isnan(e)) else g == e, (row["event_id"], c, e, g)
            elif g is None or math.isnan(g):
                forgotten += 1
            else:
                assert g == e, (row["event_id"], c, e, g)
    assert forgotten > (30 if warm else 50)  # expiry really was active
    if backend == "memory":
        assert store.stats()["evicted_accounts"] > 100


def test_stream_columnar_copy_forgets_idle_accounts(bursty):
    """The streaming scorer's copy of the embedded store's rows (``deploy.state=store``,
    memory): a trim drops the rows kept only for accounts idle longer than the retention."""
    from aml_pipeline.streaming.history import RecentRows

    _, frame = bursty
    rows = frame.select("event_id", "event_time", "src_account", "dst_account", "amount") \
        .with_columns(pl.col("event_time").dt.epoch("us"))
    watermark = rows["event_time"].max()
    kept = {}
    for retention in (0, RETENTION):
        copy = RecentRows(StoreLayout(DAY, retention_us=retention), rows.iter_rows())
        copy.trim(watermark, force=True)
        kept[retention] = copy.frame
    latest = pl.concat([rows.select(pl.col("src_account").alias("a"), "event_time"),
                        rows.select(pl.col("dst_account").alias("a"), "event_time")]) \
        .group_by("a").agg(pl.col("event_time").max())
    idle = set(latest.filter(pl.col("event_time") < watermark - RETENTION)["a"].to_list())
    assert len(idle) > 20
    both_idle = pl.col("src_account").is_in(list(idle)) & pl.col("dst_account").is_in(list(idle))
    assert kept[0].filter(both_idle).height > 20  # without a retention: their latest rows stay
    assert kept[RETENTION].filter(both_idle).height == 0  # with it: gone
    # every row inside the window, or at an active account's two latest instants, stays
    assert set(kept[RETENTION].filter(pl.col("event_time") >= watermark - DAY)["event_id"]) == \
        set(rows.filter(pl.col("event_time") >= watermark - DAY)["event_id"])
