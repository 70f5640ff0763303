"""The HTTP layer: FastAPI routes over a :class:`~aml_pipeline.serving.scorer.Scorer`.

- ``POST /score``: one transaction -> one decision; ``POST /score/batch``: up to
  ``deploy.max_batch`` transactions, scored in event-time order (earlier events of the batch
  are history for later ones, exactly as if they had been sent one by one);
- ``GET /health``: 200 once the bundle is loaded and the store warmed and reachable, else 503;
  the body is the status alone unless the request carries the API key (then also the model,
  the engine, the store and the reason, URL passwords masked): a probe learns nothing else;
- ``GET /metrics``: Prometheus text;
- ``GET /docs``, ``/openapi.json``: generated from the pydantic models.

A pure ASGI guard in front of the routes answers 401 (missing or wrong ``X-API-Key``) and
413 (body over ``deploy.max_body_bytes``, judged on Content-Length and on the bytes
actually received) before any parsing, and times every request for the metrics. It answers
``POST /score`` itself, with the route's own function: FastAPI's routing and dependency
layers cost several times what validating the body does (``bench/profile_service.py``), on
the path that takes every payment. Scoring
runs on the event loop's thread, one request at a time: the work is CPU-bound and the
store's read-score-append must not interleave, so a second thread would only add handoffs.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, whose
# request models are built at start-up for the deployment's currencies and plan.

import hmac
import logging
import os
import time
import traceback
from typing import Any, Optional
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response

from aml_pipeline.serving.metrics import Metrics
from pydantic import ValidationError

from aml_pipeline.secrets import redact, redact_url

from aml_pipeline.serving.schemas import BatchResponse, Decision, ErrorBody, Health, batch_model, transaction_model
from aml_pipeline.serving.scorer import BadRequest, Scorer, ServiceUnavailable

log = logging.getLogger("aml_pipeline.serving")

PROTECTED = ("/score", "/score/batch")
ENDPOINTS = ("/score", "/score/batch", "/health", "/metrics", "/docs", "/openapi.json")
T0 = "aml_t0"


class ServiceState:
    """What the routes need, filled in as start-up proceeds (``ready`` last)."""

    def __init__(self, api_key: str, max_body_bytes: int, metrics: Metrics):
        self.api_key = api_key.encode()
        self.max_body_bytes = int(max_body_bytes)
        self.metrics = metrics
        self.scorer: Optional[Scorer] = None
        self.status = "starting"
        self.detail: Optional[str] = "loading"
        self.jurisdictions: frozenset[str] = frozenset()
        #: path -> async handler(body, query string, t0) -> Response that the Guard calls itself for
        #: a POST, past FastAPI's routing (create_app fills it: /score)
        self.direct: dict[str, Any] = {}

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.scorer is not None

    def set_ready(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.jurisdictions = frozenset(map(str, scorer.bundle.thresholds))
        self.status, self.detail = "ready", None
        self.metrics.ready(True)

    def set_failed(self, detail: str) -> None:
        self.status, self.detail = "failed", detail
        self.metrics.ready(False)


def _dumps(obj: Any) -> bytes:
    """JSON bytes by orjson: NaN/inf (a degenerate feature) become null, datetimes ISO 8601,
    anything else unexpected its ``str``."""
    return orjson.dumps(obj, default=str, option=orjson.OPT_SERIALIZE_NUMPY)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=_dumps(obj), status_code=status, media_type="application/json")


def _error(status: int, message: str, **extra: Any) -> Response:
    """An error body whose ``error`` is one printable line: a client's own field names or
    values (a JSON key ``"\n"``, say) appear escaped in it, as they are in ``fields``."""
    line = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
    return _json({"error": line, **extra}, status)


class Guard:
    """ASGI middleware: API key, body size, timing and request metrics."""

    def __init__(self, app, state: ServiceState):
        self.app = app
        self.state = state

    async def _reply(self, send, status: int, message: str) -> None:
        body = _dumps({"error": message})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        scope[T0] = t0
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        state = self.state
        status = [500]

        async def send_timed(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if path in PROTECTED:
                key = None
                length = None
                for name, value in scope["headers"]:
                    if name == b"x-api-key":
                        key = value
                    elif name == b"content-length":
                        length = value
                if key is None or not hmac.compare_digest(key, state.api_key):
                    state.metrics.error("auth")
                    return await self._reply(send_timed, 401, "missing or wrong API key (header X-API-Key)")
                limit = state.max_body_bytes
                if length is not None and (not length.isdigit() or int(length) > limit):
                    state.metrics.error("too_large")
                    return await self._reply(send_timed, 413, f"request body over {limit} bytes (deploy.max_body_bytes)")
                chunks, size, more = [], 0, True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        state.metrics.error("too_large")
                        return await self._reply(send_timed, 413, f"request body over {limit} bytes (deploy.max_body_bytes)")
                    chunks.append(chunk)
                    more = message.get("more_body", False)
                body = b"".join(chunks)
                delivered = False

                async def receive_body():
                    nonlocal delivered
                    if not delivered:
                        delivered = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                direct = state.direct.get(path) if scope["method"] == "POST" else None
                if direct is not None:  # the hot path: no routing, no dependency solving
                    response = await direct(body, scope.get("query_string", b""), t0)
                    return await response(scope, receive_body, send_timed)
                return await self.app(scope, receive_body, send_timed)
            return await self.app(scope, receive, send_timed)
        except Exception:
            state.metrics.error("internal")
            log.error("request %s failed: %s", path, redact_url(traceback.format_exc()))
            raise
        finally:
            state.metrics.request(endpoint, status[0], time.perf_counter() - t0)


def create_app(state: ServiceState, currencies: list[str], plan_columns: list[str], max_batch: int,
               title: str = "aml_pipeline scoring service", max_future_skew_us: int = 3_600_000_000) -> FastAPI:
    Transaction = transaction_model(currencies, plan_columns, max_future_skew_us)
    BatchRequest = batch_model(Transaction, max_batch)
    app = FastAPI(title=title, version="1", description=(
        "Scores transactions with a verified model bundle and the online feature store. "
        "POST /score and /score/batch need the X-API-Key header."))

    errors = {401: {"model": ErrorBody, "description": "missing or wrong API key"},
              413: {"model": ErrorBody, "description": "body over deploy.max_body_bytes"},
              422: {"model": ErrorBody, "description": "invalid transaction: the fields are named"},
              503: {"model": ErrorBody, "description": "not ready, or the store is unavailable"}}
    security = {"security": [{"ApiKey": []}]}

    def invalid(errors: list[dict], prefix: tuple = ("body",)) -> Response:
        detail = [{"loc": [str(p) for p in (*prefix, *e.get("loc", ()))], "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in errors]
        fields = [".".join(p for p in d["loc"] if p != "body") or "body" for d in detail]
        state.metrics.error("validation")
        first = f"{fields[0]}: {detail[0]['msg']}" if detail else "invalid request"
        return _error(422, f"invalid request: {first}", fields=fields, detail=jsonable_encoder(detail))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return invalid(list(exc.errors()), prefix=())

    def has_key(request: Request) -> bool:
        key = request.headers.get("x-api-key")
        return key is not None and hmac.compare_digest(key.encode(), state.api_key)

    def not_ready() -> Response:
        state.metrics.error("unavailable")
        return _error(503, f"not ready: {state.status}" + (f" ({redact_url(state.detail)})" if state.detail else ""))

    def counted(result: dict) -> dict:
        j = result.get("jurisdiction")
        state.metrics.decision({**result, "jurisdiction": j if j in state.jurisdictions else "*"})
        return result

    def decide(values: dict, include: bool) -> dict:
        return counted(state.scorer.score(values, include))

    def include_features(query: bytes) -> bool:
        if not query:
            return False
        value = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)).get("include_features", "false")
        return value.lower() in ("1", "true", "yes")

    # The body is parsed by pydantic-core straight from bytes (model_validate_json) rather
    # than through FastAPI's dependency machinery: same models, same errors, ~0.2 ms less
    # per request. The OpenAPI document still describes it (openapi_extra below).
    def body_doc(model: str) -> dict:
        return {**security,
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}},
                "parameters": [{"name": "include_features", "in": "query", "required": False,
                                "description": "also return every feature value", "schema": {"type": "boolean", "default": False}}]}

    @app.post("/score", response_model=Decision, responses=errors, openapi_extra=body_doc("Transaction"),
              summary="Score one transaction")
    async def score(request: Request):
        # The Guard answers POST /score with score_body itself (state.direct: past FastAPI's
        # routing and dependency layers); this route is its OpenAPI entry.
        return await score_body(await request.body(), request.scope.get("query_string", b""), request.scope[T0])

    async def score_body(body: bytes, query: bytes, t0: float) -> Response:
        """POST /score from the raw body and query string; ``t0``: when the request came in.
        An alert's explanation runs off the event loop (:meth:`Scorer.score_async`)."""
        if not state.ready:
            return not_ready()
        try:
            tx = Transaction.model_validate_json(body)
        except ValidationError as exc:
            return invalid(exc.errors(include_url=False, include_input=False))
        try:
            result = counted(await state.scorer.score_async(tx.model_dump(), include_features(query)))
        except BadRequest as exc:
            state.metrics.error("validation")
            return _error(422, f"invalid request: {exc}", fields=[exc.field])
        except ServiceUnavailable as exc:
            state.metrics.error("unavailable")
            return _error(503, redact_url(str(exc)))
        result["latency_ms"] = (time.perf_counter() - t0) * 1e3
        return _json(result)

    state.direct["/score"] = score_body

    @app.post("/score/batch", response_model=BatchResponse, responses=errors, openapi_extra=body_doc("BatchRequest"),
              summary="Score several transactions (in event-time order)")
    async def score_batch(request: Request):
        if not state.ready:
            return not_ready()
        try:
            batch = BatchRequest.model_validate_json(await request.body())
        except ValidationError as exc:
            return invalid(exc.errors(include_url=False, include_input=False))
        include = include_features(request.scope.get("query_string", b""))
        txs = batch.transactions
        order = sorted(range(len(txs)), key=lambda i: txs[i].event_time)
        results: list[Any] = [None] * len(txs)
        try:
            for i in order:
                results[i] = decide(txs[i].model_dump(), include)
        except BadRequest as exc:
            state.metrics.error("validation")
            return _error(422, f"invalid request: transactions.{i}.{exc}", fields=[f"transactions.{i}.{exc.field}"],
                          scored=[r["event_id"] for r in results if r is not None])
        except ServiceUnavailable as exc:
            state.metrics.error("unavailable")
            return _error(503, redact_url(str(exc)), scored=[r["event_id"] for r in results if r is not None])
        latency = (time.perf_counter() - request.scope[T0]) * 1e3
        for r in results:
            r["latency_ms"] = latency
        return _json({"results": results, "latency_ms": latency})

    @app.get("/health", response_model=Health, responses={503: {"model": Health}}, summary="Readiness",
             description="Status only; with a valid X-API-Key also the model, the engine, the store and why "
                         "it is not ready (probes need no key, details are for operators).")
    async def health(request: Request):
        details = has_key(request)
        if not state.ready:
            return _json({"status": state.status, **({"detail": redact_url(state.detail)} if details else {})}, 503)
        scorer = state.scorer
        try:
            scorer.store.ping()
            store = scorer.store.stats() if details else None
        except Exception as exc:  # the store went away: not ready to score
            return _json({"status": "unavailable", **({"detail": f"store: {redact_url(str(exc))}"} if details else {})}, 503)
        if not details:
            return _json({"status": "ready"})
        return _json({"status": "ready", "model_name": scorer.trace["model_name"],
                      "model_version": scorer.trace["model_version"], "bundle_hash": scorer.trace["bundle_hash"],
                      "feature_engine": scorer.engine.name, "store": redact(store), "pid": os.getpid()})

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics():
        body, content_type = state.metrics.render()
        return Response(content=body, media_type=content_type)

    def openapi():
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {})
            components.setdefault("securitySchemes", {})["ApiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            schemas = components.setdefault("schemas", {})
            for model in (Transaction, BatchRequest):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(body.pop("$defs", {}))
                schemas[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(Guard, state=state)
    return app
