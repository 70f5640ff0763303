"""Binning a column the same way for the reference and for every later window.

Numeric columns are cut at quantiles of the reference (fine bins, 50 by default), so each
bin holds about the same share of the reference and a shift anywhere in the range shows;
a heavy tail or a point mass (many zeros) only merges edges. Missing values (null, NaN)
are a bin of their own, so a column that starts going missing drifts too. The monitor
merges the fine bins into ``monitor.bins`` groups of about equal reference mass, so the
number of bins is a monitoring choice, not a training one.

Categorical columns (category codes, the jurisdiction) count each value; values the
reference never saw are pooled into one "new" bin and reported as novelty.
"""

from __future__ import annotations

import numpy as np

#: Quantile bins kept in a bundle's reference, merged into ``monitor.bins`` when monitoring.
REFERENCE_BINS = 50
#: The bin that pools categories the reference never saw.
NEW = "<new>"


def as_float(values) -> np.ndarray:
    """Values as float64, nulls as NaN."""
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64) if isinstance(values, list) \
        else np.asarray(values, dtype=np.float64)


def numeric_reference(values, bins: int = REFERENCE_BINS) -> dict:
    """Quantile edges of the non-missing values and the counts on them (bin i: edge[i-1] < x <= edge[i])."""
    x = as_float(values)
    present = x[~np.isnan(x)]
    finite = present[np.isfinite(present)]  # an infinite ratio is a value, but no edge or bound (JSON has no inf)
    edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins)) if finite.size else np.empty(0)
    counts = numeric_counts(edges, present)
    return {"kind": "numeric", "edges": edges.tolist(), "counts": counts.tolist(), "missing": int(x.size - present.size),
            "n": int(x.size), "min": float(finite.min()) if finite.size else None,
            "max": float(finite.max()) if finite.size else None}


def numeric_counts(edges, values) -> np.ndarray:
    """Counts of the non-missing values over the bins the edges make (len(edges) + 1 bins)."""
    x = as_float(values)
    x = x[~np.isnan(x)]
    return np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), x, side="left"),
                       minlength=len(edges) + 1).astype(np.int64)


def category_key(v) -> str:
    """A category as the JSON key it is stored under (integer-valued floats as integers)."""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def categorical_reference(values) -> dict:
    """Counts per category; missing values counted apart."""
    cats: dict[str, int] = {}
    missing = 0
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            missing += 1
        else:
            k = category_key(v)
            cats[k] = cats.get(k, 0) + 1
    return {"kind": "categorical", "counts": dict(sorted(cats.items())), "missing": missing, "n": len(values)}


def categorical_counts(reference: dict, values) -> tuple[dict[str, int], int, int]:
    """Current counts over the reference's categories plus :data:`NEW`, the new count and the missing count."""
    current = categorical_reference(values)
    known = reference["counts"]
    counts = {k: current["counts"].get(k, 0) for k in known}
    new = sum(c for k, c in current["counts"].items() if k not in known)
    counts[NEW] = new
    return counts, new, current["missing"]


def merge_groups(counts, k: int) -> np.ndarray:
    """For each fine bin, the index of its group: ``k`` consecutive groups of about equal mass.

    A bin joins the group its middle (in cumulative reference share) falls in; a point
    mass larger than 1/k stays one bin, so fewer than ``k`` groups can result (group ids
    stay consecutive).
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0 or c.size == 0:
        return np.zeros(c.size, dtype=np.int64)
    middle = (np.cumsum(c) - c / 2) / total
    raw = np.minimum((middle * k + 1e-9).astype(np.int64), k - 1)
    return np.unique(raw, return_inverse=True)[1].astype(np.int64)


def merge(counts, groups: np.ndarray) -> np.ndarray:
    """Fine counts summed per group."""
    return np.bincount(groups, weights=np.asarray(counts, dtype=np.float64),
                       minlength=int(groups.max()) + 1 if groups.size else 0)
