"""``task=features``: split by time, fit the feature plan on train, write the feature table.

load validated events → assign train/valid/test by event time → fit the plan on the
training window (encoders see only training labels) → compute the validation and test
windows' features with the training events as history → save
``data/features/features.parquet`` (canonical columns + split + features), the fitted plan
``plan.json`` and the window bounds ``split.json``. The configured engine computes the
table (:mod:`aml_pipeline.engines`); both write the same values.
"""

from __future__ import annotations

import json
import time

from omegaconf import DictConfig

from aml_pipeline.engines import engine_of
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.layout import Layout
from aml_pipeline.progress import table


def run(cfg: DictConfig) -> dict:
    layout = Layout.of(cfg)
    start = time.perf_counter()
    plan = FeaturePlan.from_features_config(cfg.features)
    bounds, n_events = engine_of(cfg).features(cfg, plan, layout)
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
