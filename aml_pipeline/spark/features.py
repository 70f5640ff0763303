"""The feature plan compiled to Spark: one compilation per step kind, driven by the FeaturePlan.

The :class:`~aml_pipeline.features.plan.FeaturePlan` (built from ``conf/features/*.yaml``
or loaded from a bundle's ``plan.json``) stays the one definition of the steps, their
parameters and their fitted state. This module maps each step *kind* to a Spark
compilation (:data:`SPARK_STEPS`): a ``transform`` that adds the step's columns to a Spark
DataFrame from the step's parameters and fitted state, for history steps the ``passes``
(window aggregates by key) it needs, and, for steps with state, a ``fit`` that learns the
*same* state (same JSON) from the training rows, in Spark. The passes of all steps are run
together, one shuffle and sort per key (:class:`SparkFeatures`): every pass shuffles and
sorts all its stacked rows, whatever the number of windows it evaluates. A plan
with a step kind that has no Spark compilation is refused before any work, naming the step.

By default (``engine.passes=accounts``) the steps that can are not compiled but run as the
polars engine's own code per partition of accounts (:mod:`.accounts`), after their fits
here; the compilations then serve the remaining steps (target encodings) and the other
evaluators (``arrow``, ``window``).

Every history feature follows the same-instant rule exactly as the polars engine does
(windows ``[t - w, t)`` over microsecond event times, see :mod:`.windows`), and values are
bit-identical to polars': sums are exact fixed-point sums, divisions and products happen in
the same order on the same doubles, ``log1p`` is computed by the same C library function
(through an Arrow UDF: the JVM's fdlibm differs from it in the last bit for ~0.02% of
amounts). ``tests/test_spark_parity.py`` proves it column by column.

Offline (``task=features``) the training rows and the later rows are transformed in one
pass over all events, which gives the polars engine's values because a row only ever sees
strictly earlier events and the windows are cut by time: the training rows' history is the
training window, the later rows' history is everything before them. Only the target
encoding differs between the two (time-respecting on training rows, frozen after), and its
compilation takes the training flag into account.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType

from aml_pipeline.errors import ConfigError
from aml_pipeline.features.balance import BALANCES
from aml_pipeline.features.base import FeatureStep
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.features.windows import FLOWS, SIDES
from aml_pipeline.spark.accounts import IQ, AccountPartitions, partitionable, split_plan
from aml_pipeline.spark.io import STAGING, remove_if_empty
from aml_pipeline.spark.windows import (EVALUATORS, T, PassRequest, View, ieee_divide, interval_changes, kth_smallest,
                                        micros, run_passes)
from aml_pipeline.timeutil import duration_us

#: The feature table's row order (``task=features`` writes it sorted so).
TABLE_ORDER = ["event_time", "event_id"]
#: The event's own amount while the features see it converted (``features.fx``).
GIVEN = "_amount_given"
#: Values of ``engine.passes``: ``accounts`` (default) and the compiled pass evaluators.
PASS_EVALUATORS = ("accounts", *EVALUATORS)
DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000

SPARK_TYPES: dict[type, str] = {
    pl.Int8: "tinyint",
    pl.Int16: "smallint",
    pl.Int32: "int",
    pl.Int64: "bigint",
    pl.Float64: "double",
    pl.Float32: "float",
    pl.String: "string",
    pl.Boolean: "boolean",
}


def spark_type(dtype: pl.DataType) -> str:
    for cls, name in SPARK_TYPES.items():
        if dtype == cls:
            return name
    raise TypeError(f"no Spark type for polars dtype {dtype}")


# ----------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a compilation may use besides the frame it transforms.

    ``events``: every event of the run (history-only rows included): accounts, amount and
    ``_t``; the source of every history view. ``input``: the same rows with all their input
    columns, before any step. ``train``: a boolean column marking the
    training window (fit_transform semantics), or None when only applying fitted state.
    ``persisted``: cached DataFrames to release once the result is written. ``step``: the
    name of the step being compiled (its temporary columns are named after it).
    """

    spark: SparkSession
    events: DataFrame
    input: DataFrame
    train: Column | None = None
    persisted: list[DataFrame] = field(default_factory=list)
    step: str = ""

    def persist(self, frame: DataFrame) -> DataFrame:
        frame = frame.persist()
        self.persisted.append(frame)
        return frame

    def release(self) -> None:
        for frame in self.persisted:
            frame.unpersist()
        self.persisted.clear()

    def tmp(self, name: str) -> str:
        """A temporary column of the current step (dropped once the step's columns exist)."""
        return f"_{self.step}__{name}"


@dataclass
class Compiled:
    """The Spark compilation of one step kind.

    ``passes`` (history steps) declares the step's window aggregates as
    :class:`~.windows.PassRequest`s; the plan runs the requests of all steps that read only
    columns already present together, one pass per key (:func:`~.windows.run_passes`),
    then calls ``transform`` on the frame that holds their outputs.
    """

    transform: Callable[[FeatureStep, DataFrame, Context], DataFrame]
    #: Learns the step's fitted state from the training rows (None: stateless).
    fit: Callable[[FeatureStep, DataFrame, Context], dict[str, Any]] | None = None
    #: The step's window aggregates (None: the step needs no history).
    passes: Callable[[FeatureStep, Context], list[PassRequest]] | None = None


SPARK_STEPS: dict[str, Compiled] = {}


def compiles(kind: str, fit: Callable | None = None, passes: Callable | None = None):
    """Decorator: register the Spark ``transform`` of step ``kind`` (its ``fit``, its ``passes``)."""

    def deco(fn):
        SPARK_STEPS[kind] = Compiled(fn, fit, passes)
        return fn

    return deco


