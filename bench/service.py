"""Online scoring service benchmark: open-loop latency at fixed arrival rates, per store backend.

Usage: python bench/service.py [--run-dir DIR] [--rates 200,500,1000] [--seconds 10]
                               [--backends memory,redis] [--alternative 200]

1. A quickstart run (``--run-dir``, made with ``python -m aml_pipeline +experiment=quickstart``
   when the folder has no bundle): the default simulator (6,000 accounts, 60 days, ~200k
   events), the default plan, LightGBM, registered in the folder's MLflow store.
2. Per backend (``memory``; ``redis`` on a throwaway ``redis-server`` on 127.0.0.1), the real
   service (``task=serve``) warmed with the events before the test window; then, per rate,
   a separate client process sends the test-window events in time order as an open loop
   (request i is due at start + i / rate whatever the answers do; latency is counted from
   that due time, so a slow server cannot hide behind a slow client), on keep-alive
   connections, after 5 s of unrecorded warm-up. Printed: p50 / p95 / p99 / max latency,
   error rate, achieved rate, the server's CPU per request and its own latency histogram
   (bucket bounds); then a closed loop (16 connections back to back) gives the rate where
   the service saturates.
3. The floor: the same stack answering a constant, at the first rate (what the machine
   and the client add to any request; on a shared machine this can exceed the target).
4. The obvious alternative, in process: for the first 20 requests, pandera validation of the
   row, then the registered MLflow pyfunc's ``predict`` on the event together with the
   earlier transactions the service's store gives it (the pyfunc scores, and explains, a
   batch with its own earlier rows as history), and for 5, a full recompute over all
   earlier events; as ratios to the service's own median per-request work (over all
   ``--alternative`` requests), with how many pyfunc scores equal the service's.

Figures go to stdout and ``bench/out/service.json``. Traffic goes to 127.0.0.1 only; every
loop is bounded by its count and a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).absolute().parent / "out"
ROOT = Path(__file__).absolute().parents[1]
sys.path.insert(0, str(ROOT))
KEY = "bench-api-key-0123456789"
TARGET_P99_MS = 10.0


# ----------------------------------------------------------------------------- client process
def _request(host: str, port: int, body: bytes) -> bytes:
    head = (f"POST /score HTTP/1.1\r\nHost: {host}:{port}\r\nX-API-Key: {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(conn, request: bytes, timeout: float) -> int:
    reader, writer = conn
    writer.write(request)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await asyncio.wait_for(reader.readexactly(length), timeout)
    return status


async def _open_loop(host, port, requests, rate, conns=64, timeout=5.0):
    """Request i is due at start + i / rate, whatever the answers do. A dispatcher queues
    each request at its due time; ``conns`` keep-alive connections drain the queue, so when
    all are busy requests wait (latency counts from the due time: queueing is included).
    Latency is kept for answered requests; errors are non-200 answers, failures, time-outs
    and requests still unanswered at the deadline (3x the phase + 10 s)."""
    queue: asyncio.Queue = asyncio.Queue()
    lat: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.05
    deadline = start + len(requests) / rate * 3 + 10

    async def worker():
        nonlocal errors
        conn = None
        while True:
            item = await queue.get()
            if item is None:
                break
            i, due = item
            if time.perf_counter() > deadline:
                errors += 1
                continue
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                status = await _exchange(conn, requests[i], timeout)
                if status == 200:
                    lat.append((time.perf_counter() - due) * 1e3)
                else:
                    errors += 1
            except Exception:
                errors += 1
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    workers = [asyncio.ensure_future(worker()) for _ in range(conns)]
    for i in range(len(requests)):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, due))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.wait(workers, timeout=max(1.0, deadline - time.perf_counter()) + timeout)
    elapsed = time.perf_counter() - start
    return lat, len(requests) - len(lat), elapsed, len(requests)  # every unanswered request is an error


async def _closed_loop(host, port, requests, conns=16, seconds=5.0, timeout=5.0):
    lat: list[float] = []
    errors = 0
    nxt = 0
    deadline = time.perf_counter() + seconds

    async def worker():
        nonlocal errors, nxt
        conn = await asyncio.open_connection(host, port)
        while time.perf_counter() < deadline and nxt < len(requests):
            i = nxt
            nxt += 1
            t0 = time.perf_counter()
            try:
                if await _exchange(conn, requests[i], timeout) != 200:
                    errors += 1
                else:
                    lat.append((time.perf_counter() - t0) * 1e3)
            except Exception:
                errors += 1
                conn[1].close()
                conn = await asyncio.open_connection(host, port)
        conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return lat, errors, time.perf_counter() - t0, len(lat)


def client_main(args) -> None:
    """Runs in its own process: read the payload file, send, print one JSON line."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    lines = Path(args.payloads).read_bytes().splitlines()[args.offset:args.offset + args.count]
    requests = [_request(args.host, args.port, body) for body in lines]
    if args.rate > 0:
        lat, errors, elapsed, sent = asyncio.run(_open_loop(args.host, args.port, requests, args.rate))
    else:
        lat, errors, elapsed, sent = asyncio.run(_closed_loop(args.host, args.port, requests, seconds=args.seconds))
    Path(args.result).write_text(json.dumps({"lat": [round(x, 4) for x in lat], "errors": errors,
                                             "elapsed": elapsed, "sent": sent}))


