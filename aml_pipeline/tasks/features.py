"""``task=features``: split by time, fit the feature plan on train, write the feature table.

load validated events → assign train/valid/test by event time → fit the plan on the
training window (encoders see only training labels) → compute the validation and test
windows' features with the training events as history → save
``data/features/features.parquet`` (canonical columns + split + features), the fitted plan
``plan.json`` and the window bounds ``split.json``.
"""

from __future__ import annotations

import json
import time

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.optional import require_extra
from aml_pipeline.progress import status, table
from aml_pipeline.split import assign
from aml_pipeline.tasks.layout import Layout, need


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


def run(cfg: DictConfig) -> dict:
    from aml_pipeline.spark.session import engine_name

    layout = Layout.of(cfg)
    start = time.perf_counter()
    plan = FeaturePlan.from_features_config(cfg.features)
    if engine_name(cfg) == "spark":
        # engine=spark: the same plan compiled to Spark writes the same file (aml_pipeline/spark/tasks.py).
        require_extra("spark", why="engine=spark")
        from aml_pipeline.spark.tasks import run_features

        bounds, n_events = run_features(cfg, plan, layout)
    else:
        events = pl.read_parquet(need(layout.validated, "data"))
        features, bounds = build_features(events, plan, cfg.split)
        layout.features.parent.mkdir(parents=True, exist_ok=True)
        features.write_parquet(layout.features)
        n_events = events.height
    layout.plan.write_text(json.dumps(plan.to_dict(), indent=1, sort_keys=True) + "\n")
    secs = time.perf_counter() - start
    bounds["seconds"] = round(secs, 3)
    bounds["events_per_second"] = round(n_events / secs) if secs else None
    bounds["feature_columns"] = len(plan.feature_columns())
    layout.split.write_text(json.dumps(bounds, indent=2) + "\n")
    table("features", [
        ("steps", ", ".join(n for n, _ in plan.steps)),
        ("feature columns", str(len(plan.feature_columns()))),
        ("train / valid / test", " / ".join(f"{bounds['rows'][k]:,}" for k in ("train", "valid", "test"))),
        ("validation starts", bounds["valid_start"][:19]),
        ("test starts", bounds["test_start"][:19]),
        ("took", f"{secs:.1f}s ({bounds['events_per_second']:,} events/s)"),
        ("output", str(layout.features)),
    ])
    return bounds