def _width(step_name: str, window: str) -> int:
    """A window in microseconds; calendar lengths (months, years) have no fixed width."""
    if any(unit in window for unit in ("mo", "y", "q")):
        raise ConfigError(f"features.steps.{step_name}: window {window!r} is a calendar length; "
                          f"the Spark engine supports fixed durations (us, ms, s, m, h, d, w)")
    return duration_us(window)


def _account(side: str) -> str:
    return "src_account" if side == "src" else "dst_account"


def _view(events: DataFrame, flow: str, key: str = "_k0", extra: dict[str, Column] | None = None) -> DataFrame:
    """Events seen from one account: ``out`` keyed by sender, ``in`` keyed by receiver."""
    account = "src_account" if flow == "out" else "dst_account"
    return events.select(F.col(account).alias(key), F.col(T), *[c.alias(n) for n, c in (extra or {}).items()])


def _finish(step: FeatureStep, frame: DataFrame, out: DataFrame) -> DataFrame:
    """The frame's columns, then the step's columns with their declared types, in order."""
    outputs = step.output_columns()
    return out.select(*[F.col(f"`{c}`") for c in frame.columns if c not in outputs],
                      *[F.col(c).cast(spark_type(d)).alias(c) for c, d in outputs.items()])


#: Value columns of the history passes, one meaning each across steps (so merged passes
#: share them): per key account, the amount it sent (``_v_out``) and received (``_v_in``),
#: with their fixed-point limbs (``_f_out``, ``_f_in``), and the time of any of its
#: activity (``_h``).
FIXED = {"_v_out": "_f_out", "_v_in": "_f_in"}


def _amounts(side: str, flows) -> tuple[dict[str, Column], list[View], dict[str, str], dict[str, str]]:
    """(own, others, types, fixed) for the amounts of ``flows`` keyed by the ``side`` account:
    the flow where the account is on this side rides on the frame's own rows, the other
    flow comes from the events keyed the other way."""
    own_flow = "out" if side == "src" else "in"
    own, others, types, fixed = {}, [], {}, {}
    for flow in flows:
        types[f"_v_{flow}"] = "double"
        fixed[f"_v_{flow}"] = FIXED[f"_v_{flow}"]
        if flow == own_flow:
            own[f"_v_{flow}"] = F.col("amount")
        else:
            others.append(View(flow, {f"_v_{flow}": F.col("amount")}))
    return own, others, types, fixed


# ----------------------------------------------------------------------------- time
@F.arrow_udf(DoubleType())
def _log1p(values: pa.Array) -> pa.Array:
    """log(1 + x) by the C library, as polars computes it (the JVM's fdlibm differs by an ulp)."""
    import pyarrow.compute as pc

    return pc.log1p(values)


def _time_passes(step, ctx: Context) -> list[PassRequest]:
    t = F.col(T)
    requests = []
    for side, other_flow in (("src", "in"), ("dst", "out")):
        # Any activity of the account: the rows where it is on this side, plus the
        # events where it is on the other side.
        requests.append(PassRequest(
            (_account(side),), own={"_h": t}, others=[View(other_flow, {"_h": t})], types={"_h": "bigint"},
            build=lambda p, side=side, name=ctx.tmp(f"prev_{side}"): {name: p.latest("_h")}))
    return requests


@compiles("time", passes=_time_passes)
def time_signals(step, frame: DataFrame, ctx: Context) -> DataFrame:
    t = F.col(T)
    days = F.expr(f"({T} - pmod({T}, {DAY_US})) div {DAY_US}")
    out = frame.withColumns({
        "hour": F.expr(f"pmod({T}, {DAY_US}) div {HOUR_US}"),
        "weekday": F.pmod(days + 3, 7) + 1,  # 1970-01-01 was a Thursday (4)
        **{f"{side}_secs_since_prev": (t - F.col(ctx.tmp(f"prev_{side}"))).cast("double") / F.lit(1e6)
           for side in ("src", "dst")},
    })
    return _finish(step, frame, out)


# ----------------------------------------------------------------------------- amount
def _amount_passes(step, ctx: Context) -> list[PassRequest]:
    width = _width("amount", step.trailing_window)

    def build(p, name=ctx.tmp("mean")):
        n = p.count("_v_out", width)
        s = p.fixed_sum("_f_out", width)
        return {name: F.when(n > 0, s / n.cast("double"))}

    own, others, types, fixed = _amounts("src", ["out"])
    return [PassRequest(("src_account",), own=own, others=others, types=types, fixed=fixed, build=build)]


@compiles("amount", passes=_amount_passes)
def amount_signals(step, frame: DataFrame, ctx: Context) -> DataFrame:
    a = F.col("amount")
    cents = F.bround(a * F.lit(100.0), 0).cast("long")  # polars rounds half to even
    lo = step.reporting_threshold * (1 - step.band)
    out = frame.withColumns({
        "log_amount": _log1p(a),
        "round_100": (F.pmod(cents, F.lit(10_000)) == 0),
        "round_1000": (F.pmod(cents, F.lit(100_000)) == 0),
        "whole_amount": (F.pmod(cents, F.lit(100)) == 0),
        "near_threshold": (a >= F.lit(lo)) & (a < F.lit(float(step.reporting_threshold))),
        "amount_vs_src_mean": ieee_divide(a, F.col(ctx.tmp("mean"))),
    })
    return _finish(step, frame, out)


