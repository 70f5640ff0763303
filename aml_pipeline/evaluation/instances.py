"""Instance- and account-level figures: what an investigations team actually sees.

Transaction-level recall counts every laundering transfer separately, so a fan-in of 40
transfers weighs forty times a two-hop pass-through, and catching 39 of the 40 transfers
of one scheme looks better than catching one transfer of each of ten schemes. A bank opens
a case per scheme and per customer, so besides the transaction figures we report:

* **instance recall** — per typology and overall, the share of laundering instances
  (positives grouped by ``instance_id``) with at least one alerted transaction. An
  instance is judged on its transactions inside the evaluated window only. Sources that
  do not say which instance a positive belongs to (PaySim) report it as unavailable.
* **alerts per account** — every alert is counted for each account it involves (its
  sender and its receiver, once when they are the same account): an investigator opens
  both. Mean and maximum over the accounts with at least one alert.
* **alerts on clean accounts** — alerts whose sender and receiver both took part in no
  laundering (neither end of any label-1 event of the evaluated window), and how many
  such clean accounts were alerted: the work that can only end in "no case".

Each figure is given for one alert set; :func:`instance_report` gives it at the operating
point (the bundle's per-jurisdiction thresholds, chosen on validation) and at the single
threshold reaching a target precision on the evaluated (test) window. The latter is a
bench figure (it picks its threshold with the test labels, like ``recall_at_precision``),
never an operating point.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from aml_pipeline.evaluation.metrics import UNKNOWN_TYPOLOGY, alert_metrics, as_labels, as_scores, pr_table

#: Columns :func:`instance_figures` reads (``typology`` and ``instance_id`` may be absent).
REQUIRED = ("src_account", "dst_account", "label")
UNAVAILABLE = "the source gives no instance_id (e.g. PaySim): instance recall is not available"


def has_instances(frame: pl.DataFrame) -> bool:
    """True when some positive of ``frame`` names its laundering instance."""
    if "instance_id" not in frame.columns:
        return False
    return frame.filter((pl.col("label") == 1) & pl.col("instance_id").is_not_null()).height > 0


def _instance_recall(frame: pl.DataFrame, alert: np.ndarray) -> dict:
    """Overall and per-typology share of instances with at least one alert."""
    typology = pl.col("typology") if "typology" in frame.columns else pl.lit(None, pl.String)
    per_instance = (
        frame.with_columns(pl.Series("_alert", alert))
        .filter((pl.col("label") == 1) & pl.col("instance_id").is_not_null())
        .group_by("instance_id")
        .agg(pl.col("_alert").any().alias("detected"),
             typology.cast(pl.String).drop_nulls().min().fill_null(UNKNOWN_TYPOLOGY).alias("typology"))
    )

    def counts(rows: pl.DataFrame) -> dict:
        n, hit = rows.height, int(rows["detected"].sum())
        return {"instances": n, "detected": hit, "recall": hit / n if n else None}

    by_type = {t: counts(per_instance.filter(pl.col("typology") == t))
               for t in sorted(per_instance["typology"].unique().to_list())}
    return {"overall": counts(per_instance), "per_typology": by_type}


def _account_figures(frame: pl.DataFrame, alert: np.ndarray) -> dict:
    """Alerts per alerted account and alerts on accounts with no laundering."""
    y = as_labels(frame["label"].to_numpy()).astype(bool)
    positives = frame.filter(pl.Series(y))
    dirty = pl.concat([positives["src_account"], positives["dst_account"]]).unique()
    alerted = frame.select("src_account", "dst_account").with_row_index("_event").filter(pl.Series(alert))
    # one row per (alert, account involved): a self-transfer counts its account once
    involved = pl.concat([
        alerted.select("_event", pl.col("src_account").alias("account")),
        alerted.select("_event", pl.col("dst_account").alias("account")),
    ]).unique()
    per_account = involved.group_by("account").len()
    clean_alerts = alerted.filter(~pl.col("src_account").is_in(dirty.implode()) & ~pl.col("dst_account").is_in(dirty.implode()))
    n_alerts = alerted.height
    return {
        "alerted_accounts": per_account.height,
        "alerts_per_account_mean": float(per_account["len"].mean()) if per_account.height else None,
        "alerts_per_account_max": int(per_account["len"].max()) if per_account.height else None,
        "laundering_accounts": dirty.len(),
        "clean_accounts_alerted": per_account.filter(~pl.col("account").is_in(dirty.implode())).height,
        "alerts_on_clean_accounts": clean_alerts.height,
        "clean_alert_share": clean_alerts.height / n_alerts if n_alerts else None,
    }


def instance_figures(frame: pl.DataFrame, alert) -> dict:
    """Transaction, instance and account figures of one alert set over ``frame``'s events.

    ``frame`` holds ``src_account, dst_account, label`` (and ``typology, instance_id`` when
    known) in the order of ``alert``. ``instance_recall`` is None when the source gives no
    instance ids.
    """
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"instance figures need columns {missing}")
    alert = np.asarray(alert, dtype=bool).reshape(-1)
    if alert.size != frame.height:
        raise ValueError(f"{alert.size} alerts for {frame.height} events")
    m = alert_metrics(frame["label"].to_numpy(), alert)
    return {
        "alerts": m["alerts"],
        "precision": m["precision"],
        "recall": m["recall"],
        "instance_recall": _instance_recall(frame, alert) if has_instances(frame) else None,
        "accounts": _account_figures(frame, alert),
    }


def threshold_at_precision(y, score, target: float) -> float | None:
    """The lowest threshold whose precision on (y, score) reaches ``target`` (the one with
    the most recall, as in ``recall_at_precision``); None when no threshold reaches it."""
    table = pr_table(y, score)
    ok = np.flatnonzero(table.precision >= float(target)) if table.positives else np.zeros(0, dtype=np.int64)
    return float(table.thresholds[ok[-1]]) if ok.size else None


def instance_report(frame: pl.DataFrame, score, operating_alert, precision: float = 0.5) -> dict:
    """The ``instances`` block of ``metrics.json``.

    ``operating_point``: the figures of ``operating_alert`` (the bundle's per-jurisdiction
    thresholds). ``at_precision``: the figures at the test threshold reaching
    ``precision``, with that threshold (None, and no figures, when it is never reached).
    """
    score = as_scores(score)
    threshold = threshold_at_precision(frame["label"].to_numpy(), score, precision)
    at = {"target_precision": float(precision), "threshold": threshold}
    if threshold is not None:
        at.update(instance_figures(frame, score >= threshold))
    available = has_instances(frame)
    n_instances = (frame.filter((pl.col("label") == 1) & pl.col("instance_id").is_not_null())["instance_id"].n_unique()
                   if available else None)
    return {
        "available": available,
        "note": None if available else UNAVAILABLE,
        "instances": n_instances,
        "operating_point": instance_figures(frame, operating_alert),
        "at_precision": at,
    }
