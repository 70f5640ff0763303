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
  had not paid in the look-back before that payment (new counterparties over w);
- ``src_new_payers_{w}`` / ``dst_new_payers_{w}``: how many of the sender's / receiver's
  inflows in ``[t - w, t)`` came from a payer that had not paid it in the look-back before.

Recurrence is what most legitimate look-alikes of a typology share: payroll, rent, bills
and treasury sweeps repeat the same relationships month after month, while a scheme's
hops are one-off. The last three need each of those payments' own look-back, so the step's
history reaches ``lookback`` plus the longest of ``new_windows``.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.graph import _pair_index
from aml_pipeline.features.windows import (SIDES, before, check_windows, duration_in, search, since, timeline,
                                           to_microseconds)
from aml_pipeline.timeutil import duration_us


@register
@dataclass
class Novelty(FeatureStep):
    """Columns ``pair_prior_{L}``, ``{src,dst}_age_{L}``, ``src_new_payees_{w}`` and ``{src,dst}_new_payers_{w}``."""

    lookback: str = "30d"
    new_windows: list[str] = field(default_factory=lambda: ["24h", "7d"])

    kind = "novelty"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        check_windows([self.lookback], "lookback")
        check_windows(self.new_windows, "new_windows")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account"]

    def output_columns(self) -> dict[str, pl.DataType]:
        L = self.lookback
        cols: dict[str, pl.DataType] = {f"pair_prior_{L}": pl.Int64, f"src_age_{L}": pl.Float64, f"dst_age_{L}": pl.Float64}
        for w in self.new_windows:
            cols |= {f"src_new_payees_{w}": pl.Int64, f"src_new_payers_{w}": pl.Int64, f"dst_new_payers_{w}": pl.Int64}
        return cols

    def history_window(self) -> str | None:
        return f"{duration_us(self.lookback) + max(duration_us(w) for w in self.new_windows)}us"

    # -- batch form ------------------------------------------------------------------------
    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        L = self.lookback
        prior = pair_prior(tl, L)
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
        new = {flow: np.concatenate([[0], np.cumsum(prior[tl.view(flow).order] == 0)]) for flow in ("out", "in")}
        for w in self.new_windows:
            for name, flow, side in (("src_new_payees", "out", "src"), ("src_new_payers", "in", "src"), ("dst_new_payers", "in", "dst")):
                lo, hi = tl.window(flow, side, w)
                cols += tl.columns(side, {f"{name}_{w}": (new[flow][hi] - new[flow][lo], pl.Int64)})
        by_name = {c.name: c for c in cols}
        return frame.hstack([by_name[c] for c in self.output_columns()])

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from its accounts' sent and received rows."""
        T, S, D = col["event_time"], col["src_account"], col["dst_account"]
        L, lookback = self.lookback, duration_us(self.lookback)
        windows = [(w, duration_us(w)) for w in self.new_windows]

        def compute(ev, h, out: dict) -> None:
            sent = h.sent.get(ev.src, ())
            lo = ev.t - lookback
            out[f"pair_prior_{L}"] = sum(1 for r in since(sent, lo, T) if r[D] == ev.dst)
            for side, acc in (("src", ev.src), ("dst", ev.dst)):  # rows are time-ordered: the first in range is the oldest
                times = [x for x in (first_at(h.sent.get(acc, ()), T, lo), first_at(h.received.get(acc, ()), T, lo))
                         if x is not None]
                out[f"{side}_age_{L}"] = (ev.t - min(times)) / 1e6 if times else None
            tables = {"src_new_payees": (sent, D), "src_new_payers": (h.received.get(ev.src, ()), S),
                      "dst_new_payers": (h.received.get(ev.dst, ()), S)}
            start = ev.t - max((width for _, width in windows), default=0)
            for name, (rows, other) in tables.items():
                # a row before start - lookback can be no counted row's prior within the lookback
                new = new_relationship_times(since(rows, start - lookback, T), other, T, start, lookback)
                for w, width in windows:
                    out[f"{name}_{w}"] = len(new) - bisect_left(new, ev.t - width)
        return compute


def first_at(rows, T: int, lo: int) -> int | None:
    """The time of the first of time-ordered ``rows`` at or after ``lo`` (None: none)."""
    rest = since(rows, lo, T)
    return rest[0][T] if rest else None


def new_relationship_times(rows, other: int, T: int, start: int, lookback: int) -> list[int]:
    """The times (ascending) of one account's time-ordered rows at or after ``start`` whose
    counterparty (at index ``other``) has no row in the ``lookback`` before them: the
    per-event form of ``pair_prior == 0``, counted over a window as the tail of this list
    after the window's start.

    Why this shape: a request needs it for several windows and three tables, on accounts
    with thousands of rows. A row is new exactly when the latest earlier instant of its
    counterparty (same-instant rows never count) is missing or older than ``lookback``.
    Before ``start`` only each counterparty's latest time matters (one dict built in C);
    from ``start`` on, one dict of (latest instant, the instant before it) per counterparty
    replaces sorted time lists and bisections."""
    latest_before = {r[other]: r[T] for r in before(rows, start, T)}  # time-ordered: the last write is the latest
    last: dict = {}
    new = []
    for r in since(rows, start, T):
        t, cp = r[T], r[other]
        seen = last.get(cp)
        if seen is None:
            prior = latest_before.get(cp)
            last[cp] = (t, prior)
        elif seen[0] < t:
            prior = seen[0]
            last[cp] = (t, prior)
        else:  # the same instant as the counterparty's latest row
            prior = seen[1]
        if prior is None or prior < t - lookback:
            new.append(t)
    return new


def pair_prior(tl, lookback: str) -> np.ndarray:
    """Per row of the timeline: earlier payments of the same (sender, receiver) pair in
    ``[t - lookback, t)`` (memoised on the timeline: flow matching reads it too)."""

    def build() -> np.ndarray:
        rows, labels, index = _pair_index(tl)
        group = search(labels, tl.src[rows] * tl.n_accounts + tl.dst[rows])
        start = index.shifted(index.keys, group, tl.t[rows], -duration_in(lookback, tl.unit))
        prior = np.empty(tl.n, dtype=np.int64)
        prior[rows] = index.before(index.keys) - index.before(start)
        return prior

    return tl.memo(("pair_prior", lookback), build)
