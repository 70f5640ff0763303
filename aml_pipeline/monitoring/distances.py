"""Distances between two histograms over the same bins.

Both take counts (or shares) and normalise them, so callers pass raw counts. A bin empty
on one side would make PSI infinite, so PSI floors each share at ``eps`` (the usual
practice; the choice is documented in docs/monitoring.md). Jensen-Shannon needs no floor:
it is finite for any two distributions, symmetric and, with base-2 logarithms, between 0
(identical) and 1 (disjoint), which makes one alert level meaningful for every column.
"""

from __future__ import annotations

import numpy as np

#: Smallest share a bin counts with in PSI (an empty bin would give log(0)).
PSI_EPS = 1e-4


def shares(counts) -> np.ndarray:
    """Counts as shares summing to 1 (all zero stays all zero)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    return c / total if total > 0 else c


def psi(reference, current, eps: float = PSI_EPS) -> float:
    """Population stability index: sum over bins of (q - p) * ln(q / p), shares floored at eps.

    0 for identical histograms; the customary reading is < 0.1 stable, 0.1-0.25 a shift
    worth a look, > 0.25 a shift.
    """
    p = np.maximum(shares(reference), eps)
    q = np.maximum(shares(current), eps)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference, current) -> float:
    """Jensen-Shannon distance: sqrt of the JS divergence with base-2 logarithms, in [0, 1]."""
    p, q = shares(reference), shares(current)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return float(np.sqrt(max((kl(p) + kl(q)) / 2, 0.0)))
