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

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.config import Explain

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.export.bundle_export import exported_model
from aml_pipeline.optional import require_extra
from aml_pipeline.progress import status, table
from aml_pipeline.registry import resolve_bundle
from aml_pipeline.tasks.layout import Layout


def load_input(cfg: DictConfig) -> pl.DataFrame:
    if cfg.input:
        p = Path(cfg.input)
        if not p.is_file():
            raise UserError(f"input={p}: no such file (a parquet file in the canonical schema, e.g. data/validated/transactions.parquet)")
        return pl.read_parquet(p)
    from aml_pipeline.tasks.data import ingest

    return ingest(cfg).result.valid


def run(cfg: DictConfig) -> dict:
    from aml_pipeline.spark.session import engine_name

    chosen = cfg.deploy.get("model_runtime", "native")
    runtime = str(getattr(chosen, "value", chosen))  # an enum member in a typed config
    if engine_name(cfg) == "spark":
        if runtime != "native":
            raise ConfigError(f"deploy.model_runtime={runtime}: engine=spark scores with the native model only "
                              f"(use engine=polars for an export)")
        # engine=spark: features and scores computed in Spark by the same bundle (aml_pipeline/spark/scoring.py).
        require_extra("spark", why="engine=spark")
        from aml_pipeline.spark.scoring import run_score

        return run_score(cfg)
    start = time.perf_counter()
    with status(f"score: loading bundle {cfg.bundle}"):
        bundle = resolve_bundle(cfg.bundle, cfg)
        bundle.model = exported_model(bundle, runtime)
    events = load_input(cfg)
    with status(f"score: {events.height:,} events"):
        decisions = bundle.score(events, top_k=cfg.scoring.top_k, explain=Explain(cfg.scoring.explain).value)
    out = Path(cfg.output) if cfg.output else Layout.of(cfg).data_dir / "scores" / "scores.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    decisions.write_parquet(out)
    secs = time.perf_counter() - start
    alerts = int(decisions["alert"].sum())
    table("score", [
        ("bundle", f"{bundle.registry.get('name', bundle.name)} version {bundle.registry.get('version', 'unregistered')} "
                   f"(sha256 {bundle.bundle_hash[:12]})"),
        ("model runtime", runtime),
        ("events", f"{decisions.height:,}"),
        ("alerts", f"{alerts:,} ({alerts / max(decisions.height, 1):.3%})"),
        ("took", f"{secs:.1f}s"),
        ("output", str(out)),
    ])
    return {"events": decisions.height, "alerts": alerts, "output": str(out), "model_runtime": runtime}
