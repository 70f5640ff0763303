"""Decision records: what every score carries back to its event, its model and its reasons.

One builder serves every scorer: ``task=score`` and the evaluation (through
:meth:`ModelBundle.score_features <aml_pipeline.bundle.ModelBundle.score_features>`), the
streaming scorer, Spark scoring (inside ``mapInArrow``), MLflow's pyfunc wrapper and the
online service. A decision holds

- the event: ``event_id``, ``event_time``, ``jurisdiction``;
- the score against the jurisdiction's threshold: ``score``, ``threshold`` and ``alert``
  (``score >= threshold``; a jurisdiction without an entry of its own takes ``"*"``);
- why, on the rows ``explain`` picks (``all``, ``alerts``; ``none`` or anything else: no
  row), null on the others: ``top_features``, the ``top_k`` features whose contributions
  are largest in magnitude (ties in column order), each as feature, value and contribution
  (the model's own: LightGBM SHAP values, logistic-regression terms, in log-odds; a model
  without per-row contributions lists its globally most important features with a null
  contribution), and ``reasons``, the same in plain words
  (:mod:`aml_pipeline.features.reasons`); a missing value is a null, never a NaN;
- the trace: ``model_name``, ``model_version``, ``run_id``, ``config_hash``, ``bundle_hash``.

Batches get a polars frame (:meth:`DecisionBuilder.frame`: the decision columns in that
order, then every feature value); the online service gets one dict per event
(:meth:`DecisionBuilder.record`), on a path with no polars in it. Both take their top
features from one selection (:meth:`DecisionBuilder.rank`).
"""

from __future__ import annotations

from collections import ChainMap
from typing import Any, Mapping, Sequence

import numpy as np
import polars as pl

from aml_pipeline.config import option_value
from aml_pipeline.evaluation.thresholds import apply_thresholds
from aml_pipeline.features.reasons import reasons_and_hint, reasons_column

TOP_FEATURES = pl.List(pl.Struct({"feature": pl.String, "value": pl.Float64, "contribution": pl.Float64}))
#: What points a decision back at its model (see :attr:`ModelBundle.trace`).
TRACE_FIELDS = ("model_name", "model_version", "run_id", "config_hash", "bundle_hash")
#: The decision columns of a batch's frame, in order (the feature values follow them).
COLUMNS = ("event_id", "event_time", "jurisdiction", "score", "threshold", "alert", "top_features", "reasons",
           *TRACE_FIELDS)
#: The decision fields a streamed alert carries, in its order (its own fields around them).
ALERT_FIELDS = ("event_id", "event_time", "score", "threshold", "jurisdiction", "top_features", "reasons")


def feature_matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """Feature columns as a float64 matrix, nulls as NaN (what every classifier takes)."""
    return frame.select(pl.col(c).cast(pl.Float64) for c in columns).to_numpy().astype(np.float64, copy=False)