def noop_server_main(port: int) -> None:
    """The same stack (FastAPI, uvicorn, httptools, uvloop) answering POST /score with a
    constant: the machine's latency floor, measured with the same client."""
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    app = FastAPI()
    body = json.dumps({"event_id": "x", "score": 0.0, "alert": False, "top_features": None}).encode()

    async def score(request):
        await request.body()
        return Response(body, media_type="application/json")

    score.__annotations__ = {"request": Request}  # a real class: this module's annotations are strings
    app.post("/score")(score)

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", log_level="warning", access_log=False)


def bench_noop(payloads: Path, rate: float, seconds: float) -> dict:
    import urllib.request

    from aml_pipeline.testing.local_redis import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--noop-server", str(port)])
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/score", data=b"{}"), timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        service = type("Noop", (), {"port": port})()
        run_client(service, payloads, 0, int(rate * 5), rate, 5)  # warm-up, not recorded (as the service's)
        cpu0 = cpu_seconds([proc.pid])
        r = run_client(service, payloads, 0, int(rate * seconds), rate, seconds)
        r["server_cpu_ms_per_request"] = round((cpu_seconds([proc.pid]) - cpu0) * 1e3 / max(r["answered"], 1), 3)
    finally:
        proc.terminate()
        proc.wait()
    print(f"  no-op  {rate:6.0f}/s  p50 {r['p50_ms']:7.2f}  p95 {r['p95_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  "
          f"max {r['max_ms']:8.2f} ms  (the machine's floor: same stack and client, constant answer; "
          f"cpu {r['server_cpu_ms_per_request']:.2f} ms/req)", flush=True)
    return r


# ----------------------------------------------------------------------------- orchestration
def summarise(lat: list[float], errors: int, elapsed: float, sent: int) -> dict:
    """Latency of answered requests; error rate over all requests sent."""
    lat = lat or [float("nan")]
    q = statistics.quantiles(lat, n=1000) if len(lat) > 1 else [lat[0]] * 999
    return {"sent": sent, "answered": len(lat), "p50_ms": round(q[499], 2), "p95_ms": round(q[949], 2),
            "p99_ms": round(q[989], 2), "max_ms": round(max(lat), 2), "error_rate": round(errors / max(sent, 1), 5),
            "achieved_per_s": round(len(lat) / elapsed, 1)}


