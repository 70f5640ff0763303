"""The scoring paths under hostile input, with a real bundle and store: the online API answers
200 or 422 (never 500) and never lets a future-dated event into the store; the stream's
micro-batch step (``state: store``, the step Spark's ``foreachBatch`` calls) never raises,
its counts always reconcile (records in = scored + dead + late + pending), and one event
dated 2100 neither moves the watermark nor makes later events late."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import compose_config, train_small_run
from tests.reliability.conftest import LONG_EXAMPLES
from tests.reliability.corpus import STREAM_CASES
from tests.reliability.strategies import FIELD_VALUES, JSON_ANY, stream_text

KEY = "fuzz-api-key-0123456789"
NOT_REQUEST = ("label", "typology", "instance_id", "flagged")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small trained run: bundle, validated events, the test window's start."""
    from aml_pipeline.bundle import ModelBundle

    d = tmp_path_factory.mktemp("fuzz_run")
    paths, test_start_text, test_start = train_small_run(d)
    validated = d / "data/validated/transactions.parquet"
    window = pl.read_parquet(validated).filter(pl.col("event_time") >= test_start).sort("event_time")
    return SimpleNamespace(dir=d, bundle=ModelBundle.load(d / "models/bundle"), validated=validated,
                           test_start=test_start_text, window=window)


def _event(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in NOT_REQUEST and v is not None}
    out["event_time"] = row["event_time"].isoformat()
    return out


# ----------------------------------------------------------------------------- online API
@pytest.fixture(scope="module")
def api(small):
    from fastapi.testclient import TestClient

    from aml_pipeline.serving.app import ServiceState, create_app
    from aml_pipeline.serving.metrics import Metrics
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, make_engine, single_threaded
    from aml_pipeline.serving.server import request_columns
    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.timeutil import parse_time
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.store.memory import MemoryStore

    bundle = small.bundle
    single_threaded(bundle)
    needs = plan_needs(bundle.plan)
    store = MemoryStore(needs.layout())
    warm_from_parquet(store, small.validated, parse_time(small.test_start, "test_start"))
    scorer = Scorer(bundle, store, needs, make_engine("online", bundle, needs, request_columns(bundle)),
                    DecisionLog(small.dir / "decisions.jsonl"))
    state = ServiceState(KEY, 262_144, Metrics())
    state.set_ready(scorer)
    app = create_app(state, list(compose_config([]).validation.currencies), bundle.plan.required_columns(), 50)
    with TestClient(app, raise_server_exceptions=False, headers={"X-API-Key": KEY}) as client:
        yield SimpleNamespace(client=client, scorer=scorer, store=store, events=[_event(r) for r in small.window.head(200).iter_rows(named=True)])
    scorer.log.close()


def _history(store, account: str) -> int:
    return len(store.history_rows({account}, 2**62, None, frozenset()))


def test_api_refuses_future_and_overflowing_times_and_the_store_keeps_its_history(api):
    good = api.events[0]
    before = _history(api.store, good["src_account"])
    for when, reason in [("2100-01-01T00:00:00Z", "event_time_in_future"), ("9999-12-31T23:59:59-01:00", "invalid_event_time")]:
        r = api.client.post("/score", json={**good, "event_id": f"hostile-{when}", "event_time": when})
        assert r.status_code == 422, r.text
        assert reason in r.json()["error"] and "event_time" in r.json()["fields"][0]
    assert _history(api.store, good["src_account"]) == before  # nothing trimmed, nothing added
    r = api.client.post("/score", json={**good, "event_id": "hostile-ctl", "src_account": "A\x1fB"})
    assert r.status_code == 422 and "control_character" in r.json()["error"]
    assert api.client.post("/score", json=good).status_code == 200  # and the service goes on