class DecisionBuilder:
    """Decisions of one model: its feature columns, thresholds and trace, ``top_k`` and ``explain``.

    ``model`` needs ``predict_proba`` (unless the scores are given), ``contributions`` and
    ``feature_importance``. Cheap to make; the trace is read once, when made.
    """

    def __init__(self, model: Any, columns: Sequence[str], thresholds: Mapping, trace: Mapping[str, Any],
                 top_k: int = 5, explain: str = "alerts"):
        self.model = model
        self.columns = list(columns)
        self.thresholds = thresholds
        self.trace = {k: trace[k] for k in TRACE_FIELDS}
        self.k = max(0, min(int(top_k), len(self.columns)))
        self.explain = str(option_value(explain))
        #: whether a decision is explained, by its alert flag (False, True)
        self._explained = (self.explain == "all", self.explain in ("all", "alerts"))
        self._names = pl.Series("feature", self.columns, pl.String)
        self._ranking: np.ndarray | None = None
        self._threshold: dict[str, float] = {}

    # -- the pieces --------------------------------------------------------------------------
    def threshold(self, jurisdiction: str) -> float:
        """One jurisdiction's threshold (looked up once, then remembered); ValueError when
        none applies."""
        t = self._threshold.get(jurisdiction)
        if t is None:
            value, _ = apply_thresholds(np.zeros(1), np.array([jurisdiction], dtype=object), self.thresholds)
            t = self._threshold[jurisdiction] = float(value[0])
        return t

    def rank(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The top-feature selection: per row of ``X``, the column indices of its top features,
        strongest first, and their contributions (NaN when the model has none), both (n, k)."""
        contrib = self.model.contributions(X)
        if contrib is not None:
            order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :self.k]
            return order, np.take_along_axis(contrib, order, axis=1)
        if self._ranking is None:
            importance = self.model.feature_importance() or {}
            self._ranking = np.argsort([-importance.get(c, 0.0) for c in self.columns], kind="stable")[:self.k]
        order = np.broadcast_to(self._ranking, (X.shape[0], self.k))
        return order, np.full(order.shape, np.nan)

    def top_features(self, X: np.ndarray) -> pl.Series:
        """The ``top_features`` column of the rows of ``X`` (vectorised)."""
        n = X.shape[0]
        if n == 0:
            return pl.Series("top_features", [], TOP_FEATURES)
        order, contrib = self.rank(X)
        flat = pl.DataFrame({
            "feature": self._names.gather(order.reshape(-1)),
            "value": np.take_along_axis(X, order, axis=1).reshape(-1),
            "contribution": contrib.reshape(-1),
        }).select(pl.struct(pl.col("feature"), pl.col("value").fill_nan(None), pl.col("contribution").fill_nan(None))
                  .reshape((n, self.k)).alias("top_features"))
        return flat.to_series().cast(TOP_FEATURES)

    def top_features_of(self, x: np.ndarray) -> list[dict[str, Any]]:
        """The top features of one feature vector, as the dicts of a record."""
        order, contrib = self.rank(x.reshape(1, -1))
        idx = order[0]
        return [{"feature": self.columns[i], "value": None if v != v else v, "contribution": None if c != c else c}
                for i, v, c in zip(idx.tolist(), x[idx].tolist(), contrib[0].tolist())]

    def explains(self, alert: np.ndarray) -> np.ndarray:
        """Which decisions of a batch carry top features and reasons, by their alert flags."""
        no, yes = self._explained
        return np.where(alert, yes, no)

    # -- batches -----------------------------------------------------------------------------
    def frame(self, features: pl.DataFrame, score: np.ndarray | None = None) -> pl.DataFrame:
        """Decisions for rows carrying the feature columns (and ``event_id``, ``event_time``,
        ``jurisdiction``): :data:`COLUMNS`, then every feature value. ``score``: the model's
        scores when they were computed elsewhere (MLlib on Spark)."""
        X = feature_matrix(features, self.columns)
        if score is None:
            score = self.model.predict_proba(X)
        threshold, alert = apply_thresholds(score, features["jurisdiction"].to_numpy(), self.thresholds)
        explained = self.explains(alert)
        if explained.all():
            tops = self.top_features(X)
        elif explained.any():  # per-row contributions cost ~1000x a prediction: only where shown
            at = pl.Series(explained).cast(pl.Int64).cum_sum() - 1
            tops = self.top_features(X[explained]).gather(at.set(pl.Series(~explained), None))
        else:
            tops = pl.Series("top_features", [None] * features.height, TOP_FEATURES)
        tops = tops.alias("top_features")
        out = features.select("event_id", "event_time", "jurisdiction").with_columns(
            pl.Series("score", score, pl.Float64),
            pl.Series("threshold", threshold, pl.Float64),
            pl.Series("alert", alert, pl.Boolean),
            tops,
            reasons_column(tops, features),
            *[pl.lit(v, pl.String).alias(k) for k, v in self.trace.items()],
        )
        return out.hstack(features.select(self.columns).get_columns())

    # -- one event (the online service) ------------------------------------------------------
    def explained(self, score: float, threshold: float) -> bool:
        """Whether the decision on a score carries top features and reasons."""
        return self._explained[score >= threshold]

    def record(self, event_id: str, event_time: str, jurisdiction: str, score: float, threshold: float,
               x: np.ndarray, *rows: Mapping[str, Any], tops: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The decision on one event as the service answers and logs it: ``score`` of the
        feature vector ``x`` against ``threshold`` (:meth:`threshold`). ``rows`` hold the
        values the reasons may read besides the top features (the first holding a name
        wins); they are read only when the decision is explained. ``tops``: the top features
        (:meth:`top_features_of` ``x``) when the caller computed them already."""
        alert = score >= threshold
        if tops is None and self._explained[alert]:
            tops = self.top_features_of(x)
        return {
            "event_id": event_id,
            "event_time": event_time,
            "score": score,
            "alert": alert,
            "decision": "alert" if alert else "no_alert",
            "threshold": threshold,
            "jurisdiction": jurisdiction,
            "top_features": tops,
            "reasons": None if tops is None else reasons_and_hint(tops, ChainMap(*rows))[0],
            **self.trace,
        }
