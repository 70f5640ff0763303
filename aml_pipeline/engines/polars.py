"""The polars engine (``engine=polars``, the default): every stage in process, with polars.

It is the reference engine: the Spark engine's outputs are checked against its values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
from omegaconf import DictConfig

from aml_pipeline.build import build
from aml_pipeline.bundle import ModelBundle, feature_matrix
from aml_pipeline.config import Explain
from aml_pipeline.engines import Engine, Rescorer
from aml_pipeline.evaluation.metrics import pr_auc, roc_auc
from aml_pipeline.evaluation.thresholds import apply_thresholds, choose_thresholds
from aml_pipeline.export.bundle_export import exported_model
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.ingest import Ingested, ingest, load_input
from aml_pipeline.layout import Layout, need
from aml_pipeline.lifecycle.promote import rescore_all
from aml_pipeline.lineage import lineage
from aml_pipeline.monitoring.reference import build_reference, categorical_columns
from aml_pipeline.progress import status
from aml_pipeline.split import assign
from aml_pipeline.validation import ValidationResult
from aml_pipeline.validation.summary import print_summary, summary_record


# ----------------------------------------------------------------------------- data
def summarise(ing: Ingested, outputs: dict[str, str]) -> dict:
    """Counts by reason, labels, typologies and time range: what summary.json holds."""
    valid = ing.result.valid
    labels = valid["label"]

    def counts(column: str) -> dict[str, int]:
        vc = valid.filter(pl.col(column).is_not_null())[column].value_counts(sort=True) if valid.height else None
        return {k: int(c) for k, c in vc.iter_rows()} if vc is not None else {}

    times = valid["event_time"]
    record = summary_record(
        ing.source, ing.result,
        positives=int((labels == 1).sum()), negatives=int((labels == 0).sum()),
        typologies=counts("typology"),
        time_range=[times.min().isoformat(), times.max().isoformat()] if valid.height else None,
        accounts=int(pl.concat([valid["src_account"], valid["dst_account"]]).n_unique()) if valid.height else 0,
        jurisdictions=counts("jurisdiction"), seconds=ing.seconds, outputs=outputs,
    )
    if ing.labels is not None:
        record["labels_file"] = ing.labels
    return record


def write_layers(result: ValidationResult, data_dir: Path) -> dict[str, str]:
    """Rewrite the validated and quarantine layers whole (stale files never linger)."""
    validated = data_dir / "validated" / "transactions.parquet"
    quarantine = data_dir / "quarantine" / "quarantine.parquet"
    for p in (validated, quarantine):
        p.parent.mkdir(parents=True, exist_ok=True)
    with status(f"writing {validated}"):
        result.valid.write_parquet(validated)
        result.quarantine.write_parquet(quarantine)
    return {"validated": str(validated), "quarantine": str(quarantine), "summary": str(data_dir / "validated" / "summary.json")}


# ----------------------------------------------------------------------------- features
def build_features(events: pl.DataFrame, plan: FeaturePlan, split_cfg: DictConfig) -> tuple[pl.DataFrame, dict]:
    """Pure: events → (feature table with a split column, window bounds). Fits ``plan``."""
    events, bounds = assign(events.sort("event_time", "event_id"), split_cfg)
    plan.check(events)
    train = events.filter(pl.col("split") == "train")
    later = events.filter(pl.col("split") != "train")
    with status(f"features: fitting {len(plan.steps)} steps on {train.height:,} training events"):
        train_f = plan.fit_transform(train)
    with status(f"features: {later.height:,} validation/test events"):
        later_f = plan.transform(later, history=train)
    return pl.concat([train_f, later_f]), bounds


# ----------------------------------------------------------------------------- train
def train_bundle(cfg: DictConfig, features: pl.DataFrame, plan: FeaturePlan, data_file, model: Any = None) -> ModelBundle:
    """Pure apart from the lineage: feature table + fitted plan → a trained bundle."""
    cols = plan.feature_columns()
    train = features.filter(pl.col("split") == "train")
    valid = features.filter(pl.col("split") == "valid")
    y_train = train["label"].to_numpy().astype(np.int64)
    y_valid = valid["label"].to_numpy().astype(np.int64)
    weighting = build(cfg.weighting, "weighting")
    model = model if model is not None else build(cfg.model, "model")
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


# ----------------------------------------------------------------------------- the engine
class PolarsEngine(Engine):
    """Every stage in this process (see the module doc)."""

    name: ClassVar[str] = "polars"

    def data(self, cfg: DictConfig) -> dict:
        ing = ingest(cfg)
        outputs = write_layers(ing.result, Path(cfg.paths.data_dir))
        summary = summarise(ing, outputs)
        Path(outputs["summary"]).write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(summary)
        return summary

    def features(self, cfg: DictConfig, plan: FeaturePlan, layout: Layout) -> tuple[dict, int]:
        events = pl.read_parquet(need(layout.validated, "data"))
        features, bounds = build_features(events, plan, cfg.split)
        layout.features.parent.mkdir(parents=True, exist_ok=True)
        features.write_parquet(layout.features)
        return bounds, events.height

    def train(self, cfg: DictConfig, model: Any, plan: FeaturePlan, layout: Layout) -> ModelBundle:
        features = pl.read_parquet(need(layout.features, "features"))
        return train_bundle(cfg, features, plan, need(layout.validated, "data"), model)

    def score(self, cfg: DictConfig, bundle: ModelBundle, runtime: str, out: Path) -> tuple[int, int]:
        bundle.model = exported_model(bundle, runtime)
        events = load_input(cfg)
        with status(f"score: {events.height:,} events"):
            decisions = bundle.score(events, top_k=cfg.scoring.top_k, explain=Explain(cfg.scoring.explain).value)
        decisions.write_parquet(out)
        return decisions.height, int(decisions["alert"].sum())

    def rescorer(self, cfg: DictConfig) -> Rescorer:
        return rescore_all


__all__ = ["PolarsEngine", "build_features", "summarise", "train_bundle", "write_layers"]
