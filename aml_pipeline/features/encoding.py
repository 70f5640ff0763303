"""Encodings learnt from the training window: target encoding, category codes, buckets.

All three keep their fitted state as plain JSON (value -> number maps, bucket edges) in
the bundle. Values never seen in training get a documented fallback (the prior, -1).

Each also has its Spark form (``spark_fit``, ``spark_transform``): the fit learnt in Spark
(the same JSON), and the transform run after the Spark engine's account partitions (target
encodings, whose training rows are time-respecting; a step fitted on a column an earlier
step computes). pyspark is not imported here: the forms get ``pyspark.sql.functions``,
``Window`` and the shared helpers from their context
(:class:`aml_pipeline.spark.features.Context`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.windows import _FIXED_WINDOW
from aml_pipeline.timeutil import duration_us

DAY_US = 86_400_000_000


@register
@dataclass
class TargetEncoding(FeatureStep):
    """Smoothed laundering rate of high-cardinality ids (``te_<column>``), without leakage.

    A label is not known when the payment happens: it arrives ``label_delay`` later (a
    suspicious-activity report takes weeks), at ``event_time + label_delay``.

    Scoring (validation, test, live): the rate frozen at the end of the training window,
    ``(positives + smoothing · prior) / (events + smoothing)``, over the training labels
    that had arrived by then (``event_time + label_delay <=`` the last training instant);
    an id never seen there gets the prior. Training rows: the same formula over the id's
    labels that arrived strictly *before* the row's instant (``event_time < t -
    label_delay``), with the prior of all training labels arrived by then (0 when none), so
    no row sees its own label, a later one or one not yet reported. ``label_delay: 0s``
    assumes labels known as soon as the event happens.
    """

    columns: list[str] = field(default_factory=lambda: ["src_account", "dst_account"])
    smoothing: float = 20.0
    label_delay: str = "30d"

    kind = "target_encoding"
    engines = ("polars", "online", "spark")

    def __post_init__(self) -> None:
        if self.smoothing < 0:
            raise ValueError("smoothing must be >= 0")
        if not _FIXED_WINDOW.fullmatch(str(self.label_delay)):
            raise ValueError(f"label_delay: {self.label_delay!r} is not a duration such as 0s, 12h, 30d")

    def required_columns(self) -> list[str]:
        # The label and event time are needed to fit only; scoring needs the ids alone.
        return list(self.columns)

    def output_columns(self) -> dict[str, pl.DataType]:
        return {f"te_{c}": pl.Float64 for c in self.columns}

    def _arrived(self) -> pl.Expr:
        """When each event's label became known."""
        return pl.col("event_time").dt.offset_by(self.label_delay)

    def fit(self, frame: pl.DataFrame) -> "TargetEncoding":
        if "label" not in frame.columns:
            raise ValueError("target_encoding needs labelled training data (column 'label')")
        # The labels known when the training window closes (at its last event).
        labelled = frame.filter(pl.col("label").is_not_null() & (self._arrived() <= pl.col("event_time").max()))
        self.prior_ = float(labelled["label"].mean()) if labelled.height else 0.0
        self.tables_ = {}
        for c in self.columns:
            stats = labelled.group_by(c).agg(pl.len().alias("n"), pl.col("label").sum().alias("pos"))
            rate = (pl.col("pos") + self.smoothing * self.prior_) / (pl.col("n") + self.smoothing)
            stats = stats.with_columns(rate.alias("rate")).sort(c)
            self.tables_[c] = dict(zip(stats[c].to_list(), stats["rate"].to_list()))
        return self

    def _known_before(self, frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
        """Per key and instant of ``frame``: labels (``_n``) and positives (``_p``) that
        arrived strictly before it. Each label is counted at its arrival instant and every
        row's instant is added with nothing, then running totals of the earlier instants."""
        arrived = frame.select(*keys, self._arrived().alias("event_time"),
                               pl.col("label").is_not_null().cast(pl.Int64).alias("_n"),
                               pl.col("label").cast(pl.Int64).fill_null(0).alias("_p"))
        asked = frame.select(*keys, "event_time", pl.lit(0, pl.Int64).alias("_n"), pl.lit(0, pl.Int64).alias("_p"))
        totals = pl.concat([arrived, asked]).group_by(*keys, "event_time").agg(pl.sum("_n"), pl.sum("_p"))
        before = [(pl.col(x).cum_sum() - pl.col(x)) for x in ("_n", "_p")]
        if keys:
            before = [b.over(keys) for b in before]
        return totals.sort(*keys, "event_time").with_columns(before[0].alias("_n"), before[1].alias("_p"))

    def fit_transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        self.fit(frame)
        m = self.smoothing
        # The prior of a training row is the rate of the labels known strictly before its
        # instant (0 when none): the frozen prior_ includes the row's own and later labels.
        priors = self._known_before(frame, []).select(
            "event_time", pl.when(pl.col("_n") > 0).then(pl.col("_p") / pl.col("_n")).otherwise(0.0).alias("_prior"))
        out = frame.join(priors, on="event_time", how="left", maintain_order="left")
        prior = pl.col("_prior")
        for c in self.columns:
            # Every row's instant is kept, so an unlabelled row still sees its id's history.
            per_instant = self._known_before(frame, [c]).rename({"_n": "_n_before", "_p": "_p_before"})
            out = out.join(per_instant, on=[c, "event_time"], how="left", maintain_order="left")
            n = pl.col("_n_before").fill_null(0)
            p = pl.col("_p_before").fill_null(0)
            rate = pl.when(n + m > 0).then((p + m * prior) / (n + m)).otherwise(prior)
            out = out.with_columns(rate.cast(pl.Float64).alias(f"te_{c}")).drop("_n_before", "_p_before")
        return out.drop("_prior")

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.col(c).replace_strict(self.tables_[c], default=self.prior_, return_dtype=pl.Float64).alias(f"te_{c}")
            for c in self.columns
        )

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The frozen table's rate of the event's ids (the prior for an unseen id)."""
        tables = {c: dict(self.tables_[c]) for c in self.columns}
        prior = self.prior_

        def compute(ev, h, out: dict) -> None:
            for c, m in tables.items():
                out[f"te_{c}"] = m.get(ev.values.get(c), prior)
        return compute

    # -- Spark form --------------------------------------------------------------------------
    def spark_fit(self, train, ctx) -> dict:
        """:meth:`fit` in Spark: the same prior and tables from the training rows."""
        F, T = ctx.functions, ctx.T
        if "label" not in train.columns:
            raise ValueError("target_encoding needs labelled training data (column 'label')")
        # The labels known when the training window closes (at its last event): polars' fit.
        last = train.agg(F.max(T).alias("_last")).first()["_last"]
        arrived = F.col(T) + F.lit(duration_us(self.label_delay))
        labelled = train.where(F.col("label").isNotNull() & (arrived <= F.lit(last)))
        row = labelled.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("label").cast("long")).alias("p")).first()
        n, p = int(row["n"]), int(row["p"] or 0)
        prior = p / n if n else 0.0
        m = float(self.smoothing)
        tables = {}
        for c in self.columns:
            stats = labelled.groupBy(F.col(f"`{c}`").alias("_id")).agg(
                F.count(F.lit(1)).alias("_n"), F.sum(F.col("label").cast("long")).alias("_p"))
            rate = (F.col("_p").cast("double") + F.lit(m * prior)) / (F.col("_n").cast("double") + F.lit(m))
            tables[c] = {r[0]: r[1] for r in stats.select("_id", rate.alias("_r")).collect()}
            tables[c] = dict(sorted(tables[c].items(), key=lambda kv: (kv[0] is None, kv[0])))
        return {"prior_": prior, "tables_": tables}

    def _spark_time_respecting(self, frame, ctx, c: str):
        """Training rows' encodings from labels arrived strictly before their instant (:meth:`fit_transform`).

        Each label counts at its arrival, ``_t + label_delay``; every row's instant is added with
        nothing. The prior at each instant is the rate of all training labels arrived before it:
        running totals over instants, computed per day and offset by the totals of the earlier
        days (so no single-partition window over the whole table).
        """
        F, Window, T = ctx.functions, ctx.Window, ctx.T
        m = float(self.smoothing)
        source = ctx.input if c in ctx.input.columns else frame
        train = source.where(ctx.train)
        known = F.col("label").isNotNull().cast("long")
        label = F.coalesce(F.col("label").cast("long"), F.lit(0).cast("long"))
        zero = F.lit(0).cast("long")
        ids = F.col(f"`{c}`").alias("_id")
        timeline = train.select(ids, (F.col(T) + F.lit(duration_us(self.label_delay))).alias(T), known.alias("_n"),
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

    def spark_transform(self, frame, ctx):
        """The frozen tables; with ``ctx.train``, the training rows' time-respecting values."""
        F, T = ctx.functions, ctx.T
        out = frame
        for c in self.columns:
            out = ctx.lookup(out, c, self.tables_[c], "double", float(self.prior_), f"te_{c}")
            if ctx.train is not None:
                values = self._spark_time_respecting(frame, ctx, c)
                on = (F.col(f"`{c}`") == F.col("_id")) & (F.col(T) == F.col("_te_t"))
                out = out.join(values, on, "left").drop("_id", "_te_t")
                out = out.withColumn(f"te_{c}", F.when(ctx.train, F.col("_te_train")).otherwise(F.col(f"te_{c}"))) \
                    .drop("_te_train")
        return ctx.finish(self, frame, out)


