"""Ranking and alerting metrics on plain numpy arrays.

Everything here is a pure function of ``y`` (0/1 labels) and ``score`` (floats in [0, 1],
higher = more suspicious) so that thresholds, reports and tests share one definition of
"precision at a threshold". An event *alerts* when ``score >= threshold``; every function
uses that same comparison, which is what lets a threshold chosen here reproduce its
figures exactly when it is applied elsewhere.

Conventions (stated once, used everywhere):

* precision of zero alerts is 0.0 (an alert budget that raises nothing catches nothing);
* recall and F1 are None when there are no positives (undefined, not "0% caught");
* PR-AUC and ROC-AUC are None when ``y`` has a single class (sklearn would raise or warn).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

#: Name under which positives without a known typology are counted.
UNKNOWN_TYPOLOGY = "unknown"


def as_labels(y) -> np.ndarray:
    """``y`` as a 1-D int8 array of 0/1 (bools and floats 0.0/1.0 are accepted)."""
    arr = np.asarray(y).reshape(-1)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (no nulls)")
    return arr.astype(np.int8)


def as_scores(score) -> np.ndarray:
    """``score`` as a 1-D float64 array (float32 model output widens exactly)."""
    return np.asarray(score, dtype=np.float64).reshape(-1)


def _check_same_length(*arrays: np.ndarray) -> None:
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"arrays have different lengths: {sorted(sizes)}")


def _two_classes(y: np.ndarray) -> bool:
    return y.size > 0 and 0 < int(y.sum()) < y.size


def pr_auc(y, score) -> float | None:
    """Average precision (sklearn's step-wise PR-AUC); None when ``y`` has one class.

    Average precision rather than trapezoidal PR-AUC because it does not interpolate
    optimistically between operating points.
    """
    y, score = as_labels(y), as_scores(score)
    _check_same_length(y, score)
    if not _two_classes(y):
        return None
    return float(average_precision_score(y, score))


def roc_auc(y, score) -> float | None:
    """Area under the ROC curve; None when ``y`` has one class."""
    y, score = as_labels(y), as_scores(score)
    _check_same_length(y, score)
    if not _two_classes(y):
        return None
    return float(roc_auc_score(y, score))


def alert_metrics(y, alert) -> dict:
    """Confusion counts and rates of a given boolean alert vector.

    Shared by :func:`at_threshold` and by reports that apply per-jurisdiction thresholds
    (where no single threshold exists). Precision of zero alerts is 0.0; recall and F1
    are None when there are no positives.
    """
    y = as_labels(y).astype(bool)
    alert = np.asarray(alert, dtype=bool).reshape(-1)
    _check_same_length(y, alert)
    tp = int(np.count_nonzero(alert & y))
    fp = int(np.count_nonzero(alert & ~y))
    fn = int(np.count_nonzero(~alert & y))
    alerts = tp + fp
    positives = tp + fn
    precision = tp / alerts if alerts else 0.0
    recall = tp / positives if positives else None
    # 2TP / (alerts + positives) equals 2PR / (P + R) but is computed from counts in one
    # division, so it matches PrTable.f1 bit for bit (the best-F1 fallback relies on that).
    f1 = None if recall is None else 2 * tp / (alerts + positives)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "alerts": alerts,
        "alert_rate": alerts / y.size if y.size else 0.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def at_threshold(y, score, threshold: float) -> dict:
    """Precision, recall, F1, alert counts when every ``score >= threshold`` alerts.

    The precision of zero alerts is defined as 0.0 (not NaN), so a threshold above every
    score is a valid, useless operating point rather than an error. Recall and F1 are
    None when ``y`` has no positives.
    """
    score = as_scores(score)
    return alert_metrics(y, score >= float(threshold))


@dataclass(frozen=True)
class PrTable:
    """Precision/recall at every distinct score, thresholds in decreasing order.

    Row ``i`` describes the alert set ``score >= thresholds[i]``; only distinct scores are
    candidates because any threshold between two of them gives the same alerts as the
    next higher score.
    """

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    positives: int

    @property
    def alerts(self) -> np.ndarray:
        return self.tp + self.fp

    @property
    def precision(self) -> np.ndarray:
        return self.tp / self.alerts  # alerts >= 1 on every row by construction

    @property
    def recall(self) -> np.ndarray:
        if not self.positives:
            return np.zeros(self.tp.shape, dtype=np.float64)
        return self.tp / self.positives

    @property
    def f1(self) -> np.ndarray:
        denom = self.alerts + self.positives  # F1 = 2TP / (alerts + positives)
        return np.divide(2.0 * self.tp, denom, out=np.zeros(self.tp.shape), where=denom > 0)


def pr_table(y, score) -> PrTable:
    """Cumulative TP/FP at each distinct score, in one sort (vectorised, O(n log n))."""
    y, score = as_labels(y), as_scores(score)
    _check_same_length(y, score)
    if np.isnan(score).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-score, kind="stable")
    s, t = score[order], y[order].astype(np.int64)
    tp_cum = np.cumsum(t)
    fp_cum = np.cumsum(1 - t)
    # The last row of each run of equal scores holds the counts for "score >= that value".
    last = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, dtype=bool)
    return PrTable(thresholds=s[last], tp=tp_cum[last], fp=fp_cum[last], positives=int(t.sum()))


def recall_at_precision(y, score, targets) -> dict[str, float | None]:
    """For each target precision, the highest recall of any threshold reaching it.

    Keys are ``str(float(target))`` ("0.5", "0.8"); the value is None when no threshold
    reaches the target (including when there are no positives).
    """
    table = pr_table(y, score)
    out: dict[str, float | None] = {}
    precision, recall = table.precision, table.recall
    for target in targets:
        ok = precision >= float(target)
        key = str(float(target))
        out[key] = float(recall[ok].max()) if table.positives and ok.any() else None
    return out


def typology_labels(typology, n: int | None = None) -> np.ndarray:
    """Typologies as a str array, with None/NaN/empty mapped to :data:`UNKNOWN_TYPOLOGY`."""
    if typology is None:
        return np.full(n or 0, UNKNOWN_TYPOLOGY, dtype=object)
    arr = np.asarray(typology, dtype=object).reshape(-1)
    missing = np.equal(arr, None) | (arr != arr) | (arr == "")  # arr != arr finds NaN
    return np.where(missing, UNKNOWN_TYPOLOGY, arr).astype(str)


def per_typology_recall(y, alert, typology) -> dict[str, dict]:
    """Positives, detected and recall for each typology that occurs among positives.

    Positives without a typology are counted under ``"unknown"`` so that the counts add up
    to the total number of positives. Negatives' typologies are ignored.
    """
    y = as_labels(y).astype(bool)
    alert = np.asarray(alert, dtype=bool).reshape(-1)
    typ = typology_labels(typology, y.size)
    _check_same_length(y, alert, typ)
    names, positives = np.unique(typ[y], return_counts=True)
    names_hit, detected = np.unique(typ[y & alert], return_counts=True)
    hits = dict(zip(names_hit.tolist(), detected.tolist()))
    out = {}
    for name, pos in zip(names.tolist(), positives.tolist()):
        det = int(hits.get(name, 0))
        out[name] = {"positives": int(pos), "detected": det, "recall": det / pos}
    return out
