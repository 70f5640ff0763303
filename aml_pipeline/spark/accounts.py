"""Account partitions: the polars plan's own steps, run by Spark one partition of accounts at a time.

**Problem.** Compiled to Spark passes, a history feature cost a shuffle of every stacked
history row per key, and the graph's 2-hop paths (~10 per event) travelled through Spark
as rows: 25x the polars engine's time at 1M events on one machine (those compiled passes
were removed once this path served every step; docs/benchmarks.md).

**Solution**. Every history feature of an event
reads only (a) its sender's events, (b) its receiver's events and (c) for the 2-hop paths
``a -> x -> b`` that end at one of them, the payments ``a -> x`` into each intermediary
``x`` shortly before ``x`` paid ``b``. So the accounts are hashed into ``P`` partitions,
and partition ``p`` receives, in one Spark shuffle:

- every event whose sender or receiver ``p`` owns (one copy, even when it owns both);
- the *halo*: each payment ``a -> x`` that can be the first hop of a path ending at an
  account ``p`` owns, i.e. ``x`` paid such an account in the same or the next time bucket
  of the longest 2-hop window (a superset of the paths' first hops, found by one small
  aggregation and a join instead of the paths themselves), as history-only rows.

Each partition then runs :meth:`FeaturePlan.transform` (the polars engine's own code, so
the values are polars' by construction) with the events it owns as the events and the
rest as history. An event keeps its sender-side and row columns from its sender's
partition and its receiver-side columns from its receiver's
(:meth:`~aml_pipeline.features.base.FeatureStep.history_side`). Events are written, by
time bucket, to Arrow files in a shared work folder; a second Spark stage, one task per
bucket, joins each event's two halves, sorts the bucket by ``(event_time, event_id)`` and
writes one parquet file. In bucket order the files are the sorted feature table, so the
driver only concatenates them: nothing is collected but counts.

Steps that cannot run this way (target encodings, whose training rows get
time-respecting values from every earlier label; steps fitted on a computed column) run
after, through their Spark forms (``spark_transform``, written in the kind's module and
driven by :mod:`aml_pipeline.spark.features`).
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from aml_pipeline.features.base import FeatureStep
from aml_pipeline.features.plan import FeaturePlan

from aml_pipeline.spark.io import ROW_GROUP_ROWS
from aml_pipeline.timeutil import duration_us

T = "_t"  # event time in microseconds since the epoch (long)
IQ = "_is_query"  # True for events to return, False for history-only rows
PART, ROLE, SALT = "_part", "_role", "_salt"
#: What a row is in its partition: history only, or an event returned with its sender's
#: columns, its receiver's columns, or both (the partition owns both accounts).
HISTORY, SENDER, RECEIVER, BOTH = 0, 1, 2, 3
#: Events (with their halo) per account partition, and per time bucket, when
#: ``engine.account_partitions`` is not set. A Python worker holds one partition (or one
#: bucket) at once: the polars engine needs ~1.6 kB per event at its peak.
EVENTS_PER_PARTITION = 500_000
EVENTS_PER_BUCKET = 250_000
#: Time quantiles computed for the bucket edges (at most this many buckets).
QUANTILE_GRID = 1024
#: Columns a history-only row carries (every history step reads only these).
HISTORY_COLUMNS = ("event_id", "event_time", "src_account", "dst_account", "amount")
#: Figures of the last :meth:`AccountPartitions.run` in this process: its stats and the
#: seconds of its three Spark jobs (sizes and bucket edges, partitions, buckets); read by
#: bench/spark.py.
LAST_RUN: dict[str, float] = {}


def partitionable(step: FeatureStep) -> bool:
    """Whether a step's values on the training window are its plain ``transform`` (no
    time-respecting training values, as target encodings have), so that it can be fitted
    first and then applied per partition."""
    return type(step).fit_transform is FeatureStep.fit_transform


def split_plan(plan: FeaturePlan, inputs: list[str], fitted_in_spark) -> tuple[list, list]:
    """(steps run per account partition, steps run after them as compiled Spark), each in plan order.

    A partition step must be :func:`partitionable`; a step with fitted state must read only
    input columns (it is fitted in Spark before the partitions run); a stateless step may
    read the columns of earlier partition steps (they run in order in each partition).
    """
    local, rest = [], []
    present = set(inputs)
    for name, step in plan.steps:
        needs = set(step.required_columns())
        ok = partitionable(step) and (needs <= set(inputs) or (not fitted_in_spark(step) and needs <= present))
        (local if ok else rest).append((name, step))
        if ok:
            present |= set(step.output_columns())
    return local, rest


def _salts(spark: SparkSession, n: int) -> list[int]:
    """For each partition id p < n, a long whose Spark hash lands in partition p.

    ``repartition(n, col)`` sends a row to ``pmod(hash(col), n)`` (Murmur3, as ``F.hash``);
    shuffling by the salt of a partition id puts each id in its own Spark partition,
    where hashing the ids themselves would pile several into one and leave others empty.
    """
    found: dict[int, int] = {}
    start = 0
    while len(found) < n:
        rows = spark.range(start, start + 64 * n).select("id", F.pmod(F.hash("id"), F.lit(n)).alias("p")).collect()
        for r in rows:
            found.setdefault(int(r["p"]), int(r["id"]))
        start += 64 * n
    return [found[p] for p in range(n)]


def _lookup(values: list[int], index: Column) -> Column:
    return F.element_at(F.array(*[F.lit(v).cast("long") for v in values]), (index + 1).cast("int"))


def _floor_div(column: str, width: int) -> Column:
    return F.expr(f"({column} - pmod({column}, {width})) div {width}")


class AccountPartitions:
    """Run ``steps`` (fitted, :func:`split_plan`'s first list) over account partitions.

    ``workdir``: a folder every executor can write and read (under ``paths.data_dir`` on a
    cluster). ``partitions``: the number of account partitions (None: one per
    :data:`EVENTS_PER_PARTITION` events, at least the default parallelism).
    """

    def __init__(self, steps: list[tuple[str, FeatureStep]], spark: SparkSession, workdir: str,
                 partitions: int | None = None):
        self.plan = FeaturePlan(steps)
        self.spark = spark
        # Executors run in their own working folders: a relative path would land there.
        self.workdir = workdir if "://" in workdir else str(Path(workdir).resolve())
        self.partitions = partitions
        #: Figures of the last run (rows per kind, partitions, buckets), for logs and benchmarks.
        self.stats: dict[str, int] = {}

    def _two_hop(self) -> tuple[int, list[str]] | None:
        """(the longest 2-hop window in microseconds, intermediaries no step follows)."""
        asks = [h for _, s in self.plan.steps if (h := s.two_hop()) is not None]
        if not asks:
            return None
        width = max(duration_us(w) for w, _ in asks)
        excluded = set(asks[0][1]).intersection(*[set(hubs) for _, hubs in asks[1:]])
        return width, sorted(excluded)

    def _sizes(self, frame: DataFrame) -> tuple[int, int, list[int]]:
        """(events returned, account partitions, bucket edges in microseconds): one job."""
        grid = [i / QUANTILE_GRID for i in range(1, QUANTILE_GRID)]
        row = frame.agg(F.count(F.lit(1)).alias("rows"), F.count(F.when(F.col(IQ), 1)).alias("queries"),
                        F.percentile_approx(T, grid, 10_000).alias("q")).first()
        rows, queries = int(row["rows"]), int(row["queries"])
        parallelism = self.spark.sparkContext.defaultParallelism
        parts = self.partitions or max(parallelism, math.ceil(rows / EVENTS_PER_PARTITION))
        buckets = min(QUANTILE_GRID, max(parallelism, math.ceil(queries / EVENTS_PER_BUCKET)))
        quantiles = row["q"] or []
        step = len(grid) / buckets
        edges = sorted({int(quantiles[min(len(quantiles) - 1, int(round(i * step)) - 1)]) for i in range(1, buckets)}) \
            if quantiles else []
        return queries, parts, edges

    def rows(self, frame: DataFrame, parts: int, inputs: list[str]) -> DataFrame:
        """Every row a partition needs, with its partition (``_part``) and ``_role``."""
        needed = [*HISTORY_COLUMNS, *[c for c in self.plan.required_columns() if c not in HISTORY_COLUMNS]]
        keyed = frame.withColumns({"_ps": F.pmod(F.xxhash64("src_account"), F.lit(parts)),
                                   "_pd": F.pmod(F.xxhash64("dst_account"), F.lit(parts))})
        ps, pd, query = F.col("_ps"), F.col("_pd"), F.col(IQ)
        own = keyed.select(*inputs, ps.alias(PART),
                           F.when(~query, HISTORY).when(ps == pd, BOTH).otherwise(SENDER).alias(ROLE))
        other = keyed.where(ps != pd).select(*needed, pd.alias(PART), F.when(query, RECEIVER).otherwise(HISTORY).alias(ROLE))
        out = own.unionByName(other, allowMissingColumns=True)
        two_hop = self._two_hop()
        if two_hop is not None:
            width, excluded = two_hop
            bucket = _floor_div(T, width).alias("_k")
            # Where each intermediary x pays, per bucket of the window: a first hop into x
            # at s1 can only continue in s1's bucket or the next one.
            paid = keyed.select(F.col("src_account").alias("_x"), bucket, F.col("_pd").alias("_p"))
            if excluded:
                paid = paid.where(~F.col("_x").isin(excluded))
            paid = paid.unionByName(paid.select("_x", (F.col("_k") - 1).alias("_k"), "_p")).distinct()
            first = keyed.select(*HISTORY_COLUMNS, "_ps", "_pd", F.col("dst_account").alias("_x"), bucket)
            halo = first.join(paid, ["_x", "_k"]).where((F.col("_p") != ps) & (F.col("_p") != pd)) \
                .select(*HISTORY_COLUMNS, F.col("_p").alias(PART), F.lit(HISTORY).alias(ROLE))
            out = out.unionByName(halo, allowMissingColumns=True)
        return out

    def run(self, frame: DataFrame, inputs: list[str], sort_by: list[str] | None) -> list[str]:
        """The parquet files of the returned events (``frame``'s ``_is_query`` rows) with
        ``inputs`` and the steps' columns, in bucket order; each file sorted by ``sort_by``."""
        start = time.perf_counter()
        queries, parts, edges = self._sizes(frame)
        salts = _salts(self.spark, parts)
        rows = self.rows(frame, parts, inputs).withColumn(SALT, _lookup(salts, F.col(PART)))
        rows = rows.repartition(parts, SALT).drop(SALT)
        folder = str(Path(self.workdir) / "accounts")
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder, exist_ok=True)
        outputs = list(self.plan.output_schema())
        receiver_columns = [c for _, s in self.plan.steps for c in s.output_columns() if s.history_side(c) == "dst"]
        stage_a = functools.partial(_partition_task, self.plan.to_dict(), folder, edges, [*inputs, *outputs],
                                    receiver_columns)
        sized = time.perf_counter()
        written = rows.mapInArrow(stage_a, "part long, bucket long, kind string, rows long").collect()
        partitioned = time.perf_counter()
        n_buckets = len(edges) + 1
        stage_b = functools.partial(_bucket_task, folder, [*inputs, *outputs], receiver_columns, sort_by)
        merged = self.spark.range(0, n_buckets, 1, n_buckets).mapInArrow(stage_b, "bucket long, rows long").collect()
        total = sum(int(r["rows"]) for r in merged)
        if total != queries:
            raise RuntimeError(f"account partitions returned {total} events of {queries}")
        shipped = {kind: sum(int(r["rows"]) for r in written if r["kind"] == kind) for kind in ("received", "history")}
        self.stats = {"events": queries, "partitions": parts, "buckets": n_buckets,
                      "rows_shipped": shipped["received"], "history_rows": shipped["history"]}
        LAST_RUN.clear()
        LAST_RUN.update(self.stats, sizes_seconds=sized - start, partitions_seconds=partitioned - sized,
                        buckets_seconds=time.perf_counter() - partitioned)
        files = [_bucket_file(folder, int(r["bucket"])) for r in sorted(merged, key=lambda r: r["bucket"]) if r["rows"]]
        unseen = [f for f in files if not os.path.exists(f)]
        if unseen:
            raise RuntimeError(f"the executors wrote {unseen[0]} but the driver cannot read it: the work folder "
                               f"({self.workdir}) must be a path the driver and every executor share (under paths.data_dir)")
        return files


def _bucket_dir(folder: str, bucket: int) -> str:
    return f"{folder}/b{bucket:05d}"


def _bucket_file(folder: str, bucket: int) -> str:
    return f"{folder}/features-{bucket:05d}.parquet"


def _partition_task(plan_dict: dict, folder: str, edges: list[int], columns: list[str], receiver_columns: list[str],
                    batches):
    """Stage one (a Python worker): run the plan on each account partition of this Spark
    partition and write its events, by time bucket, as Arrow files.

    Yields (part, bucket, kind, rows): per partition the rows it ``received`` and how many
    of them were ``history`` only, and per file written its ``sender`` or ``receiver`` rows.
    """
    batches = list(batches)
    if not batches:
        return
    plan = FeaturePlan.from_dict(plan_dict)
    frame = pl.from_arrow(pa.Table.from_batches(batches))
    cuts = np.asarray(edges, dtype=np.int64)
    for (part,), rows in frame.partition_by(PART, as_dict=True).items():
        rows = rows.drop(PART)
        events = rows.filter(pl.col(ROLE) != HISTORY)
        history = rows.filter(pl.col(ROLE) == HISTORY)
        yield _counts(part, -1, "received", rows.height)
        yield _counts(part, -1, "history", history.height)
        if not events.height:
            continue
        out = plan.transform(events, history)
        out = out.with_columns(pl.Series("_b", np.searchsorted(cuts, out["event_time"].dt.epoch("us").to_numpy(), "right")))
        halves = {
            "sender": out.filter(pl.col(ROLE) != RECEIVER).select(*columns, ROLE, "_b"),
            "receiver": out.filter(pl.col(ROLE) == RECEIVER).select("event_id", *receiver_columns, "_b"),
        }
        for kind, half in halves.items():
            for (b,), piece in half.partition_by("_b", as_dict=True).items():
                os.makedirs(_bucket_dir(folder, b), exist_ok=True)
                piece.drop("_b").write_ipc(f"{_bucket_dir(folder, b)}/{kind}-{part:05d}.arrow", compression="uncompressed")
                yield _counts(part, b, kind, piece.height)


def _counts(part: int, bucket: int, kind: str, rows: int) -> pa.RecordBatch:
    return _row(part=part, bucket=bucket, kind=kind, rows=rows)


def _row(**values: int | str) -> pa.RecordBatch:
    """One row of a task's report (ints as longs)."""
    return pa.RecordBatch.from_pydict({k: pa.array([v], pa.string() if isinstance(v, str) else pa.int64())
                                       for k, v in values.items()})


def _bucket_task(folder: str, columns: list[str], receiver_columns: list[str], sort_by: list[str] | None, batches):
    """Stage two (a Python worker): for each time bucket, join every event's sender and
    receiver halves, sort, and write the bucket's parquet file."""
    for batch in batches:
        for bucket in batch.column(0).to_pylist():
            where = Path(_bucket_dir(folder, bucket))
            senders = [pl.read_ipc(f) for f in sorted(where.glob("sender-*.arrow"))]
            receivers = [pl.read_ipc(f) for f in sorted(where.glob("receiver-*.arrow"))]
            if not senders:
                yield _row(bucket=bucket, rows=0)
                continue
            full = pl.concat(senders)
            out = full.filter(pl.col(ROLE) == BOTH).select(columns)
            half = full.filter(pl.col(ROLE) == SENDER).drop(receiver_columns)
            if half.height or receivers:
                other = pl.concat(receivers) if receivers else pl.DataFrame(schema={"event_id": pl.String})
                joined = half.join(other, on="event_id", how="inner")
                if not joined.height == half.height == other.height:
                    raise RuntimeError(f"time bucket {bucket}: {half.height} events with their sender's columns, "
                                       f"{other.height} with their receiver's, {joined.height} matched by event_id; "
                                       f"event_id must be unique")
                out = pl.concat([out, joined.select(columns)])
            if sort_by:
                out = out.sort(sort_by)
            out.write_parquet(_bucket_file(folder, bucket), compression="lz4", row_group_size=ROW_GROUP_ROWS)
            shutil.rmtree(where, ignore_errors=True)
            yield _row(bucket=bucket, rows=out.height)
