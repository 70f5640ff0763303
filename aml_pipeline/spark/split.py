"""The temporal train / validation / test split on Spark, cut exactly where polars cuts.

The cut instants come from :func:`aml_pipeline.split.cut_times` itself: Spark supplies the
only order statistics it needs (the first and last event time for ``fraction``, the
event time at a rank for ``events``), so the arithmetic, the checks and the messages are
the polars engine's.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl
from omegaconf import DictConfig
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from aml_pipeline.errors import ConfigError, UserError
from aml_pipeline.split import SPLITS, cut_times
from aml_pipeline.spark.features import kth_smallest, micros
from aml_pipeline.timeutil import from_us, to_us


def spark_cut_times(events: DataFrame, cfg: DictConfig) -> tuple[datetime, datetime, datetime, datetime]:
    """(valid_start, test_start, first event time, last event time)."""
    t = micros("event_time").alias("_t")
    row = events.agg(F.min(t).alias("lo"), F.max(t).alias("hi"), F.count(F.lit(1)).alias("n")).first()
    lo, hi, n = from_us(row["lo"]), from_us(row["hi"]), int(row["n"])
    if cfg.method == "events":
        if not (0 < cfg.train and 0 < cfg.valid and cfg.train + cfg.valid < 1):
            raise ConfigError(f"split.train={cfg.train}, split.valid={cfg.valid}: both must be > 0 and sum to < 1 (the rest tests)")
        ranks = {share: min(int(share * n), n - 1) for share in (cfg.train, cfg.train + cfg.valid)}
        found = kth_smallest(events.select(t), "_t", sorted(set(ranks.values())))
        return from_us(found[ranks[cfg.train]]), from_us(found[ranks[cfg.train + cfg.valid]]), lo, hi
    valid_start, test_start = cut_times(pl.Series("event_time", [lo, hi], dtype=pl.Datetime("us", "UTC")), cfg)
    return valid_start, test_start, lo, hi


def assign(events: DataFrame, cfg: DictConfig) -> tuple[DataFrame, dict]:
    """Add a ``split`` column (train/valid/test) by event time; return the window bounds."""
    valid_start, test_start, lo, hi = spark_cut_times(events, cfg)
    t = micros("event_time")
    out = events.withColumn(
        "split",
        F.when(t < F.lit(to_us(valid_start)), F.lit("train"))
        .when(t < F.lit(to_us(test_start)), F.lit("valid"))
        .otherwise(F.lit("test")),
    )
    counts = {r["split"]: int(r["count"]) for r in out.groupBy("split").count().collect()}
    for name in SPLITS:
        if not counts.get(name):
            raise UserError(f"the {name} window is empty (validation starts {valid_start}, test starts {test_start}); "
                            f"adjust split.* to the data's time range {lo} .. {hi}")
    bounds = {"valid_start": valid_start.isoformat(), "test_start": test_start.isoformat(),
              "rows": {name: int(counts[name]) for name in SPLITS}}
    return out, bounds
