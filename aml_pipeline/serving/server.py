"""``task=serve``: check everything, then serve on uvicorn.

Start-up, in order; any failure before serving is one line and exit code 2:

1. the API key (``deploy.api_key`` or env ``AML_API_KEY``): the service never runs open;
2. the bundle, through :func:`aml_pipeline.registry.resolve_bundle`, which loads it only if
   every file matches the manifest and the manifest matches the hash the registry recorded;
3. the plan's needs from the store (window, 1-hop expansion) and the feature engine;
4. the store (Redis must answer) and the warm-up file; the port must be free;
5. ``deploy.replay`` / ``deploy.warm_only`` run and exit here;
6. uvicorn starts; ``/health`` answers 503 while the store is warmed in the background,
   then 200. A failure while warming is printed as one line and stops the server (exit 2).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback

# The serve extra: this module loads only for task=serve, after tasks.TASK_EXTRAS checked it
# (and in the service's worker processes that task starts), so uvicorn and FastAPI (.app)
# are imported at the top.
import uvicorn
from omegaconf import DictConfig, OmegaConf

from aml_pipeline.config import option_value
from aml_pipeline.errors import UserError
from aml_pipeline.export.bundle_export import exported_model
from aml_pipeline.gc_policy import freeze_long_lived
from aml_pipeline.progress import fail, table
from aml_pipeline.registry import resolve_bundle
from aml_pipeline.schema import CANONICAL_FIELDS, EXTRA_FIELDS
from aml_pipeline.serving.app import ServiceState, create_app
from aml_pipeline.serving.decision_log import open_decision_log
from aml_pipeline.serving.metrics import Metrics
from aml_pipeline.serving.replay import replay
from aml_pipeline.serving.schemas import NOT_IN_REQUESTS
from aml_pipeline.serving.scorer import Scorer, _json_value, make_engine, single_threaded
from aml_pipeline.serving.shadow import load_shadow
from aml_pipeline.serving.workers import check_port, check_workers, has_module, reuse_port_socket, run_workers
from aml_pipeline.store import open_store, warm_from_parquet
from aml_pipeline.store.engine import plan_needs
from aml_pipeline.timeutil import parse_time
from aml_pipeline.validation.rules import future_skew_us


def api_key(cfg: DictConfig) -> str:
    key = cfg.deploy.api_key or os.environ.get("AML_API_KEY")
    if not key:
        raise UserError("no API key: set the environment variable AML_API_KEY (or deploy.api_key); "
                        "the service does not run without one")
    if len(str(key)) < 8:
        raise UserError("the API key is shorter than 8 characters; use a long random key")
    return str(key)


def request_columns(bundle) -> list[str]:
    return [f.name for f in CANONICAL_FIELDS + EXTRA_FIELDS if f.name not in NOT_IN_REQUESTS]


def build(cfg: DictConfig):
    """Everything but the HTTP server: (bundle, store, needs, engine). Raises UserError."""
    bundle = resolve_bundle(cfg.bundle, cfg)
    single_threaded(bundle)
    # deploy.model_runtime: scores from an export the manifest verified (explanations stay native)
    bundle.model = exported_model(bundle, str(option_value(cfg.deploy.get("model_runtime", "native"))))
    needs = plan_needs(bundle.plan)
    engine = make_engine(str(option_value(cfg.deploy.feature_engine)), bundle, needs, request_columns(bundle))
    store = open_store(cfg.deploy.store, needs.layout())
    return bundle, store, needs, engine


def _warm(cfg: DictConfig, store, fx=None) -> tuple[int, float]:
    if not cfg.deploy.warm_from:
        return 0, 0.0
    until = parse_time(cfg.deploy.warm_until, "deploy.warm_until") if cfg.deploy.warm_until else None
    start = time.perf_counter()
    n = warm_from_parquet(store, cfg.deploy.warm_from, until, fx)
    return n, time.perf_counter() - start


def _replay(cfg: DictConfig, bundle) -> dict:
    results = replay(bundle, cfg.deploy.decision_log, cfg.deploy.replay)
    for r in results:
        mark = "same" if r["same"] else "DIFFERS"
        print(f"{r['event_id']}: logged {r['logged_score']!r} rescored {r['score']!r} threshold {r['threshold']!r} "
              f"alert {r['alert']} -> {mark}" + (f" ({r['note']})" if r.get("note") else ""))
    bad = [r for r in results if not r["same"]]
    if bad:
        raise UserError(f"replay: {len(bad)} of {len(results)} decisions do not re-score to the logged value "
                        f"(first: {bad[0]['event_id']})")
    print(f"replay: {len(results)} decision(s) re-scored to the logged score and threshold")
    return {"replayed": len(results)}


def _warm_shared(cfg: DictConfig) -> tuple[int, float]:
    """Warm the store the workers will share, once, before they start."""
    bundle, store, _, _ = build(cfg)
    try:
        return _warm(cfg, store, bundle.plan.fx)
    finally:
        store.close()


def serve(cfg: DictConfig, worker: int | None = None) -> dict:
    """The service; ``worker`` is the index of one of ``deploy.workers`` processes (None: the
    command itself, which starts them when there are several: :mod:`aml_pipeline.serving.workers`)."""
    d = cfg.deploy
    if d.replay:
        return _replay(cfg, resolve_bundle(cfg.bundle, cfg))
    key = None if d.warm_only else api_key(cfg)
    if d.warm_from and not os.path.isfile(d.warm_from):
        raise UserError(f"deploy.warm_from={d.warm_from}: no such file (validated parquet, e.g. data/validated/transactions.parquet)")
    if d.warm_until:
        parse_time(d.warm_until, "deploy.warm_until")
    if worker is None and not d.warm_only:
        check_port(d.host, int(d.port))
        n = check_workers(cfg)
        if n > 1:
            return run_workers(cfg, n, key, (lambda: _warm_shared(cfg)) if d.warm_from else None)
    sockets = None
    if worker is not None:
        sockets = [reuse_port_socket(d.host, int(d.port))]
    bundle, store, needs, engine = build(cfg)
    shadow = None if d.warm_only else load_shadow(cfg, bundle)  # deploy.shadow: logged, never alerts

    if d.warm_only:
        n, secs = _warm(cfg, store, bundle.plan.fx)
        table("warm", [("store", str(store.stats())), ("events added", f"{n:,}"), ("took", f"{secs:.1f}s")])
        return {"warmed": n}

    prime_accounts = d.get("prime_accounts", 0)
    if not isinstance(prime_accounts, int) or isinstance(prime_accounts, bool) or prime_accounts < 0:
        raise UserError(f"deploy.prime_accounts={prime_accounts!r}; allowed: a whole number >= 0 (0: none)")
    state = ServiceState(key, d.max_body_bytes, Metrics())
    currencies = list(OmegaConf.to_container(cfg.validation.currencies, resolve=True))
    app = create_app(state, currencies, bundle.plan.required_columns(), int(d.max_batch),
                     max_future_skew_us=future_skew_us(cfg.validation.get("max_future_skew", "1h")))
    http = "httptools" if has_module("httptools") else "h11"
    loop = "uvloop" if has_module("uvloop") else "asyncio"
    # No proxy-header middleware (the service reads no client address) and no "server: uvicorn"
    # header (nothing for a scanner to fingerprint): one wrapper less on every request.
    config = uvicorn.Config(app, host=d.host, port=int(d.port), log_level=str(d.log_level).lower(), access_log=False,
                            http=http, loop=loop, lifespan="off", timeout_graceful_shutdown=5, proxy_headers=False,
                            server_header=False)
    server = uvicorn.Server(config)
    failure: list[str] = []

    def prepare() -> None:
        try:
            state.detail = "warming the store"
            n, secs = _warm(cfg, store, bundle.plan.fx)
            state.detail = "reading the store"
            preloaded = store.preload()
            state.detail = "priming the feature steps"
            primed = engine.prime(store, needs, prime_accounts)
            log = open_decision_log(d.decision_log, d.get("decision_log_policy"), _json_value)
            scorer = Scorer(bundle, store, needs, engine, log, explain=str(option_value(d.explain)),
                            top_k=int(d.top_k), shadow=shadow)
            scorer.warm_up()
            freeze_long_lived()  # the warmed store and the folds are long-lived: keep full collections off them
            state.set_ready(scorer)
            print(f"serving {scorer.trace['model_name']} version {scorer.trace['model_version']} "
                  f"(sha256 {bundle.bundle_hash[:12]}) on http://{d.host}:{d.port} "
                  f"[store {store.backend}, +{n:,} events warmed in {secs:.1f}s"
                  + (f", copies of {preloaded:,} accounts read" if preloaded else "")
                  + (f", {primed:,} accounts primed" if primed else "") + f", engine {engine.name}, "
                  f"model runtime {getattr(bundle.model, 'runtime', 'native')}"
                  + (f", shadow version {shadow.trace['shadow_model_version']}" if shadow else "")
                  + (f", worker {worker} pid {os.getpid()}" if worker is not None else "") + "]",
                  file=sys.stderr, flush=True)
        except UserError as exc:
            failure.append(str(exc))
        except Exception as exc:  # a bug: keep the traceback in the log, stop serving
            traceback.print_exc()
            failure.append(f"start-up failed: {exc!r}")
        if failure:
            state.set_failed(failure[0])
            server.should_exit = True

    threading.Thread(target=prepare, name="aml-warm", daemon=True).start()
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the
    # handlers it found; no-op ones let us close the decision log and the store, exit 0.
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopped.append(signum))
    server.run(sockets=sockets)
    if stopped:
        print(f"stopped ({signal.Signals(stopped[-1]).name})", file=sys.stderr, flush=True)
    if failure:
        raise UserError(failure[0])
    if state.scorer is not None:
        state.scorer.close()
    store.close()
    return {"served": True}


def worker_main(argv: list[str]) -> None:
    """One of ``deploy.workers`` processes (``python -m aml_pipeline.serving.server CONFIG
    INDEX``): the ordinary service on a SO_REUSEPORT socket (errors: one line, exit 2)."""
    cfg = OmegaConf.load(argv[0])
    try:
        serve(cfg, worker=int(argv[1]))
    except UserError as exc:
        fail(str(exc), exc.exit_code)


if __name__ == "__main__":
    worker_main(sys.argv[1:])
