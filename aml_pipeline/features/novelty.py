"""Novelty and age: new relationships and young accounts.

Mules are recruited for the scheme: their accounts are young or newly active, and a
laundering hop is often the first payment ever between its two accounts, while a
household pays the same landlord, shop and friends month after month. Per payment
a -> b at t, looking back ``lookback`` (strictly earlier events only):

- ``pair_prior_{L}``: earlier payments a -> b in ``[t - L, t)``; 0 is a first payment
  between the pair as far as the look-back sees;
- ``src_age_{L}`` / ``dst_age_{L}``: seconds since the account's earliest event (either
  side) in ``[t - L, t)``, capped by the look-back; null when it has none;
- ``src_new_payees_{w}``: how many of a's payments in ``[t - w, t)`` went to a receiver a
  had not paid in the look-back before that payment (new counterparties over w).

The last needs each of those payments' own look-back, so the step's history reaches
``lookback`` plus the longest of ``new_windows``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.graph import _pair_index
from aml_pipeline.features.windows import SIDES, check_windows, duration_in, duration_us, search, timeline, to_microseconds


@register
@dataclass
class Novelty(FeatureStep):
    """Columns ``pair_prior_{L}``, ``{src,dst}_age_{L}`` and ``src_new_payees_{w}``."""

    lookback: str = "30d"
    new_windows: list[str] = field(default_factory=lambda: ["24h", "7d"])

    kind = "novelty"
    uses_history = True

    def __post_init__(self) -> None:
        check_windows([self.lookback], "lookback")
        check_windows(self.new_windows, "new_windows")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account"]

    def output_columns(self) -> dict[str, pl.DataType]:
        L = self.lookback
        cols: dict[str, pl.DataType] = {f"pair_prior_{L}": pl.Int64, f"src_age_{L}": pl.Float64, f"dst_age_{L}": pl.Float64}
        return cols | {f"src_new_payees_{w}": pl.Int64 for w in self.new_windows}

    def history_window(self) -> str | None:
        return f"{duration_us(self.lookback) + max(duration_us(w) for w in self.new_windows)}us"

    # -- batch form ------------------------------------------------------------------------
    def _prior(self, tl) -> np.ndarray:
        """Per row of the timeline: earlier payments of the same pair in ``[t - L, t)``."""

        def build() -> np.ndarray:
            rows, labels, index = _pair_index(tl)
            group = search(labels, tl.src[rows] * tl.n_accounts + tl.dst[rows])
            start = index.shifted(index.keys, group, tl.t[rows], -duration_in(self.lookback, tl.unit))
            prior = np.empty(tl.n, dtype=np.int64)
            prior[rows] = index.before(index.keys) - index.before(start)
            return prior

        return tl.memo(("pair_prior", self.lookback), build)

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        L = self.lookback
        prior = self._prior(tl)
        cols = tl.columns("pairs_out", {f"pair_prior_{L}": (prior[tl.scored("pairs_out")], pl.Int64)})
        for side in SIDES:
            q = tl.queries(side)
            first = np.full(q.rows.size, np.iinfo(np.int64).max)
            for flow in ("out", "in"):
                lo, hi = tl.window(flow, side, L)
                t = tl.view(flow).t
                has = lo < hi
                first = np.where(has, np.minimum(first, t[np.where(has, lo, 0)] if t.size else first), first)
            found = first != np.iinfo(np.int64).max
            age = np.where(found, to_microseconds(q.t - np.where(found, first, q.t), tl.unit) / 1e6, np.nan)
            cols += tl.columns(side, {f"{side}_age_{L}": (age, pl.Float64)})
        view = tl.view("out")
        new = np.concatenate([[0], np.cumsum(prior[view.order] == 0)])
        for w in self.new_windows:
            lo, hi = tl.window("out", "src", w)
            cols += tl.columns("src", {f"src_new_payees_{w}": (new[hi] - new[lo], pl.Int64)})
        by_name = {c.name: c for c in cols}
        return frame.hstack([by_name[c] for c in self.output_columns()])

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from its accounts' sent and received rows."""
        T, D = col["event_time"], col["dst_account"]
        L, lookback = self.lookback, duration_us(self.lookback)
        windows = [(w, duration_us(w)) for w in self.new_windows]

        def compute(ev, h, out: dict) -> None:
            sent = h.sent.get(ev.src, ())
            lo = ev.t - lookback
            out[f"pair_prior_{L}"] = sum(1 for r in sent if r[T] >= lo and r[D] == ev.dst)
            for side, acc in (("src", ev.src), ("dst", ev.dst)):
                times = [r[T] for table in (h.sent, h.received) for r in table.get(acc, ()) if r[T] >= lo]
                out[f"{side}_age_{L}"] = (ev.t - min(times)) / 1e6 if times else None
            by_payee: dict = {}
            for r in sent:
                by_payee.setdefault(r[D], []).append(r[T])
            for w, width in windows:
                start = ev.t - width
                new = 0
                for r in sent:
                    if r[T] >= start:
                        times = by_payee[r[D]]
                        new += bisect_left(times, r[T]) == bisect_left(times, r[T] - lookback)
                out[f"src_new_payees_{w}"] = new
        return compute
