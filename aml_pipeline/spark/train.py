"""``task=train`` for MLlib classifiers (``model=spark_*``): the fit runs where the data is.

Spark reads ``data/features/features.parquet`` (part files are read by the executors),
counts the training window's classes for the weighting strategy's two class weights (the
``weightCol``), and fits the classifier on the training rows (GBT: plus the validation
rows, flagged for early stopping). Only the validation window's scores, labels and
jurisdictions come back to the driver, where the pipeline's own threshold and metric code
runs on them, as for every other classifier. The bundle is the usual one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from pyspark.sql import functions as F

from aml_pipeline.build import build
from aml_pipeline.bundle import ModelBundle
from aml_pipeline.evaluation.metrics import pr_auc, roc_auc
from aml_pipeline.evaluation.thresholds import choose_thresholds
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.lineage import lineage
from aml_pipeline.models.mllib import SCORE, MLlibClassifier
from aml_pipeline.progress import status
from aml_pipeline.spark import io
from aml_pipeline.spark.session import get_session
from aml_pipeline.tasks.layout import Layout, need


def class_counts(frame) -> tuple[int, int]:
    """(negatives, positives) of a window, counted by Spark."""
    row = frame.agg(F.sum((F.col("label") == 0).cast("long")).alias("neg"),
                    F.sum((F.col("label") == 1).cast("long")).alias("pos")).first()
    return int(row["neg"] or 0), int(row["pos"] or 0)


def train_bundle(cfg: DictConfig, model: MLlibClassifier, plan: FeaturePlan, layout: Layout) -> ModelBundle:
    """Spark twin of :func:`aml_pipeline.tasks.train.train_bundle` for MLlib classifiers."""
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
        scored = model.predict_frame(valid.select("label", "jurisdiction", *[F.col(f"`{c}`") for c in cols]))
        small = scored.select("label", "jurisdiction", SCORE).toPandas()  # validation window only
    y_valid = small["label"].to_numpy().astype(np.int64)
    valid_score = small[SCORE].to_numpy(dtype=np.float64)
    thresholds = choose_thresholds(valid_score, y_valid, small["jurisdiction"].to_numpy(), cfg.thresholds)
    metrics = {"valid_pr_auc": pr_auc(y_valid, valid_score), "valid_roc_auc": roc_auc(y_valid, valid_score),
               "best_iteration": model.best_iteration}
    return ModelBundle(name=cfg.mlflow.registered_model, model=model, plan=plan, thresholds=thresholds,
                       lineage={**lineage(cfg, need(layout.validated, "data")), "model": model.name,
                                "weighting": weighting.name, "trained_on": f"spark {sc.master}"},
                       metrics=metrics)
