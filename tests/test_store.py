"""The online feature store and the per-event engine against the offline code.

For fitted plans on real sample data (the simulator with the ``full`` plan: two graph
windows, target encoding, buckets; the PaySim slice with the ``paysim`` plan: balances,
and hourly steps, so hundreds of events share each instant), every event after a cut is
fed one by one through a store (embedded and a real ``redis-server``) and the online
engine, and must get exactly the features ``plan.transform`` gives over all events at
once. Also: the same-instant rule in any arrival order, the trimming rule (the previous
event stays however old), idempotent appends, and Redis state surviving a restart.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest

from aml_pipeline.errors import UserError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.store import StoreLayout, open_store, warm_from_parquet
from aml_pipeline.store.base import trim_start
from aml_pipeline.store.engine import Event, OnlineFeatures, PolarsFeatures, gather, plan_needs
from aml_pipeline.testing.local_redis import LocalRedis
from aml_pipeline.store.memory import MemoryStore
from aml_pipeline.store.redis_store import RedisStore





def _store(kind: str, layout: StoreLayout, redis_server, name: str):
    if kind == "memory":
        return MemoryStore(layout)
    return RedisStore(layout, redis_server.url, prefix=f"{name}:")


def _fitted(compose_cfg, overrides: list[str], train_share: float = 0.6):
    from aml_pipeline.ingest import ingest

    cfg = compose_cfg(overrides)
    frame = ingest(cfg).result.valid.sort("event_time", maintain_order=True)
    cut = frame["event_time"][int(frame.height * train_share)]
    plan = FeaturePlan.from_config(cfg.features.steps)
    plan.fit_transform(frame.filter(pl.col("event_time") < cut))
    return plan, frame, cut


@pytest.fixture(scope="module")
def synthetic(compose_cfg_module):
    return _fitted(compose_cfg_module, ["source.n_accounts=300", "source.days=21", "source.laundering_rate=0.03",
                                        "features=full"])


@pytest.fixture(scope="module")
def paysim(compose_cfg_module, data_dir_module):
    return _fitted(compose_cfg_module, ["source=paysim", f"source.path={data_dir_module / 'paysim_head3000.csv'}",
                                        "features=paysim"], train_share=0.5)


@pytest.fixture(scope="module")
def compose_cfg_module():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import CONF

    def _compose(overrides):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def data_dir_module():
    from tests.conftest import DATA

    return DATA


def request_values(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("label", "typology", "instance_id", "flagged")}


def run_online(plan, frame, cut, store, engine=None, reverse_instants=False, limit=None):
    """Warm with events before ``cut``, then score the rest one by one; {event_id: features}."""
    needs = plan_needs(plan)
    before = frame.filter(pl.col("event_time") < cut)
    store.warm(before.select(needs.layout().columns).with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
    after = frame.filter(pl.col("event_time") >= cut)
    if reverse_instants:  # same-instant events arrive in the opposite order
        after = after.with_row_index("_pos").sort(["event_time", "_pos"], descending=[False, True]).drop("_pos")
    if limit:
        after = after.head(limit)
    engine = engine or OnlineFeatures(plan)
    out = {}
    for row in after.iter_rows(named=True):
        ev = Event(request_values(row))
        decision, history = gather(store, needs, ev)
        assert decision is None
        out[ev.event_id] = engine.compute(ev, history)
        assert store.commit(ev.row(needs.extra_columns), None)
    return out


def assert_same_features(plan, frame, got: dict, tol: float = 1e-9):
    ref = plan.transform(frame).filter(pl.col("event_id").is_in(list(got)))
    assert ref.height == len(got)
    cols = plan.feature_columns()
    exact = total = 0
    for row in ref.select("event_id", *cols).iter_rows(named=True):
        mine = got[row["event_id"]]
        for c in cols:
            e, g = row[c], mine[c]
            total += 1
            if e is None or g is None:
                assert e is None and g is None, (row["event_id"], c, e, g)
                exact += 1
                continue
            if isinstance(e, float) and math.isnan(e):
                assert math.isnan(g), (row["event_id"], c, e, g)
                exact += 1
                continue
            assert abs(e - g) <= tol * max(1.0, abs(e)), (row["event_id"], c, e, g)
            exact += e == g
    return exact, total


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_online_engine_equals_offline_full_plan(synthetic, backend, redis_server):
    plan, frame, cut = synthetic
    store = _store(backend, plan_needs(plan).layout(), redis_server, f"full-{backend}")
    got = run_online(plan, frame, cut, store)
    assert len(got) > 500
    exact, total = assert_same_features(plan, frame, got)
    assert exact == total  # not just within 1e-9: bit for bit


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_online_engine_equals_offline_paysim_same_instants(paysim, backend, redis_server):
    plan, frame, cut = paysim
    after = frame.filter(pl.col("event_time") >= cut)
    assert after.height - after["event_time"].n_unique() > 100  # many events share an instant
    store = _store(backend, plan_needs(plan).layout(), redis_server, f"paysim-{backend}")
    got = run_online(plan, frame, cut, store, reverse_instants=True)
    exact, total = assert_same_features(plan, frame, got)
    assert exact == total


def test_polars_engine_equals_offline(synthetic):
    plan, frame, cut = synthetic
    needs = plan_needs(plan)
    columns = [c for c in frame.columns if c not in ("label", "typology", "instance_id")]
    got = run_online(plan, frame, cut, MemoryStore(needs.layout()), PolarsFeatures(plan, columns, needs.extra_columns),
                     limit=25)
    exact, total = assert_same_features(plan, frame, got)
    assert exact == total


def test_transform_enforces_strictly_earlier_given_same_instant_history(synthetic):
    """plan.transform(e, history=H + events at e's instant) == plan.transform(e, history=H)."""
    plan, frame, cut = synthetic
    e = frame.filter(pl.col("event_time") >= cut).head(1)
    t = e["event_time"][0]
    hist = frame.filter(pl.col("event_time") < t)
    twins = pl.concat([e, e.with_columns(dst_account=pl.col("src_account"), src_account=pl.col("dst_account")),
                       e.with_columns(dst_account=pl.lit("Z-other"))]).with_columns(
        event_id=pl.format("twin-{}", pl.int_range(pl.len()).cast(pl.String)))
    cols = plan.feature_columns()
    base = plan.transform(e, history=hist).select(cols)
    with_twins = plan.transform(e, history=pl.concat([hist, twins])).select(cols)
    assert base.equals(with_twins)


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_same_instant_events_never_see_each_other_in_any_order(synthetic, backend, redis_server):
    plan, frame, cut = synthetic
    needs = plan_needs(plan)
    engine = OnlineFeatures(plan)
    base = frame.filter(pl.col("event_time") >= cut).row(0, named=True)
    a = request_values({**base, "event_id": "inst-a"})
    b = request_values({**base, "event_id": "inst-b", "src_account": base["dst_account"], "dst_account": base["src_account"],
                        "amount": 777.0})
    results = []
    for n, order in enumerate(([a, b], [b, a])):
        store = _store(backend, needs.layout(), redis_server, f"inst-{backend}-{n}")
        store.warm(frame.filter(pl.col("event_time") < cut).select(needs.layout().columns)
                   .with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
        got = {}
        for values in order:
            ev = Event(values)
            _, h = gather(store, needs, ev)
            got[ev.event_id] = engine.compute(ev, h)
            store.commit(ev.row(needs.extra_columns), None)
        results.append(got)
    assert results[0] == results[1]
    # and each equals the features with no same-instant partner at all
    store = _store(backend, needs.layout(), redis_server, f"inst-{backend}-alone")
    store.warm(frame.filter(pl.col("event_time") < cut).select(needs.layout().columns)
               .with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
    ev = Event(a)
    _, h = gather(store, needs, ev)
    assert engine.compute(ev, h) == results[0]["inst-a"]


def test_trim_keeps_window_and_two_latest_instants():
    day = 86_400_000_000
    times = [0, 1 * day, 2 * day, 20 * day, 20 * day, 30 * day]
    # window 7d from 30d: nothing but the latest; the two latest instants are 20d and 30d
    assert times[trim_start(times, 7 * day):] == [20 * day, 20 * day, 30 * day]
    assert times[trim_start(times, 29 * day):] == [1 * day, 2 * day, 20 * day, 20 * day, 30 * day]
    assert trim_start([5], 0) == 0


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_previous_event_is_exact_beyond_the_window(backend, redis_server):
    """time's seconds-since-previous needs the latest event however old: the store keeps it."""
    plan = FeaturePlan.from_config({"time": {}, "amount": {"trailing_window": "1h"}})
    plan.fit_transform(pl.DataFrame({"event_time": [datetime(2025, 1, 1, tzinfo=timezone.utc)], "src_account": ["a"],
                                     "dst_account": ["b"], "amount": [1.0]}))
    needs = plan_needs(plan)
    store = _store(backend, needs.layout(), redis_server, "dormant")
    t0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
    engine = OnlineFeatures(plan)

    def send(eid, t, src, dst):
        ev = Event({"event_id": eid, "event_time": t, "src_account": src, "dst_account": dst, "amount": 10.0})
        _, h = gather(store, needs, ev)
        f = engine.compute(ev, h)
        store.commit(ev.row(()), None)
        return f

    send("1", t0, "a", "b")
    send("2", t0 + timedelta(hours=5), "a", "c")
    send("3", t0 + timedelta(hours=5), "a", "d")  # same instant as 2
    f = send("4", t0 + timedelta(days=40), "c", "a")  # 40 days later, far beyond the 1h window
    assert f["dst_secs_since_prev"] == (timedelta(days=40) - timedelta(hours=5)).total_seconds()
    assert f["src_secs_since_prev"] == (timedelta(days=40) - timedelta(hours=5)).total_seconds()
    # an event at a's latest instant sees the instant before it, not its same-instant partner
    f = send("5", t0 + timedelta(days=40), "a", "e")
    assert f["src_secs_since_prev"] == (timedelta(days=40) - timedelta(hours=5)).total_seconds()


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_commit_is_idempotent_by_event_id(backend, redis_server):
    layout = StoreLayout(window_us=3_600_000_000)
    store = _store(backend, layout, redis_server, "idem")
    row = ("e1", 1_000_000, "a", "b", 5.0)
    assert store.commit(row, {"score": 0.5}) is True
    assert store.commit(row, {"score": 0.9}) is False
    reading = store.read("e2", ["a", "b"], 0, 2_000_000)
    assert len(reading.sent["a"]) == 1 and len(reading.received["b"]) == 1
    assert store.read("e1", ["a"], 0, 2_000_000).decision == {"score": 0.5}


def warmed_redis(synthetic, redis_server, prefix: str) -> tuple:
    """(needs, a Redis store on ``prefix`` warmed with the events before the cut, an uncached
    reader of the same store): the scene of the tests of cached copies."""
    plan, frame, cut = synthetic
    needs = plan_needs(plan)
    store = RedisStore(needs.layout(), redis_server.url, prefix=prefix)
    store.warm(frame.filter(pl.col("event_time") < cut).select(needs.layout().columns)
               .with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
    return needs, store, RedisStore(needs.layout(), redis_server.url, prefix=prefix, cache_size=0)


def test_redis_cache_stays_exact_with_two_writers(synthetic, redis_server):
    """A scorer's cached copies follow appends by another scorer (versions), bit for bit."""
    plan, frame, cut = synthetic
    needs, mine, uncached = warmed_redis(synthetic, redis_server, "two:")
    other = RedisStore(needs.layout(), redis_server.url, prefix="two:")
    engine = OnlineFeatures(plan)
    after = frame.filter(pl.col("event_time") >= cut).head(400)
    for n, row in enumerate(after.iter_rows(named=True)):
        ev = Event(request_values(row))
        _, cached = gather(mine, needs, ev)
        _, fresh = gather(uncached, needs, ev)
        assert engine.compute(ev, cached) == engine.compute(ev, fresh), ev.event_id
        (other if n % 3 == 0 else mine).commit(ev.row(needs.extra_columns), None)
    assert len(mine._cache) > 100  # the cache was in use


@pytest.mark.parametrize("feed", [RedisStore.FEED, 1])
def test_redis_workers_follow_each_others_appends_from_the_feed(synthetic, redis_server, monkeypatch, feed):
    """Two scorers sharing the requests (deploy.workers=2): each brings its copies up to the
    other's appends from the store's change feed in the same read call, never checking
    versions or fetching a copy again, and stays bit for bit what Redis holds; with a feed
    too short to reach back (feed=1 behind two appends) a scorer reads its copies again, as
    exact."""
    plan, frame, cut = synthetic
    monkeypatch.setattr(RedisStore, "FEED", feed)
    prefix = f"feed{feed}:"
    needs, first, uncached = warmed_redis(synthetic, redis_server, prefix)
    second = RedisStore(needs.layout(), redis_server.url, prefix=prefix)
    calls = {store: {"followed": 0, "versioned": 0} for store in (first, second)}

    def counting(store, name, key):
        method = getattr(store, name)

        def counted(*args, **kwargs):
            calls[store][key] += 1
            return method(*args, **kwargs)
        monkeypatch.setattr(store, name, counted)

    def counting_script(store, name, key):  # the scripts go through the store's _call
        call, script = store._call, getattr(store, name)

        def counted(called, *args, **kwargs):
            calls[store][key] += called is script
            return call(called, *args, **kwargs)
        monkeypatch.setattr(store, "_call", counted)

    for store in (first, second):
        counting(store, "_follow", "followed")
        counting_script(store, "_read", "versioned")
    engine = OnlineFeatures(plan)
    events = list(frame.filter(pl.col("event_time") >= cut).head(300).iter_rows(named=True))
    for n, row in enumerate(events):
        ev = Event(request_values(row))
        scorer = first if n % 3 == 0 else second  # the kernel hands each request to either worker
        _, history = gather(scorer, needs, ev)
        assert engine.compute(ev, history) == engine.compute(ev, gather(uncached, needs, ev)[1]), ev.event_id
        assert scorer.commit(ev.row(needs.extra_columns), None)
    checked = 0
    for scorer in (first, second):  # every current copy is exactly Redis's set
        for acc, entry in scorer._cache.items():
            if entry.version == int(scorer._r.get(f"{prefix}v:{acc}")):
                assert [list(r) for r in entry.received] == uncached.read_received([acc], 0, 2**62)[acc], acc
                checked += 1
    assert checked > 100
    if feed == 1:  # one entry never reaches back over second's two appends: copies are read again
        assert calls[first]["followed"] == 0 and calls[first]["versioned"] >= 99
    else:  # first holds every account (its warm-up): each read but its first follows second's two appends
        assert calls[first] == {"followed": 99, "versioned": 0}, calls[first]
        assert calls[second]["followed"] > 0  # second reads with versions only accounts it holds no copy of


def test_redis_preload_lets_a_new_worker_read_without_fetching(synthetic, redis_server, monkeypatch):
    """A worker that starts on a warm store reads its copies before serving (preload): its
    requests then fetch no sets, follow the other worker's appends from the feed and stay
    exact; only events of accounts the store had no rows of need a versioned read."""
    plan, frame, cut = synthetic
    needs, writer, uncached = warmed_redis(synthetic, redis_server, "preload:")
    known = set(writer._cache)
    fresh = RedisStore(needs.layout(), redis_server.url, prefix="preload:")
    assert fresh.preload() == len(known) and set(fresh._cache) == known
    reads = []
    versioned = fresh._read
    monkeypatch.setattr(fresh, "_read", lambda *a, **k: (reads.append(1), versioned(*a, **k))[1])
    engine = OnlineFeatures(plan)
    unknown = 0
    for n, row in enumerate(frame.filter(pl.col("event_time") >= cut).head(200).iter_rows(named=True)):
        ev = Event(request_values(row))
        scorer = fresh if n % 2 else writer
        if scorer is fresh and not {ev.src, ev.dst} <= set(fresh._cache):
            unknown += 1
        assert engine.compute(ev, gather(scorer, needs, ev)[1]) == engine.compute(ev, gather(uncached, needs, ev)[1])
        scorer.commit(ev.row(needs.extra_columns), None)
    assert len(reads) == unknown < 30


def test_redis_warm_holds_exact_copies_only_of_new_accounts(synthetic, redis_server):
    """A warm-up keeps the sets it wrote as cached copies (no cold read of a merchant's
    thousands of rows on its first request), but only for accounts Redis had no rows of:
    a second warm into a non-empty store must not hold partial copies."""
    plan, frame, cut = synthetic
    needs = plan_needs(plan)
    layout = needs.layout()
    before = (frame.filter(pl.col("event_time") < cut).select(layout.columns)
              .with_columns(pl.col("event_time").dt.epoch("us")))
    half = before.height // 2
    first = RedisStore(layout, redis_server.url, prefix="warmcache:")
    first.warm(before.head(half).iter_rows())
    second = RedisStore(layout, redis_server.url, prefix="warmcache:")
    second.warm(before.tail(before.height - half).iter_rows())
    seen_first = set(before.head(half)["src_account"]) | set(before.head(half)["dst_account"])
    assert first._cache and second._cache
    assert not seen_first & set(second._cache)  # accounts with earlier rows: not held
    uncached = RedisStore(layout, redis_server.url, prefix="warmcache:", cache_size=0)
    engine = OnlineFeatures(plan)
    for row in frame.filter(pl.col("event_time") >= cut).head(200).iter_rows(named=True):
        ev = Event(request_values(row))
        for store in (first, second):
            assert engine.compute(ev, gather(store, needs, ev)[1]) == engine.compute(ev, gather(uncached, needs, ev)[1])


def test_redis_single_writer_reads_skip_version_checks_and_stay_exact(synthetic, redis_server):
    """Alone on the store, a scorer reads with one O(1) call (its copies are current while
    the store's generation is the one its own writes led to); another scorer's write comes
    with the next read (the change feed) and keeps it so, and a scorer starting on a warm
    store is on it after one read."""
    plan, frame, cut = synthetic
    needs, mine, uncached = warmed_redis(synthetic, redis_server, "alone:")
    layout = needs.layout()
    engine = OnlineFeatures(plan)
    after = list(frame.filter(pl.col("event_time") >= cut).head(300).iter_rows(named=True))
    calls = {"fast": 0}
    call = mine._call

    def counted(script, *args, **kwargs):
        calls["fast"] += script is mine._read_fast
        return call(script, *args, **kwargs)

    mine._call = counted

    def step(store, row):
        ev = Event(request_values(row))
        assert engine.compute(ev, gather(store, needs, ev)[1]) == engine.compute(ev, gather(uncached, needs, ev)[1]), ev.event_id
        assert store.commit(ev.row(needs.extra_columns), None)

    for row in after[:150]:
        step(mine, row)
        assert mine._generation is not None
    assert calls["fast"] >= 100  # most reads took the fast path
    other = RedisStore(layout, redis_server.url, prefix="alone:")
    step(other, after[150])  # another writer: mine's copies are a change behind
    fast_before = calls["fast"]
    for row in after[151:250]:
        step(mine, row)  # still exact: the other's append came with the first read (the feed)
    assert mine._generation is not None and calls["fast"] - fast_before >= 90
    restarted = RedisStore(layout, redis_server.url, prefix="alone:")  # empty cache: in sync after one read
    for row in after[250:]:
        step(restarted, row)
    assert restarted._generation is not None


def test_redis_state_survives_reconnect_and_server_restart(tmp_path):
    if not LocalRedis.available():
        pytest.skip("redis-server is not installed")
    layout = StoreLayout(window_us=3_600_000_000)
    server = LocalRedis(tmp_path / "r").start()
    try:
        RedisStore(layout, server.url).commit(("e1", 1_000_000, "a", "b", 5.0), {"score": 0.25})
        port = server.port
        server.stop()
        server = LocalRedis(tmp_path / "r", port=port).start()  # reloads the append-only file
        again = RedisStore(layout, server.url)
        assert again.read("e1", ["a"], 0, 2_000_000).decision == {"score": 0.25}
        assert [r[0] for r in again.read("x", ["a"], 0, 2_000_000).sent["a"]] == ["e1"]
        assert again.commit(("e1", 1_000_000, "a", "b", 5.0), None) is False
        with pytest.raises(UserError, match="columns"):
            RedisStore(StoreLayout(window_us=1, extra_columns=("channel",)), server.url)
    finally:
        server.stop()


def test_warm_from_parquet_takes_events_strictly_before(tmp_path, synthetic):
    plan, frame, cut = synthetic
    path = tmp_path / "v.parquet"
    frame.write_parquet(path)
    store = MemoryStore(plan_needs(plan).layout())
    n = warm_from_parquet(store, path, cut)
    assert n == frame.filter(pl.col("event_time") < cut).height
    assert warm_from_parquet(store, path, cut) == 0  # the same events again: nothing new
    with pytest.raises(UserError, match="no such file"):
        warm_from_parquet(store, tmp_path / "nope.parquet", None)


def test_plan_needs_and_refusals(synthetic):
    plan, _, _ = synthetic
    needs = plan_needs(plan)
    # flow matching and novelty look 30 days behind their 7-day windows; the payers' inflows
    # 9 days (the paths step's 7-day window and 48 h hop lag; the graph's 2-hop paths: 7)
    assert needs.window_us == 37 * 86_400_000_000 and needs.expand_us == 9 * 86_400_000_000
    assert needs.hubs == frozenset(dict(plan.steps)["graph"].hubs_) & frozenset(dict(plan.steps)["paths"].hubs_)
    with pytest.raises(UserError, match="deploy.store.backend"):
        from types import SimpleNamespace

        open_store(SimpleNamespace(backend="mongo", dedup_ttl="1d"), needs.layout())


def test_redis_request_path_survives_a_script_flush_and_a_dropped_connection(synthetic, redis_server):
    """The read and append scripts run on the store's own connection (redis_store._ScriptCalls):
    a Redis that forgot its scripts gets them again, a connection the server closed is made
    again, and the answers stay those of a fresh store."""
    import redis

    plan, frame, cut = synthetic
    needs, mine, uncached = warmed_redis(synthetic, redis_server, "flush:")
    engine = OnlineFeatures(plan)
    admin = redis.Redis.from_url(redis_server.url)
    events = list(frame.filter(pl.col("event_time") >= cut).head(30).iter_rows(named=True))
    for n, row in enumerate(events):
        if n == 10:
            admin.script_flush()
        if n == 20:
            killed = admin.client_kill_filter(laddr=None, _type="normal", skipme=True)
            assert killed >= 1
        ev = Event(request_values(row))
        assert engine.compute(ev, gather(mine, needs, ev)[1]) == engine.compute(ev, gather(uncached, needs, ev)[1])
        assert mine.commit(ev.row(needs.extra_columns), {"event_id": ev.event_id})
    assert not mine.commit(ev.row(needs.extra_columns), None)  # the last one again: refused, not appended twice


def test_redis_commands_are_packed_as_redis_py_packs_them():
    """The request path packs its EVALSHA itself (redis_store._resp_command): byte for byte
    what redis-py's own packer sends, for every kind of argument it is given."""
    import redis

    from aml_pipeline.store.redis_store import _resp_command

    args = ("EVALSHA", "0" * 40, 3, b"aml:s:e1", "aml:o:caf\u00e9", "", 1_754_000_000_000_000, -7, 0.1, 1e16,
            b'["e1",1,"a","b",10.5]' * 400)
    assert _resp_command(*args) == b"".join(redis.Connection().pack_command(*args))
    for bad in (None, True):
        with pytest.raises(TypeError):
            _resp_command("GET", bad)


def test_busiest_accounts_agree_between_the_stores(synthetic, redis_server):
    """OnlineStore.busiest (what the service primes the feature steps for): the accounts with
    most rows and each one's newest event time, the same from the embedded store and from a
    Redis scorer's preloaded copies; priming on Redis appends nothing and changes no feature."""
    plan, frame, cut = synthetic
    needs, warmed, uncached = warmed_redis(synthetic, redis_server, "busy:")
    memory = MemoryStore(needs.layout())
    memory.warm(frame.filter(pl.col("event_time") < cut).select(needs.layout().columns)
                .with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
    fresh = RedisStore(needs.layout(), redis_server.url, prefix="busy:")
    fresh.preload()
    sizes = {}
    for _, acc, rows in memory.sets():
        sizes[acc] = sizes.get(acc, 0) + len(rows)
    top_memory, top_redis = dict(memory.busiest(20)), dict(fresh.busiest(20))
    assert sorted(sizes[a] for a in top_memory) == sorted(sizes.values())[-20:]
    assert sorted(sizes[a] for a in top_redis) == sorted(sizes[a] for a in top_memory)
    for acc in set(top_memory) & set(top_redis):
        assert top_memory[acc] == top_redis[acc]
    generation = fresh._r.get(fresh._p + b"g")
    primed, plain = OnlineFeatures(plan), OnlineFeatures(plan)
    assert primed.prime(fresh, needs, 20) == 20
    assert fresh._r.get(fresh._p + b"g") == generation  # nothing appended
    for row in frame.filter(pl.col("event_time") >= cut).head(100).iter_rows(named=True):
        ev = Event(request_values(row))
        assert primed.compute(ev, gather(fresh, needs, ev)[1]) == plain.compute(ev, gather(uncached, needs, ev)[1])
        assert fresh.commit(ev.row(needs.extra_columns), None)
