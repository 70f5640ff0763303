"""``task=data``: read the configured source, validate every row, write the data layers.

load (adapter) → validate (rules) → save: ``data/validated/transactions.parquet`` (valid
rows, canonical schema, checked by pandera), ``data/quarantine/quarantine.parquet`` (failing
rows with reasons and original text) and ``data/validated/summary.json`` (counts that
reconcile: rows read = valid + quarantined).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.build import build
from aml_pipeline.optional import require_extra
from aml_pipeline.progress import status
from aml_pipeline.schema import ValidatedTransactions
from aml_pipeline.labels import apply_labels, read_labels
from aml_pipeline.sources.base import Source
from aml_pipeline.timeutil import config_time, utcnow
from aml_pipeline.validation import ValidationResult, validate
from aml_pipeline.validation.rules import rules_from_config
from aml_pipeline.validation.summary import print_summary, summary_record


@dataclass
class Ingested:
    source: Source
    result: ValidationResult
    seconds: float
    #: What ``source.labels`` changed (None without a labels file).
    labels: dict | None = None


def labels_from_file(cfg: DictConfig, valid: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    """``source.labels``: each event's latest label known by ``source.labels_as_of`` (default
    now) replaces the source's own or adds one (:func:`aml_pipeline.labels.apply_labels`)."""
    as_of = cfg.source.get("labels_as_of")
    when = config_time(as_of, "source.labels_as_of") if as_of else utcnow()
    frame, stats = apply_labels(valid, read_labels(cfg.source.labels, "source.labels"), when)
    return frame, {"file": str(cfg.source.labels), **stats}


def ingest(cfg: DictConfig) -> Ingested:
    """Read and validate the configured source in memory (no files written)."""
    start = time.perf_counter()
    source: Source = build(cfg.source, "source")
    with status(f"reading {source.describe()}"):
        staged = source.read()
    rules = rules_from_config(cfg.validation, bool(cfg.validation.require_label) and source.has_labels)
    with status(f"validating {staged.height:,} rows"):
        result = validate(staged, rules)
        if result.valid.height:
            ValidatedTransactions.validate(result.valid)
    labels = None
    if cfg.source.get("labels"):
        with status(f"labels from {cfg.source.labels}"):
            result.valid, labels = labels_from_file(cfg, result.valid)
    return Ingested(source, result, time.perf_counter() - start, labels)


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


def run(cfg: DictConfig) -> dict:
    from aml_pipeline.spark.session import engine_name

    if engine_name(cfg) == "spark":
        # engine=spark: the same rules compiled to Spark write the same files (aml_pipeline/spark/tasks.py).
        require_extra("spark", why="engine=spark")
        from aml_pipeline.spark.tasks import run_data

        return run_data(cfg)
    ing = ingest(cfg)
    outputs = write_layers(ing.result, Path(cfg.paths.data_dir))
    s = summarise(ing, outputs)
    Path(outputs["summary"]).write_text(json.dumps(s, indent=2) + "\n")
    print_summary(s)
    return s