# ----------------------------------------------------------------------------- balance
@compiles("balance")
def balance(step, frame: DataFrame, ctx: Context) -> DataFrame:
    a, sb, sa, db, da = (F.col(c) for c in ["amount", *BALANCES])
    out = frame.withColumns({
        "src_balance_error": sb - a - sa,
        "dst_balance_error": db + a - da,
        "src_emptied": (sa == 0) & (sb > 0),
        "dst_was_empty": db == 0,
        "amount_to_src_balance": F.when(sb > 0, a / sb),
    })
    return _finish(step, frame, out)


# ----------------------------------------------------------------------------- rolling
def _aggregates(p, value: str, fixed: str, width: int, aggs: list[str], prefix: str) -> dict[str, Column]:
    n = p.count(value, width)
    s = (p.fixed_sum(fixed, width))
    cols: dict[str, Column] = {}
    for agg in aggs:
        if agg == "count":
            cols[prefix.format(agg=agg)] = n
        elif agg == "sum":
            cols[prefix.format(agg=agg)] = s
        elif agg == "mean":
            cols[prefix.format(agg=agg)] = F.when(n > 0, s / n.cast("double"))
        else:
            cols[prefix.format(agg=agg)] = p.max(value, width)
    return cols


def _rolling_passes(step, ctx: Context) -> list[PassRequest]:
    widths = {w: _width("rolling", w) for w in step.windows}
    requests = []
    for side in step.sides:
        own, others, types, fixed = _amounts(side, step.flows)

        def build(p, side=side):
            cols: dict[str, Column] = {}
            for flow in step.flows:
                for w, width in widths.items():
                    cols.update(_aggregates(p, f"_v_{flow}", f"_f_{flow}", width, step.aggs, f"{side}_{flow}_{{agg}}_{w}"))
            return cols

        requests.append(PassRequest((_account(side),), own=own, others=others, types=types, fixed=fixed, build=build))
    return requests


@compiles("rolling", passes=_rolling_passes)
def rolling(step, frame: DataFrame, ctx: Context) -> DataFrame:
    return _finish(step, frame, frame)


# ----------------------------------------------------------------------------- graph
def _fit_graph(step, train: DataFrame, ctx: Context) -> dict[str, Any]:
    degree = train.groupBy("src_account").agg(F.countDistinct("dst_account").alias("n"))
    hubs = [r[0] for r in degree.filter(F.col("n") > step.max_intermediary_degree).select("src_account").collect()]
    return {"hubs_": sorted(hubs)}


def _distinct_changes(events: DataFrame, flow: str, width: int, delta: str) -> DataFrame:
    """Degree intervals: a contact (key, cp, s) is the latest with cp for t in (s, min(next, s + w)]."""
    cp = "dst_account" if flow == "out" else "src_account"
    contacts = _view(events, flow, extra={"_cp": F.col(cp)}).distinct()
    nxt = F.lead(T).over(Window.partitionBy("_k0", "_cp").orderBy(T))
    iv = contacts.select("_k0", F.col(T).alias("_s"), F.least(nxt, F.col(T) + F.lit(width)).alias("_e"))
    return interval_changes(iv, "_s", "_e", delta, ["_k0"])


def _two_hop_paths(step, events: DataFrame, width: int, ctx: Context) -> DataFrame:
    """Time-ordered 2-hop paths a -> x -> b (three distinct accounts, s1 < s2 < s1 + w), hubs excluded.

    The join is on x and a time bucket (s // w): a path's second hop falls in the first
    hop's bucket or the next, so each first hop is offered to those two buckets only.
    """
    edges = events.select(F.col("src_account").alias("a"), F.col("dst_account").alias("b"), F.col(T).alias("s"))
    first = edges.select("a", F.col("b").alias("x"), F.col("s").alias("s1"))
    second = edges.select(F.col("a").alias("x"), "b", F.col("s").alias("s2"))
    hubs = list(getattr(step, "hubs_", []) or [])
    if hubs:
        hub_frame = F.broadcast(ctx.spark.createDataFrame([(h,) for h in hubs], "x string"))
        first = first.join(hub_frame, on="x", how="left_anti")
        second = second.join(hub_frame, on="x", how="left_anti")
    bucket = F.expr(f"(s1 - pmod(s1, {width})) div {width}")
    first = first.withColumn("_b", F.explode(F.array(bucket, bucket + 1)))
    second = second.withColumn("_b", F.expr(f"(s2 - pmod(s2, {width})) div {width}"))
    paths = first.join(second, on=["x", "_b"], how="inner")
    distinct = (F.col("a") != F.col("b")) & (F.col("x") != F.col("a")) & (F.col("x") != F.col("b"))
    return paths.filter((F.col("s1") < F.col("s2")) & (F.col("s2") - F.col("s1") < F.lit(width)) & distinct) \
        .select("a", "x", "b", "s1", "s2")


