"""Performance over the events whose label had time to arrive.

Laundering labels come late: a case is investigated, a report filed, weeks after the
payment. Judging a window's precision today would count every alert whose case is still
open as a false positive. So an event counts for performance only once it is *mature*:
``event_time + label_delay <= as_of``. For a mature event the label is the latest one
known by ``as_of`` (``labelled_at <= as_of``); a mature event without a label counts as
negative, since its label had the whole delay to arrive. Immature events are left out
and the report says how many there are: the share of the window not yet judged.

Recall is "where knowable": the share of known positives among mature events that were
alerted; laundering nobody ever reported stays unknown to any monitor.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from aml_pipeline.evaluation.metrics import pr_auc
from aml_pipeline.labels import COLUMNS, read_labels

# read_labels lives with the rest of the labels-file code, which training (source.labels)
# and the workbench's export use too.
__all__ = ["COLUMNS", "mature_frame", "performance", "read_labels"]


def mature_frame(window: pl.DataFrame, labels: pl.DataFrame, as_of: datetime, delay: timedelta) -> pl.DataFrame:
    """The window's events with ``mature`` and ``y`` (the label known by as_of, 0 when none)."""
    known = (labels.filter(pl.col("labelled_at") <= as_of).sort("labelled_at")
             .unique("event_id", keep="last").select("event_id", "label", "labelled_at"))
    return (window.select("event_id", "event_time", "score", "alert")
            .join(known, on="event_id", how="left", maintain_order="left")
            .with_columns(mature=pl.col("event_time") <= as_of - delay,
                          y=pl.col("label").fill_null(0).cast(pl.Int8)))


def _block(frame: pl.DataFrame) -> dict:
    """Precision of alerts, recall and PR-AUC of the mature events of ``frame``."""
    m = frame.filter(pl.col("mature"))
    y, alert = m["y"].to_numpy(), m["alert"].to_numpy().astype(bool)
    tp = int((alert & (y == 1)).sum())
    alerts, positives = int(alert.sum()), int(y.sum())
    return {"mature_events": m.height, "positives": positives, "alerts": alerts, "true_alerts": tp,
            "precision": tp / alerts if alerts else None, "recall": tp / positives if positives else None,
            "pr_auc": pr_auc(y, m["score"].to_numpy()) if m.height else None}


def performance(window: pl.DataFrame, labels: pl.DataFrame, as_of: datetime, delay: timedelta) -> dict:
    """Performance over mature events, how much of the window is immature, and per day."""
    frame = mature_frame(window, labels, as_of, delay)
    n = frame.height
    immature = int((~frame["mature"]).sum())
    days = []
    for (day,), part in frame.group_by(pl.col("event_time").dt.date(), maintain_order=True):
        b = _block(part)
        days.append({"day": day.isoformat(), "events": part.height, "mature_share": b["mature_events"] / part.height,
                     "alerts": int(part["alert"].sum()), "precision": b["precision"], "true_alerts": b["true_alerts"],
                     "mature_alerts": b["alerts"]})
    late = frame.filter(pl.col("labelled_at").is_not_null()
                        & (pl.col("labelled_at") > pl.col("event_time") + delay)).height
    return {"as_of": as_of.isoformat(), "label_delay_seconds": int(delay.total_seconds()), "events": n, "immature_events": immature,
            "immature_share": immature / n if n else None,
            "mature_until": (as_of - delay).isoformat(),
            "labels_known": int(frame["label"].is_not_null().sum()), "labels_after_delay": late,
            **_block(frame), "per_day": sorted(days, key=lambda d: d["day"])}