def _bodies(events):
    base = st.sampled_from(events)
    hostile_field = st.tuples(base, st.sampled_from([*events[0]]), st.one_of(*FIELD_VALUES.values(), JSON_ANY)).map(
        lambda t: json.dumps({**t[0], t[1]: t[2]}).encode())
    seeded = st.sampled_from([v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass") for v, _ in STREAM_CASES.values()])
    text = stream_text().map(lambda v: v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass"))
    return st.one_of(hostile_field, hostile_field, seeded, text, base.map(lambda e: json.dumps(e).encode()))


def check_api(api, body: bytes, batch: bool) -> None:
    path = "/score/batch" if batch else "/score"
    if batch:
        body = b'{"transactions": [' + body + b"]}"
    r = api.client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code in (200, 413, 422), (r.status_code, r.text[:300])
    answer = r.json()
    if r.status_code == 200:
        results = answer["results"] if batch else [answer]
        assert all(d["decision"] in ("alert", "no_alert") for d in results)
    else:
        assert answer["error"] and "\n" not in answer["error"]


def test_api_error_is_one_line_when_a_field_name_is_not(api):
    """A client's field name with a line break (found by the long fuzz run) is escaped in the
    one-line error, and named as it is in ``fields``."""
    body = json.dumps({**api.events[0], "\n": 1, "a\u2028b": 2}).encode()
    for batch in (False, True):
        check_api(api, body, batch)
    r = api.client.post("/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "\\n" in r.json()["error"] and "\n" in r.json()["fields"]


@pytest.mark.parametrize("name", list(STREAM_CASES))
def test_api_seeded_corpus_is_scored_or_refused(api, name):
    """Each hostile record of the corpus as a request body, alone and in a batch; where it is
    JSON, also with a real event's fields around it."""
    value = STREAM_CASES[name][0]
    body = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    for batch in (False, True):
        check_api(api, body, batch)
    try:
        hostile = json.loads(body)
    except (ValueError, RecursionError):
        return
    if isinstance(hostile, dict):
        mixed = {**api.events[1], **{k: v for k, v in hostile.items() if k in api.events[1]}}
        check_api(api, json.dumps(mixed).encode(), False)


@given(st.data())
def test_api_any_body_is_scored_or_refused(api, data):
    body = data.draw(_bodies(api.events))
    check_api(api, body, data.draw(st.booleans()))


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES // 3)
@given(st.data())
def test_api_any_body_is_scored_or_refused_long(api, data):
    check_api(api, data.draw(_bodies(api.events)), data.draw(st.booleans()))


# ----------------------------------------------------------------------------- stream micro-batches
def _stream_scorer(small, out):
    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.timeutil import parse_time
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.timeutil import to_us
    from aml_pipeline.store.memory import MemoryStore
    from aml_pipeline.streaming.budget import AlertBudget
    from aml_pipeline.streaming.outputs import FileOutputs
    from aml_pipeline.streaming.scorer import StreamScorer
    from aml_pipeline.validation.rules import build_rules

    needs = plan_needs(small.bundle.plan)
    store = MemoryStore(needs.layout())
    until = parse_time(small.test_start, "test_start")
    warm_from_parquet(store, small.validated, until)
    currencies = list(compose_config([]).validation.currencies)
    return StreamScorer(small.bundle, store, needs, FileOutputs(out / "out"), build_rules(currencies, False),
                        out / "state", 3_600_000_000, AlertBudget("jurisdiction", "1d", 5), start_watermark_us=to_us(until),
                        progress=False, snapshot_every=0)


@pytest.fixture(scope="module")
def stream(small, tmp_path_factory):
    scorer = _stream_scorer(small, tmp_path_factory.mktemp("fuzz_stream"))
    return SimpleNamespace(scorer=scorer, batch=itertools.count(),
                           events=[json.dumps(_event(r)) for r in small.window.iter_rows(named=True)])


def _reconciles(scorer) -> bool:
    c = scorer.counts
    return c["records_in"] == c["scored"] + c["dead_lettered"] + c["late"] + c["pending"]


def _process(stream, values: list) -> None:
    from aml_pipeline.streaming.records import RawRecord

    n = next(stream.batch)
    records = []
    for i, v in enumerate(values):
        pos = {"topic": "t", "partition": 0, "offset": n * 1000 + i}
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                records.append(RawRecord(None, pos, raw=v))
                continue
        records.append(RawRecord(v, pos))
    stream.scorer.process(n, records)
    assert _reconciles(stream.scorer), stream.scorer.counts


def test_an_event_dated_2100_neither_moves_the_watermark_nor_makes_later_events_late(small, tmp_path):
    scorer = _stream_scorer(small, tmp_path)
    events = [json.dumps(_event(r)) for r in small.window.head(40).iter_rows(named=True)]
    hostile = json.dumps({**json.loads(events[0]), "event_id": "from-2100", "event_time": "2100-01-01T00:00:00Z"})
    from aml_pipeline.streaming.records import RawRecord

    scorer.process(0, [RawRecord(t, {"file": "a", "line": i}) for i, t in enumerate([*events[:20], hostile])])
    watermark = scorer.watermark
    assert scorer.max_seen < 4_102_444_800_000_000  # 2100 was never seen
    scorer.process(1, [RawRecord(t, {"file": "b", "line": i}) for i, t in enumerate(events[20:])])
    c = scorer.counts
    assert c["dead_lettered"] == 1 and c["late"] == 0 and _reconciles(scorer)
    assert scorer.watermark >= watermark
    dead = [json.loads(line) for p in sorted((tmp_path / "out" / "dead_letter").glob("part-*.jsonl"))
            for line in p.read_text().splitlines()]
    assert [d["reasons"] for d in dead] == [["event_time_in_future"]] and dead[0]["record"] == hostile


@given(st.lists(st.one_of(stream_text(), st.integers(0, 10**6)), max_size=10))
@example([v for v, _ in STREAM_CASES.values()])
def test_stream_micro_batch_any_records_reconciles(stream, values):
    """Hostile records among real events (an integer picks one): the step never raises and
    the counts reconcile after every batch."""
    _process(stream, [stream.events[v % len(stream.events)] if isinstance(v, int) else v for v in values])


@pytest.mark.slow
@settings(max_examples=LONG_EXAMPLES // 5)
@given(st.lists(stream_text(), max_size=20))
def test_stream_micro_batch_any_records_reconciles_long(stream, values):
    _process(stream, values)
