"""One decision per transaction: store history -> features -> model -> threshold -> log.

:class:`Scorer` is the service without HTTP (the streaming scorer can reuse it). For one
event it reads the store (:func:`aml_pipeline.store.engine.gather`: its accounts' recent
events and their counterparties'), computes the plan's features with the configured
engine, scores the feature vector with the model's single-row path on this thread
(``predict_one``; LightGBM capped at one thread: with its default threads a call takes
~16 ms instead of ~60 µs when the other core is busy), applies the jurisdiction's
threshold and writes the decision record with ``task=score``'s own builder
(:mod:`aml_pipeline.decisions`), appends the decision to the decision log, then
appends the event to both accounts' histories and remembers the decision under its id.

On the event loop (:meth:`Scorer.score_async`, the ``/score`` path) an explained decision
is appended first and explained on a worker thread, so the requests behind an alert are
decided meanwhile (see that method).

A known event id (a client retry, a replayed stream) returns the stored decision with
``replayed: true`` and changes nothing. MLflow's pyfunc wrapper and pandera never run here.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.decisions import DecisionBuilder
from aml_pipeline.errors import UserError
from aml_pipeline.serving.decision_log import DecisionLog as _DecisionLog
from aml_pipeline.store.base import OnlineStore
from aml_pipeline.store.engine import Event, OnlineFeatures, PlanNeeds, PolarsFeatures, gather

NAN = float("nan")


class ServiceUnavailable(Exception):
    """The store cannot be reached: the request may be retried (503)."""


class BadRequest(Exception):
    """The request is well-formed but cannot be decided (422), e.g. no threshold applies."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def single_threaded(bundle: ModelBundle) -> None:
    """Cap the model's own thread pools at one thread (in memory; the bundle is unchanged):
    the service decides one request at a time, where a thread pool's wake-up costs more than
    it saves."""
    set_threads(bundle, 1)


def set_threads(bundle: ModelBundle, threads: int) -> None:
    """Run the model's predictions and explanations on ``threads`` threads (0: one per core).
    In memory only; the bundle is unchanged."""
    params = getattr(bundle.model, "params", None)
    if isinstance(params, dict) and getattr(bundle.model, "library", "") == "lightgbm":
        for key in [k for k in params if k in ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs")]:
            params.pop(key)
        params["num_threads"] = int(threads) if threads > 0 else (os.cpu_count() or 1)
    if threads > 0:
        threadpool_limits(int(threads))


def _json_value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).isoformat()
    return v


class DecisionLog(_DecisionLog):
    """Append-only JSON lines, one per decision (fsync policy and rotation:
    :mod:`aml_pipeline.serving.decision_log`); datetimes are written in UTC ISO 8601."""

    def __init__(self, path: str | Path, **policy: Any):
        super().__init__(path, default=_json_value, **policy)


