"""Alert volume and alert rate per day and per jurisdiction.

Reviewers work in days and markets, so that is how alert volume is counted; each
jurisdiction's rate sits beside the reference's (the validation window under the same
thresholds), which tells a market whose alerts doubled from one whose traffic did.
"""

from __future__ import annotations

import polars as pl


def per_day(window: pl.DataFrame) -> list[dict]:
    """Events, alerts and alert rate per UTC day of the window."""
    days = (window.group_by(pl.col("event_time").dt.date().alias("day"))
            .agg(pl.len().alias("events"), pl.col("alert").sum().alias("alerts"))
            .sort("day")
            .with_columns((pl.col("alerts") / pl.col("events")).alias("alert_rate")))
    return [{**r, "day": r["day"].isoformat()} for r in days.to_dicts()]


def per_jurisdiction(window: pl.DataFrame, reference: dict) -> list[dict]:
    """Events, alerts and alert rate per jurisdiction, with the reference's rate."""
    ref = (reference.get("alerts") or {}).get("per_jurisdiction") or {}
    rows = (window.group_by(pl.col("jurisdiction").fill_null("?"))
            .agg(pl.len().alias("events"), pl.col("alert").sum().alias("alerts"))
            .sort("jurisdiction")
            .with_columns((pl.col("alerts") / pl.col("events")).alias("alert_rate")))
    return [{**r, "reference_alert_rate": (ref.get(r["jurisdiction"]) or {}).get("alert_rate")} for r in rows.to_dicts()]


def alert_volume(window: pl.DataFrame, reference: dict) -> dict:
    n = window.height
    alerts = int(window["alert"].sum()) if n else 0
    return {"events": n, "alerts": alerts, "alert_rate": alerts / n if n else None,
            "reference_alert_rate": (reference.get("alerts") or {}).get("alert_rate"),
            "per_day": per_day(window), "per_jurisdiction": per_jurisdiction(window, reference)}
