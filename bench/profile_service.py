"""Where a request's CPU goes in the scoring service, end to end, under cProfile.

Usage: python bench/profile_service.py [--run-dir DIR] [--requests 3000] [--rate 200]
       python bench/profile_service.py --scorer-only 3000    # the decision in process, per event
       python bench/profile_service.py --scorer-only 3000 --prime 10000   # ... and again with the accounts primed
       python bench/profile_service.py --features-only 600   # the online features, per event
       python bench/profile_service.py --parts 1000          # three request parts, each beside the obvious way
       python bench/profile_service.py --gc 15000            # garbage-collector pauses: our policy beside a plain freeze

Runs the real service (``task=serve``, memory store, warmed with the events before the test
window of bench/service.py's quickstart run) under ``python -m cProfile``, sends
``--requests`` test-window events with bench/service.py's open-loop client, stops the
service and splits the main thread's time (the event loop: HTTP, the app, the scorer) into
the parts of a request. cProfile's own overhead inflates every Python call, so the shares
matter more than the absolute figures; the process's CPU without the profiler comes from
bench/service.py. Prints a table (markdown) and writes ``bench/out/profile_service.json``.
"""

from __future__ import annotations

import argparse
import json
import pstats
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).absolute().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import service as bench  # noqa: E402  (bench/service.py: the quickstart run, payloads, client)

#: (part, (file suffix, function name)): cumulative time of these functions, per request.
PARTS = [
    ("whole request in the event loop (HTTP parse + app)", [("httptools_impl.py", "data_received"),
                                                           ("httptools_impl.py", "run_asgi")]),
    ("  API key, body, timing (Guard)", [("serving/app.py", "__call__")]),
    ("  pydantic: validate the JSON body", [("pydantic/main.py", "model_validate_json")]),
    ("  pydantic: model_dump", [("pydantic/main.py", "model_dump")]),
    ("  scorer: whole decision", [("serving/scorer.py", "score_async")]),
    ("    store read (gather)", [("store/engine.py", "gather")]),
    ("    features (online engine)", [("store/engine.py", "compute")]),
    ("    model predict_one", [("", "predict_one")]),
    ("    explanation (SHAP, alerts: on its own thread, which cProfile does not follow)", [("decisions.py", "top_features_of")]),
    ("    decision log write", [("serving/decision_log.py", "write")]),
    ("    store append (commit)", [("", "commit")]),
    ("  metrics", [("serving/metrics.py", "request"), ("serving/metrics.py", "decision")]),
    ("  response JSON", [("serving/app.py", "_json")]),
]


def cumulative(stats: pstats.Stats, file_suffix: str, name: str) -> tuple[float, int]:
    """Cumulative seconds of the matching functions; nested ones of the same name (the
    feature engine's per-step ``compute`` closures inside its own) count once: the outermost."""
    total, calls, outer = 0.0, 0, 0.0
    for (file, _, func), (_, ncalls, _, cum, _) in stats.stats.items():
        if func == name and file.endswith(".py") and file_suffix in file:
            total += cum
            calls += ncalls
            outer = max(outer, cum)
    return (outer if name == "compute" else total), calls


def per_step(stats: pstats.Stats, n: int) -> list[tuple[str, float]]:
    """The feature steps' per-event forms (closures named compute/two_hop/forwards in
    aml_pipeline/features and store/engine.py), ms per request, largest first."""
    out = []
    for (file, line, func), (_, _, _, cum, _) in stats.stats.items():
        if func == "compute" and ("/aml_pipeline/features/" in file or "/store/engine.py" in file):
            out.append((f"{file.split('aml_pipeline/')[-1]}:{line}", cum * 1e3 / max(n, 1)))
    return sorted(out, key=lambda x: -x[1])[1:13]  # the first is the engine's own loop over steps


def features_cpu(run_dir: Path, n: int) -> float:
    """Mean CPU ms of the online feature engine per test-window event, the minimum of 5
    runs on the same history (robust to a shared machine; each event is then appended, as
    the service does): a before/after figure for per-event feature changes."""
    import time

    from aml_pipeline.store.engine import Event, OnlineFeatures, gather

    test_start, events, window = bench.test_window(run_dir)
    bundle, needs, store = bench.warmed_memory_store(run_dir, test_start, events)
    engine = OnlineFeatures(bundle.plan)
    total = 0.0
    for r in window.head(n).iter_rows(named=True):
        ev = Event({k: v for k, v in r.items() if k not in ("label", "typology", "instance_id") and v is not None})
        _, history = gather(store, needs, ev)
        runs = []
        for _ in range(5):
            t0 = time.process_time()
            engine.compute(ev, history)
            runs.append(time.process_time() - t0)
        total += min(runs)
        store.commit(ev.row(needs.extra_columns), {"event_id": ev.event_id})
    return total * 1e3 / max(n, 1)


