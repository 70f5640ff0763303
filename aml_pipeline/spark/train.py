"""``task=train`` for MLlib classifiers (``model=spark_*``): the fit runs where the data is.

Spark reads ``data/features/features.parquet`` (part files are read by the executors),
counts the training window's classes for the weighting strategy's two class weights (the
``weightCol``), and fits the classifier on the training rows (GBT: plus the validation
rows, flagged for early stopping). Only the validation window's scores, labels and
jurisdictions come back to the driver, where the pipeline's own threshold and metric code
runs on them, as for every other classifier, and a sample of at most
:data:`REFERENCE_ROWS` validation rows with their features for the monitoring reference.
The bundle is the usual one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from omegaconf import DictConfig
from pyspark.sql import functions as F

from aml_pipeline.build import build
from aml_pipeline.bundle import ModelBundle
from aml_pipeline.evaluation.metrics import pr_auc, roc_auc
from aml_pipeline.evaluation.thresholds import apply_thresholds, choose_thresholds
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.lineage import lineage
from aml_pipeline.spark.mllib import SCORE, MLlibClassifier
from aml_pipeline.monitoring.reference import build_reference, categorical_columns
from aml_pipeline.progress import status
from aml_pipeline.spark import io
from aml_pipeline.spark.session import get_session
from aml_pipeline.layout import Layout, need


def class_counts(frame) -> tuple[int, int]:
    """(negatives, positives) of a window, counted by Spark."""
    row = frame.agg(F.sum((F.col("label") == 0).cast("long")).alias("neg"),
                    F.sum((F.col("label") == 1).cast("long")).alias("pos")).first()
    return int(row["neg"] or 0), int(row["pos"] or 0)


#: Most validation rows the monitoring reference is computed from (a uniform sample above it:
#: 200k rows place 50 quantile edges well and fit in the driver at any feature count).
REFERENCE_ROWS = 200_000


def reference_of(scored, cols: list[str], plan: FeaturePlan, thresholds: dict, rows: int) -> dict:
    """The monitoring reference of the scored validation window, from a sample when it is large."""
    sample = scored if rows <= REFERENCE_ROWS else scored.sample(fraction=REFERENCE_ROWS / rows, seed=0)
    frame = pl.from_pandas(sample.select("event_time", "jurisdiction", SCORE, *[F.col(f"`{c}`") for c in cols]).toPandas())
    score = frame[SCORE].to_numpy().astype(np.float64)
    _, alert = apply_thresholds(score, frame["jurisdiction"].to_numpy(), thresholds)
    return build_reference(frame, cols, categorical_columns(plan), score, alert)


def train_bundle(cfg: DictConfig, model: MLlibClassifier, plan: FeaturePlan, layout: Layout) -> ModelBundle:
    """Spark twin of :func:`aml_pipeline.engines.polars.train_bundle` for MLlib classifiers."""
    spark = get_session(cfg.engine, cfg.paths.data_dir)
    sc = spark.sparkContext
    scratch = str(Path(cfg.paths.data_dir).resolve() / io.STAGING)
    if sc.getCheckpointDir() is None:  # MLlib's tree learners checkpoint every checkpointInterval iterations
        sc.setCheckpointDir(f"{scratch}/checkpoints")
    cols = plan.feature_columns()
    features = spark.read.parquet(str(need(layout.features, "features")))
    train = features.where(F.col("split") == "train")
    valid = features.where(F.col("split") == "valid")
    weighting = build(cfg.weighting, "weighting")
    negatives, positives = class_counts(train)
    pair = weighting.class_weights(negatives, positives)
    with status(f"train (spark {sc.master}): {model.name} on {negatives + positives:,} events "
                f"({positives:,} positive), {weighting.describe()}"):
        model.fit_frame(train, valid, cols, pair, scratch=scratch)
    with status("train: scoring the validation window"):
        scored = model.predict_frame(valid.select("label", "jurisdiction", "event_time", *[F.col(f"`{c}`") for c in cols]))
        scored = scored.cache()  # read twice: the scores, then the reference's sample
        small = scored.select("label", "jurisdiction", SCORE).toPandas()  # validation window only
    y_valid = small["label"].to_numpy().astype(np.int64)
    valid_score = small[SCORE].to_numpy(dtype=np.float64)
    thresholds = choose_thresholds(valid_score, y_valid, small["jurisdiction"].to_numpy(), cfg.thresholds)
    metrics = {"valid_pr_auc": pr_auc(y_valid, valid_score), "valid_roc_auc": roc_auc(y_valid, valid_score),
               "best_iteration": model.best_iteration}
    with status("train: the monitoring reference of the validation window"):
        reference = reference_of(scored, cols, plan, thresholds, len(small))
    scored.unpersist()
    return ModelBundle(name=cfg.mlflow.registered_model, model=model, plan=plan, thresholds=thresholds,
                       lineage={**lineage(cfg, need(layout.validated, "data")), "model": model.name,
                                "weighting": weighting.name, "trained_on": f"spark {sc.master}"},
                       metrics=metrics, reference=reference)