@register
@dataclass
class CategoryCodes(FeatureStep):
    """Integer codes of low-cardinality categories (``code_<column>``); unseen values get -1.

    Codes follow the sorted training vocabulary, so the same training data always gives
    the same codes.
    """

    columns: list[str] = field(default_factory=lambda: ["channel", "currency"])

    kind = "category_codes"
    engines = ("polars", "online", "spark")

    def required_columns(self) -> list[str]:
        return list(self.columns)

    def output_columns(self) -> dict[str, pl.DataType]:
        return {f"code_{c}": pl.Int32 for c in self.columns}

    def fit(self, frame: pl.DataFrame) -> "CategoryCodes":
        self.vocab_ = {c: sorted(v for v in frame[c].unique().to_list() if v is not None) for c in self.columns}
        return self

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame.with_columns(
            pl.col(c).replace_strict({v: i for i, v in enumerate(self.vocab_[c])}, default=-1, return_dtype=pl.Int32).alias(f"code_{c}")
            for c in self.columns
        )

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The event's values' codes (-1 for an unseen value)."""
        maps = {c: {v: i for i, v in enumerate(self.vocab_[c])} for c in self.columns}

        def compute(ev, h, out: dict) -> None:
            for c, m in maps.items():
                out[f"code_{c}"] = m.get(ev.values.get(c), -1)
        return compute

    # -- Spark form --------------------------------------------------------------------------
    def spark_fit(self, train, ctx) -> dict:
        """:meth:`fit` in Spark: the same sorted vocabularies."""
        F = ctx.functions
        row = train.agg(*[F.collect_set(F.col(f"`{c}`")).alias(c) for c in self.columns]).first()  # nulls are skipped
        return {"vocab_": {c: sorted(row[c]) for c in self.columns}}

    def spark_transform(self, frame, ctx):
        out = frame
        for c in self.columns:
            out = ctx.lookup(out, c, {v: i for i, v in enumerate(self.vocab_[c])}, "int", -1, f"code_{c}")
        return ctx.finish(self, frame, out)


@register
@dataclass
class Bucketing(FeatureStep):
    """Quantile bucket index of numeric columns (``bucket_<column>``), edges from training.

    Bucket i holds values in [edge[i-1], edge[i]); values below the first edge are bucket 0
    and above the last edge the last bucket; null stays null.
    """

    columns: list[str] = field(default_factory=lambda: ["amount"])
    n_buckets: int = 10

    kind = "bucketing"
    engines = ("polars", "online", "spark")

    def __post_init__(self) -> None:
        if self.n_buckets < 2:
            raise ValueError("n_buckets must be >= 2")

    def required_columns(self) -> list[str]:
        return list(self.columns)

    def output_columns(self) -> dict[str, pl.DataType]:
        return {f"bucket_{c}": pl.Int32 for c in self.columns}

    def fit(self, frame: pl.DataFrame) -> "Bucketing":
        qs = [i / self.n_buckets for i in range(1, self.n_buckets)]
        self.edges_ = {}
        for c in self.columns:
            values = frame[c].drop_nulls().cast(pl.Float64)
            edges = sorted({float(values.quantile(q, interpolation="linear")) for q in qs}) if values.len() else []
            self.edges_[c] = edges
        return self

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        exprs = []
        for c in self.columns:
            edges = self.edges_[c]
            bucket = pl.lit(0, pl.Int32)
            for e in edges:
                bucket = bucket + (pl.col(c) >= e).cast(pl.Int32)
            exprs.append(pl.when(pl.col(c).is_null()).then(None).otherwise(bucket).cast(pl.Int32).alias(f"bucket_{c}"))
        return frame.with_columns(exprs)

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The event's values' buckets (null stays null)."""
        edges = {c: list(self.edges_[c]) for c in self.columns}

        def compute(ev, h, out: dict) -> None:
            for c, es in edges.items():
                v = ev.values.get(c)
                out[f"bucket_{c}"] = None if v is None else sum(1 for e in es if v >= e)
        return compute

    # -- Spark form --------------------------------------------------------------------------
    def spark_fit(self, train, ctx) -> dict:
        """:meth:`fit` in Spark: polars' linear quantiles (``ctx.quantile_linear``), the same edges."""
        F = ctx.functions
        qs = [i / self.n_buckets for i in range(1, self.n_buckets)]
        edges = {}
        for c in self.columns:
            values = train.select(F.col(f"`{c}`").cast("double").alias("_x")).where(F.col("_x").isNotNull())
            n = values.count()
            edges[c] = sorted(set(ctx.quantile_linear(values, "_x", n, qs))) if n else []
        return {"edges_": edges}

    def spark_transform(self, frame, ctx):
        F = ctx.functions
        cols = {}
        for c in self.columns:
            col = F.col(f"`{c}`")
            bucket = F.lit(0)
            for e in self.edges_[c]:
                bucket = bucket + (col >= F.lit(float(e))).cast("int")
            cols[f"bucket_{c}"] = F.when(col.isNull(), F.lit(None)).otherwise(bucket)
        return ctx.finish(self, frame, frame.withColumns(cols))
