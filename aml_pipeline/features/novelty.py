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
from aml_pipeline.features.carried import CarriedFolds, drop_before
from aml_pipeline.features.graph import _pair_index
from aml_pipeline.features.windows import (SIDES, check_windows, duration_in, search, since, timeline,
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
        """The same columns for one event from its accounts' sent and received rows.

        Whether a row is new depends only on its account's earlier rows, so the new rows'
        times are folded once per row and carried from request to request
        (:class:`~aml_pipeline.features.carried.CarriedFolds`): a merchant's month of
        inflows is not gone through again for each payment it receives."""
        T, S, D = col["event_time"], col["src_account"], col["dst_account"]
        L, lookback = self.lookback, duration_us(self.lookback)
        windows = [(w, duration_us(w)) for w in self.new_windows]

        widest = max((width for _, width in windows), default=0)

        def folder(other: int) -> CarriedFolds:
            def step(state, r, _also) -> None:
                """One row into (latest instant per counterparty, the instant before it, times of the new rows)."""
                last, prev, new = state
                t, cp = r[T], r[other]
                seen = last.get(cp)
                if seen is None:
                    prior = None
                    last[cp] = t
                elif seen < t:
                    prior = prev[cp] = seen
                    last[cp] = t
                else:  # the same instant as the counterparty's latest row
                    prior = prev.get(cp)
                if prior is None or prior < t - lookback:
                    new.append(t)

            def head(state, rows, _also) -> None:
                """Rows before every window a request will count: only each counterparty's latest instant matters."""
                state[0].update({r[other]: r[T] for r in rows})  # time-ordered: the last write is the latest

            return CarriedFolds(lambda: ({}, {}, []), step, head=head)

        by_payee, by_payer = folder(D), folder(S)

        def new_times(folds: CarriedFolds, acc: str, rows, t: int) -> list[int]:
            last, prev, new = folds.through(acc, rows, t, head_until=t - widest)
            drop_before(new, t - widest)  # times no window reaches any more
            if rows and len(last) > 2 * len(rows) + 64:  # payers older than every row: new again anyway
                oldest = rows[0][T]
                for cp in [cp for cp, latest in last.items() if latest < oldest]:
                    del last[cp]
                    prev.pop(cp, None)
            return new

        def compute(ev, h, out: dict) -> None:
            sent = h.sent.get(ev.src, ())
            lo = ev.t - lookback
            out[f"pair_prior_{L}"] = sum(1 for r in since(sent, lo, T) if r[D] == ev.dst)
            for side, acc in (("src", ev.src), ("dst", ev.dst)):  # rows are time-ordered: the first in range is the oldest
                times = [x for x in (first_at(h.sent.get(acc, ()), T, lo), first_at(h.received.get(acc, ()), T, lo))
                         if x is not None]
                out[f"{side}_age_{L}"] = (ev.t - min(times)) / 1e6 if times else None
            tables = {"src_new_payees": (by_payee, ev.src, sent), "src_new_payers": (by_payer, ev.src, h.received.get(ev.src, ())),
                      "dst_new_payers": (by_payer, ev.dst, h.received.get(ev.dst, ()))}
            for name, (folds, acc, rows) in tables.items():
                new = new_times(folds, acc, rows, ev.t)
                for w, width in windows:
                    out[f"{name}_{w}"] = len(new) - bisect_left(new, ev.t - width)
        return compute


def first_at(rows, T: int, lo: int) -> int | None:
    """The time of the first of time-ordered ``rows`` at or after ``lo`` (None: none)."""
    rest = since(rows, lo, T)
    return rest[0][T] if rest else None


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
