"""The registered model as MLflow serves it: canonical transactions in; score, threshold,
alert and reasons out.

Why: a registered version should be usable the MLflow way (``mlflow.pyfunc.load_model``,
``mlflow models serve``) without knowing the feature plan: the signature is the canonical
transaction schema the bundle needs, the input example five real transactions, and the
output one decision per transaction, as ``task=score`` gives it. ``event_time`` is naive UTC
in the signature (MLflow's datetime columns are timezone-naive); aware times and ISO
strings are accepted too and converted to UTC. A batch is scored with
its own earlier rows as history (like ``task=score`` on that file): an account's longer
past lives in the online service's feature store, which this wrapper does not have.

The project's own scorers never load through this wrapper (``registry.resolve_bundle``
verifies the version's recorded hash first); this wrapper checks the same hash, which it
carries from registration, before it parses the model.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from mlflow.pyfunc import PythonModel

from aml_pipeline.bundle import ModelBundle
from aml_pipeline.features.reasons import one_line
from aml_pipeline.schema import ALL_COLUMNS

BUNDLE_ARTIFACT = "bundle"
OUTPUT_COLUMNS = ("event_id", "score", "threshold", "alert", "reasons")


def canonical_events(frame: Any) -> pl.DataFrame:
    """A pandas (or polars) frame of transactions as the canonical schema's dtypes; times in UTC."""
    events = frame if isinstance(frame, pl.DataFrame) else pl.from_pandas(frame)
    casts = []
    for name in events.columns:
        dtype = ALL_COLUMNS.get(name)
        if dtype is None:
            continue
        col = pl.col(name)
        if name == "event_time":
            current = events.schema[name]
            if current == pl.String:
                col = col.str.to_datetime(time_zone="UTC")
            elif isinstance(current, pl.Datetime) and current.time_zone is None:
                col = col.dt.replace_time_zone("UTC")
            casts.append(col.dt.convert_time_zone("UTC").cast(dtype).alias(name))
        else:
            casts.append(col.cast(dtype).alias(name))
    return events.with_columns(casts)


def decide(bundle, frame: Any, top_k: int = 5) -> pl.DataFrame:
    """One decision per input row, in input order: event_id, score, threshold, alert, reasons."""
    events = canonical_events(frame)
    decided = bundle.score(events, top_k=top_k, explain="all")
    out = decided.select("event_id", "score", "threshold", "alert").with_columns(
        pl.Series("reasons", [one_line(t) for t in decided["top_features"].to_list()], pl.String))
    return events.select("event_id").join(out, on="event_id", how="left", maintain_order="left")


class TransactionScorer(PythonModel):
    """``predict(transactions) -> decisions``; the bundle is an artifact verified by its hash."""

    def __init__(self, bundle_sha256: str, top_k: int = 5):
        self.bundle_sha256 = bundle_sha256
        self.top_k = top_k
        self.bundle = None

    def load_context(self, context) -> None:
        self.bundle = ModelBundle.load(context.artifacts[BUNDLE_ARTIFACT], expected_hash=self.bundle_sha256)

    def predict(self, context, model_input, params=None):
        return decide(self.bundle, model_input, self.top_k).to_pandas()
