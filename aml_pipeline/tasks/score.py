"""``task=score``: score a file of transactions with a bundle.

The bundle comes from a folder, an MLflow run or a registered version
(``bundle=models:/aml-scorer@challenger``, or ``@champion`` once ``task=promote`` has
passed one through its gate). The input is a parquet file in the canonical
schema (``input=data/validated/transactions.parquet``) or, when no input is given, the
configured source read and validated as in ``task=data``. Each event gets its score, the
threshold and jurisdiction it was judged by, the alert flag, the top contributing
features with their values, and the model name/version, run id and config hash. Events
are scored with the whole input as history, so rolling features see each event's past.

``deploy.model_runtime=onnx|lleaves|treelite`` scores with the bundle's export (made by
``task=export``, loaded only when its hash matches the manifest; its parity with LightGBM
was checked when it was made), as the service and the stream do; explanations stay
LightGBM's. The Spark engine scores with the native model only.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from aml_pipeline.config import option_value
from aml_pipeline.engines import engine_of
from aml_pipeline.layout import Layout
from aml_pipeline.progress import status, table
from aml_pipeline.registry import resolve_bundle


def run(cfg: DictConfig) -> dict:
    chosen = cfg.deploy.get("model_runtime", "native")
    runtime = str(option_value(chosen))
    engine = engine_of(cfg)
    engine.check_runtime(runtime)  # before a bundle is loaded for nothing
    start = time.perf_counter()
    with status(f"score: loading bundle {cfg.bundle}"):
        bundle = resolve_bundle(cfg.bundle, cfg)
    out = Path(cfg.output) if cfg.output else Layout.of(cfg).data_dir / "scores" / "scores.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    events, alerts = engine.score(cfg, bundle, runtime, out)
    secs = time.perf_counter() - start
    table(f"score ({engine.name})", [
        ("bundle", f"{bundle.registry.get('name', bundle.name)} version {bundle.registry.get('version', 'unregistered')} "
                   f"(sha256 {bundle.bundle_hash[:12]})"),
        ("model runtime", runtime),
        ("events", f"{events:,}"),
        ("alerts", f"{alerts:,} ({alerts / max(events, 1):.3%})"),
        ("took", f"{secs:.1f}s"),
        ("output", str(out)),
    ])
    return {"events": events, "alerts": alerts, "output": str(out), "model_runtime": runtime}
