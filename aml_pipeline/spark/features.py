"""The feature plan on Spark: the polars steps per account partition, and the driver of the Spark forms.

The :class:`~aml_pipeline.features.plan.FeaturePlan` (built from ``conf/features/*.yaml``
or loaded from a bundle's ``plan.json``) stays the one definition of the steps, their
parameters and their fitted state. :class:`SparkFeatures` runs every step it can as the
polars engine's own code, per partition of accounts (:mod:`.accounts`), so those values
are polars' by construction. A step kind has a *Spark form*, written in its own module
(``aml_pipeline/features/<kind>.py``) as methods of the step, only where that cannot serve:

- ``spark_fit(train, ctx)``: fitted state learnt from the training rows in Spark (the hub
  list of ``graph`` and ``paths``, the vocabularies of ``category_codes``, the bucket
  edges of ``bucketing``, the tables of ``target_encoding``), the *same* JSON polars fits,
  loaded into the plan's steps before the partitions run;
- ``spark_transform(frame, ctx)``: the steps that run after the partitions, on their
  result: target encodings (their training rows get time-respecting values from every
  earlier label, not the plain ``transform``) and a step fitted on a computed column
  (``bucketing`` of ``log_amount``).

The features package does not import pyspark (an extra): a form gets what it uses from
its :class:`Context` (``ctx.functions``, ``ctx.Window``, ``ctx.T``, ``ctx.lookup``,
``ctx.finish``, ``ctx.quantile_linear``, ...). This module is the driver only: it finds
each step's forms on the step, with no code or registry per kind.

A step kind declares ``"spark"`` among its ``engines``
(:attr:`~aml_pipeline.features.base.FeatureStep.engines`); one that does not, or that
cannot run as declared (fitted state and no ``spark_fit``), is refused before any work,
naming the step. Values are bit-identical to polars' (``tests/test_spark_parity.py``,
``tests/test_feature_conformance.py``).

Offline (``task=features``) the training rows and the later rows are transformed in one
pass over all events, which gives the polars engine's values because a row only ever sees
strictly earlier events and the windows are cut by time: the training rows' history is the
training window, the later rows' history is everything before them. Only the target
encoding differs between the two (time-respecting on training rows, frozen after), and its
Spark form takes the training flag into account.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import polars as pl
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from aml_pipeline.errors import ConfigError
from aml_pipeline.features.base import FeatureStep
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.spark.accounts import IQ, T, AccountPartitions, partitionable, split_plan
from aml_pipeline.spark.io import STAGING, remove_if_empty
from aml_pipeline.timeutil import duration_us

#: The feature table's row order (``task=features`` writes it sorted so).
TABLE_ORDER = ["event_time", "event_id"]
#: The event's own amount while the features see it converted (``features.fx``).
GIVEN = "_amount_given"

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


def micros(column: Column | str) -> Column:
    """An event time as microseconds since the epoch (long), as the polars engine counts it."""
    return F.unix_micros(F.col(column) if isinstance(column, str) else column)


def kth_smallest(frame: DataFrame, column: str, ks: list[int]) -> dict[int, object]:
    """The values at 0-based ranks ``ks`` of ``column`` sorted ascending (nulls dropped).

    Distributed: a global sort, then each partition numbers its rows; only the requested
    values come back to the driver.
    """
    wanted = set(ks)
    if not wanted:
        return {}
    ranked = frame.select(column).where(F.col(column).isNotNull()).orderBy(column).rdd.zipWithIndex()
    found = ranked.filter(lambda pair: pair[1] in wanted).map(lambda pair: (pair[1], pair[0][0])).collect()
    return dict(found)


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


#: Up to this many entries a fitted map becomes a literal map expression; larger maps
#: (account ids) are broadcast and joined.
LITERAL_MAP_MAX = 512


# ----------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a step's Spark form (``spark_fit``, ``spark_transform``) may use besides the
    frame it gets: the features package does not import pyspark, so pyspark and the
    helpers the forms share come from here.

    ``input``: the rows with all their input columns (and the partitions' columns, after
    them). ``train``: a boolean column marking the training window (fit_transform
    semantics), or None when only applying fitted state. ``step``: the name of the step
    being run.
    """

    spark: SparkSession
    input: DataFrame
    train: Column | None = None
    step: str = ""

    #: ``pyspark.sql.functions``.
    functions: ClassVar[Any] = F
    #: ``pyspark.sql.Window``.
    Window: ClassVar[Any] = Window
    #: The column of every frame a form gets holding the event time in microseconds since
    #: the epoch (long), as the polars engine counts it.
    T: ClassVar[str] = T

    @staticmethod
    def spark_type(dtype: pl.DataType) -> str:
        """The Spark SQL type of a polars dtype (:func:`spark_type`)."""
        return spark_type(dtype)

    @staticmethod
    def kth_smallest(frame: DataFrame, column: str, ks: list[int]) -> dict[int, object]:
        """:func:`kth_smallest`."""
        return kth_smallest(frame, column, ks)

    @staticmethod
    def quantile_linear(values: DataFrame, column: str, n: int, qs: list[float]) -> list[float]:
        """:func:`quantile_linear`: polars' linear quantiles, computed in Spark."""
        return quantile_linear(values, column, n, qs)

    def lookup(self, frame: DataFrame, column: str, mapping: dict, value_type: str, default: Any, name: str) -> DataFrame:
        """``name`` = mapping[column], or ``default`` for a value not in the map (and for null)."""
        col = F.col(f"`{column}`")
        if len(mapping) <= LITERAL_MAP_MAX:
            if not mapping:
                return frame.withColumn(name, F.lit(default).cast(value_type))
            literal = F.create_map(*[x for k, v in mapping.items() for x in (F.lit(k), F.lit(v).cast(value_type))])
            return frame.withColumn(name, F.coalesce(F.try_element_at(literal, col), F.lit(default).cast(value_type)))
        key_type = dict(frame.dtypes)[column]
        table = self.spark.createDataFrame(list(mapping.items()), f"_key {key_type}, _value {value_type}")
        joined = frame.join(F.broadcast(table), col == F.col("_key"), "left")
        return joined.withColumn(name, F.coalesce(F.col("_value"), F.lit(default).cast(value_type))).drop("_key", "_value")

    @staticmethod
    def finish(step: FeatureStep, frame: DataFrame, out: DataFrame) -> DataFrame:
        """``frame``'s columns, then the step's columns from ``out`` with their declared types, in order."""
        outputs = step.output_columns()
        return out.select(*[F.col(f"`{c}`") for c in frame.columns if c not in outputs],
                          *[F.col(c).cast(spark_type(d)).alias(c) for c, d in outputs.items()])


