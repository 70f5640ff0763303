"""``task=train``: fit the classifier, choose thresholds on validation, write the bundle.

load features → weights from the weighting strategy → fit (early stopping on the
validation window) → thresholds per jurisdiction on validation scores → save the bundle
(model, fitted plan, thresholds, input schema, validation metrics, lineage) to
``models/bundle``.
"""

from __future__ import annotations

import json
import time

from omegaconf import DictConfig

from aml_pipeline.build import build
from aml_pipeline.engines import trainer_of
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.layout import Layout, need
from aml_pipeline.progress import table


def run(cfg: DictConfig) -> dict:
    layout = Layout.of(cfg)
    start = time.perf_counter()
    plan = FeaturePlan.from_dict(json.loads(need(layout.plan, "features").read_text()))
    model = build(cfg.model, "model")
    # the configured engine trains, unless the classifier names its own (MLlib trains in Spark)
    bundle = trainer_of(cfg, model).train(cfg, model, plan, layout)
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