def run_client(service, payloads: Path, offset: int, count: int, rate: float, seconds: float) -> dict:
    result = payloads.with_name(f"client-{service.port}-{offset}-{int(rate)}.json")
    cmd = [sys.executable, __file__, "--client", "--host", "127.0.0.1", "--port", str(service.port), "--payloads",
           str(payloads), "--offset", str(offset), "--count", str(count), "--rate", str(rate), "--seconds", str(seconds),
           "--result", str(result)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
    if res.returncode != 0 or not result.is_file():
        raise RuntimeError(f"client failed: {res.stderr[-2000:]}")
    got = json.loads(result.read_text())
    return summarise(got["lat"], got["errors"], got["elapsed"], got["sent"])


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (Linux /proc), to report CPU per request."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return float("nan")
    return total / os.sysconf("SC_CLK_TCK")


def wait_for_workers(service, n: int, timeout: float = 300) -> None:
    """Until n distinct processes answer /health with 200 (each worker loads its own bundle)."""
    import urllib.request

    pids, deadline = set(), time.monotonic() + timeout
    while len(pids) < n and time.monotonic() < deadline:
        try:
            req = urllib.request.Request(service.url + "/health", headers={"X-API-Key": KEY})
            pids.add(json.loads(urllib.request.urlopen(req, timeout=2).read())["pid"])
        except Exception:
            time.sleep(0.1)


def children(pid: int) -> list[int]:
    """The worker processes of a service started with deploy.workers > 1 (Linux /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def score_histogram(url: str) -> dict[float, float]:
    """Cumulative counts of the service's /score latency histogram (its own clock)."""
    import urllib.request

    try:  # a saturated server may answer late: the histogram is then missing, not the run
        text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith('aml_request_latency_seconds_bucket{endpoint="/score",le="'):
            le = line.split('le="')[1].split('"')[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def server_quantiles(before: dict, after: dict) -> dict:
    """Upper bucket bounds (ms) under which 50/99% of a phase's requests were served."""
    delta = {le: after.get(le, 0) - before.get(le, 0) for le in after}
    total = delta.get(float("inf"), 0)
    out = {}
    for q in (0.5, 0.99):
        le = next((le for le in sorted(delta) if total and delta[le] >= q * total), float("inf"))
        out[f"server_p{int(q * 100)}_le_ms"] = le * 1e3 if le != float("inf") else None
    return out


def ensure_run(run_dir: Path) -> None:
    if (run_dir / "models/bundle/manifest.json").is_file() and (run_dir / "data/features/split.json").is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"making a quickstart run in {run_dir} (~1-2 min) ...", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "aml_pipeline", "+experiment=quickstart"], cwd=run_dir, env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"quickstart failed: {res.stderr[-2000:]}")


def test_window(run_dir: Path):
    import polars as pl

    split = json.loads((run_dir / "data/features/split.json").read_text())
    events = pl.read_parquet(run_dir / "data/validated/transactions.parquet")
    start = pl.Series([split["test_start"]]).str.to_datetime(time_zone="UTC")[0]
    window = events.filter(pl.col("event_time") >= start).sort("event_time", maintain_order=True)
    return split["test_start"], events, window


def write_payloads(window, path: Path) -> None:
    drop = ("label", "typology", "instance_id")
    with open(path, "wb") as f:
        for row in window.iter_rows(named=True):
            body = {k: v for k, v in row.items() if k not in drop and v is not None}
            body["event_time"] = row["event_time"].isoformat()
            f.write(json.dumps(body, separators=(",", ":")).encode() + b"\n")