class Scorer:
    def __init__(self, bundle: ModelBundle, store: OnlineStore, needs: PlanNeeds, engine: OnlineFeatures | PolarsFeatures,
                 decision_log: DecisionLog, explain: str = "alerts", top_k: int = 5, shadow=None):
        self.bundle = bundle
        self.store = store
        self.needs = needs
        self.engine = engine
        self.log = decision_log
        self.explain = explain
        self.top_k = top_k
        #: deploy.shadow: a second bundle whose decision is logged beside this one's, never acted on.
        self.shadow = shadow
        self.columns = bundle.feature_columns()
        self.model = bundle.model
        self.decisions = bundle.decisions(top_k, explain)
        self.trace = self.decisions.trace
        self._threshold = self.decisions.threshold
        self._store_errors = _store_errors()
        self._lock = threading.Lock()  # one decision at a time: the store's read-score-append is a unit
        self._explainer: ThreadPoolExecutor | None = None  # score_async's SHAP thread, started on the first alert
        self._explaining: DecisionBuilder | None = None  # its builder, on a copy of the model (warm_up)

    # -- pieces -----------------------------------------------------------------------------
    def threshold(self, jurisdiction: str) -> float:
        """The jurisdiction's threshold, looked up by the offline code once and cached."""
        try:
            return self._threshold(jurisdiction)
        except ValueError as exc:
            raise BadRequest("jurisdiction", str(exc)) from None

    def vector(self, features: dict[str, Any]) -> np.ndarray:
        return np.array([NAN if (v := features[c]) is None else v for c in self.columns], dtype=np.float64)

    def warm_up(self) -> None:
        """Run the model paths once so the first request does not pay for lazy set-up; make
        the explanation thread's own copy of the model (:meth:`score_async`)."""
        x = np.zeros(len(self.columns))
        self.model.predict_one(x)
        if self.explain != "none":
            self.decisions.top_features_of(x)
            b = self.bundle
            self._explaining = DecisionBuilder(_own_copy(self.model), b.feature_columns(), b.thresholds, b.trace,
                                               self.top_k, self.explain)
            self._explaining.top_features_of(x)
        if self.shadow is not None:
            self.shadow.warm_up(len(self.columns))

    # -- one decision -----------------------------------------------------------------------
    def score(self, values: dict[str, Any], include_features: bool = False) -> dict[str, Any]:
        """The decision for one validated transaction (canonical values, aware event_time)."""
        ev, shown = self._event(values)
        with self._lock, self._store_calls():
            begun = self._begin(ev, shown)
            if isinstance(begun, dict):
                return begun
            return self._finish(begun, include_features)

    async def score_async(self, values: dict[str, Any], include_features: bool = False) -> dict[str, Any]:
        """:meth:`score` for the event loop: a decision that is explained (an alert, with
        ``explain: alerts``) gets its SHAP values on a worker thread after its event is
        appended, so the next requests are decided meanwhile.

        Why: one row's TreeSHAP takes ~5 ms of CPU on the quickstart bundle (``python
        bench/profile_service.py --parts 1000``), several whole decisions; computed in the
        store's critical section it held every request queued behind an alert. The event
        is history for later events from the append on (their features read it as before);
        its decision is logged, stored for replays and answered once explained, as before. A request for the same event id in
        between is decided again from the same rows (its own row is never its history) and
        gets the same decision; a crash in between leaves the event appended and
        undecided, and the client's retry decides it (the append is not repeated).
        """
        ev, shown = self._event(values)
        with self._lock, self._store_calls():
            begun = self._begin(ev, shown)
            if isinstance(begun, dict):
                return begun
            if not self.decisions.explained(begun.score, begun.threshold):
                return self._finish(begun, include_features)
            self.store.commit(begun.row, None)
        if self._explainer is None:
            self._explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aml-explain")
        explaining = self._explaining or self.decisions
        tops = await asyncio.get_running_loop().run_in_executor(self._explainer, explaining.top_features_of, begun.x)
        with self._lock, self._store_calls():
            return self._finish(begun, include_features, tops)

    def _event(self, values: dict[str, Any]) -> tuple[Event, float | None]:
        """The event the features and the store see (features.fx: in the reporting currency),
        and the event's own amount when it was converted."""
        fx = self.bundle.plan.fx
        if fx is None:
            return Event(values), None
        try:  # the features and the store see the reporting currency, the log the event's own amount
            return Event(fx.convert_values(values)), values["amount"]
        except ValueError as exc:
            raise BadRequest("currency", str(exc)) from None

    @contextmanager
    def _store_calls(self):
        try:
            yield
        except self._store_errors as exc:
            raise ServiceUnavailable(f"store unavailable: {exc}") from None

    def _begin(self, ev: Event, amount: float | None) -> dict[str, Any] | "_Scored":
        """The stored decision of a known event id (replayed), else the event's features and
        score. ``amount``: the event's own amount when ``ev`` holds it converted (features.fx)."""
        stored, history = gather(self.store, self.needs, ev)
        if stored is not None:
            return {**stored, "replayed": True, "features": None}
        event = ev.values if amount is None else {**ev.values, "amount": amount}
        threshold = self.threshold(ev.values["jurisdiction"])
        features = self.engine.compute(ev, history)
        x = self.vector(features)
        return _Scored(ev, event, features, x, float(self.model.predict_one(x)), threshold,
                       ev.row(self.needs.extra_columns))

    def _finish(self, s: "_Scored", include_features: bool, tops: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Record, log and append the decision (an event appended already keeps its row and
        gets its decision stored)."""
        ev = s.ev
        jurisdiction = ev.values["jurisdiction"]
        # the reasons read the features first, then the event's own values
        decision = self.decisions.record(ev.event_id, ev.time.isoformat(), jurisdiction, s.score, s.threshold, s.x,
                                         s.features, s.event, tops=tops)
        decision["feature_engine"] = self.engine.name
        shadow = self.shadow.decide(s.x, jurisdiction) if self.shadow is not None else {}
        self.log.write({**decision, **shadow, "logged_at": time.time(), "features": s.features, "event": s.event})
        self.store.commit(s.row, decision)
        return {**decision, "replayed": False, "features": s.features if include_features else None}

    def close(self) -> None:
        """Stop the explanation thread (if one started) and close the decision log."""
        if self._explainer is not None:
            self._explainer.shutdown(wait=True)
        self.log.close()


class _Scored:
    """One event between its score and its decision."""

    __slots__ = ("ev", "event", "features", "x", "score", "threshold", "row")

    def __init__(self, ev: Event, event: dict[str, Any], features: dict[str, Any], x: np.ndarray, score: float,
                 threshold: float, row: tuple):
        self.ev, self.event, self.features, self.x = ev, event, features, x
        self.score, self.threshold, self.row = score, threshold, row


def _own_copy(model: Any) -> Any:
    """The model for the explanation thread: a copy with a Booster of its own. LightGBM runs a
    single-row prediction under a Booster's exclusive lock and a matrix prediction (SHAP)
    under its shared one, so on one Booster the next request's score would wait for the
    explanation to end. Same trees, same contributions. An export's scorer is left alone: the
    native model explains (:class:`aml_pipeline.export.runtimes.ExportedModel`)."""
    native = getattr(model, "native", model)
    try:
        return copy.deepcopy(native)
    except Exception:  # a model that cannot be copied explains on the one Booster, in turn
        return native


def _store_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def make_engine(name: str, bundle: ModelBundle, needs: PlanNeeds, event_columns: list[str]):
    if name == "online":
        return OnlineFeatures(bundle.plan)
    if name == "polars":
        return PolarsFeatures(bundle.plan, event_columns, needs.extra_columns)
    raise UserError(f"deploy.feature_engine={name!r}; allowed: online, polars")