def _graph_passes(step, ctx: Context) -> list[PassRequest]:
    w = step.window
    width = _width("graph", w)
    ev = ctx.events
    name = ctx.step  # bound now: the builds run when every step's passes are declared
    deg = {flow: ctx.persist(_distinct_changes(ev, flow, width, f"_d_deg_{flow}_{name}")) for flow in FLOWS}
    paths = _two_hop_paths(step, ev, width, ctx)
    # A path is visible at t when s2 < t <= s1 + window.
    visible = ctx.persist(paths.select("a", "b", F.col("s2").alias("_s"), (F.col("s1") + F.lit(width)).alias("_e")))
    hop = f"_d_hop_{name}"
    hops = interval_changes(visible.select(F.col("b").alias("_k0"), "_s", "_e"), "_s", "_e", hop, ["_k0"])

    requests = []
    for side in SIDES:
        tracks = {f"_d_deg_{flow}_{name}": "bigint" for flow in FLOWS} | {hop: "bigint"}
        own: dict[str, Column] = {}
        others: list = [deg["out"], deg["in"], hops]
        fixed: dict[str, str] = {}
        if side == "src":
            # Pass-through: money the sender sent (its own rows) and received (keyed by receiver).
            own, views, types, fixed = _amounts("src", ["out", "in"])
            tracks |= types
            others += views

        def build(p, side=side, sent=ctx.tmp("sent"), got=ctx.tmp("got")):
            cols = {f"{side}_{flow}_degree_{w}": p.running(f"_d_deg_{flow}_{name}") for flow in FLOWS}
            cols[f"{side}_2hop_in_{w}"] = p.running(hop)
            if side == "src":
                cols[sent] = p.fixed_sum("_f_out", width)
                cols[got] = p.fixed_sum("_f_in", width)
            return cols

        requests.append(PassRequest((_account(side),), own=own, others=others, types=tracks, fixed=fixed, build=build,
                                    stack="graph"))

    # Pair passes, keyed (sender, receiver): an earlier payment b -> a within the window
    # (2-cycle), and an earlier path b -> x -> a (this payment a -> b closes a 3-cycle).
    rec, cyc = f"_d_rec_{name}", f"_d_cyc_{name}"
    back = ev.select(F.col("dst_account").alias("_k0"), F.col("src_account").alias("_k1"),
                     F.col(T).alias("_s"), (F.col(T) + F.lit(width)).alias("_e"))
    closing = visible.select(F.col("b").alias("_k0"), F.col("a").alias("_k1"), "_s", "_e")
    requests.append(PassRequest(
        ("src_account", "dst_account"),
        others=[interval_changes(back, "_s", "_e", rec, ["_k0", "_k1"]),
                interval_changes(closing, "_s", "_e", cyc, ["_k0", "_k1"])],
        types={rec: "bigint", cyc: "bigint"},
        build=lambda p: {f"reciprocal_{w}": p.running(rec), f"cycle3_{w}": p.running(cyc)}, stack="graph",
    ))
    return requests


#: Spark fits of steps that have fitted state but no compiled transform: they run per
#: account partition only (``engine.passes=accounts``), fitted here first.
PARTITION_FITS: dict[str, Callable] = {"paths": _fit_graph}  # the same hubs as the graph step


@compiles("graph", fit=_fit_graph, passes=_graph_passes)
def graph(step, frame: DataFrame, ctx: Context) -> DataFrame:
    sent, got = F.col(ctx.tmp("sent")), F.col(ctx.tmp("got"))
    ratio = F.when(got > 0, (sent + F.col("amount")) / got)
    return _finish(step, frame, frame.withColumn(f"src_pass_through_{step.window}", ratio))


# ----------------------------------------------------------------------------- encodings
#: Up to this many entries a fitted map becomes a literal map expression; larger maps
#: (account ids) are broadcast and joined.
LITERAL_MAP_MAX = 512


def _lookup(frame: DataFrame, ctx: Context, column: str, mapping: dict, value_type: str, default: Any, name: str) -> DataFrame:
    """``name`` = mapping[column], or ``default`` for a value not in the map (and for null)."""
    col = F.col(f"`{column}`")
    if len(mapping) <= LITERAL_MAP_MAX:
        if not mapping:
            return frame.withColumn(name, F.lit(default).cast(value_type))
        literal = F.create_map(*[x for k, v in mapping.items() for x in (F.lit(k), F.lit(v).cast(value_type))])
        return frame.withColumn(name, F.coalesce(F.try_element_at(literal, col), F.lit(default).cast(value_type)))
    key_type = dict(frame.dtypes)[column]
    table = ctx.spark.createDataFrame(list(mapping.items()), f"_key {key_type}, _value {value_type}")
    joined = frame.join(F.broadcast(table), col == F.col("_key"), "left")
    return joined.withColumn(name, F.coalesce(F.col("_value"), F.lit(default).cast(value_type))).drop("_key", "_value")


def _fit_category_codes(step, train: DataFrame, ctx: Context) -> dict[str, Any]:
    row = train.agg(*[F.collect_set(F.col(f"`{c}`")).alias(c) for c in step.columns]).first()  # nulls are skipped
    return {"vocab_": {c: sorted(row[c]) for c in step.columns}}


@compiles("category_codes", fit=_fit_category_codes)
def category_codes(step, frame: DataFrame, ctx: Context) -> DataFrame:
    out = frame
    for c in step.columns:
        out = _lookup(out, ctx, c, {v: i for i, v in enumerate(step.vocab_[c])}, "int", -1, f"code_{c}")
    return _finish(step, frame, out)