def bench_backend(backend: str, run_dir: Path, test_start: str, payloads: Path, n_window: int, rates: list[float],
                  seconds: float, tmp: Path) -> dict:
    from aml_pipeline.testing.launcher import ServiceProcess
    from aml_pipeline.testing.local_redis import LocalRedis

    redis = None
    overrides = [f"bundle={run_dir / 'models/bundle'}", f"deploy.warm_from={run_dir / 'data/validated/transactions.parquet'}",
                 f"deploy.warm_until='{test_start}'", f"deploy.decision_log={tmp / f'decisions-{backend}.jsonl'}"]
    if backend.startswith("redis"):  # redis, or redisN: N workers (deploy.workers) sharing it
        redis = LocalRedis(tmp / f"redis-{backend}").start()  # its own data: never the previous backend's decisions
        overrides += ["deploy.store.backend=redis", f"deploy.store.redis_url={redis.url}",
                      f"deploy.workers={int(backend[5:] or 1)}"]
    t0 = time.perf_counter()
    service = ServiceProcess(overrides, cwd=tmp, api_key=KEY).start(timeout=600)
    workers = int(backend[5:] or 1) if backend.startswith("redis") else 1
    wait_for_workers(service, workers)
    out = {"start_and_warm_s": round(time.perf_counter() - t0, 1), "workers": workers, "rates": {}}
    offset = 0
    try:
        # warm-up, not recorded: the first seconds of a fresh process (page faults, first
        # allocations of each code path) are not the steady state being measured
        warm_n = int(rates[0] * 5)
        run_client(service, payloads, 0, warm_n, rates[0], 5)
        offset = warm_n
        for rate in rates:
            count = int(rate * seconds)
            if offset + count > n_window:
                offset = 0  # reusing events: replays (idempotent) are cheaper; noted in the output
                out["note"] = "test window exhausted: later phases include replayed event ids"
            pids = [service.proc.pid, *children(service.proc.pid)] + ([redis.proc.pid] if redis else [])
            cpu0, hist0 = cpu_seconds(pids), score_histogram(service.url)
            r = run_client(service, payloads, offset, count, rate, seconds)
            r["server_cpu_ms_per_request"] = round((cpu_seconds(pids) - cpu0) * 1e3 / max(r["answered"], 1), 3)
            r.update(server_quantiles(hist0, score_histogram(service.url)))
            offset += count
            out["rates"][str(int(rate))] = r
            print(f"  {backend:6} {rate:6.0f}/s  p50 {r['p50_ms']:7.2f}  p95 {r['p95_ms']:7.2f}  p99 {r['p99_ms']:7.2f}  "
                  f"max {r['max_ms']:8.2f} ms  errors {r['error_rate']:.2%}  achieved {r['achieved_per_s']:.0f}/s  "
                  f"| in the server: cpu {r['server_cpu_ms_per_request']:.2f} ms/req (3.3 when the capacity work began), p50 <= {r['server_p50_le_ms']} ms, "
                  f"p99 <= {r['server_p99_le_ms']} ms", flush=True)
        if offset + 20_000 > n_window:
            offset = 0
        cap = run_client(service, payloads, offset, min(20_000, n_window), 0, 5.0)
        out["closed_loop_16_conns"] = cap
        print(f"  {backend:6} saturates at ~{cap['achieved_per_s']:.0f}/s (closed loop, 16 connections: p50 "
              f"{cap['p50_ms']:.2f} ms, p99 {cap['p99_ms']:.2f} ms)", flush=True)
    finally:
        service.stop()
        if redis:
            redis.stop()
    return out


def warmed_memory_store(run_dir: Path, test_start: str, events):
    """(bundle, needs, store): the run's bundle and the embedded store warmed as the service
    warms it, with every event before the test window: the in-process measurements' start."""
    import polars as pl

    from aml_pipeline.bundle import ModelBundle
    from aml_pipeline.store.engine import plan_needs
    from aml_pipeline.store.memory import MemoryStore
    from aml_pipeline.timeutil import parse_time

    bundle = ModelBundle.load(run_dir / "models/bundle")
    needs = plan_needs(bundle.plan)
    store = MemoryStore(needs.layout())
    before = events.filter(pl.col("event_time") < parse_time(test_start, "test_start")).sort("event_time")
    store.warm(before.select(needs.layout().columns).with_columns(pl.col("event_time").dt.epoch("us")).iter_rows())
    return bundle, needs, store


#: Requests the pyfunc alternative scores (each scores the event's whole history, seconds).
PYFUNC_REQUESTS = 20