def warmed_scorer(run_dir: Path, n: int, log_dir: Path, prime: int = 0):
    """(scorer, requests): the service's scorer on the embedded store warmed as the service
    warms it (``prime``: then the feature steps run for that many of its busiest accounts,
    as ``deploy.prime_accounts`` does), its model paths run once, and the first ``n``
    test-window events as request values (the decision log goes to ``log_dir``)."""
    from aml_pipeline.serving.scorer import DecisionLog, Scorer, single_threaded
    from aml_pipeline.store.engine import OnlineFeatures

    test_start, events, window = bench.test_window(run_dir)
    bundle, needs, store = bench.warmed_memory_store(run_dir, test_start, events)
    single_threaded(bundle)
    rows = [{k: v for k, v in r.items() if k not in ("label", "typology", "instance_id") and v is not None}
            for r in window.head(n).iter_rows(named=True)]
    engine = OnlineFeatures(bundle.plan)
    engine.prime(store, needs, prime)
    scorer = Scorer(bundle, store, needs, engine, DecisionLog(Path(log_dir) / "decisions.jsonl"))
    scorer.warm_up()
    return scorer, rows


def scorer_cpu(run_dir: Path, n: int, prime: int = 0) -> dict:
    """The service's whole decision (store read, features, model, decision log, append) per
    test-window event, in process, one pass in time order on the embedded store warmed as
    the service warms it (the service's garbage-collector policy, aml_pipeline/gc_policy.py):
    the per-event distribution, and the accounts of the heaviest events."""
    import statistics
    import time
    from collections import Counter

    from aml_pipeline.gc_policy import freeze_long_lived

    with tempfile.TemporaryDirectory(prefix="aml_profile_") as tmp:
        scorer, rows = warmed_scorer(run_dir, n, Path(tmp), prime)
        freeze_long_lived()
        took = []
        for r in rows:
            t0 = time.process_time()
            scorer.score(r)
            took.append(time.process_time() - t0)
    q = statistics.quantiles(took, n=100)
    heaviest = Counter(rows[i]["dst_account"] for i in sorted(range(len(took)), key=lambda i: -took[i])[:len(took) // 100])
    return {"events": len(took), "mean_ms": round(statistics.fmean(took) * 1e3, 3), "p50_ms": round(q[49] * 1e3, 2),
            "p90_ms": round(q[89] * 1e3, 2), "p99_ms": round(q[98] * 1e3, 2), "max_ms": round(max(took) * 1e3, 2),
            "heaviest_1pct_receivers": heaviest.most_common(3)}


def _cpu_us(fn, items, passes: int = 5) -> float:
    """CPU µs per item of ``fn(item)`` over ``items``, the fastest of ``passes`` passes."""
    import time

    best = float("inf")
    for _ in range(passes):
        t0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - t0)
    return best * 1e6 / max(len(items), 1)


def parts_cpu(run_dir: Path, n: int) -> list[tuple[str, str, float, str, float]]:
    """Three parts of a request, each beside the obvious way, on ``n`` test-window events:
    the model's single-row score (``Booster.predict`` on a 1-row matrix vs the C library's
    single-row path, aml_pipeline/models/lightgbm_row.py), the decision log's line
    (``json.dumps`` vs orjson) and a Redis script call (redis-py's ``Script.__call__`` vs
    the store's own connection, aml_pipeline/store/redis_store.py) on a throwaway
    redis-server; and, alone, one row's explanation. Rows: (part, obvious way, µs, ours, µs)."""
    import json

    import orjson

    from aml_pipeline.serving.decision_log import LINE
    from aml_pipeline.serving.scorer import _json_value
    from aml_pipeline.store.redis_store import _READ_FAST, _ScriptCalls
    from aml_pipeline.testing.local_redis import LocalRedis

    with tempfile.TemporaryDirectory(prefix="aml_parts_") as tmp:
        scorer, rows = warmed_scorer(run_dir, n, Path(tmp))
        model = scorer.model
        records = []
        for r in rows:
            out = scorer.score(r, include_features=True)
            records.append({**out, "logged_at": 0.0, "event": r})
        xs = [scorer.vector(rec["features"]) for rec in records]
        booster = model._model
        obvious_model = _cpu_us(lambda x: booster.predict(x.reshape(1, -1), num_threads=1)[0], xs)
        ours_model = _cpu_us(model.predict_one, xs)
        assert all(model.predict_one(x) == booster.predict(x.reshape(1, -1), num_threads=1)[0] for x in xs)
        shap_us = _cpu_us(scorer.decisions.top_features_of, xs[:100], passes=2)
        obvious_log = _cpu_us(lambda rec: json.dumps(rec, separators=(",", ":"), default=_json_value), records)
        ours_log = _cpu_us(lambda rec: orjson.dumps(rec, default=_json_value, option=LINE), records)
        server = LocalRedis(Path(tmp) / "redis").start()
        try:
            import redis

            client = redis.Redis.from_url(server.url)
            script = client.register_script(_READ_FAST)
            calls = _ScriptCalls(client)
            args = [["aml:", f"e{i}", "epoch", 0] for i in range(len(xs))]
            obvious_redis = _cpu_us(lambda a: script(args=a), args)
            ours_redis = _cpu_us(lambda a: calls(script, args=a), args)
            assert all(script(args=a) == calls(script, args=a) for a in args[:50])
            calls.close()
        finally:
            server.stop()
    return [("model, one row (LightGBM)", "Booster.predict", obvious_model, "single-row C path", ours_model),
            ("decision log line", "json.dumps", obvious_log, "orjson", ours_log),
            ("Redis script call (CPU in the service)", "redis-py Script()", obvious_redis, "the store's connection", ours_redis),
            ("explanation of one row (TreeSHAP, top features)", "", shap_us, "", 0.0)]


def gc_pauses(run_dir: Path, n: int) -> dict[str, dict]:
    """The garbage collector's pauses over ``n`` test-window decisions in process, twice on
    fresh warmed stores: with ``gc.freeze()`` once after the warm-up (the obvious way), and
    with the scorers' policy (aml_pipeline/gc_policy.py: the survivors of every full
    collection frozen too). Per generation: collections, total and largest pause (ms)."""
    import gc
    import time

    from aml_pipeline import gc_policy

    out = {}
    for way in ("gc.freeze() after the warm-up", "gc_policy.freeze_long_lived()"):
        pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        started: list[float] = []

        def timed(phase: str, info: dict) -> None:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                pauses[info["generation"]].append((time.perf_counter() - started.pop()) * 1e3)

        with tempfile.TemporaryDirectory(prefix="aml_gc_") as tmp:
            scorer, rows = warmed_scorer(run_dir, n, Path(tmp))
            if way.startswith("gc_policy"):
                gc_policy.freeze_long_lived()
            else:
                gc.collect()
                gc.freeze()
            gc.callbacks.append(timed)  # after the policy's hook: a full collection's pause includes its freeze
            try:
                for r in rows:
                    scorer.score(r)
            finally:
                gc.callbacks.remove(timed)
                if gc_policy._freeze_after_full in gc.callbacks:
                    gc.callbacks.remove(gc_policy._freeze_after_full)
                scorer.close()
        gc.unfreeze()
        gc.collect()
        out[way] = {f"gen{g}": {"collections": len(p), "total_ms": round(sum(p), 1), "max_ms": round(max(p, default=0), 1)}
                    for g, p in pauses.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", type=Path, default=bench.OUT / "service_run")
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--features-only", type=int, default=0, metavar="N",
                    help="only the feature engine's CPU per event over N events (min of 5 runs each)")
    ap.add_argument("--scorer-only", type=int, default=0, metavar="N",
                    help="only the whole decision's CPU per event over N events, in process (one pass)")
    ap.add_argument("--prime", type=int, default=0, metavar="N",
                    help="with --scorer-only: run it again with the busiest N accounts primed first (the service's default: 10000)")
    ap.add_argument("--parts", type=int, default=0, metavar="N",
                    help="three request parts beside the obvious way, CPU per call over N events (fastest of 5 passes)")
    ap.add_argument("--gc", type=int, default=0, metavar="N",
                    help="the garbage collector's pauses over N decisions, our policy beside a plain freeze")
    args = ap.parse_args()
    if args.gc:
        bench.ensure_run(args.run_dir)
        print("| way | full collections | largest / total (ms) | young collections | largest / total (ms) |\n|---|---:|---:|---:|---:|")
        for way, g in gc_pauses(args.run_dir, args.gc).items():
            young = [g["gen0"], g["gen1"]]
            print(f"| {way} | {g['gen2']['collections']} | {g['gen2']['max_ms']} / {g['gen2']['total_ms']} | "
                  f"{sum(y['collections'] for y in young)} | {max(y['max_ms'] for y in young)} / "
                  f"{round(sum(y['total_ms'] for y in young), 1)} |")
        return
    if args.parts:
        bench.ensure_run(args.run_dir)
        print("| part | the obvious way | µs | ours | µs | ratio |\n|---|---|---:|---|---:|---:|")
        *rows, (part, _, shap, _, _) = parts_cpu(args.run_dir, args.parts)
        for part_, obvious, a, ours, b in rows:
            print(f"| {part_} | {obvious} | {a:.1f} | {ours} | {b:.1f} | {a / b:.1f}x |")
        print(f"\n{part}: {shap:.0f} µs of CPU per row (on the explanation thread, alerts only)")
        return
    if args.scorer_only:
        bench.ensure_run(args.run_dir)
        r = scorer_cpu(args.run_dir, args.scorer_only)
        print(f"scorer, in process: {r['mean_ms']:.3f} ms CPU per event (mean over {r['events']}); p50 {r['p50_ms']} "
              f"p90 {r['p90_ms']} p99 {r['p99_ms']} max {r['max_ms']} ms; the heaviest 1% go to "
              + ", ".join(f"{acc} ({k})" for acc, k in r["heaviest_1pct_receivers"]))
        if args.prime:
            p = scorer_cpu(args.run_dir, args.scorer_only, args.prime)
            print(f"  the same, the busiest {args.prime:,} accounts primed first (deploy.prime_accounts): "
                  f"{p['mean_ms']:.3f} ms; p50 {p['p50_ms']} p90 {p['p90_ms']} p99 {p['p99_ms']} max {p['max_ms']} ms")
        return
    if args.features_only:
        bench.ensure_run(args.run_dir)
        ms = features_cpu(args.run_dir, args.features_only)
        print(f"online features: {ms:.3f} ms CPU per event (mean over {args.features_only}, min of 5 runs)")
        return
    from aml_pipeline.testing.launcher import ServiceProcess

    bench.ensure_run(args.run_dir)
    test_start, _, window = bench.test_window(args.run_dir)
    with tempfile.TemporaryDirectory(prefix="aml_profile_") as tmp:
        tmp = Path(tmp)
        payloads = tmp / "payloads.jsonl"
        bench.write_payloads(window, payloads)
        prof = tmp / "service.prof"
        run = args.run_dir
        svc = ServiceProcess([f"bundle={run / 'models/bundle'}", f"deploy.warm_from={run / 'data/validated/transactions.parquet'}",
                              f"deploy.warm_until='{test_start}'", f"deploy.decision_log={tmp / 'decisions.jsonl'}"],
                             cwd=tmp, api_key=bench.KEY)
        svc.args[1:1] = ["-m", "cProfile", "-o", str(prof)]
        svc.start(timeout=600)
        try:
            r = bench.run_client(svc, payloads, 0, args.requests, args.rate, args.requests / args.rate)
        finally:
            svc.stop(timeout=60)
        stats = pstats.Stats(str(prof))
    n = r["answered"]
    rows = []
    for part, funcs in PARTS:
        ms = sum(cumulative(stats, f, name)[0] for f, name in funcs) * 1e3 / max(n, 1)
        rows.append((part, round(ms, 3)))
    whole = rows[0][1]
    print(f"{n} requests at {args.rate:.0f}/s under cProfile (errors {r['error_rate']:.2%})\n")
    print("| part | ms per request (cProfile) | share |\n|---|---|---|")
    for part, ms in rows:
        print(f"| {part.strip()} | {ms:.3f} | {ms / whole:.0%} |")
    steps = per_step(stats, n)
    print("\n| feature step (per-event form) | ms per request (cProfile) |\n|---|---|")
    for name, ms in steps:
        print(f"| {name} | {ms:.3f} |")
    print("\nTop 25 functions by own time:")
    stats.sort_stats("tottime").print_stats(25)
    (bench.OUT / "profile_service.json").write_text(json.dumps({"requests": n, "rate": args.rate, "parts": rows, "steps": steps}, indent=2))


if __name__ == "__main__":
    main()
