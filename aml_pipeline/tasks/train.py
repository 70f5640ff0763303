"""``task=train``: fit the classifier, choose thresholds on validation, write the bundle.

load features → weights from the weighting strategy → fit (early stopping on the
validation window) → thresholds per jurisdiction on validation scores → save the bundle
(model, fitted plan, thresholds, input schema, validation metrics, lineage) to
``models/bundle``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import polars as pl
from omegaconf import DictConfig

from aml_pipeline.build import build
from aml_pipeline.bundle import ModelBundle, feature_matrix
from aml_pipeline.evaluation.metrics import pr_auc, roc_auc
from aml_pipeline.evaluation.thresholds import apply_thresholds, choose_thresholds
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.lineage import lineage
from aml_pipeline.monitoring.reference import build_reference, categorical_columns
from aml_pipeline.optional import require_extra
from aml_pipeline.progress import status, table
from aml_pipeline.tasks.layout import Layout, need


def train_bundle(cfg: DictConfig, features: pl.DataFrame, plan: FeaturePlan, data_file) -> ModelBundle:
    """Pure apart from the lineage: feature table + fitted plan → a trained bundle."""
    cols = plan.feature_columns()
    train = features.filter(pl.col("split") == "train")
    valid = features.filter(pl.col("split") == "valid")
    y_train = train["label"].to_numpy().astype(np.int64)
    y_valid = valid["label"].to_numpy().astype(np.int64)
    weighting = build(cfg.weighting, "weighting")
    model = build(cfg.model, "model")
    with status(f"train: {model.name} on {train.height:,} events ({int(y_train.sum()):,} positive), {weighting.describe()}"):
        model.fit(feature_matrix(train, cols), y_train, sample_weight=weighting.weights(y_train),
                  X_valid=feature_matrix(valid, cols), y_valid=y_valid, feature_names=cols)
    valid_score = model.predict_proba(feature_matrix(valid, cols))
    thresholds = choose_thresholds(valid_score, y_valid, valid["jurisdiction"].to_numpy(), cfg.thresholds)
    metrics = {"valid_pr_auc": pr_auc(y_valid, valid_score), "valid_roc_auc": roc_auc(y_valid, valid_score),
               "best_iteration": model.best_iteration}
    # what task=monitor compares later windows with: the validation window's histograms
    _, valid_alert = apply_thresholds(valid_score, valid["jurisdiction"].to_numpy(), thresholds)
    reference = build_reference(valid, cols, categorical_columns(plan), valid_score, valid_alert)
    return ModelBundle(name=cfg.mlflow.registered_model, model=model, plan=plan, thresholds=thresholds,
                       lineage={**lineage(cfg, data_file), "model": model.name, "weighting": weighting.name},
                       metrics=metrics, reference=reference)


def run(cfg: DictConfig) -> dict:
    layout = Layout.of(cfg)
    start = time.perf_counter()
    plan = FeaturePlan.from_dict(json.loads(need(layout.plan, "features").read_text()))
    model = build(cfg.model, "model")
    if getattr(model, "trains_on_spark", False):
        # model=spark_*: MLlib trains on the feature table in Spark (aml_pipeline/spark/train.py).
        require_extra("spark", why=f"model={model.name}")
        from aml_pipeline.spark.train import train_bundle as spark_train_bundle

        bundle = spark_train_bundle(cfg, model, plan, layout)
    else:
        features = pl.read_parquet(need(layout.features, "features"))
        bundle = train_bundle(cfg, features, plan, need(layout.validated, "data"))
    # The windows the model saw (train) and was tuned on (valid): task=promote judges only
    # later events, task=export checks its parity on the validation window.
    bounds = json.loads(need(layout.split, "features").read_text())
    bundle.lineage.update({k: bounds[k] for k in ("valid_start", "test_start") if bounds.get(k)})
    bundle_hash = bundle.save(layout.bundle)
    secs = time.perf_counter() - start
    m = bundle.metrics
    table("train", [
        ("model", f"{bundle.model.name} (best iteration {m['best_iteration']})"),
        ("validation PR-AUC", f"{m['valid_pr_auc']:.4f}" if m["valid_pr_auc"] is not None else "n/a"),
        ("thresholds", ", ".join(f"{j}={t['threshold']:.3f}" for j, t in sorted(bundle.thresholds.items()))),
        ("took", f"{secs:.1f}s"),
        ("bundle", f"{layout.bundle} (sha256 {bundle_hash[:12]})"),
    ])
    return {"bundle": str(layout.bundle), "bundle_hash": bundle_hash, **m}
