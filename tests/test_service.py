"""The scoring service as clients see it: a real uvicorn server, real HTTP, a real Redis.

A small quickstart run (simulator, default plan, LightGBM) gives a bundle and the events;
a few extra events at the same instants as test-window events (same accounts, both
directions) are added. ``task=score`` over all events is the reference. The service is a
real uvicorn server on 127.0.0.1 and a free port (in a thread of this process for the
parity and request tests, as the real command ``python -m aml_pipeline task=serve`` for
start-up, restart and replay), warmed with the events before the test window; the
test-window events are sent one by one in event-time order (same-instant events in reverse
file order) and must get the reference's feature values and scores, on both store backends.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from aml_pipeline.testing.launcher import ROOT, ServiceProcess
from aml_pipeline.testing.local_redis import LocalRedis, free_port
from tests.conftest import SMALL_RUN, compose_config, train_small_run

httpx = pytest.importorskip("httpx")

KEY = "test-api-key-0123456789"
SMALL = SMALL_RUN
NOT_REQUEST = ("label", "typology", "instance_id")


# ----------------------------------------------------------------------------- fixtures
def _same_instant_twins(frame: pl.DataFrame, test_start) -> pl.DataFrame:
    """For a few test-window events: another payment by the same sender and one back, same instant."""
    picks = frame.filter(pl.col("event_time") >= test_start).gather_every(97).head(8)
    other = frame["dst_account"].unique().sort()
    rows = []
    for n, e in enumerate(picks.iter_rows(named=True)):
        rows.append({**e, "event_id": f"{e['event_id']}-twin-a", "dst_account": other[(n * 7) % len(other)],
                     "amount": round(e["amount"] * 0.5 + 1, 2)})
        rows.append({**e, "event_id": f"{e['event_id']}-twin-b", "src_account": e["dst_account"],
                     "dst_account": e["src_account"], "amount": 9_500.0})
    return pl.DataFrame(rows, schema=frame.schema)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """data -> features -> train in-process (no MLflow), extra same-instant events, task=score reference."""
    from aml_pipeline.tasks import run_task

    d = tmp_path_factory.mktemp("service_run")
    paths, test_start_text, test_start = train_small_run(d)
    valid = pl.read_parquet(d / "data/validated/transactions.parquet")
    events = pl.concat([valid, _same_instant_twins(valid, test_start)])
    events.write_parquet(d / "events.parquet")
    run_task(compose_config([*SMALL, *paths, "task=score", f"bundle={d / 'models/bundle'}", f"input={d / 'events.parquet'}",
                       f"output={d / 'reference.parquet'}", "scoring.explain=none"]))
    ref = pl.read_parquet(d / "reference.parquet")
    window = (events.with_row_index("_pos").filter(pl.col("event_time") >= test_start)
              .sort(["event_time", "_pos"], descending=[False, True]).drop("_pos"))  # same instant: reverse order
    from aml_pipeline.bundle import ModelBundle

    bundle = ModelBundle.load(d / "models/bundle")
    return SimpleNamespace(dir=d, bundle_dir=d / "models/bundle", events=d / "events.parquet", test_start=test_start_text,
                           ref={r["event_id"]: r for r in ref.iter_rows(named=True)}, window=window,
                           columns=bundle.feature_columns(), bundle=bundle, paths=paths)




def start(run, name: str, *overrides: str, warm: bool = True) -> ServiceProcess:
    args = [f"bundle={run.bundle_dir}", f"deploy.decision_log={run.dir / f'decisions-{name}.jsonl'}", *run.paths, *overrides]
    if warm:
        args += [f"deploy.warm_from={run.events}", f"deploy.warm_until='{run.test_start}'"]
    return ServiceProcess(args, cwd=run.dir, api_key=KEY).start()


@pytest.fixture(scope="module")
def memory_service(run):
    """The embedded backend on a real uvicorn server in a thread of this process (no start-up
    imports); the real command line is exercised by the restart, refusal and replay tests."""
    with ThreadService(run, "memory") as svc:
        yield svc


class ThreadService:
    """The same app on a real uvicorn server, in a thread of the test process (no start-up imports)."""

    def __init__(self, run, name: str, engine: str = "online", store=None, warm: bool = True):
        import uvicorn

        from aml_pipeline.bundle import ModelBundle
        from aml_pipeline.serving.app import ServiceState, create_app
        from aml_pipeline.serving.metrics import Metrics
        from aml_pipeline.serving.scorer import DecisionLog, Scorer, make_engine, single_threaded
        from aml_pipeline.serving.server import request_columns
        from aml_pipeline.store import warm_from_parquet
        from aml_pipeline.timeutil import parse_time
        from aml_pipeline.store.engine import plan_needs
        from aml_pipeline.store.memory import MemoryStore

        bundle = ModelBundle.load(run.bundle_dir)
        single_threaded(bundle)
        needs = plan_needs(bundle.plan)
        store = store(needs.layout()) if store else MemoryStore(needs.layout())
        if warm:
            warm_from_parquet(store, run.events, parse_time(run.test_start, "test_start"))
        self.scorer = Scorer(bundle, store, needs, make_engine(engine, bundle, needs, request_columns(bundle)),
                             DecisionLog(run.dir / f"decisions-{name}.jsonl"))
        self.scorer.warm_up()
        state = ServiceState(KEY, 262_144, Metrics())
        state.set_ready(self.scorer)
        currencies = list(compose_config([]).validation.currencies)
        app = create_app(state, currencies, bundle.plan.required_columns(), 500)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="off", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ThreadService":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
        self.scorer.log.close()

    def health(self) -> tuple[int, dict]:
        r = httpx.get(self.url + "/health", headers={"X-API-Key": KEY})  # details need the key
        return r.status_code, r.json()


def client(svc, key: str | None = KEY) -> "httpx.Client":
    return httpx.Client(base_url=svc.url, headers={"X-API-Key": key} if key else {}, timeout=30)


def payload(row: dict) -> dict:
    out = {k: v for k, v in row.items() if k not in NOT_REQUEST and v is not None}
    out["event_time"] = row["event_time"].isoformat()
    return out


def tx(event_id: str, t: str, src: str, dst: str, amount: float = 120.0, **extra) -> dict:
    return {"event_id": event_id, "event_time": t, "src_account": src, "dst_account": dst, "amount": amount,
            "currency": "USD", "channel": "transfer", "jurisdiction": "US", **extra}


def assert_parity(run, got: dict, decisions: dict) -> None:
    for eid, features in got.items():
        ref = run.ref[eid]
        for c in run.columns:
            e, g = ref[c], features[c]
            if e is None or (isinstance(e, float) and math.isnan(e)):
                assert g is None, (eid, c, e, g)
            else:
                assert g is not None and abs(e - g) <= 1e-9 * max(1.0, abs(e)), (eid, c, e, g)
        d = decisions[eid]
        assert abs(d["score"] - ref["score"]) <= 1e-9, (eid, d["score"], ref["score"])
        assert d["threshold"] == ref["threshold"] and d["alert"] == ref["alert"]


def send_window(run, svc, limit: int | None = None) -> tuple[dict, dict]:
    got, decisions = {}, {}
    rows = run.window.head(limit) if limit else run.window
    with client(svc) as c:
        for row in rows.iter_rows(named=True):
            r = c.post("/score", params={"include_features": "true"}, json=payload(row))
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["replayed"] is False and body["event_id"] == row["event_id"]
            got[row["event_id"]] = body["features"]
            decisions[row["event_id"]] = body
    return got, decisions


# ----------------------------------------------------------------------------- parity
def _check_window(run, svc, name):
    got, decisions = send_window(run, svc)
    assert len(got) == run.window.height > 500
    twins = [e for e in got if "-twin-" in e]
    assert len(twins) == 16
    assert_parity(run, got, decisions)
    alerts = [d for d in decisions.values() if d["alert"]]
    assert all(d["top_features"] and len(d["top_features"]) == 5 for d in alerts)
    assert all(d["latency_ms"] > 0 and d["bundle_hash"] == run.bundle.bundle_hash for d in decisions.values())
    # the decision log holds the same features, and re-scores to the same values
    from aml_pipeline.serving.replay import read_decisions, rescore

    logged = [r for r in read_decisions(run.dir / f"decisions-{name}.jsonl") if r["event_id"] in got]
    assert len(logged) == len(got)
    for record in logged:
        assert record["features"] == got[record["event_id"]]
        assert rescore(run.bundle, record)["same"]


def test_parity_one_by_one_memory_store(run, memory_service):
    _check_window(run, memory_service, "memory")


def test_parity_one_by_one_redis_store(run, redis_server):
    """The Redis backend, served in a thread (the restart test below runs it as the real command)."""
    from aml_pipeline.store.redis_store import RedisStore

    store = lambda layout: RedisStore(layout, redis_server.url, prefix="parity:")  # noqa: E731
    with ThreadService(run, "redis", store=store) as svc:
        _check_window(run, svc, "redis")
        assert svc.health()[1]["store"]["backend"] == "redis"


def test_store_outage_is_503_not_500(run, tmp_path):
    if not LocalRedis.available():
        pytest.skip("redis-server is not installed")
    from aml_pipeline.store.redis_store import RedisStore

    redis = LocalRedis(tmp_path / "redis").start()
    try:
        store = lambda layout: RedisStore(layout, redis.url, prefix="outage:")  # noqa: E731
        with ThreadService(run, "outage", store=store, warm=False) as svc, client(svc) as c:
            assert c.post("/score", json=tx("out-1", "2026-07-01T00:00:00Z", "OUT-A", "OUT-B")).status_code == 200
            redis.stop()
            r = c.post("/score", json=tx("out-2", "2026-07-01T01:00:00Z", "OUT-A", "OUT-B"))
            assert r.status_code == 503 and "store unavailable" in r.json()["error"]
            assert c.get("/health").status_code == 503
            assert 'aml_errors_total{kind="unavailable"}' in c.get("/metrics").text
    finally:
        redis.stop()


@pytest.mark.slow
def test_parity_polars_engine(run):
    """deploy.feature_engine=polars runs plan.transform per request: same values, ~45 ms each."""
    with ThreadService(run, "polars", engine="polars") as svc:
        got, decisions = send_window(run, svc, limit=40)
    assert_parity(run, got, decisions)
    assert {d["feature_engine"] for d in decisions.values()} == {"polars"}


# ----------------------------------------------------------------------------- safety
def test_auth_required(memory_service):
    body = tx("auth-1", "2026-01-01T00:00:00Z", "AUTH-A", "AUTH-B")
    with client(memory_service, key=None) as c:
        assert c.post("/score", json=body).status_code == 401
        assert c.post("/score/batch", json={"transactions": [body]}).status_code == 401
    with client(memory_service, key="wrong-key-0123456789") as c:
        r = c.post("/score", json=body)
        assert r.status_code == 401 and "X-API-Key" in r.json()["error"]
    with client(memory_service, key=None) as c:  # probes and scrapes need no key
        assert c.get("/health").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_body_too_large(memory_service):
    big = tx("big-1", "2026-01-01T00:00:00Z", "BIG-A", "BIG-B", merchant="m" * 300_000)
    with client(memory_service) as c:
        r = c.post("/score", json=big)
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]

        def chunks():  # no Content-Length: the limit holds on the bytes received
            data = json.dumps(big).encode()
            for i in range(0, len(data), 8192):
                yield data[i:i + 8192]

        r = c.post("/score", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


@pytest.mark.parametrize("change, field", [
    ({"extra_field": 1}, "extra_field"),
    ({"amount": float("nan")}, "amount"),
    ({"amount": float("inf")}, "amount"),
    ({"amount": -5.0}, "amount"),
    ({"amount": 0}, "amount"),
    ({"amount": "12.5"}, "amount"),
    ({"amount": None}, "amount"),
    ("drop amount", "amount"),
    ({"currency": "XYZ"}, "currency"),
    ({"event_time": "2025-13-45T99:00:00Z"}, "event_time"),
    ({"event_time": "2025-01-01T10:00:00"}, "event_time"),  # no UTC offset
    ({"event_time": 1735725600}, "event_time"),
    ({"src_account": "  "}, "src_account"),
    ("drop event_id", "event_id"),
])
def test_invalid_transaction_is_422_naming_the_field(memory_service, change, field):
    body = tx("bad-1", "2026-01-01T00:00:00Z", "BAD-A", "BAD-B")
    if isinstance(change, str):
        body.pop(change.split()[1])
    else:
        body.update(change)
    raw = json.dumps(body)  # Python writes NaN / Infinity literals, as a careless client would
    with client(memory_service) as c:
        r = c.post("/score", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    err = r.json()
    assert field in err["fields"] and field in err["error"]


def test_idempotent_replay(run, memory_service):
    first = tx("idem-1", "2026-02-01T10:00:00Z", "IDEM-A", "IDEM-B", 500.0)
    with client(memory_service) as c:
        a = c.post("/score", json=first).json()
        b = c.post("/score", json=first).json()
        assert a["replayed"] is False and b["replayed"] is True
        assert {k: v for k, v in a.items() if k not in ("replayed", "latency_ms")} == \
               {k: v for k, v in b.items() if k not in ("replayed", "latency_ms")}
        # state was not updated twice: the next payment of IDEM-A sees one earlier payment
        nxt = c.post("/score", params={"include_features": "true"},
                     json=tx("idem-2", "2026-02-01T11:00:00Z", "IDEM-A", "IDEM-C", 40.0)).json()
        assert nxt["features"]["src_out_count_24h"] == 1 and nxt["features"]["src_out_sum_24h"] == 500.0
        assert nxt["features"]["src_secs_since_prev"] == 3600.0
    lines = [json.loads(x) for x in (run.dir / "decisions-memory.jsonl").read_text().splitlines()]
    assert sum(1 for x in lines if x["event_id"] == "idem-1") == 1


def test_batch_scores_in_event_time_order(run, memory_service):
    events = [tx("batch-3", "2026-03-01T12:00:00Z", "BAT-A", "BAT-C", 30.0),
              tx("batch-1", "2026-03-01T10:00:00Z", "BAT-A", "BAT-B", 10.0),
              tx("batch-2", "2026-03-01T10:00:00Z", "BAT-B", "BAT-A", 20.0)]  # same instant as batch-1
    with client(memory_service) as c:
        r = c.post("/score/batch", params={"include_features": "true"}, json={"transactions": events})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["event_id"] for x in results] == ["batch-3", "batch-1", "batch-2"]
    frame = pl.DataFrame([{**e, "event_time": e["event_time"]} for e in events]).with_columns(
        pl.col("event_time").str.to_datetime(time_zone="UTC"))
    expected = run.bundle.plan.transform(frame)
    for x, row in zip(results, expected.iter_rows(named=True)):
        for col in run.columns:
            assert x["features"][col] == row[col], (x["event_id"], col)
    assert results[0]["features"]["src_out_count_24h"] == 1  # batch-1 is history of batch-3
    assert results[1]["features"]["dst_secs_since_prev"] is None  # batch-2 is not history of batch-1
    with client(memory_service) as c:
        too_many = {"transactions": [tx(f"m{i}", "2026-03-02T00:00:00Z", "X", "Y") for i in range(501)]}
        assert c.post("/score/batch", json=too_many).status_code == 422


def test_openapi_health_metrics(memory_service):
    with client(memory_service) as c:
        assert c.post("/score", json=tx("metrics-1", "2026-06-01T00:00:00Z", "MET-A", "MET-B")).status_code == 200
    with client(memory_service, key=None) as c:
        spec = c.get("/openapi.json").json()
        assert c.get("/health").json() == {"status": "ready"}  # details need the key
        metrics = c.get("/metrics").text
    with client(memory_service) as c:
        health = c.get("/health").json()
        assert c.get("/score").status_code == 405  # the Guard answers only POST /score itself
    tx_schema = spec["components"]["schemas"]["Transaction"]
    assert tx_schema["additionalProperties"] is False
    assert {"event_id", "event_time", "amount", "currency"} <= set(tx_schema["required"])
    assert spec["components"]["securitySchemes"]["ApiKey"]["name"] == "X-API-Key"
    assert "Decision" in spec["components"]["schemas"] and "/score/batch" in spec["paths"]
    assert spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Transaction")
    assert health["status"] == "ready" and health["feature_engine"] == "online" and health["store"]["backend"] == "memory"
    for name in ('aml_requests_total{endpoint="/score",status="200"}', "aml_request_latency_seconds_bucket",
                 "aml_decisions_total", "aml_errors_total", "aml_ready 1.0"):
        assert name in metrics, name


def test_health_is_503_until_ready_and_plain_metrics(run):
    """In-process uvicorn (a real server on a real port) driven through start-up states."""
    import uvicorn

    from aml_pipeline.serving.app import ServiceState, create_app
    from aml_pipeline.serving.metrics import Metrics
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, make_engine
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.store.memory import MemoryStore

    state = ServiceState(KEY, 65536, Metrics(plain=True))
    app = create_app(state, ["USD", "EUR"], run.bundle.plan.required_columns(), 10)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        with httpx.Client(base_url=url, headers={"X-API-Key": KEY}) as c:
            assert c.get("/health").status_code == 503
            assert c.post("/score", json=tx("early", "2026-01-01T00:00:00Z", "E-A", "E-B")).status_code == 503
            needs = plan_needs(run.bundle.plan)
            scorer = Scorer(run.bundle, MemoryStore(needs.layout()), needs, make_engine("online", run.bundle, needs, []),
                            DecisionLog(run.dir / "decisions-inproc.jsonl"))
            state.set_ready(scorer)
            assert c.get("/health").status_code == 200
            r = c.post("/score", json=tx("late", "2026-01-01T00:00:00Z", "E-A", "E-B"))
            assert r.status_code == 200 and r.json()["model_version"] == "unregistered"
            text = c.get("/metrics").text
        assert "# TYPE aml_request_latency_seconds histogram" in text
        assert 'aml_requests_total{endpoint="/health",status="503"} 1.0' in text
        assert 'aml_errors_total{kind="unavailable"} 1.0' in text and "aml_ready 1.0" in text
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ----------------------------------------------------------------------------- start-up
def cli(args: list[str], cwd: Path, env_key: str | None = KEY, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("AML_API_KEY", None)
    if env_key:
        env["AML_API_KEY"] = env_key
    return subprocess.run([sys.executable, "-m", "aml_pipeline", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_tampered_bundle_is_refused_at_start_up(run, tmp_path):
    bad = tmp_path / "bundle"
    shutil.copytree(run.bundle_dir, bad)
    with open(bad / "model.txt", "a") as f:
        f.write("\n")
    res = cli(["task=serve", f"bundle={bad}", f"deploy.port={free_port()}"], cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.txt" in lines[0] and "refusing to load" in lines[0], res.stderr
    res = cli(["task=serve", f"bundle={run.bundle_dir}"], cwd=tmp_path, env_key=None)
    assert res.returncode == 2 and "AML_API_KEY" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_redis_backend_keeps_state_across_service_restart(run, redis_server):
    store = ["deploy.store.backend=redis", f"deploy.store.redis_url={redis_server.url}", "deploy.store.prefix=restart:"]
    # warm once (and exit), then serve without warming: the history is already in Redis
    res = cli(["task=serve", f"bundle={run.bundle_dir}", "deploy.warm_only=true", f"deploy.warm_from={run.events}",
               f"deploy.warm_until='{run.test_start}'", *store, *run.paths], cwd=run.dir, env_key=None)
    assert res.returncode == 0 and "events added" in res.stdout, res.stderr
    first = run.window.row(0, named=True)
    svc = start(run, "restart", *store, warm=False)
    try:
        with client(svc) as c:
            r = c.post("/score", params={"include_features": "true"}, json=payload(first))
            assert_parity(run, {first["event_id"]: r.json()["features"]}, {first["event_id"]: r.json()})
            assert c.post("/score", json=tx("r-1", "2026-04-01T08:00:00Z", "RS-X", "RS-Y", 100.0)).status_code == 200
            assert c.post("/score", json=tx("r-2", "2026-04-01T09:00:00Z", "RS-X", "RS-Z", 250.0)).status_code == 200
    finally:
        assert svc.stop() == 0
    svc = start(run, "restart", *store, warm=False)
    try:
        with client(svc) as c:
            r = c.post("/score", params={"include_features": "true"},
                       json=tx("r-3", "2026-04-01T10:00:00Z", "RS-X", "RS-W", 40.0)).json()
            again = c.post("/score", json=tx("r-1", "2026-04-01T08:00:00Z", "RS-X", "RS-Y", 100.0)).json()
    finally:
        svc.stop()
    f = r["features"]
    assert f["src_out_count_24h"] == 2 and f["src_out_sum_24h"] == 350.0 and f["src_secs_since_prev"] == 3600.0
    assert f["src_out_degree_7d"] == 2
    assert again["replayed"] is True


def test_replay_cli_rescores_logged_decisions(run, memory_service, tmp_path):
    log = run.dir / "decisions-memory.jsonl"
    with client(memory_service) as c:  # make sure the log has at least one line
        c.post("/score", json=tx("replay-1", "2026-05-01T00:00:00Z", "RP-A", "RP-B"))
    res = cli(["task=serve", f"bundle={run.bundle_dir}", f"deploy.decision_log={log}", "deploy.replay=all"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "re-scored to the logged score" in res.stdout
    from aml_pipeline.serving.replay import replay, rescore

    first = json.loads(log.read_text().splitlines()[0])
    assert rescore(run.bundle, first)["same"]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(json.dumps({**first, "score": first["score"] + 1e-6}) + "\n")
    assert [r["same"] for r in replay(run.bundle, tampered, "all")] == [False]
    assert replay(run.bundle, log, first["event_id"])[0]["same"]


# ----------------------------------------------------------------------------- scale-out
def _fresh(svc, method: str, path: str, **kw):
    """One request on a new connection: with deploy.workers > 1 the kernel picks the process."""
    with httpx.Client(base_url=svc.url, headers={"X-API-Key": KEY}, timeout=30) as c:
        return getattr(c, method)(path, **kw)


#: Events sent through the workers: the window's first ones in time order (each on a new
#: connection, so the kernel spreads them over the processes), enough for many accounts
#: to be read by one worker after another wrote them.
WORKER_EVENTS = 250


def _decisions_through(run, redis_server, workers: int) -> tuple[dict, set[int]]:
    store = ["deploy.store.backend=redis", f"deploy.store.redis_url={redis_server.url}",
             f"deploy.store.prefix=workers{workers}:", f"deploy.workers={workers}"]
    svc = start(run, f"workers{workers}", *store)
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < workers and time.monotonic() < deadline:  # every worker ready, not just the first
            r = _fresh(svc, "get", "/health")
            if r.status_code == 200:
                pids.add(r.json()["pid"])
            else:
                time.sleep(0.1)
        decisions = {}
        for row in run.window.head(WORKER_EVENTS).iter_rows(named=True):
            r = _fresh(svc, "post", "/score", params={"include_features": "true"}, json=payload(row))
            assert r.status_code == 200, r.text
            decisions[row["event_id"]] = r.json()
    finally:
        assert svc.stop() == 0
    return decisions, pids


def test_workers_share_the_redis_store_with_one_process_answers(run, redis_server):
    """deploy.workers=3 (three processes on one port, one Redis) decides every event exactly as
    one process does, and as task=score; the memory store with workers > 1 is refused."""
    one, _ = _decisions_through(run, redis_server, 1)
    three, pids = _decisions_through(run, redis_server, 3)
    assert len(pids) == 3 and len(three) == len(one) == WORKER_EVENTS < run.window.height
    volatile = ("latency_ms",)
    for eid, d in one.items():
        assert {k: v for k, v in three[eid].items() if k not in volatile} == \
               {k: v for k, v in d.items() if k not in volatile}, eid
    assert_parity(run, {e: d["features"] for e, d in three.items()}, three)
    logged = [json.loads(x) for x in (run.dir / "decisions-workers3.jsonl").read_text().splitlines()]
    assert sorted(x["event_id"] for x in logged) == sorted(three)  # every decision logged once, whole lines
    res = cli(["task=serve", f"bundle={run.bundle_dir}", "deploy.workers=2", f"deploy.port={free_port()}"], cwd=run.dir)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "deploy.workers=2" in res.stderr and "redis" in res.stderr


def test_explanations_off_the_critical_section_give_the_same_decisions(run, tmp_path):
    """Scorer.score_async (the /score path) appends an explained event, then computes its
    SHAP values on a worker thread (on a copy of the model: LightGBM would make the next
    score wait for it on one Booster) while later events are decided. With ``explain: all``
    every decision takes that path; started one after the other without waiting for the
    explanations, they must equal the one-at-a-time decisions field for field, be logged
    once each, and an event id sent again gets its stored decision, explanation included."""
    import asyncio

    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, single_threaded
    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.store.engine import OnlineFeatures, plan_needs
    from aml_pipeline.store.memory import MemoryStore
    from aml_pipeline.timeutil import parse_time

    def scorer(name: str) -> Scorer:
        bundle = ModelBundle.load(run.bundle_dir)
        single_threaded(bundle)
        needs = plan_needs(bundle.plan)
        store = MemoryStore(needs.layout())
        warm_from_parquet(store, run.events, parse_time(run.test_start, "test_start"))
        made = Scorer(bundle, store, needs, OnlineFeatures(bundle.plan), DecisionLog(tmp_path / f"{name}.jsonl"),
                      explain="all")
        made.warm_up()
        return made

    events = [{**{k: v for k, v in r.items() if k not in NOT_REQUEST and v is not None}}
              for r in run.window.head(150).iter_rows(named=True)]
    one_by_one, overlapped = scorer("one"), scorer("overlapped")
    expected = [one_by_one.score(e, include_features=True) for e in events]

    async def pipelined() -> list[dict]:
        tasks = []
        for e in events:  # each runs up to its explanation, then the next event is decided
            tasks.append(asyncio.ensure_future(overlapped.score_async(e, include_features=True)))
            await asyncio.sleep(0)
        got = await asyncio.gather(*tasks)
        again = await overlapped.score_async(events[0])
        return [*got, again]

    *got, again = asyncio.run(pipelined())
    overlapped.close()
    one_by_one.close()
    assert overlapped._explainer is not None  # the thread did the explaining, on its own Booster
    assert overlapped._explaining.model._model is not overlapped.model._model
    assert all(g["top_features"] for g in got)
    for e, want, have in zip(events, expected, got):
        assert have == want, e["event_id"]
    assert again["replayed"] and again["top_features"] == expected[0]["top_features"]
    logged = [json.loads(line) for line in (tmp_path / "overlapped.jsonl").read_text().splitlines()]
    assert sorted(d["event_id"] for d in logged) == sorted(e["event_id"] for e in events)


def test_priming_the_busiest_accounts_changes_no_decision(run, tmp_path):
    """deploy.prime_accounts: before serving, the feature steps run once for the store's
    busiest accounts (a made-up self-payment after each one's newest event, nothing
    appended), so their carried folds are built; the decisions that follow are the same."""
    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, single_threaded
    from aml_pipeline.store import warm_from_parquet
    from aml_pipeline.store.engine import OnlineFeatures, plan_needs
    from aml_pipeline.store.memory import MemoryStore
    from aml_pipeline.timeutil import parse_time

    def scorer(name: str, prime: int):
        bundle = ModelBundle.load(run.bundle_dir)
        single_threaded(bundle)
        needs = plan_needs(bundle.plan)
        store = MemoryStore(needs.layout())
        warm_from_parquet(store, run.events, parse_time(run.test_start, "test_start"))
        engine = OnlineFeatures(bundle.plan)
        busiest = store.busiest(prime)
        rows_before = sum(len(rows) for _, _, rows in store.sets())
        primed = engine.prime(store, needs, prime)
        assert sum(len(rows) for _, _, rows in store.sets()) == rows_before  # nothing appended
        return Scorer(bundle, store, needs, engine, DecisionLog(tmp_path / f"{name}.jsonl")), primed, busiest

    plain, none_primed, _ = scorer("plain", 0)
    primed, count, busiest = scorer("primed", 200)
    assert none_primed == 0 and count == len(busiest) == 200
    sizes = {}
    for _, acc, rows in primed.store.sets():
        sizes[acc] = sizes.get(acc, 0) + len(rows)
    assert sorted(sizes[a] for a, _ in busiest) == sorted(sizes.values())[-200:]  # the largest (ties in any order)
    events = [{k: v for k, v in r.items() if k not in NOT_REQUEST and v is not None}
              for r in run.window.head(300).iter_rows(named=True)]
    for e in events:
        assert primed.score(e, include_features=True) == plain.score(e, include_features=True), e["event_id"]
