"""``engine=spark`` entry points of ``task=data`` and ``task=features``.

They read and write the same files as the polars tasks (one parquet file per layer, the
same columns, dtypes and row order, the same ``summary.json``/``plan.json``/``split.json``),
so train, evaluate and score run unchanged after them.

- data: the adapter reads the source (polars, as always) and stages it as parquet with
  its source order; Spark validates it with the compiled rules and writes the valid and
  quarantine layers and the summary.
- features: Spark reads ``data/validated``, splits by time, fits the plan on the training
  window and computes every row's features; the fitted plan is the polars engine's.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import polars as pl
from omegaconf import DictConfig
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aml_pipeline.build import build
from aml_pipeline.errors import ConfigError
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.progress import status
from aml_pipeline.schema import REQUIRED_COLUMNS
from aml_pipeline.sources.base import Source
from aml_pipeline.spark import io
from aml_pipeline.spark.features import TABLE_ORDER, SparkFeatures, micros
from aml_pipeline.spark.session import get_session
from aml_pipeline.spark.split import assign
from aml_pipeline.spark.validation import ORDER, SparkValidationResult, validate
from aml_pipeline.layout import Layout, need
from aml_pipeline.validation.rules import rules_from_config
from aml_pipeline.timeutil import from_us
from aml_pipeline.validation.summary import print_summary, summary_record

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- features
def build_features(events: DataFrame, plan: FeaturePlan, split_cfg: DictConfig,
                   workdir: str | None = None, account_partitions: int | None = None
                   ) -> tuple[DataFrame, dict, SparkFeatures]:
    """Spark twin of :func:`aml_pipeline.engines.polars.build_features` (fits ``plan``).

    Returns the feature table (events + split + features), the window bounds, and the
    plan on Spark (call its ``release()`` once the table is written). The steps run per
    account partition are computed here, into files under ``workdir``, and the table reads them.
    """
    events, bounds = assign(events, split_cfg)
    engine = SparkFeatures(plan, events.sparkSession, workdir=workdir,
                           account_partitions=account_partitions)
    return engine.fit_transform(events, F.col("split") == "train"), bounds, engine


def run_features(cfg: DictConfig, plan: FeaturePlan, layout: Layout) -> tuple[dict, int]:
    """Compute and write ``layout.features`` with Spark; returns (bounds, number of events)."""
    spark = get_session(cfg.engine, cfg.paths.data_dir)
    events = spark.read.parquet(str(need(layout.validated, "data")))
    partitions = cfg.engine.get("account_partitions")
    with status(f"features (spark {spark.sparkContext.master}): fitting and computing {len(plan.steps)} steps"):
        features, bounds, engine = build_features(events, plan, cfg.split,
                                                  io.staging_dir(layout.features, "features"),
                                                  int(partitions) if partitions else None)
        try:
            if engine.sorted_files is not None:  # already the sorted table, in pieces
                rows = io.publish_files(engine.sorted_files, layout.features, features)
                if rows != engine.account_stats["events"]:
                    raise RuntimeError(f"features: wrote {rows} events of {engine.account_stats['events']}")
            else:
                rows = io.publish(features, layout.features, sort_by=TABLE_ORDER, what="features")
        finally:
            engine.release()
    if engine.account_stats:
        stats = engine.account_stats
        log.info("account partitions: %s events, %s partitions, %s time buckets, %s rows shipped (%s history only)",
                 *(f"{stats[k]:,}" for k in ("events", "partitions", "buckets", "rows_shipped", "history_rows")))
    return bounds, rows


# ----------------------------------------------------------------------------- data
def check_validated(valid: DataFrame) -> None:
    """The ``ValidatedTransactions`` boundary checks, as one Spark aggregation.

    A failure is a bug in an adapter or in the rules (bad rows must be in quarantine), so
    it raises, as pandera does in the polars task.
    """
    checks = {
        "event_id unique": F.count("event_id") - F.count_distinct("event_id"),
        "amount > 0": F.sum((~(F.col("amount") > 0)).cast("int")),
        "label in (0, 1)": F.sum((~F.col("label").isin(0, 1)).cast("int")),
        **{f"{c} not null": F.sum(F.col(c).isNull().cast("int")) for c in REQUIRED_COLUMNS},
    }
    row = valid.agg(*[expr.alias(name) for name, expr in checks.items()]).first()
    failed = {name: int(row[name]) for name in checks if row[name]}
    if failed:
        raise AssertionError(f"validated rows break the ValidatedTransactions schema: {failed}")


def spark_summary(source: Source, r: SparkValidationResult, seconds: float, outputs: dict[str, str]) -> dict:
    """The summary.json of :func:`aml_pipeline.engines.polars.summarise`, computed in Spark."""
    valid = r.valid
    row = valid.agg(
        F.sum((F.col("label") == 1).cast("long")).alias("pos"),
        F.sum((F.col("label") == 0).cast("long")).alias("neg"),
        F.min(micros("event_time")).alias("lo"),
        F.max(micros("event_time")).alias("hi"),
    ).first()
    positives, negatives = int(row["pos"] or 0), int(row["neg"] or 0)

    def counts(column: str) -> dict[str, int]:
        rows = valid.where(F.col(column).isNotNull()).groupBy(column).count().collect()
        return {k: int(v) for k, v in sorted(((x[0], x[1]) for x in rows), key=lambda kv: (-kv[1], kv[0]))}

    accounts = valid.select(F.col("src_account").alias("a")).union(valid.select(F.col("dst_account").alias("a"))) \
        .agg(F.count_distinct("a")).first()[0] if r.rows_valid else 0

    return summary_record(
        source, r, positives=positives, negatives=negatives,
        typologies=counts("typology") if r.rows_valid else {},
        time_range=[from_us(row["lo"]).isoformat(), from_us(row["hi"]).isoformat()] if r.rows_valid else None,
        accounts=int(accounts), jurisdictions=counts("jurisdiction") if r.rows_valid else {},
        seconds=seconds, outputs=outputs,
    )

def stage(spark, staged: pl.DataFrame, data_dir: Path) -> tuple[DataFrame, str]:
    """Hand an adapter's staged frame to Spark, with its source order as ``_staged_row``."""
    path = str(data_dir / io.STAGING / f"staged-{uuid.uuid4().hex[:8]}.parquet")
    io.stage_polars(staged.with_row_index(ORDER).with_columns(pl.col(ORDER).cast(pl.Int64)), path)
    return spark.read.parquet(path), path


