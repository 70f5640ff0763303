"""The reference a bundle keeps for monitoring: histograms of its validation window.

Why the validation window: it is the most recent data the model was judged on, and its
rolling features are warmed up (the first days of the training window lack the history a
7- or 30-day window needs, so their counts and ages are lower than in any later window
and every later window would look drifted against them). The reference is computed at
training time from the feature table, never re-derived at monitoring time (the bundle is
the unit of deployment), and stored in the bundle as ``reference.json``, hashed in its
manifest like every other part.

Contents: per feature column and for the score, the histogram of :mod:`.histograms`
(numeric: quantile edges, counts, missing, min and max; categorical: counts per value),
the jurisdiction as a categorical column, and the alert rate overall and per jurisdiction
under the bundle's thresholds.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from aml_pipeline.monitoring.histograms import REFERENCE_BINS, categorical_reference, numeric_reference

FORMAT = 1
#: Canonical columns the scored outputs carry besides the features, judged as categories.
CONTEXT_CATEGORICAL = ("jurisdiction",)


def categorical_columns(plan) -> list[str]:
    """Feature columns that are category codes (compared value by value, with novelty)."""
    return [c for _, step in plan.steps if step.kind == "category_codes" for c in step.output_columns()]


def floats(series: pl.Series) -> np.ndarray:
    """A column as float64 with nulls as NaN."""
    return series.cast(pl.Float64).fill_null(float("nan")).to_numpy()


def build_reference(frame: pl.DataFrame, feature_columns: list[str], categorical: list[str], score: np.ndarray,
                    alert: np.ndarray, bins: int = REFERENCE_BINS) -> dict:
    """The reference of ``frame`` (the validation window's features, its scores and alerts)."""
    columns: dict[str, dict] = {}
    for c in feature_columns:
        columns[c] = (categorical_reference(frame[c].to_list()) if c in categorical
                      else numeric_reference(floats(frame[c]), bins))
    for c in CONTEXT_CATEGORICAL:
        if c in frame.columns:
            columns[c] = categorical_reference(frame[c].to_list())
    times = frame["event_time"] if "event_time" in frame.columns else None
    if times is not None and getattr(times.dtype, "time_zone", None) is None:
        times = times.dt.replace_time_zone("UTC")  # Spark hands back naive UTC times
    jur = frame["jurisdiction"].to_numpy() if "jurisdiction" in frame.columns else np.full(frame.height, "*")
    alert = np.asarray(alert, dtype=bool)
    per_jur = {}
    for j in sorted(set(jur.tolist())):
        m = jur == j
        per_jur[str(j)] = {"events": int(m.sum()), "alerts": int(alert[m].sum()), "alert_rate": float(alert[m].mean())}
    return {
        "format": FORMAT,
        "window": {"split": "valid", "events": frame.height,
                   "start": None if times is None or not frame.height else times.min().isoformat(),
                   "end": None if times is None or not frame.height else times.max().isoformat()},
        "bins": bins,
        "columns": columns,
        "score": numeric_reference(np.asarray(score, dtype=np.float64), bins),
        "alerts": {"events": frame.height, "alerts": int(alert.sum()),
                   "alert_rate": float(alert.mean()) if frame.height else None, "per_jurisdiction": per_jur},
    }
