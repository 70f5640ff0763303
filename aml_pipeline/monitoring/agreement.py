"""How far a shadow bundle agrees with the live one on the same decisions.

The decision log of a service with ``deploy.shadow`` carries, per event, the live score
and alert and the shadow's (``shadow_score``, ``shadow_alert``). Two figures answer
"would the challenger change the work of the reviewers?": the alert overlap (alerts both
raise over alerts either raises, with the counts each raises alone) and the Spearman rank
correlation of the scores (the order in which cases would be looked at).
"""

from __future__ import annotations

import polars as pl

COLUMNS = ("shadow_score", "shadow_alert")


def agreement(window: pl.DataFrame) -> dict | None:
    """Alert overlap and rank correlation over the events a shadow scored; None without one."""
    if not all(c in window.columns for c in COLUMNS):
        return None
    w = window.filter(pl.col("shadow_score").is_not_null())
    if w.height == 0:
        return None
    live, shadow = pl.col("alert"), pl.col("shadow_alert")
    counts = w.select(both=(live & shadow).sum(), live_only=(live & ~shadow).sum(), shadow_only=(~live & shadow).sum(),
                      neither=(~live & ~shadow).sum()).row(0, named=True)
    either = counts["both"] + counts["live_only"] + counts["shadow_only"]
    rho = w.select(pl.corr("score", "shadow_score", method="spearman")).item() if w.height > 1 else None
    rho = None if rho is None or rho != rho else float(rho)  # constant scores have no rank order (NaN)
    versions = sorted({str(v) for v in w["shadow_model_version"].to_list()}) if "shadow_model_version" in w.columns else []
    return {"events": w.height, **{k: int(v) for k, v in counts.items()},
            "live_alerts": counts["both"] + counts["live_only"], "shadow_alerts": counts["both"] + counts["shadow_only"],
            "alert_overlap": counts["both"] / either if either else None,
            "decisions_agree": (counts["both"] + counts["neither"]) / w.height,
            "rank_correlation": rho, "shadow_versions": versions}