def run_data(cfg: DictConfig) -> dict:
    """``task=data`` with the validation split in Spark; writes the same three outputs."""

    start = time.perf_counter()
    data_dir = Path(cfg.paths.data_dir)
    if cfg.source.get("labels"):
        raise ConfigError("source.labels: engine=spark does not apply a labels file in task=data yet; run task=data "
                          "with engine=polars (the default), then the other stages on Spark")
    source: Source = build(cfg.source, "source")
    with status(f"reading {source.describe()}"):
        staged = source.read()
    rules = rules_from_config(cfg.validation, bool(cfg.validation.require_label) and source.has_labels)
    spark = get_session(cfg.engine, cfg.paths.data_dir)
    frame, staged_path = stage(spark, staged, data_dir)
    del staged
    validated = data_dir / "validated" / "transactions.parquet"
    quarantine = data_dir / "quarantine" / "quarantine.parquet"
    with status(f"validating (spark {spark.sparkContext.master})"):
        result = validate(frame, rules)
        try:
            if result.rows_valid:
                check_validated(result.valid)
            io.publish(result.valid, validated, sort_by=[ORDER], drop=[ORDER], what="validated")
            io.publish(result.quarantine, quarantine, sort_by=[ORDER], drop=[ORDER], what="quarantine")
            outputs = {"validated": str(validated), "quarantine": str(quarantine),
                       "summary": str(data_dir / "validated" / "summary.json")}
            s = spark_summary(source, result, time.perf_counter() - start, outputs)
        finally:
            result.release()
            io.remove(staged_path)
            io.remove_if_empty(str(data_dir / io.STAGING))
    Path(outputs["summary"]).write_text(json.dumps(s, indent=2) + "\n")
    print_summary(s)
    return s