def spark_fit(step: FeatureStep) -> Callable[[DataFrame, Context], dict[str, Any]] | None:
    """The step's Spark fit (its ``spark_fit`` method), or None (stateless, or none written)."""
    return getattr(step, "spark_fit", None)


def spark_transform(step: FeatureStep) -> Callable[[DataFrame, Context], DataFrame] | None:
    """The step's Spark transform (its ``spark_transform`` method), or None: the step runs
    per account partition only."""
    return getattr(step, "spark_transform", None)


def _has_fit(step: FeatureStep) -> bool:
    return type(step).fit is not FeatureStep.fit


def _width(step_name: str, window: str) -> int:
    """A window in microseconds; calendar lengths (months, years) have no fixed width."""
    if any(unit in window for unit in ("mo", "y", "q")):
        raise ConfigError(f"features.steps.{step_name}: window {window!r} is a calendar length; "
                          f"the Spark engine supports fixed durations (us, ms, s, m, h, d, w)")
    return duration_us(window)


# ----------------------------------------------------------------------------- the plan
def check_spark(plan: FeaturePlan) -> None:
    """Refuse, naming the step, a step the Spark engine cannot run: a kind that does not
    declare ``"spark"`` among its engines, or one that declares it but can neither run per
    account partition (fitted state and no ``spark_fit``) nor after them (no
    ``spark_transform``)."""
    for name, step in plan.steps:
        if "spark" not in step.engines:
            raise ConfigError(
                f"features.steps.{name} ({step.kind}): step kind {step.kind!r} does not run on Spark "
                f"(its engines: {', '.join(step.engines) or 'none'}); run it with engine=polars")
        fit, transform = spark_fit(step), spark_transform(step)
        fitted = not _has_fit(step) or fit is not None
        if not ((partitionable(step) or transform is not None) and fitted):
            need = ("a Spark fit of its state (a spark_fit method)" if partitionable(step) or transform is not None
                    else "a Spark transform (a spark_transform method: its training values are not its plain "
                         "transform)")
            raise ConfigError(
                f"features.steps.{name} ({step.kind}): step kind {step.kind!r} declares engine 'spark' but needs "
                f"{need} in its kind's module; run it with engine=polars")
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


TRAIN = "_train"  # the training-window flag, as a column of the prepared rows


