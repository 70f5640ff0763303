"""Batch scoring inside Spark (``task=score engine=spark``): the bundle's own scorer, per partition.

A scorer never re-derives anything: the bundle (LightGBM text model or skops file, fitted
plan, thresholds) is shipped to the executors as its files (a broadcast of a few hundred
kB), each Python worker verifies the files against the bundle hash and loads it once, and
``mapInArrow`` hands it the feature rows batch by batch. Each batch is scored by
:meth:`ModelBundle.score_features`, the very code the polars path runs, so the scores,
thresholds, alerts and explanations are the polars path's (a LightGBM prediction depends
only on its row; the test asserts equality).

The features themselves come from the same fitted plan compiled to Spark
(:class:`~aml_pipeline.spark.features.SparkFeatures`), identical to polars'.

MLlib bundles (``model=spark_*``) score with their Spark ``PipelineModel`` (a ``score``
column from ``transform``); the thresholds and the trace columns are then added in the same
``mapInArrow`` step with the model's score taken as given.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Iterator

import polars as pl
import pyarrow as pa
from omegaconf import DictConfig
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.config import Explain
from aml_pipeline.features.plan import FeaturePlan
from aml_pipeline.ingest import ingest, input_file
from aml_pipeline.progress import status
from aml_pipeline.spark import io
from aml_pipeline.spark.features import spark_features
from aml_pipeline.spark.mllib import SCORE, MLlibClassifier
from aml_pipeline.spark.session import get_session
from aml_pipeline.spark.tasks import stage

#: Python-worker cache: bundle hash -> loaded bundle (workers are reused across tasks).
_LOADED: dict[str, ModelBundle] = {}


def bundle_files(bundle: ModelBundle) -> tuple[dict[str, bytes], str]:
    """The bundle as {file name: bytes} and its hash (written out once, as ``save`` writes it)."""
    original = bundle.bundle_hash
    try:
        with tempfile.TemporaryDirectory(prefix="aml_bundle_") as d:
            digest = bundle.save(Path(d) / "bundle")
            files = {p.name: p.read_bytes() for p in (Path(d) / "bundle").iterdir() if p.is_file()}
    finally:
        bundle.bundle_hash = original  # the decisions carry the hash the bundle was loaded with
    return files, digest


def _worker_bundle(files: dict[str, bytes], digest: str) -> ModelBundle:
    """Load (once per worker process) and verify the shipped bundle."""
    bundle = _LOADED.get(digest)
    if bundle is None:
        d = Path(tempfile.mkdtemp(prefix="aml_bundle_"))
        for name, data in files.items():
            (d / name).write_bytes(data)
        bundle = ModelBundle.load(d, expected_hash=digest)
        _LOADED[digest] = bundle
    return bundle


class _GivenScore:
    """Stands in for an MLlib model on the workers: the score column was computed by Spark."""

    def __init__(self, model: MLlibClassifier) -> None:
        self.name = model.name
        self._importance = model.feature_importance()

    def feature_importance(self) -> dict[str, float]:
        return self._importance

    def contributions(self, X) -> None:
        return None


def _decide(bundle: ModelBundle, frame: pl.DataFrame, top_k: int, explain: str, given_score: bool) -> pl.DataFrame:
    if not given_score:
        return bundle.score_features(frame, top_k, explain)
    # MLlib: the score came from Spark; thresholds, explanations (global importances) and trace as usual.
    return bundle.decisions(top_k, explain).frame(frame.drop(SCORE), score=frame[SCORE].to_numpy())


def score_frame(bundle: ModelBundle, features: DataFrame, top_k: int = 5, explain: str = "alerts") -> DataFrame:
    """Decisions for Spark rows carrying the plan's feature columns (lazy; one row per input row).

    Same columns, types and values as :meth:`ModelBundle.score_features` on the same rows.
    """
    spark = features.sparkSession
    mllib = isinstance(bundle.model, MLlibClassifier)
    needed = ["event_id", "event_time", "jurisdiction", *bundle.feature_columns()]
    rows = features.select(*[f"`{c}`" for c in needed])
    shipped = bundle
    if mllib:
        rows = bundle.model.predict_frame(rows)
        shipped = ModelBundle(name=bundle.name, model=bundle.model, plan=bundle.plan, thresholds=bundle.thresholds,
                              lineage=bundle.lineage, metrics=bundle.metrics, registry=bundle.registry,
                              bundle_hash=bundle.bundle_hash)
    # the output schema: the scorer's own output on no rows
    empty = pl.from_arrow(rows.limit(0).toArrow())
    out_schema = _decide(_driver_view(bundle, mllib), empty, top_k, explain, mllib).to_arrow().schema
    spark_schema = from_arrow_schema(out_schema)
    arrow_schema = to_arrow_schema(spark_schema, timezone="UTC")
    trace, bundle_hash = dict(bundle.registry), bundle.bundle_hash
    if mllib:
        payload = spark.sparkContext.broadcast(("mllib", _mllib_state(shipped)))
    else:
        files, digest = bundle_files(bundle)
        payload = spark.sparkContext.broadcast(("files", (files, digest)))

    def score_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        kind, state = payload.value
        scorer = _worker_bundle(*state) if kind == "files" else _mllib_bundle(state)
        scorer.registry, scorer.bundle_hash = trace, bundle_hash
        for batch in batches:
            if batch.num_rows == 0:
                continue
            decided = _decide(scorer, pl.from_arrow(pa.Table.from_batches([batch])), top_k, explain, mllib)
            yield from decided.to_arrow().cast(arrow_schema).to_batches()

    return rows.mapInArrow(score_batches, spark_schema)


def _driver_view(bundle: ModelBundle, mllib: bool) -> ModelBundle:
    return _mllib_bundle(_mllib_state(bundle)) if mllib else bundle


def _mllib_state(bundle: ModelBundle) -> dict:
    """What the workers need of an MLlib bundle (no JVM objects): plan, thresholds, importances."""
    return {"name": bundle.name, "plan": bundle.plan.to_dict(), "thresholds": bundle.thresholds,
            "lineage": bundle.lineage, "hash": bundle.bundle_hash, "model": _GivenScore(bundle.model)}


def _mllib_bundle(state: dict) -> ModelBundle:
    return ModelBundle(name=state["name"], model=state["model"], plan=FeaturePlan.from_dict(state["plan"]),  # type: ignore[arg-type]
                       thresholds=state["thresholds"], lineage=state["lineage"], bundle_hash=state["hash"])


# ----------------------------------------------------------------------------- task=score
def _events(cfg: DictConfig, spark) -> tuple[DataFrame, str | None]:
    """The input as a Spark frame: the parquet file read by Spark, or the configured source staged."""
    path = input_file(cfg)
    if path is not None:
        return spark.read.parquet(str(path)), None
    frame, staged = stage(spark, ingest(cfg).result.valid, Path(cfg.paths.data_dir))
    return frame.drop("_staged_row"), staged


def score_to(cfg: DictConfig, bundle: ModelBundle, out: Path) -> tuple[int, int]:
    """``task=score`` with ``engine=spark``: features and scores computed by Spark into ``out``;
    returns (events, alerts)."""
    spark = get_session(cfg.engine, cfg.paths.data_dir)
    events, staged = _events(cfg, spark)
    engine = spark_features(bundle.plan, spark, cfg.engine, io.staging_dir(out, "features"))
    with status(f"score (spark {spark.sparkContext.master}): features and scores"):
        try:
            decisions = score_frame(bundle, engine.transform(events), cfg.scoring.top_k, Explain(cfg.scoring.explain).value)
            rows = io.publish(decisions, out, sort_by=["event_time", "event_id"], what="scores")
        finally:
            engine.release()
            if staged:
                io.remove(staged)
    return rows, int(pl.scan_parquet(out).select(pl.col("alert").sum()).collect().item())


__all__ = ["bundle_files", "rescore_bundles", "score_frame", "score_to"]


def rescore_bundles(cfg: DictConfig, bundles: dict, events: pl.DataFrame, path: str,
                    start: datetime) -> dict[str, pl.DataFrame]:
    """``task=promote engine=spark``: each bundle's features and scores computed by Spark over
    the whole input at ``path`` (the events before ``start`` are the history, as in
    :func:`aml_pipeline.lifecycle.promote.rescore`), the same
    feature code Spark scoring runs (``task=score engine=spark``); only the window's
    decisions (event, time, score, jurisdiction) come back to the driver, joined to its labels.
    Bundles with the same feature plan (a retrain on the same features) share one feature
    computation, kept (``persist``) while each scores it."""
    spark = get_session(cfg.engine, cfg.paths.data_dir)
    labels = events.filter(pl.col("event_time") >= pl.lit(start).cast(events.schema["event_time"])).select("event_id", "label")
    frame = spark.read.parquet(str(Path(path).resolve()))
    by_plan: dict[str, list[str]] = {}
    for role, bundle in bundles.items():
        by_plan.setdefault(json.dumps(bundle.plan.to_dict(), sort_keys=True, default=str), []).append(role)
    out = {}
    folder = Path(cfg.paths.data_dir) / "promote"
    for roles in by_plan.values():
        engine = spark_features(bundles[roles[0]].plan, spark, cfg.engine, io.staging_dir(folder / "features", "features"))
        try:
            features = engine.transform(frame).persist()
            for role in roles:
                target = folder / f"{role}.parquet"
                decisions = (score_frame(bundles[role], features, 0, "none")
                             .filter(F.col("event_time") >= F.lit(start))
                             .select("event_id", "event_time", "score", "jurisdiction"))
                io.publish(decisions, target, sort_by=["event_time", "event_id"], what="promote")
                out[role] = pl.read_parquet(target).join(labels, on="event_id")
            features.unpersist()
        finally:
            engine.release()
    return out
