"""Shadow scoring: a second bundle scores every live decision, is logged, never alerts.

Before a challenger replaces the champion, the question is how it would have behaved on
the traffic the champion actually sees, not on a test window. With ``deploy.shadow=<bundle
uri>`` the service loads the second bundle and, for each decision, logs the shadow's
score, threshold and would-be alert beside the live ones in the decision log. The
response, the alert and the store never depend on it. ``task=monitor`` on that decision
log reports how far the two agree (alert overlap, rank correlation).

The shadow scores the feature values the live plan computed, so both bundles must share
the feature plan (the same steps, parameters and fitted state, as a retrain on the same
features gives); a different plan is refused at start-up in one line, rather than
scoring the shadow on features it was not trained on. It costs one more model call per
decision (about 20 µs for LightGBM on one thread), no second feature computation.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import polars as pl

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.errors import UserError
from aml_pipeline.evaluation.thresholds import apply_thresholds
from aml_pipeline.registry import resolve_bundle
from aml_pipeline.serving.scorer import single_threaded


def _plan_text(bundle: ModelBundle) -> str:
    return json.dumps(bundle.plan.to_dict(), sort_keys=True, default=str)


class Shadow:
    """The shadow bundle's decision for a live feature vector: logged fields only."""

    def __init__(self, bundle: ModelBundle, live: ModelBundle, uri: str):
        if _plan_text(bundle) != _plan_text(live):
            raise UserError(f"deploy.shadow={uri}: its feature plan differs from the live bundle's; shadow scoring "
                            f"reuses the live feature values, so both bundles need the same plan (retrain the "
                            f"challenger on the same features)")
        self.bundle = bundle
        self.model = bundle.model
        trace = bundle.trace
        self.trace = {"shadow_model_version": trace["model_version"], "shadow_bundle_hash": trace["bundle_hash"]}
        self._thresholds: dict[str, float] = {}

    def threshold(self, jurisdiction: str) -> float:
        t = self._thresholds.get(jurisdiction)
        if t is None:
            value, _ = apply_thresholds(np.zeros(1), np.array([jurisdiction], dtype=object), self.bundle.thresholds)
            t = self._thresholds[jurisdiction] = float(value[0])
        return t

    def decide(self, x: np.ndarray, jurisdiction: str) -> dict[str, Any]:
        score = float(self.model.predict_one(x))
        threshold = self.threshold(jurisdiction)
        return {"shadow_score": score, "shadow_threshold": threshold, "shadow_alert": bool(score >= threshold),
                **self.trace}

    def decide_frame(self, features: pl.DataFrame) -> pl.DataFrame:
        """The shadow's decisions for many rows of live feature values at once (one model
        call for a micro-batch, as the streaming scorer needs): event id and the fields of
        :meth:`decide`, computed the same way."""
        score = self.bundle.predict_features(features)
        threshold, alert = apply_thresholds(score, features["jurisdiction"].to_numpy(), self.bundle.thresholds)
        return features.select("event_id").with_columns(
            pl.Series("shadow_score", score, pl.Float64), pl.Series("shadow_threshold", threshold, pl.Float64),
            pl.Series("shadow_alert", alert, pl.Boolean), *[pl.lit(v, pl.String).alias(k) for k, v in self.trace.items()])

    def warm_up(self, n_features: int) -> None:
        self.model.predict_one(np.zeros(n_features))


def load_shadow(cfg, live: ModelBundle) -> Shadow | None:
    """The ``deploy.shadow`` bundle, checked against the live one; None when not configured."""
    uri = cfg.deploy.get("shadow")
    if not uri:
        return None
    bundle = resolve_bundle(str(uri), cfg)
    single_threaded(bundle)
    return Shadow(bundle, live, str(uri))
