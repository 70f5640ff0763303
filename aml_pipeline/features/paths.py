"""Temporal paths: where a payment sits on a route money takes through several accounts.

Layering passes a sum on hop after hop, each hop keeping a small cut; scatter-gather
sends it from one origin over several intermediaries that all pay the same sink. Neither
shape is visible from one account's own history: both need the histories of the accounts
that paid it. Per payment ``u -> v`` of amount ``A`` at ``t`` (every row strictly earlier,
the same-instant rule):

- ``src_fwd_chain_{L}``: how many forwarding hops end in this payment, up to two. 1 when
  it passes on one of the sender's inflows ``x -> u`` of the last ``hop_lag`` ``L``
  (``band[0]·A1 <= A <= band[1]·A1``, ``x`` not ``u``; a self-payment is 0), 2 when that inflow itself passed on an inflow
  ``z -> x`` received within ``L`` before it (and inside ``[t - window, t)``): the third
  hop of a chain. A household paying rent from its salary makes 1s; a 2 needs the payer
  of the payer to have forwarded too.
- ``dst_in_fwd_{w}``: how many of the receiver's latest inflows of the window were
  forwards themselves (their sender had received, within ``L`` before, an amount they
  pass on): the sink of layered money collects forwards.
- ``dst_gather_routes_{w}``: the sink of scatter-gather. Over the origins ``a`` that paid
  this payment's sender within the window, the largest number of distinct routes
  ``a -> y -> v`` (``y`` any intermediary, this sender included) that reached the
  receiver in the window: one origin reaching one sink through many accounts. 0 when the
  sender had no payer in the window.

- ``dst_return_{w}``: how many of the receiver's latest payments of the window (to
  accounts other than this sender) this payment could be the return of, after up to
  ``cycle_hops - 1`` hops that each kept ``band`` of the amount:
  ``band[0]^(cycle_hops - 1)·B <= A <= band[1]·B`` for an earlier payment ``B`` of the
  receiver. Money that left an account comes back through others, a little less each
  hop: the closing payment of a cycle of any length up to ``cycle_hops``.

Cycles are not followed hop by hop beyond three (the graph step's ``cycle3``): the online
store and the Spark account partitions hold the histories of an event's accounts and of
the accounts that paid them (one hop out), and a 4-hop cycle would need the payers of the
payers' payers. ``dst_return`` sees a cycle of any length from its two ends instead.

Intermediaries ``x`` and ``y`` are never hubs (accounts that paid more than
``max_intermediary_degree`` distinct counterparties in the training window, fitted as
the graph step fits them): their histories are not expanded, and counting through a
payment processor would swamp the signal. Every window keeps only the latest
``max_rows`` rows, cut at whole instants, so a busy account costs bounded work and every
engine keeps the same rows. The batch form below is numpy on the plan's shared timeline;
:meth:`TemporalPaths.online` is the per-event form (online service, streaming scorer);
the Spark engine runs the batch form per account partition, whose halo carries the
payers' histories (:meth:`TemporalPaths.two_hop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from aml_pipeline.features.base import FeatureStep, register
from aml_pipeline.features.graph import hub_accounts, hub_mask, spark_hubs
from aml_pipeline.features.windows import (before, check_windows, distinct_pairs, duration_in, expand, last_instants,
                                           run_starts, tail_instants, timeline, window_rows)
from aml_pipeline.timeutil import duration_us


@register
@dataclass
class TemporalPaths(FeatureStep):
    """Columns ``src_fwd_chain_{hop_lag}``, ``dst_in_fwd_{window}``, ``dst_gather_routes_{window}``,
    ``dst_return_{window}``."""

    window: str = "7d"
    hop_lag: str = "48h"
    band: list[float] = field(default_factory=lambda: [0.85, 1.0])
    max_rows: int = 20
    max_intermediary_degree: int = 50
    cycle_hops: int = 6

    kind = "paths"
    engines = ("polars", "online", "spark")
    uses_history = True

    def __post_init__(self) -> None:
        check_windows([self.window], "window")
        check_windows([self.hop_lag], "hop_lag")
        if len(self.band) != 2 or not 0 < float(self.band[0]) <= float(self.band[1]):
            raise ValueError(f"band: give [low, high] with 0 < low <= high (got {self.band!r})")
        if int(self.max_rows) < 1:
            raise ValueError("max_rows must be >= 1")
        if int(self.max_intermediary_degree) < 1:
            raise ValueError("max_intermediary_degree must be >= 1")
        if int(self.cycle_hops) < 2:
            raise ValueError("cycle_hops must be >= 2")

    def required_columns(self) -> list[str]:
        return ["event_time", "src_account", "dst_account", "amount"]

    def output_columns(self) -> dict[str, pl.DataType]:
        return {f"src_fwd_chain_{self.hop_lag}": pl.Int64, f"dst_in_fwd_{self.window}": pl.Int64,
                f"dst_gather_routes_{self.window}": pl.Int64, f"dst_return_{self.window}": pl.Int64}

    def _reach_us(self) -> int:
        """How far back any row these columns read lies: an inflow of the window's oldest
        forward, ``hop_lag`` before it."""
        return duration_us(self.window) + duration_us(self.hop_lag)

    def history_window(self) -> str | None:
        return f"{self._reach_us()}us"

    def two_hop(self) -> tuple[str, list[str]] | None:
        return f"{self._reach_us()}us", list(getattr(self, "hubs_", []) or [])

    def two_hop_rows(self) -> int | None:
        return int(self.max_rows)

    def fit(self, frame: pl.DataFrame) -> "TemporalPaths":
        self.hubs_ = hub_accounts(frame, int(self.max_intermediary_degree))
        return self

    def spark_fit(self, train, ctx) -> dict:
        """:meth:`fit` in Spark: the same hubs as the graph step (:func:`~aml_pipeline.features.graph.spark_hubs`)."""
        return {"hubs_": spark_hubs(train, self.max_intermediary_degree, ctx)}

    # -- batch form ------------------------------------------------------------------------
    def _matches(self, paid: np.ndarray, got: np.ndarray) -> np.ndarray:
        low, high = (float(b) for b in self.band)
        with np.errstate(invalid="ignore"):
            return (paid >= low * got) & (paid <= high * got)

    def _inflows_before(self, tl, acc: np.ndarray, since: np.ndarray, until: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query number, position in the ``in`` view) of each account's latest ``max_rows``
        inflows in ``[since, until)`` (whole instants)."""
        vin = tl.view("in")
        lo = vin.index.before(vin.index.key(acc, since))
        hi = vin.index.before(vin.index.key(acc, until))
        starts = tl.memo(("run_starts", "in"), lambda: run_starts(vin.index.keys))
        return expand(last_instants(starts, lo, np.maximum(lo, hi), int(self.max_rows)), np.maximum(lo, hi))

    def _forward_flags(self, tl, is_hub: np.ndarray, lag: int) -> np.ndarray:
        """Per event (frame row): 1 when its sender, not a hub, received within ``hop_lag``
        before it an amount it passes on (a self-payment never counts)."""
        vin, vout = tl.view("in"), tl.view("out")
        which, pos = self._inflows_before(tl, vout.acc, vout.t - lag, vout.t)
        amounts = tl.values()
        hit = self._matches(amounts[vout.order][which], amounts[vin.order[pos]])
        flag = np.zeros(tl.n, dtype=np.int64)
        flag[vout.order[which[hit]]] = 1
        flag[(tl.src == tl.dst) | is_hub[tl.src]] = 0
        return flag

    def transform(self, frame: pl.DataFrame) -> pl.DataFrame:
        tl = timeline(frame)
        unit = tl.unit
        width, lag = duration_in(self.window, unit), duration_in(self.hop_lag, unit)
        is_hub = hub_mask(tl, self.hubs_)
        vin = tl.view("in")
        cols = tl.columns("src", {f"src_fwd_chain_{self.hop_lag}": (self._chain(tl, is_hub, width, lag), pl.Int64)})

        flag = tl.memo(("forward_flags", tuple(self.band), lag, int(self.max_rows), tuple(self.hubs_)),
                       lambda: self._forward_flags(tl, is_hub, lag))
        which, pos = window_rows(tl, "in", "dst", self.window, int(self.max_rows))
        qd = tl.queries("dst")
        fwd_in = np.bincount(which, weights=flag[vin.order[pos]], minlength=qd.rows.size).astype(np.int64)
        cols += tl.columns("dst", {f"dst_in_fwd_{self.window}": (fwd_in, pl.Int64),
                                   f"dst_gather_routes_{self.window}": (self._routes(tl, is_hub, width), pl.Int64),
                                   f"dst_return_{self.window}": (self._returns(tl), pl.Int64)})
        by_name = {c.name: c for c in cols}
        return frame.hstack([by_name[c] for c in self.output_columns()])

    def _chain(self, tl, is_hub: np.ndarray, width: int, lag: int) -> np.ndarray:
        """``src_fwd_chain`` for the queries in the sender's order."""
        q, vin, amounts = tl.queries("src"), tl.view("in"), tl.values()
        which, pos = window_rows(tl, "in", "src", self.hop_lag, int(self.max_rows))
        x = vin.cp[pos]
        first = self._matches(amounts[q.rows][which], amounts[vin.order[pos]]) & (x != q.acc[which])
        depth = np.zeros(q.rows.size, dtype=np.int64)
        depth[which[first]] = 1
        # the third hop: an inflow of x, within hop_lag before x -> u and inside the window
        which, pos = which[first & ~is_hub[x]], pos[first & ~is_hub[x]]
        s1 = vin.t[pos]
        w2, pos2 = self._inflows_before(tl, vin.cp[pos], np.maximum(s1 - lag, q.t[which] - width), s1)
        hop = self._matches(amounts[vin.order[pos[w2]]], amounts[vin.order[pos2]]) & (vin.cp[pos2] != vin.cp[pos[w2]])
        depth[which[w2[hop]]] = 2
        depth[q.acc == tl.dst[q.rows]] = 0  # a self-payment passes nothing on
        return depth

    def _return_band(self) -> tuple[float, float]:
        low, high = (float(b) for b in self.band)
        return low ** (int(self.cycle_hops) - 1), high

    def _returns(self, tl) -> np.ndarray:
        """``dst_return`` for the queries in the receiver's order."""
        qd, vout, amounts = tl.queries("dst"), tl.view("out"), tl.values()
        which, pos = window_rows(tl, "out", "dst", self.window, int(self.max_rows))
        low, high = self._return_band()
        paid, back = amounts[vout.order[pos]], amounts[qd.rows][which]
        with np.errstate(invalid="ignore"):
            hit = (back >= low * paid) & (back <= high * paid)
        hit &= (vout.cp[pos] != tl.src[qd.rows[which]]) & (vout.cp[pos] != qd.acc[which])
        return np.bincount(which[hit], minlength=qd.rows.size)

    def _routes(self, tl, is_hub: np.ndarray, width: int) -> np.ndarray:
        """``dst_gather_routes`` for the queries in the receiver's order."""
        qd, qs, vin = tl.queries("dst"), tl.queries("src"), tl.view("in")
        n = tl.n_accounts
        # origins: the payers a of the sender x in the window (x not a hub, a not x or v)
        which, pos = window_rows(tl, "in", "src", self.window, int(self.max_rows))
        row = qs.rows[which]
        a = vin.cp[pos]
        keep = ~is_hub[qs.acc[which]] & (a != tl.dst[row]) & (a != qs.acc[which])
        origins = np.unique(row[keep] * n + a[keep])
        # routes a -> y -> v: the receiver's inflows y -> v at s2, then y's inflows before s2
        which, pos = window_rows(tl, "in", "dst", self.window, int(self.max_rows))
        row = qd.rows[which]
        y = vin.cp[pos]
        keep = ~is_hub[y] & (y != qd.acc[which]) & (y != tl.src[row])
        which, pos, row, y = which[keep], pos[keep], row[keep], y[keep]
        w2, pos2 = self._inflows_before(tl, y, qd.t[which] - width, vin.t[pos])
        a = vin.cp[pos2]
        ok = (a != qd.acc[which[w2]]) & (a != y[w2])
        route = distinct_pairs(row[w2[ok]] * n + a[ok], y[w2[ok]])  # one per distinct intermediary y
        keys, counts = np.unique(route, return_counts=True)
        at = np.minimum(np.searchsorted(keys, origins), max(keys.size - 1, 0))
        found = keys[at] == origins if keys.size else np.zeros(origins.size, dtype=bool)
        best = np.zeros(tl.n, dtype=np.int64)
        np.maximum.at(best, origins // n, 1 + np.where(found, counts[at] if keys.size else 0, 0))
        return best[qd.rows]

    # -- per-event form ----------------------------------------------------------------------
    def online(self, col: dict[str, int]):
        """The same columns for one event from the store's rows (``col``: where each column
        sits in a stored row): the event's accounts' received rows and those of the
        accounts that paid them (the store's 1-hop expansion)."""
        T, S, D, A = col["event_time"], col["src_account"], col["dst_account"], col["amount"]
        width, lag, cap = duration_us(self.window), duration_us(self.hop_lag), int(self.max_rows)
        low, high = (float(b) for b in self.band)
        hubs = frozenset(getattr(self, "hubs_", []) or [])
        names = list(self.output_columns())
        back_low, back_high = self._return_band()

        def passes(paid, got) -> bool:
            return paid is not None and got is not None and low * got <= paid <= high * got

        def inflows(h, acc: str, since: int, until: int) -> list:
            return tail_instants(before(h.received.get(acc, ()), until, T), since, cap, T)

        def compute(ev, h, out: dict) -> None:
            t, u, v = ev.t, ev.src, ev.dst
            depth = 0
            for r1 in tail_instants(h.received.get(u, ()), t - lag, cap, T):
                x = r1[S]
                if x == u or not passes(ev.amount, r1[A]):
                    continue
                depth = max(depth, 1)
                if x not in hubs and any(r0[S] != x and passes(r1[A], r0[A])
                                         for r0 in inflows(h, x, max(r1[T] - lag, t - width), r1[T])):
                    depth = 2
                    break
            if u == v:
                depth = 0  # a self-payment passes nothing on
            into = tail_instants(h.received.get(v, ()), t - width, cap, T)
            fwd = 0
            for r2 in into:
                y = r2[S]
                if y != v and y not in hubs and any(passes(r2[A], r0[A]) for r0 in inflows(h, y, r2[T] - lag, r2[T])):
                    fwd += 1
            routes = 0
            if u not in hubs:
                origins = {r[S] for r in tail_instants(h.received.get(u, ()), t - width, cap, T)} - {u, v}
                if origins:
                    via: dict[str, set] = {}
                    for r2 in into:
                        y = r2[S]
                        if y in hubs or y == v or y == u:
                            continue
                        for r0 in inflows(h, y, t - width, r2[T]):
                            if r0[S] != v and r0[S] != y:
                                via.setdefault(r0[S], set()).add(y)
                    routes = max(1 + len(via.get(a, ())) for a in origins)
            out[names[3]] = sum(1 for r in tail_instants(h.sent.get(v, ()), t - width, cap, T)
                                if r[D] != u and r[D] != v and r[A] is not None
                                and back_low * r[A] <= ev.amount <= back_high * r[A])
            out[names[0]], out[names[1]], out[names[2]] = depth, fwd, routes
        return compute