class SparkFeatures:
    """A FeaturePlan on Spark. The plan's steps hold the parameters and the state.

    ``fit_transform(events, train)`` fits every step on the rows where ``train`` holds (the
    training window; the state is loaded into the plan's steps, identical to what polars
    would fit) and returns every row's features; ``transform(events, history)`` applies a
    fitted plan, ``history`` rows taking part in aggregates without being returned.

    Evaluation: the steps :func:`~.accounts.split_plan` allows run per account partition
    (:class:`~.accounts.AccountPartitions`, after their Spark fits); the others (target
    encodings, steps fitted on a computed column) run after, in plan order, through their
    Spark forms on the partitions' result.
    """

    def __init__(self, plan: FeaturePlan, spark: SparkSession | None = None, workdir: str | None = None,
                 account_partitions: int | None = None):
        check_spark(plan)
        #: ``features.fx``: converted once, at this engine's entry (:meth:`_convert`); the
        #: steps (in the account partitions and after them) then run the plan without it,
        #: sharing its steps, so fits still land in ``plan``.
        self.fx = plan.fx
        self.plan = plan.without_fx()
        self.spark = spark or SparkSession.getActiveSession() or SparkSession.builder.getOrCreate()
        #: A folder the executors share, for the account partitions' files (None: a
        #: temporary folder, local masters only).
        self.workdir = workdir
        self.account_partitions = account_partitions
        #: With no Spark-form step after the partitions: the parquet files that are the
        #: result, in ``TABLE_ORDER`` (:func:`aml_pipeline.spark.io.publish_files` joins them).
        self.sorted_files: list[str] | None = None
        #: Figures of the account partitions (events, partitions, buckets, rows shipped).
        self.account_stats: dict[str, int] = {}
        self.ctx: Context | None = None
        self._own_workdir: str | None = None

    def _local(self) -> bool:
        return self.spark.sparkContext.master.startswith("local")

    def release(self) -> None:
        """Remove the account partitions' files (after the result has been written)."""
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

    def _workdir(self) -> str:
        if self.workdir:
            return self.workdir
        if not self._local():
            raise ConfigError("the Spark engine's account partitions on a cluster need a work folder every executor "
                              "shares (the tasks use one under paths.data_dir)")
        self._own_workdir = tempfile.mkdtemp(prefix="aml_accounts_")
        return self._own_workdir

    def _accounts(self, prepared: DataFrame, inputs: list[str], train: Column | None
                  ) -> tuple[DataFrame, list[tuple[str, FeatureStep]]]:
        """Run the steps that can run per account partition (:mod:`.accounts`); return the
        frame of their results, prepared again, and the steps left for their Spark forms.
        ``train``: the training-window flag when fitting."""
        local, rest = split_plan(self.plan, inputs, lambda step: spark_fit(step) is not None)
        for name, step in rest:
            if spark_transform(step) is None:
                raise ConfigError(f"features.steps.{name} ({step.kind}) reads a column that a step after the account "
                                  f"partitions computes, and has no Spark transform; move it before that step")
        if not local:
            return prepared, self.plan.steps
        for name, step in local:
            fit = spark_fit(step)
            if train is not None and fit is not None:
                self.ctx.step = name
                step.load_state(fit(prepared.where(F.col(TRAIN)), self.ctx))
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
        self.ctx.input = frame
        return frame, rest

    def _run(self, prepared: DataFrame, train_expr: Column | None) -> DataFrame:
        """The plan over ``prepared``; ``train_expr``: the training-window flag (fit and
        transform), or None (apply the fitted state)."""
        fitting = train_expr is not None
        train = F.col(TRAIN) if fitting else None
        self.ctx = ctx = Context(self.spark, prepared, train)
        self.sorted_files = None
        inputs = [c for c in prepared.columns if c not in (IQ, T, TRAIN)]
        frame, steps = self._accounts(prepared, inputs, train_expr)
        if not steps:
            return self._plan_order(frame)
        for name, step in steps:
            ctx.step = name
            fit = spark_fit(step)
            if fitting and fit is not None:
                step.load_state(fit(frame.where(train), ctx))
            frame = step.spark_transform(frame, ctx)
        if not fitting:
            frame = frame.where(F.col(IQ))
        # The partitions' columns came first: plan order again.
        return self._plan_order(frame.drop(IQ, T, TRAIN))

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

        The steps that run per account partition are computed here (eagerly); the returned
        frame reads their results.
        """
        check_columns(self.plan, events.where(train))
        if self.fx is None:
            return self._run(self._prepare(events, None, train), train)
        events = self._convert(events, "events")
        return self._given(self._run(self._prepare(events, None, train), train))

    def transform(self, events: DataFrame, history: DataFrame | None = None) -> DataFrame:
        """Features of ``events`` with the plan's fitted state; ``history`` rows are not returned."""
        check_columns(self.plan, events)
        if self.fx is None:
            return self._run(self._prepare(events, history, None), None)
        events = self._convert(events, "events")
        if history is not None:
            history = self._convert(history, "history events")
        return self._given(self._run(self._prepare(events, history, None), None))


def spark_features(plan: FeaturePlan, spark: SparkSession, engine, workdir: str | None) -> SparkFeatures:
    """A :class:`SparkFeatures` configured by ``cfg.engine`` (``account_partitions``)."""
    partitions = engine.get("account_partitions") if engine is not None else None
    return SparkFeatures(plan, spark, workdir=workdir, account_partitions=int(partitions) if partitions else None)
