"""The model bundle: the unit of deployment.

A bundle is a folder holding everything a scorer needs and nothing it would have to
re-derive from training data:

- ``model.txt`` / ``model.skops``: the classifier (LightGBM text or skops, never a pickle);
- ``plan.json``: the fitted feature plan (steps, parameters, JSON state);
- ``thresholds.json``: the alert threshold per jurisdiction (``*`` for the rest);
- ``reference.json``: histograms of the validation window's features and scores, what
  ``task=monitor`` compares later windows with (bundles trained before it have none);
- ``manifest.json``: feature columns, input schema, validation metrics, lineage (config
  hash, data fingerprint, git commit) and the SHA-256 of every file above.

The bundle hash is the SHA-256 of the manifest. Loading verifies every file against the
manifest, and, when the registry recorded a hash for the version, the manifest against
that: a model file is parsed only once its bytes are known to be the ones trained.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from aml_pipeline.errors import UserError
from aml_pipeline.evaluation.thresholds import apply_thresholds
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.features.reasons import reasons_column
from aml_pipeline.models.classifiers import Classifier, load_classifier
from aml_pipeline.schema import ALL_COLUMNS, REQUIRED_COLUMNS

MANIFEST = "manifest.json"
TOP_FEATURES = pl.List(pl.Struct({"feature": pl.String, "value": pl.Float64, "contribution": pl.Float64}))
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def feature_matrix(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """Feature columns as a float64 matrix, nulls as NaN (what every classifier takes)."""
    return frame.select(pl.col(c).cast(pl.Float64) for c in columns).to_numpy().astype(np.float64, copy=False)


@dataclass
class ModelBundle:
    name: str
    model: Classifier
    plan: FeaturePlan
    thresholds: dict[str, dict]
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: Set when loaded from the registry: which version this is.
    registry: dict[str, Any] = field(default_factory=dict)
    bundle_hash: str | None = None
    #: Monitoring reference (aml_pipeline/monitoring/reference.py); None in older bundles.
    reference: dict[str, Any] | None = None
    #: Set when loaded: the verified folder, and its portable exports (task=export: format ->
    #: file, parity), each file hashed in the manifest like the rest.
    directory: Path | None = None
    exports: dict[str, Any] = field(default_factory=dict)

    # -- persistence ------------------------------------------------------------------
    def input_schema(self) -> dict[str, str]:
        needed = dict.fromkeys([*REQUIRED_COLUMNS, *self.plan.required_columns()])
        return {c: str(ALL_COLUMNS.get(c, "?")) for c in needed}

    def save(self, directory: str | Path) -> str:
        """Write the bundle folder (replacing it whole) and return the bundle hash."""
        d = Path(directory)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        model_meta = self.model.save(d)
        (d / "plan.json").write_text(json.dumps(self.plan.to_dict(), indent=1, sort_keys=True) + "\n")
        (d / "thresholds.json").write_text(json.dumps(self.thresholds, indent=1, sort_keys=True) + "\n")
        if self.reference is not None:
            (d / "reference.json").write_text(json.dumps(self.reference, sort_keys=True, allow_nan=False) + "\n")
        files = sorted(p.name for p in d.iterdir())
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "model": model_meta,
            "feature_columns": self.plan.feature_columns(),
            "input_schema": self.input_schema(),
            "metrics": self.metrics,
            "lineage": self.lineage,
            "files": {f: sha256_file(d / f) for f in files},
        }
        text = json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n"
        (d / MANIFEST).write_text(text)
        self.bundle_hash = hashlib.sha256(text.encode()).hexdigest()
        return self.bundle_hash

    @classmethod
    def load(cls, directory: str | Path, expected_hash: str | None = None, registry: dict | None = None) -> "ModelBundle":
        """Load and verify a bundle folder; ``expected_hash`` comes from the registry."""
        d = Path(directory)
        if not (d / MANIFEST).is_file():
            raise UserError(f"{d} is not a model bundle (no {MANIFEST}); train one with task=train")
        raw = (d / MANIFEST).read_bytes()
        bundle_hash = hashlib.sha256(raw).hexdigest()
        if expected_hash and bundle_hash != expected_hash:
            raise UserError(f"bundle {d}: manifest hash {bundle_hash[:12]}… does not match the registered {expected_hash[:12]}…; refusing to load")
        manifest = json.loads(raw)
        for name, digest in manifest["files"].items():
            p = d / name
            if not p.is_file() or sha256_file(p) != digest:
                raise UserError(f"bundle {d}: {name} is missing or differs from the manifest; refusing to load")
        plan = FeaturePlan.from_dict(json.loads((d / "plan.json").read_text()))
        model = load_classifier(d, manifest["model"])
        thresholds = json.loads((d / "thresholds.json").read_text())
        reference = json.loads((d / "reference.json").read_text()) if "reference.json" in manifest["files"] else None
        return cls(name=manifest["name"], model=model, plan=plan, thresholds=thresholds, lineage=manifest["lineage"],
                   metrics=manifest.get("metrics", {}), registry=registry or {}, bundle_hash=bundle_hash,
                   reference=reference, directory=d, exports=manifest.get("exports") or {})

    # -- scoring ----------------------------------------------------------------------
    def feature_columns(self) -> list[str]:
        return self.plan.feature_columns()

    def predict_features(self, features: pl.DataFrame) -> np.ndarray:
        """Scores of rows that already carry the plan's feature columns."""
        return self.model.predict_proba(feature_matrix(features, self.feature_columns()))

    def top_features(self, features: pl.DataFrame, k: int = 5) -> pl.Series:
        """Per row, the k features that pushed the score most: name, value, contribution.

        Contributions are the model's own (LightGBM SHAP values, logistic-regression terms,
        in log-odds). Classifiers without per-row attributions list the globally most
        important features with this row's values and a null contribution.
        """
        cols = self.feature_columns()
        X = feature_matrix(features, cols)
        if X.shape[0] == 0:
            return pl.Series("top_features", [], TOP_FEATURES)
        contrib = self.model.contributions(X)
        k = min(k, len(cols))
        if contrib is not None:
            order = np.argsort(-np.abs(contrib), axis=1, kind="stable")[:, :k]
            picked = np.take_along_axis(contrib, order, axis=1)
        else:
            importance = self.model.feature_importance() or {}
            ranking = np.argsort([-importance.get(c, 0.0) for c in cols], kind="stable")[:k]
            order = np.tile(ranking, (X.shape[0], 1))
            picked = np.full(order.shape, np.nan)
        values = np.take_along_axis(X, order, axis=1)
        names = np.asarray(cols, dtype=object)[order]
        n = X.shape[0]
        flat = pl.DataFrame({
            "row": np.repeat(np.arange(n), k),
            "feature": names.reshape(-1).astype(str),
            "value": values.reshape(-1),
            "contribution": picked.reshape(-1),
        }).with_columns(pl.col("value").fill_nan(None), pl.col("contribution").fill_nan(None))
        nested = flat.group_by("row", maintain_order=True).agg(pl.struct("feature", "value", "contribution").alias("top_features"))
        return nested["top_features"].cast(TOP_FEATURES)

    def explanations(self, features: pl.DataFrame, alert: np.ndarray, explain: str, k: int) -> pl.Series:
        """Top features for the rows ``explain`` selects (all, alerts, none); null elsewhere."""
        n = features.height
        if explain == "all":
            return self.top_features(features, k)
        if explain != "alerts" or not alert.any():
            return pl.Series("top_features", [None] * n, TOP_FEATURES)
        idx = np.flatnonzero(alert)
        explained = pl.DataFrame({"row": idx, "top_features": self.top_features(features[idx], k)})
        rows = pl.DataFrame({"row": np.arange(n)})
        return rows.join(explained, on="row", how="left", maintain_order="left")["top_features"]

    @property
    def trace(self) -> dict[str, str | None]:
        """What every decision carries to point back at its model: name, version (once
        registered), run id, config hash and the bundle's own hash."""
        return {
            "model_name": str(self.registry.get("name", self.name)),
            "model_version": str(self.registry.get("version", "unregistered")),
            "run_id": self.registry.get("run_id") or self.lineage.get("run_id"),
            "config_hash": self.lineage.get("config_hash"),
            "bundle_hash": self.bundle_hash,
        }

    def score_features(self, features: pl.DataFrame, top_k: int = 5, explain: str = "alerts") -> pl.DataFrame:
        """Decisions for rows with feature columns: score, threshold, alert and their trace.

        Every row carries all its feature values; ``explain`` picks which rows also get
        their top contributing features (per-row SHAP costs ~1000x a prediction) and the
        reasons in plain words written from them (:mod:`aml_pipeline.features.reasons`).
        """
        score = self.predict_features(features)
        threshold, alert = apply_thresholds(score, features["jurisdiction"].to_numpy(), self.thresholds)
        trace = self.trace
        tops = self.explanations(features, alert, str(explain), top_k).alias("top_features")
        out = features.select("event_id", "event_time", "jurisdiction").with_columns(
            pl.Series("score", score, pl.Float64),
            pl.Series("threshold", threshold, pl.Float64),
            pl.Series("alert", alert, pl.Boolean),
            tops,
            reasons_column(tops, features),
            *[pl.lit(v, pl.String).alias(k) for k, v in trace.items()],
        )
        return out.hstack(features.select(self.feature_columns()).get_columns())

    def score(self, events: pl.DataFrame, history: pl.DataFrame | None = None, top_k: int = 5,
              explain: str = "alerts") -> pl.DataFrame:
        """Score canonical events: compute the plan's features (with history), then decide."""
        features = self.plan.transform(events, history=history)
        return self.score_features(features, top_k, explain)
