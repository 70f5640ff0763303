"""Online store size over a long stream of distinct accounts, with and without a retention.

Usage: python bench/state.py [--events 1000000] [--backends memory,redis] [--samples 10]
                             [--window 7d] [--retention 8d] [--step-seconds 2]

Event ``i`` is a payment at ``start + i * step`` from a new account ``c<i>`` to one of 5,000
merchants, so ``--events`` distinct senders pass through the store (as a service or a
streaming scorer appends them, one commit per event). Each event is committed to two
stores side by side: one with ``deploy.store.retention`` (the window is the plan's longest
feature window) and one without. Every ``events / samples`` events the size of each is
printed: the embedded store's accounts, remembered event ids and rows (both directions);
Redis's keys (``DBSIZE``) and ``used_memory`` (each store on its own throwaway
``redis-server`` on 127.0.0.1, started as ``tests/conftest.py`` starts it, without an
append-only file). With the retention the figures plateau once the stream is longer than
the retention; without, they grow with the accounts.

Figures go to stdout and ``bench/out/state.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).absolute().parent / "out"
ROOT = Path(__file__).absolute().parents[1]
sys.path.insert(0, str(ROOT))

from aml_pipeline.features.windows import duration_us  # noqa: E402
from aml_pipeline.store.base import StoreLayout  # noqa: E402
from aml_pipeline.testing.local_redis import LocalRedis  # noqa: E402
from aml_pipeline.store.memory import MemoryStore  # noqa: E402

START_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
MERCHANTS = 5_000


def memory_size(store: MemoryStore) -> dict:
    rows = sum(len(s.rows) for s in store._sent.values()) + sum(len(s.rows) for s in store._received.values())
    return {"accounts": len(set(store._sent) | set(store._received)), "event_ids": len(store._seen), "rows": rows}


def redis_size(store) -> dict:
    info = store._r.info("memory")
    return {"keys": int(store._r.dbsize()), "used_memory": int(info["used_memory"])}


def run(backend: str, events: int, samples: int, window_us: int, retention_us: int, step_us: int) -> list[dict]:
    servers = []
    try:
        if backend == "memory":
            stores = {"on": MemoryStore(StoreLayout(window_us, retention_us=retention_us)),
                      "off": MemoryStore(StoreLayout(window_us))}
            size = memory_size
        else:
            from aml_pipeline.store.redis_store import RedisStore

            stores = {}
            for name, retention in (("on", retention_us), ("off", 0)):
                server = LocalRedis(tempfile.mkdtemp(prefix=f"bench-state-{name}-"), appendonly=False).start()
                servers.append(server)
                stores[name] = RedisStore(StoreLayout(window_us, retention_us=retention), server.url)
            size = redis_size
        every = max(1, events // samples)
        out, t0 = [], time.perf_counter()
        for i in range(events):
            row = (f"e{i}", START_US + i * step_us, f"c{i}", f"m{i % MERCHANTS}", 10.0 + i % 97)
            for store in stores.values():
                store.commit(row, None)
            if (i + 1) % every == 0:
                point = {"events": i + 1, "event_days": round((i + 1) * step_us / 86_400e6, 2),
                         "seconds": round(time.perf_counter() - t0, 1)}
                for name, store in stores.items():
                    point[name] = size(store)
                out.append(point)
                print(line(backend, point), flush=True)
        return out
    finally:
        for server in servers:
            server.stop()


def line(backend: str, p: dict) -> str:
    if backend == "memory":
        cells = [f"{p[k]['accounts']:>10,} {p[k]['event_ids']:>10,} {p[k]['rows']:>10,}" for k in ("on", "off")]
    else:
        cells = [f"{p[k]['keys']:>10,} {p[k]['used_memory'] / 2**20:>9.1f}M" for k in ("on", "off")]
    return f"{backend:<7} {p['events']:>10,} {p['event_days']:>6} d  | " + "  | ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--backends", default="memory,redis")
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--window", default="7d")
    ap.add_argument("--retention", default="8d")
    ap.add_argument("--step-seconds", type=float, default=2.0)
    args = ap.parse_args()
    window_us, retention_us = duration_us(args.window), duration_us(args.retention)
    step_us = int(args.step_seconds * 1e6)
    print(f"{args.events:,} events from distinct accounts, one every {args.step_seconds:g} s of event time; "
          f"window {args.window}, retention {args.retention} (on) vs none (off)")
    results = {"events": args.events, "window": args.window, "retention": args.retention,
               "step_seconds": args.step_seconds, "backends": {}}
    for backend in args.backends.split(","):
        if backend == "memory":
            print(f"{'':<7} {'events':>10} {'':>8}  | {'on: accts':>10} {'ids':>10} {'rows':>10}  | "
                  f"{'off: accts':>10} {'ids':>10} {'rows':>10}")
        else:
            print(f"{'':<7} {'events':>10} {'':>8}  | {'on: keys':>10} {'memory':>10}  | {'off: keys':>10} {'memory':>10}")
        results["backends"][backend] = run(backend, args.events, args.samples, window_us, retention_us, step_us)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "state.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {OUT / 'state.json'}")


if __name__ == "__main__":
    main()