def bench_alternative(run_dir: Path, test_start: str, events, window, n: int) -> dict:
    """Per-request work: the service's Scorer vs pyfunc + pandera + plan.transform, in process."""
    import contextlib
    import io
    import logging
    import warnings

    import math

    import polars as pl

    from aml_pipeline.schema import ValidatedTransactions, conform
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, single_threaded
    from aml_pipeline.store.engine import Event, OnlineFeatures, gather

    bundle, needs, store = warmed_memory_store(run_dir, test_start, events)
    single_threaded(bundle)
    with tempfile.TemporaryDirectory() as d:
        scorer = Scorer(bundle, store, needs, OnlineFeatures(bundle.plan), DecisionLog(Path(d) / "log.jsonl"))
        rows = [{k: v for k, v in r.items() if k not in ("label", "typology", "instance_id")}
                for r in window.head(n).iter_rows(named=True)]
        # the obvious way, on exactly the history the service would read (before it appends)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import mlflow

            mlflow.set_tracking_uri(f"sqlite:///{run_dir / 'mlruns/mlflow.db'}")
            pyfunc = mlflow.pyfunc.load_model("models:/aml-scorer@challenger")
        schema = {c: events.schema[c] for c in events.columns}
        known = events.drop("label", "typology", "instance_id", strict=False)
        service_s, naive_s, parity, refused = [], [], 0, 0
        for n, r in enumerate(rows):
            ev = Event(r)
            _, history = gather(store, needs, ev)  # the history the service is about to read
            if n >= PYFUNC_REQUESTS:  # the service's own figure on every request
                t0 = time.perf_counter()
                scorer.score(r)
                service_s.append(time.perf_counter() - t0)
                continue
            ids = [row[0] for row in history.rows()]
            t0 = time.perf_counter()
            event = conform(pl.DataFrame([r], schema={c: schema[c] for c in r}))
            ValidatedTransactions.validate(event)
            # the MLflow way: the registered pyfunc scores a batch with its earlier rows as
            # history, so the batch is the event and the earlier transactions it needs
            batch = pl.concat([known.filter(pl.col("event_id").is_in(ids)), event.select(known.columns)])
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = pyfunc.predict(batch.sort("event_time", maintain_order=True).with_columns(  # naive UTC, as the signature says
                        pl.col("event_time").dt.convert_time_zone("UTC").dt.replace_time_zone(None)).to_pandas())
                naive_score = float(out.loc[out["event_id"] == r["event_id"], "score"].iloc[0])
            except Exception:  # e.g. the signature refuses a null in a column it saw full
                naive_score, refused = math.nan, refused + 1
            naive_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = scorer.score(r)
            service_s.append(time.perf_counter() - t0)
            parity += abs(result["score"] - naive_score) <= 1e-9
        full = []
        for r in rows[:5]:  # plain full recompute: every earlier event, every request
            t0 = time.perf_counter()
            upto = events.filter(pl.col("event_time") <= r["event_time"])
            bundle.plan.transform(upto.filter(pl.col("event_id") == r["event_id"]),
                                  history=upto.filter(pl.col("event_id") != r["event_id"]))
            full.append(time.perf_counter() - t0)
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    return {"requests": len(rows), "service_ms_p50": round(med(service_s), 3),
            "pandera_pyfunc_ms_p50": round(med(naive_s), 2), "ratio": round(med(naive_s) / med(service_s), 1),
            "full_recompute_ms_p50": round(med(full), 1), "full_recompute_ratio": round(med(full) / med(service_s), 0),
            "same_scores": f"{parity}/{len(naive_s)}", "pyfunc_refused": refused}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=OUT / "service_run")
    ap.add_argument("--rates", default="200,500,1000")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backends", default="memory,redis")
    ap.add_argument("--alternative", type=int, default=200, help="requests for the alternative comparison (0 = skip)")
    # client mode (internal)
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--noop-server", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--payloads", default="", help=argparse.SUPPRESS)
    ap.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args)
    if args.noop_server:
        return noop_server_main(args.noop_server)

    rates = [float(r) for r in args.rates.split(",") if r]
    ensure_run(args.run_dir)
    test_start, events, window = test_window(args.run_dir)
    results = {"cores": os.cpu_count(), "events": events.height, "test_window": window.height, "target_p99_ms": TARGET_P99_MS,
               "load_average_at_start": os.getloadavg(), "backends": {}}
    print(f"service bench: {events.height:,} events, test window {window.height:,} from {test_start}; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="aml_bench_") as tmp:
        tmp = Path(tmp)
        payloads = tmp / "payloads.jsonl"
        write_payloads(window, payloads)
        results["noop_floor"] = bench_noop(payloads, rates[0], args.seconds)
        for backend in [b for b in args.backends.split(",") if b]:
            results["backends"][backend] = bench_backend(backend, args.run_dir, test_start, payloads, window.height, rates,
                                                         args.seconds, tmp)
    if args.alternative:
        alt = bench_alternative(args.run_dir, test_start, events, window, args.alternative)
        results["alternative"] = alt
        print(f"  per request, in process: service {alt['service_ms_p50']:.3f} ms vs pandera + MLflow pyfunc on the event and its history "
              f"{alt['pandera_pyfunc_ms_p50']:.1f} ms ({alt['ratio']:.0f}x); full recompute "
              f"{alt['full_recompute_ms_p50']:.0f} ms ({alt['full_recompute_ratio']:.0f}x); same scores {alt['same_scores']}")
    results["load_average_at_end"] = os.getloadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "service.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {OUT / 'service.json'}")


if __name__ == "__main__":
    main()