def quantile_linear(values: DataFrame, column: str, n: int, qs: list[float]) -> list[float]:
    """polars' ``quantile(q, interpolation="linear")`` of a column with ``n`` non-null values.

    The two neighbouring order statistics come from Spark; the interpolation is polars'
    own arithmetic: ``idx = (n - 1) * q``, ``(idx - floor) * (upper - lower) + lower``.
    """
    positions = {}
    for q in qs:
        float_idx = (n - 1.0) * q
        lo = int(float_idx)
        positions[q] = (float_idx, lo, min(-int(-float_idx // 1), n - 1))
    ranks = sorted({r for _, lo, hi in positions.values() for r in (lo, hi)})
    found = kth_smallest(values, column, ranks)
    result = []
    for q in qs:
        float_idx, lo, hi = positions[q]
        lower, upper = float(found[lo]), float(found[hi])
        result.append(lower if lower == upper else (float_idx - float(lo)) * (upper - lower) + lower)
    return result


def _fit_bucketing(step, train: DataFrame, ctx: Context) -> dict[str, Any]:
    qs = [i / step.n_buckets for i in range(1, step.n_buckets)]
    edges = {}
    for c in step.columns:
        values = train.select(F.col(f"`{c}`").cast("double").alias("_x")).where(F.col("_x").isNotNull())
        n = values.count()
        edges[c] = sorted(set(quantile_linear(values, "_x", n, qs))) if n else []
    return {"edges_": edges}


@compiles("bucketing", fit=_fit_bucketing)
def bucketing(step, frame: DataFrame, ctx: Context) -> DataFrame:
    cols = {}
    for c in step.columns:
        col = F.col(f"`{c}`")
        bucket = F.lit(0)
        for e in step.edges_[c]:
            bucket = bucket + (col >= F.lit(float(e))).cast("int")
        cols[f"bucket_{c}"] = F.when(col.isNull(), F.lit(None)).otherwise(bucket)
    return _finish(step, frame, frame.withColumns(cols))


def _fit_target_encoding(step, train: DataFrame, ctx: Context) -> dict[str, Any]:
    if "label" not in train.columns:
        raise ValueError("target_encoding needs labelled training data (column 'label')")
    # The labels known when the training window closes (at its last event): polars' fit.
    last = train.agg(F.max(T).alias("_last")).first()["_last"]
    arrived = F.col(T) + F.lit(duration_us(step.label_delay))
    labelled = train.where(F.col("label").isNotNull() & (arrived <= F.lit(last)))
    row = labelled.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("label").cast("long")).alias("p")).first()
    n, p = int(row["n"]), int(row["p"] or 0)
    prior = p / n if n else 0.0
    m = float(step.smoothing)
    tables = {}
    for c in step.columns:
        stats = labelled.groupBy(F.col(f"`{c}`").alias("_id")).agg(
            F.count(F.lit(1)).alias("_n"), F.sum(F.col("label").cast("long")).alias("_p"))
        rate = (F.col("_p").cast("double") + F.lit(m * prior)) / (F.col("_n").cast("double") + F.lit(m))
        tables[c] = {r[0]: r[1] for r in stats.select("_id", rate.alias("_r")).collect()}
        tables[c] = dict(sorted(tables[c].items(), key=lambda kv: (kv[0] is None, kv[0])))
    return {"prior_": prior, "tables_": tables}


def _time_respecting(step, frame: DataFrame, ctx: Context, c: str) -> DataFrame:
    """Training rows' encodings from labels arrived strictly before their instant (polars' fit_transform).

    Each label counts at its arrival, ``_t + label_delay``; every row's instant is added with
    nothing. The prior at each instant is the rate of all training labels arrived before it:
    running totals over instants, computed per day and offset by the totals of the earlier
    days (so no single-partition window over the whole table).
    """
    m = float(step.smoothing)
    source = ctx.input if c in ctx.input.columns else frame
    train = source.where(ctx.train)
    known = F.col("label").isNotNull().cast("long")
    label = F.coalesce(F.col("label").cast("long"), F.lit(0).cast("long"))
    zero = F.lit(0).cast("long")
    ids = F.col(f"`{c}`").alias("_id")
    timeline = train.select(ids, (F.col(T) + F.lit(duration_us(step.label_delay))).alias(T), known.alias("_n"),
                            label.alias("_p")).unionByName(train.select(ids, F.col(T), zero.alias("_n"), zero.alias("_p")))
    day = F.expr(f"({T} - pmod({T}, {DAY_US})) div {DAY_US}")
    inst = timeline.groupBy(T).agg(F.sum("_n").alias("_n"), F.sum("_p").alias("_p")).withColumn("_day", day)
    in_day = Window.partitionBy("_day").orderBy(T).rowsBetween(Window.unboundedPreceding, -1)
    inst = inst.withColumns({"_n0": F.coalesce(F.sum("_n").over(in_day), F.lit(0)),
                             "_p0": F.coalesce(F.sum("_p").over(in_day), F.lit(0))})
    days = timeline.groupBy(day.alias("_day")).agg(F.sum("_n").alias("_dn"), F.sum("_p").alias("_dp"))
    earlier = Window.orderBy("_day").rowsBetween(Window.unboundedPreceding, -1)  # one row per day
    days = days.withColumns({"_dn0": F.coalesce(F.sum("_dn").over(earlier), F.lit(0)),
                             "_dp0": F.coalesce(F.sum("_dp").over(earlier), F.lit(0))}).select("_day", "_dn0", "_dp0")
    priors = inst.join(F.broadcast(days), "_day").select(
        T, (F.col("_n0") + F.col("_dn0")).alias("_pn"), (F.col("_p0") + F.col("_dp0")).alias("_pp"))
    priors = priors.select(T, F.when(F.col("_pn") > 0, F.col("_pp").cast("double") / F.col("_pn").cast("double"))
                           .otherwise(F.lit(0.0)).alias("_prior"))

    by_id = Window.partitionBy("_id").orderBy(T).rowsBetween(Window.unboundedPreceding, -1)
    per_instant = timeline.groupBy("_id", T).agg(F.sum("_n").alias("_n"), F.sum("_p").alias("_p"))
    per_instant = per_instant.select("_id", T, F.coalesce(F.sum("_n").over(by_id), F.lit(0)).alias("_nb"),
                                     F.coalesce(F.sum("_p").over(by_id), F.lit(0)).alias("_pb"))
    rows = train.select(ids, F.col(T)).distinct()
    values = rows.join(priors, T, "left").join(per_instant, ["_id", T], "left")
    n = F.coalesce(F.col("_nb"), F.lit(0)).cast("double")
    p = F.coalesce(F.col("_pb"), F.lit(0)).cast("double")
    prior = F.col("_prior")
    rate = F.when(n + F.lit(m) > 0, (p + F.lit(m) * prior) / (n + F.lit(m))).otherwise(prior)
    return values.select("_id", F.col(T).alias("_te_t"), rate.alias("_te_train"))


@compiles("target_encoding", fit=_fit_target_encoding)
def target_encoding(step, frame: DataFrame, ctx: Context) -> DataFrame:
    out = frame
    for c in step.columns:
        out = _lookup(out, ctx, c, step.tables_[c], "double", float(step.prior_), f"te_{c}")
        if ctx.train is not None:
            values = _time_respecting(step, frame, ctx, c)
            on = (F.col(f"`{c}`") == F.col("_id")) & (F.col(T) == F.col("_te_t"))
            out = out.join(values, on, "left").drop("_id", "_te_t")
            out = out.withColumn(f"te_{c}", F.when(ctx.train, F.col("_te_train")).otherwise(F.col(f"te_{c}"))) \
                .drop("_te_train")
    return _finish(step, frame, out)


# ----------------------------------------------------------------------------- the plan
def _spark_fit(step: FeatureStep) -> Callable | None:
    """The Spark fit of a step: its compilation's, or its partition-only fit, or None."""
    return SPARK_STEPS[step.kind].fit if step.kind in SPARK_STEPS else PARTITION_FITS.get(step.kind)


def check_compiled(plan: FeaturePlan, passes: str = "arrow") -> None:
    """Refuse a plan with a step kind that has no Spark compilation, naming the step.

    With ``passes="accounts"`` a step without one runs as its own polars code per account
    partition (:mod:`.accounts`), so only a step that cannot run there must be compiled."""
    for name, step in plan.steps:
        if step.kind not in SPARK_STEPS and passes == "accounts" and partitionable(step) and (
                type(step).fit is FeatureStep.fit or step.kind in PARTITION_FITS):
            continue
        if step.kind not in SPARK_STEPS:
            hint = ("" if passes == "accounts" or not partitionable(step) else
                    "; it runs per account partition: use engine.passes=accounts (the default)")
            raise ConfigError(
                f"features.steps.{name} ({step.kind}): the Spark engine has no compilation for step kind "
                f"{step.kind!r}; run it with engine=polars or add one to aml_pipeline/spark/features.py "
                f"(compiled: {', '.join(sorted(SPARK_STEPS))}){hint}"
            )
        for attr in ("window", "trailing_window"):
            if hasattr(step, attr):
                _width(name, getattr(step, attr))
        for w in getattr(step, "windows", []) or []:
            _width(name, w)


def check_columns(plan: FeaturePlan, frame: DataFrame, source: str = "the source") -> None:
    """Spark version of ``FeaturePlan.check``: refuse a step whose columns are absent or all null."""
    needed = plan.required_columns()
    present = [c for c in needed if c in frame.columns]
    counts = frame.agg(F.count(F.lit(1)).alias("_rows"), *[F.count(F.col(f"`{c}`")).alias(c) for c in present]).first() \
        if present else None
    rows = int(counts["_rows"]) if counts else 0
    for name, step in plan.steps:
        missing = [c for c in step.required_columns() if c not in frame.columns]
        if not missing and rows:
            missing = [c for c in step.required_columns() if int(counts[c]) == 0]
        if missing:
            raise ConfigError(
                f"features.steps.{name} ({step.kind}) needs column {missing[0]!r}, which {source} does not provide; "
                f"remove the step or choose a source that has it"
            )


def _free(frame: DataFrame) -> None:
    """Drop a frame's cached blocks: a cache, or the blocks of a local checkpoint (which
    ``unpersist`` does not reach; they would otherwise wait for the JVM's garbage collector)."""
    frame.unpersist()
    try:
        logical = frame._jdf.queryExecution().logical()
        if logical.getClass().getSimpleName() == "LogicalRDD":
            logical.rdd().unpersist(False)
    except Exception:  # noqa: BLE001 - best effort: another Spark build may differ
        pass


TRAIN = "_train"  # the training-window flag, as a column of the prepared rows
#: Input columns every history view reads.
BASE_COLUMNS = ("event_time", "src_account", "dst_account", "amount")


class SparkFeatures:
    """A FeaturePlan, compiled to Spark. The plan's steps hold the parameters and the state.

    ``fit_transform(events, train)`` fits every step on the rows where ``train`` holds (the
    training window; the state is loaded into the plan's steps, identical to what polars
    would fit) and returns every row's features; ``transform(events, history)`` applies a
    fitted plan, ``history`` rows taking part in aggregates without being returned.

    Evaluation: the steps are cut into *groups*, each step joining the current group when
    it reads only columns present before the group (the default plans are one group). A
    group's history aggregates run as one pass per key (:func:`~.windows.run_passes`: the
    sender, the receiver, the sender-receiver pair), each one shuffle and one sort of the
    rows with the history rows stacked in, the rows carrying their columns through (no
    join back); then each step's ``transform`` adds its columns from the pass outputs.
    Everything stays one lazy plan, computed by the final write: nothing is materialised
    or counted per step. Only between groups (a step reading an earlier step's columns)
    is the frame materialised, so the next group starts from a short plan.
    """

    def __init__(self, plan: FeaturePlan, spark: SparkSession | None = None, cut_lineage: bool = True,
                 passes: str = "accounts", workdir: str | None = None, account_partitions: int | None = None):
        if passes not in PASS_EVALUATORS:
            raise ConfigError(f"engine.passes={passes!r}: allowed: {', '.join(PASS_EVALUATORS)}")
        check_compiled(plan, passes)
        #: ``features.fx``: converted once, at this engine's entry (:meth:`_convert`); the
        #: steps (here, in the compiled passes and in the account partitions) then run the
        #: plan without it, sharing its steps, so fits still land in ``plan``.
        self.fx = plan.fx
        self.plan = plan.without_fx()
        #: How the history steps are evaluated (``engine.passes``): ``accounts`` runs the
        #: plan's own polars steps per account partition (:mod:`.accounts`), ``arrow`` and
        #: ``window`` evaluate compiled passes (:func:`~.windows.run_passes`).
        self.passes = passes
        self.spark = spark or SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        self.cut_lineage = cut_lineage
        #: A folder the executors share, for the account partitions' files (None: a
        #: temporary folder, local masters only).
        self.workdir = workdir
        self.account_partitions = account_partitions
        #: With ``accounts`` and no compiled step after them: the parquet files that are the
        #: result, in ``TABLE_ORDER`` (:func:`aml_pipeline.spark.io.publish_files` joins them).
        self.sorted_files: list[str] | None = None
        #: Figures of the account partitions (events, partitions, buckets, rows shipped).
        self.account_stats: dict[str, int] = {}
        self.ctx: Context | None = None
        self._held: list[DataFrame] = []
        self._own_workdir: str | None = None

    # -- materialisation ----------------------------------------------------------------
    def _local(self) -> bool:
        return self.spark.sparkContext.master.startswith("local")

    def _materialise(self, frame: DataFrame) -> DataFrame:
        """Compute ``frame`` once and cut its lineage.

        Local mode: a local checkpoint (cached blocks). On a cluster: cached, then a
        reliable checkpoint to ``engine.checkpoint_dir``, so a lost executor costs a re-read
        instead of a failed job (a local checkpoint when no directory is set).
        """
        if not self.cut_lineage:
            return self._hold(frame.persist())
        reliable = self.spark.sparkContext._jsc.sc().getCheckpointDir().isDefined()
        if self._local() or not reliable:
            return self._hold(frame.localCheckpoint(eager=True))
        self._hold(frame.persist())
        return self._hold(frame.checkpoint(eager=True))

    def _hold(self, frame: DataFrame) -> DataFrame:
        self._held.append(frame)
        return frame

    def release(self) -> None:
        """Release cached intermediate tables and the account partitions' files (after the
        result has been written)."""
        if self.ctx is not None:
            self.ctx.release()
        for frame in self._held:
            _free(frame)
        self._held.clear()
        for folder in (self._own_workdir, f"{self.workdir}/accounts" if self.workdir else None):
            if folder:
                shutil.rmtree(folder, ignore_errors=True)
        if self.workdir:  # the work folder, then io.staging_dir's parent, when nothing else is there
            remove_if_empty(self.workdir)
            parent = self.workdir.rstrip("/").rsplit("/", 1)[0]
            if parent.endswith(f"/{STAGING}"):
                remove_if_empty(parent)
        self._own_workdir = None
        self.sorted_files = None

    # -- evaluation -----------------------------------------------------------------------
    def _prepare(self, events: DataFrame, history: DataFrame | None, train: Column | None) -> DataFrame:
        frame = events.withColumn(IQ, F.lit(True))
        if history is not None:
            frame = history.select(*events.columns).withColumn(IQ, F.lit(False)).unionByName(frame)
        frame = frame.withColumn(T, micros("event_time"))
        if train is not None:
            frame = frame.withColumn(TRAIN, F.coalesce(train, F.lit(False)))
        return frame

    def _group(self, frame: DataFrame, steps: list[tuple[str, FeatureStep]], requests: list[PassRequest]) -> DataFrame:
        """A group's passes, then its steps' transforms in plan order; temporary columns dropped."""
        ctx = self.ctx
        outputs = [c for _, step in steps for c in step.output_columns()]
        keep = [c for c in frame.columns if c not in outputs]
        if requests:
            frame = run_passes(frame, requests, ctx.events, "arrow" if self.passes == "accounts" else self.passes)
        for name, step in steps:
            ctx.step = name
            frame = SPARK_STEPS[step.kind].transform(step, frame, ctx)
        return frame.select(*[F.col(f"`{c}`") for c in [*keep, *outputs]])

    def _workdir(self) -> str:
        if self.workdir:
            return self.workdir
        if not self._local():
            raise ConfigError("engine.passes=accounts on a cluster needs a work folder every executor shares "
                              "(the tasks use one under paths.data_dir)")
        self._own_workdir = tempfile.mkdtemp(prefix="aml_accounts_")
        return self._own_workdir

    def _accounts(self, prepared: DataFrame, inputs: list[str], train: Column | None, history: bool
                  ) -> tuple[DataFrame, list[tuple[str, FeatureStep]]]:
        """Run the steps that can run per account partition (:mod:`.accounts`); return the
        frame of their results, prepared again, and the steps left for the compiled path.
        ``train``: the training-window flag when fitting; ``history``: history rows present."""
        local, rest = split_plan(self.plan, inputs, lambda step: _spark_fit(step) is not None)
        for name, step in rest:
            if step.kind not in SPARK_STEPS:
                raise ConfigError(f"features.steps.{name} ({step.kind}) reads a column that a step after the account "
                                  f"partitions computes, and has no Spark compilation; move it before that step")
        if not local:
            return prepared, self.plan.steps
        if history and any(step.uses_history for _, step in rest):
            names = ", ".join(name for name, step in rest if step.uses_history)
            raise ConfigError(f"features.steps.{names}: with history rows, engine.passes=accounts runs only steps that "
                              f"read input columns; use engine.passes=arrow for this plan")
        for name, step in local:
            fit = _spark_fit(step)
            if train is not None and fit is not None:
                self.ctx.step = name
                step.load_state(fit(step, prepared.where(F.col(TRAIN)), self.ctx))
        runner = AccountPartitions(local, self.spark, self._workdir(), self.account_partitions)
        order = TABLE_ORDER if all(c in inputs for c in TABLE_ORDER) else None
        files = runner.run(prepared, inputs, order)
        self.account_stats = runner.stats
        if files:
            frame = self.spark.read.parquet(*files)
        else:
            outputs = runner.plan.output_schema()
            frame = prepared.where(F.lit(False)).select(
                *inputs, *[F.lit(None).cast(spark_type(d)).alias(c) for c, d in outputs.items()])
        if not rest:
            self.sorted_files = files if order else None
            return frame, []
        frame = frame.withColumns({IQ: F.lit(True), T: micros("event_time")})
        if train is not None:
            frame = frame.withColumn(TRAIN, F.coalesce(train, F.lit(False)))
        self.ctx.events = frame.select(*[c for c in (*BASE_COLUMNS, T) if c in frame.columns])
        self.ctx.input = frame
        return frame, rest

    def _run(self, prepared: DataFrame, train_expr: Column | None, history: bool) -> DataFrame:
        """The plan over ``prepared``; ``train_expr``: the training-window flag (fit and
        transform), or None (apply the fitted state); ``history``: history rows present."""
        fitting = train_expr is not None
        train = F.col(TRAIN) if fitting else None
        events = prepared.select(*[c for c in (*BASE_COLUMNS, T) if c in prepared.columns])
        ctx = Context(self.spark, events, prepared, train)
        self.ctx = ctx
        self.sorted_files = None
        frame, steps = prepared, self.plan.steps
        if self.passes == "accounts":
            inputs = [c for c in prepared.columns if c not in (IQ, T, TRAIN)]
            frame, steps = self._accounts(prepared, inputs, train_expr, history)
            if not steps:
                return self._plan_order(frame)
        group: list[tuple[str, FeatureStep]] = []
        requests: list[PassRequest] = []
        for name, step in steps:
            compiled = SPARK_STEPS[step.kind]
            if not set(step.required_columns()) <= set(frame.columns):
                # Reads a column of the current group: finish the group first.
                frame = self._group(frame, group, requests)
                if requests:
                    frame = self._materialise(frame)
                group, requests = [], []
            ctx.step = name
            if fitting and compiled.fit is not None:
                step.load_state(compiled.fit(step, frame.where(train), ctx))
            if compiled.passes is not None:
                requests += compiled.passes(step, ctx)
            group.append((name, step))
        frame = self._group(frame, group, requests)
        if not fitting:
            frame = frame.where(F.col(IQ))
        frame = frame.drop(IQ, T, TRAIN)
        # With account partitions their steps' columns came first: plan order again.
        return self._plan_order(frame) if self.passes == "accounts" else frame

    def _plan_order(self, frame: DataFrame) -> DataFrame:
        """The input columns, then every step's columns in plan order."""
        outputs = self.plan.feature_columns()
        return frame.select(*[F.col(f"`{c}`") for c in frame.columns if c not in outputs], *outputs)

    def _convert(self, frame: DataFrame, what: str) -> DataFrame:
        """``amount`` in the reporting currency, the event's own amount kept in ``GIVEN``
        (restored by :meth:`_given`): the same multiplication as the polars engine's."""
        if "currency" not in frame.columns:
            raise ConfigError("features.fx needs column 'currency', which the source does not provide; "
                              "set features.fx=null or map the source's currency column")
        self.fx.check_spark(frame, what)
        return frame.withColumns({GIVEN: F.col("amount"), "amount": self.fx.spark_amount()})

    def _given(self, frame: DataFrame) -> DataFrame:
        """The rows keep their own amount; only the features saw it converted. The account
        partitions' files hold the converted one, so the result is read back, not published."""
        self.sorted_files = None
        return frame.withColumn("amount", F.col(GIVEN)).drop(GIVEN)

    def fit_transform(self, events: DataFrame, train: Column) -> DataFrame:
        """Fit on the rows where ``train`` is true, return the features of every row.

        With ``passes="accounts"`` the steps that run per account partition are computed
        here (eagerly); the returned frame reads their results.
        """
        check_columns(self.plan, events.where(train))
        if self.fx is None:
            return self._run(self._prepare(events, None, train), train, history=False)
        events = self._convert(events, "events")
        return self._given(self._run(self._prepare(events, None, train), train, history=False))

    def transform(self, events: DataFrame, history: DataFrame | None = None) -> DataFrame:
        """Features of ``events`` with the plan's fitted state; ``history`` rows are not returned."""
        check_columns(self.plan, events)
        if self.fx is None:
            return self._run(self._prepare(events, history, None), None, history=history is not None)
        events = self._convert(events, "events")
        if history is not None:
            history = self._convert(history, "history events")
        return self._given(self._run(self._prepare(events, history, None), None, history=history is not None))


def spark_features(plan: FeaturePlan, spark: SparkSession, engine, workdir: str | None) -> SparkFeatures:
    """A :class:`SparkFeatures` configured by ``cfg.engine`` (``passes``, ``account_partitions``)."""
    from aml_pipeline.spark.session import pass_evaluator

    partitions = engine.get("account_partitions") if engine is not None else None
    return SparkFeatures(plan, spark, passes=pass_evaluator(engine), workdir=workdir,
                         account_partitions=int(partitions) if partitions else None)
