"""Read the configured source and validate it in memory: what every engine starts from.

``task=data`` (either engine), ``task=score`` without ``input=`` and the Spark scorer all
read a source the same way: the adapter loads it, the rules split valid from quarantined
rows, pandera checks the valid rows, and ``source.labels`` (a labels file) is applied as of
``source.labels_as_of``. Nothing is written here; the engines write the layers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl
from omegaconf import DictConfig

from aml_pipeline.build import build
from aml_pipeline.errors import UserError
from aml_pipeline.labels import apply_labels, read_labels
from aml_pipeline.progress import status
from aml_pipeline.schema import ValidatedTransactions
from aml_pipeline.sources.base import Source
from aml_pipeline.timeutil import config_time, utcnow
from aml_pipeline.validation import ValidationResult, validate
from aml_pipeline.validation.rules import rules_from_config


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


def input_file(cfg: DictConfig) -> Path | None:
    """``input=``: a parquet file in the canonical schema, checked to exist (None: read the source)."""
    if not cfg.input:
        return None
    p = Path(cfg.input)
    if not p.exists():
        raise UserError(f"input={p}: no such file (a parquet file in the canonical schema, e.g. data/validated/transactions.parquet)")
    return p


def load_input(cfg: DictConfig) -> pl.DataFrame:
    """The events to score: ``input=`` read as is, else the configured source validated."""
    p = input_file(cfg)
    return pl.read_parquet(p) if p is not None else ingest(cfg).result.valid
