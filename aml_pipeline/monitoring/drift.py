"""Each column and the score of a window, judged against the bundle's reference.

Per column: PSI and Jensen-Shannon distance over the same bins (numeric: the reference's
fine quantile bins merged into ``bins`` groups, plus a missing bin; categorical: the
reference's values, a bin for new ones and a missing bin), the rise of the missing share,
the share of values outside the reference's [min, max] (numeric) and the share of values
the reference never saw (categorical). Each measure has a warn and an alert level
(``monitor.psi`` ...); a column's status is the worst level any of its measures reaches.
Excluded columns are measured and shown, never judged. Drift is flagged when a judged
column, or the score, reaches an alert level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import polars as pl

from aml_pipeline.errors import ConfigError
from aml_pipeline.monitoring.distances import js_distance, psi
from aml_pipeline.monitoring.histograms import NEW, categorical_counts, category_key, merge, merge_groups, numeric_counts
from aml_pipeline.monitoring.reference import floats

MEASURES = ("psi", "js", "missing", "out_of_range", "novelty")
RANK = {"ok": 0, "warn": 1, "alert": 2}


@dataclass(frozen=True)
class Levels:
    """Warn and alert level of each measure (``monitor.<measure>.warn/alert``)."""

    levels: Mapping[str, tuple[float, float]]

    def status(self, measure: str, value: float | None) -> str:
        if value is None or not np.isfinite(value):
            return "ok"
        warn, alert = self.levels[measure]
        return "alert" if value >= alert else "warn" if value >= warn else "ok"


def levels_of(m) -> Levels:
    """monitor.<measure>.warn/alert (the ``monitor`` config node) checked: numbers >= 0 with warn <= alert."""
    out = {}
    for name in MEASURES:
        node = m[name]
        warn, alert = node.warn, node.alert
        for key, value in (("warn", warn), ("alert", alert)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"monitor.{name}.{key} must be a number >= 0 (got {value!r})")
        if warn > alert:
            raise ConfigError(f"monitor.{name}.warn ({warn}) must not exceed monitor.{name}.alert ({alert})")
        out[name] = (float(warn), float(alert))
    return Levels(out)


def numeric_drift(ref: dict, values: np.ndarray, bins: int) -> dict:
    """Measures of a numeric column (float values, NaN = missing) against its reference histogram."""
    fine_ref = np.asarray(ref["counts"], dtype=np.float64)
    fine_cur = numeric_counts(ref["edges"], values)
    groups = merge_groups(fine_ref, bins)
    edges = np.asarray(ref["edges"], dtype=np.float64)
    # upper edge of each group (the last fine edge inside it); the last group is open
    last_fine = np.array([np.flatnonzero(groups == g).max() for g in range(int(groups.max()) + 1)]) if groups.size else []
    upper = [float(edges[i]) if i < len(edges) else None for i in last_fine]
    ref_h = np.append(merge(fine_ref, groups), ref["missing"])
    cur_missing = int(np.isnan(values).sum())
    cur_h = np.append(merge(fine_cur, groups), cur_missing)
    n = values.size
    present = values[~np.isnan(values)]
    lo, hi = ref.get("min"), ref.get("max")
    outside = int(((present < lo) | (present > hi)).sum()) if lo is not None and present.size else 0
    return {"kind": "numeric", "n": int(n), "psi": psi(ref_h, cur_h), "js": js_distance(ref_h, cur_h),
            "missing_reference": ref["missing"] / max(ref["n"], 1), "missing_current": cur_missing / max(n, 1),
            "out_of_range": outside / max(present.size, 1) if present.size else 0.0, "novelty": None,
            "histogram": {"upper_edges": upper, "reference": ref_h.tolist(), "current": cur_h.tolist(),
                          "last_bin": "missing"},
            "min": float(present.min()) if present.size else None, "max": float(present.max()) if present.size else None,
            "reference_min": lo, "reference_max": hi}


def categorical_drift(ref: dict, values: list) -> dict:
    """Measures of a categorical column against its reference counts."""
    counts, new, missing = categorical_counts(ref, values)
    labels = [*counts.keys(), "missing"]
    ref_h = np.array([*[ref["counts"].get(k, 0) for k in counts if k != NEW], 0, ref["missing"]], dtype=np.float64)
    cur_h = np.array([*counts.values(), missing], dtype=np.float64)
    n = len(values)
    present = n - missing
    new_values = sorted({category_key(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))}
                        - set(ref["counts"]))
    return {"kind": "categorical", "n": n, "psi": psi(ref_h, cur_h), "js": js_distance(ref_h, cur_h),
            "missing_reference": ref["missing"] / max(ref["n"], 1), "missing_current": missing / max(n, 1),
            "out_of_range": None, "novelty": new / max(present, 1) if present else 0.0,
            "new_values": new_values[:20],
            "histogram": {"labels": labels, "reference": ref_h.tolist(), "current": cur_h.tolist()}}


def judge(result: dict, levels: Levels, judged: bool) -> dict:
    """Each measure's status and the column's (the worst), with the measures that reached it."""
    values = {"psi": result["psi"], "js": result["js"],
              "missing": result["missing_current"] - result["missing_reference"],
              "out_of_range": result["out_of_range"], "novelty": result["novelty"]}
    statuses = {m: levels.status(m, v) for m, v in values.items()}
    worst = max(statuses.values(), key=RANK.__getitem__)
    return {**result, "missing_rise": values["missing"], "statuses": statuses, "judged": judged,
            "status": worst if judged else "excluded",
            "reasons": [m for m, s in statuses.items() if s == worst and s != "ok"]}


def column_values(window: pl.DataFrame, name: str, ref: dict):
    return floats(window[name]) if ref["kind"] == "numeric" else window[name].to_list()


def drift_report(reference: dict, window: pl.DataFrame, levels: Levels, bins: int, exclude: list[str]) -> dict:
    """Every reference column and the score of ``window`` judged; the drifted ones named."""
    columns = {}
    for name, ref in reference["columns"].items():
        if name not in window.columns:
            continue
        values = column_values(window, name, ref)
        result = numeric_drift(ref, values, bins) if ref["kind"] == "numeric" else categorical_drift(ref, values)
        columns[name] = judge(result, levels, name not in exclude)
    score = judge(numeric_drift(reference["score"], floats(window["score"]), bins), levels, "score" not in exclude)
    ranked = sorted(columns, key=lambda n: -(columns[n]["psi"] if np.isfinite(columns[n]["psi"]) else -1))
    drifted = [n for n in ranked if columns[n]["status"] == "alert"]  # the largest PSI first
    warned = [n for n in ranked if columns[n]["status"] == "warn"]
    return {"columns": columns, "score": score, "drifted_columns": drifted, "warned_columns": warned,
            "top_psi": [(n, columns[n]["psi"]) for n in ranked[:10]],
            "drift": bool(drifted) or score["status"] == "alert"}
