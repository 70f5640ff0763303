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

from aml_pipeline.decisions import DecisionBuilder, feature_matrix
from aml_pipeline.errors import UserError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.models.classifiers import Classifier, load_classifier
from aml_pipeline.schema import ALL_COLUMNS, REQUIRED_COLUMNS

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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

    def decisions(self, top_k: int = 5, explain: str = "alerts") -> DecisionBuilder:
        """The builder of this bundle's decision records (:mod:`aml_pipeline.decisions`), with
        the model and trace the bundle holds now."""
        return DecisionBuilder(self.model, self.feature_columns(), self.thresholds, self.trace, top_k, explain)

    def score_features(self, features: pl.DataFrame, top_k: int = 5, explain: str = "alerts") -> pl.DataFrame:
        """Decisions for rows with feature columns: score, threshold, alert and their trace.

        Every row carries all its feature values; ``explain`` picks which rows also get
        their top contributing features (per-row SHAP costs ~1000x a prediction) and the
        reasons in plain words written from them (:mod:`aml_pipeline.features.reasons`).
        """
        return self.decisions(top_k, explain).frame(features)

    def score(self, events: pl.DataFrame, history: pl.DataFrame | None = None, top_k: int = 5,
              explain: str = "alerts") -> pl.DataFrame:
        """Score canonical events: compute the plan's features (with history), then decide."""
        features = self.plan.transform(events, history=history)
        return self.score_features(features, top_k, explain)
