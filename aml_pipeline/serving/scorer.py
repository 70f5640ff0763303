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

A known event id (a client retry, a replayed stream) returns the stored decision with
``replayed: true`` and changes nothing. MLflow's pyfunc wrapper and pandera never run here.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from aml_pipeline.bundle import ModelBundle
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
        """Run the model paths once so the first request does not pay for lazy set-up."""
        x = np.zeros(len(self.columns))
        self.model.predict_one(x)
        if self.explain != "none":
            self.decisions.top_features_of(x)
        if self.shadow is not None:
            self.shadow.warm_up(len(self.columns))

    # -- one decision -----------------------------------------------------------------------
    def score(self, values: dict[str, Any], include_features: bool = False) -> dict[str, Any]:
        """The decision for one validated transaction (canonical values, aware event_time)."""
        fx = self.bundle.plan.fx
        shown = None
        if fx is not None:  # the features and the store see the reporting currency, the log the event's own amount
            try:
                values, shown = fx.convert_values(values), values["amount"]
            except ValueError as exc:
                raise BadRequest("currency", str(exc)) from None
        with self._lock:
            try:
                return self._score(Event(values), include_features, shown)
            except self._store_errors as exc:
                raise ServiceUnavailable(f"store unavailable: {exc}") from None

    def _score(self, ev: Event, include_features: bool, amount: float | None = None) -> dict[str, Any]:
        """``amount``: the event's own amount when ``ev`` holds it converted (features.fx)."""
        stored, history = gather(self.store, self.needs, ev)
        if stored is not None:
            return {**stored, "replayed": True, "features": None}
        event = ev.values if amount is None else {**ev.values, "amount": amount}
        jurisdiction = ev.values["jurisdiction"]
        threshold = self.threshold(jurisdiction)
        features = self.engine.compute(ev, history)
        x = self.vector(features)
        score = float(self.model.predict_one(x))
        # the reasons read the features first, then the event's own values
        decision = self.decisions.record(ev.event_id, ev.time.isoformat(), jurisdiction, score, threshold, x,
                                         features, event)
        decision["feature_engine"] = self.engine.name
        shadow = self.shadow.decide(x, jurisdiction) if self.shadow is not None else {}
        self.log.write({**decision, **shadow, "logged_at": time.time(), "features": features, "event": event})
        self.store.commit(ev.row(self.needs.extra_columns), decision)
        return {**decision, "replayed": False, "features": features if include_features else None}


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
